"""The ledger's readers (cordon.audit.query / export / report) on SQLite and PostgreSQL.

Cases are written through the Ledger's own API (open_case, append, set_case) in the order and
with the payload shapes the engine and cordon/flows/respond.py write them; the large range for the
streaming test is a valid hash chain inserted in one transaction (and checked with verify()).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from cordon.audit.export import API_ACTIVITY, DETECTION_FINDING, api_activity_id, export, to_csv
from cordon.audit.ledger import GENESIS, Ledger, head_table, ledger_table
from cordon.audit.query import (
    CaseFilter,
    QueryError,
    case_summary,
    iter_records,
    list_cases,
    median,
    metrics,
    percentile,
    timeline,
)
from cordon.audit.report import artifact_key, markdown_timeline
from cordon.detections.model import Detection, canonical_json

EVIL_UA = '<script>alert(1)</script> "><img src=x onerror=alert(2)> [x](javascript:alert(3)) | pipe'


@pytest.fixture
def ledger(ledger_url):
    led = Ledger(ledger_url)
    yield led
    led.engine.dispose()


@dataclass
class Seeded:
    """What a seeded case is, so tests compare the readers' answers with what was written."""

    case_id: str
    provider: str
    account: str
    actor: str
    target: str
    playbook: str
    decision: str
    status: str
    records: list = field(default_factory=list)


def make_detection(*, provider: str = "aws", account: str = "111122223333", actor: str = "mallory",
                   target: str = "build-bot", key_id: str = "AKIAEXAMPLE0000001", user_agent: str = "aws-cli/2.15",
                   uid: str | None = None) -> Detection:
    """A Detection through the real model (validated), shaped like a CloudTrail CreateAccessKey."""
    arn = f"arn:aws:iam::{account}:user/{actor}"
    raw = {"eventName": "CreateAccessKey", "userName": target, "keyId": key_id}
    return Detection.model_validate({
        "uid": uid or hashlib.sha256(f"{provider}{account}{key_id}".encode()).hexdigest()[:32],
        "provider": provider, "source": "cloudtrail" if provider == "aws" else "gcp_audit",
        "event_name": "CreateAccessKey", "technique_ids": ["T1098.001"],
        "rule": {"type": "sigma", "uid": "rule-1", "name": "Access key created for another user"}, "severity": "high",
        "time": "2025-03-01T10:00:00Z", "account_uid": account, "region": "us-east-1",
        "actor": {"user": {"uid": arn, "name": actor, "type": "IAMUser"}, "src_ip": "203.0.113.7",
                  "user_agent": user_agent, "access_path": "api"},
        "target": {"uid": f"arn:aws:iam::{account}:user/{target}", "name": target},
        "credential": {"kind": "aws_access_key", "uid": key_id,
                       "owner": {"uid": f"arn:aws:iam::{account}:user/{target}", "name": target}},
        "raw_ref": {"origin": "test.json", "position": 0,
                    "sha256": hashlib.sha256(canonical_json(raw).encode()).hexdigest()},
        "raw": raw,
    })


def seed_case(ledger: Ledger, *, provider: str = "aws", account: str = "111122223333", actor: str = "mallory",
              target: str = "build-bot", key_id: str = "AKIAEXAMPLE0000001", playbook: str = "aws-access-key-created",
              decision: str = "approve", tta: float = 95.0, user_agent: str = "aws-cli/2.15",
              approver: str = "slack:U0APPROVER", team_id: str = "T0WORKSPACE", error: bool = False,
              join_again: bool = False) -> Seeded:
    """One case through every step the engine and the respond flow record (Slack approval path).
    ``decided_at`` is the ask's ledger time + ``tta`` seconds, so time to approve is exact."""
    det = make_detection(provider=provider, account=account, actor=actor, target=target, key_id=key_id,
                         user_agent=user_agent)
    recs = []
    opened = ledger.open_case(det.case_key(), det.uid, det.model_dump(mode="json"), playbook)
    cid = opened.case_id
    recs.append(ledger.append("detection.received", {"detection": det.summary(), "raw_ref": det.raw_ref.model_dump()},
                              case_id=cid, actor=det.actor.user.uid))
    recs.append(ledger.append("case.opened", {"case_key": det.case_key(), "detection_uid": det.uid,
                                              "playbook": playbook}, case_id=cid))
    if join_again:
        other = make_detection(provider=provider, account=account, actor=actor, target=target, key_id=key_id,
                               uid="guardduty-" + det.uid[:20])
        ledger.open_case(other.case_key(), other.uid, other.model_dump(mode="json"), playbook)
        recs.append(ledger.append("detection.received", {"detection": other.summary(),
                                                         "raw_ref": other.raw_ref.model_dump()},
                                  case_id=cid, actor=other.actor.user.uid))
        recs.append(ledger.append("case.joined", {"case_key": other.case_key(), "detection_uid": other.uid,
                                                  "duplicate": False}, case_id=cid))
    run = "run-" + cid[-8:]
    ledger.set_case(cid, status="running", flow_run_id=run)
    recs.append(ledger.append("run.started", {"playbook": playbook, "approval_mode": "slack"}, case_id=cid,
                              run_id=run, actor="cordon"))
    recs.append(ledger.append("enrichment.completed", {"action": "aws.describe-user", "result": {"user": target}},
                              case_id=cid, run_id=run, actor="cordon"))
    recs.append(ledger.append("guard.passed", {"ok": True, "reason": None,
                                               "cordon_identity": f"arn:aws:iam::{account}:role/cordon"},
                              case_id=cid, run_id=run, actor="cordon"))
    plan_hash = hashlib.sha256(cid.encode()).hexdigest()
    target_desc = f"arn:aws:iam::{account}:user/{target} access-key {key_id}"
    call = {"service": "iam", "operation": "UpdateAccessKey", "region": None,
            "params": {"AccessKeyId": key_id, "Status": "Inactive", "UserName": target}}
    recs.append(ledger.append("plan.created", {"case_id": cid, "playbook": playbook, "hash": plan_hash, "steps": [
        {"action": "aws.deactivate-access-key", "params": {"user_name": target, "access_key_id": key_id},
         "target": target_desc, "before": {"status": "Active"},
         "describe": [f"iam:UpdateAccessKey(AccessKeyId={key_id}, Status=Inactive, UserName={target})"]}]},
        case_id=cid, run_id=run, actor="cordon"))
    ledger.set_case(cid, plan_hash=plan_hash)
    asked = ledger.append("approval.asked", {"mode": "slack", "channel": "C0SEC", "ts": "1700000000.000100",
                                             "plan_hash": plan_hash, "expires_at": "2099-01-01T00:00:00+00:00"},
                          case_id=cid, run_id=run, actor="cordon")
    recs.append(asked)
    decided_at = (datetime.fromisoformat(asked.ts) + timedelta(seconds=tta)).isoformat()
    decision_payload = {"decision": decision, "approver": approver, "approver_name": "Alice Approver",
                        "team_id": team_id, "plan_hash": plan_hash, "decided_at": decided_at}
    kind = {"approve": "approval.given", "deny": "approval.refused", "expired": "approval.expired"}[decision]
    recs.append(ledger.append(kind, decision_payload, case_id=cid, run_id=run, actor=approver))
    status = {"deny": "denied", "expired": "expired"}.get(decision, "contained")
    if decision == "approve":
        recs.append(ledger.append("action.contained", {
            "name": "aws.deactivate-access-key", "target": target_desc, "status": "contained",
            "before": {"status": "Active"}, "after": {"status": "Inactive"}, "calls": [call],
            "rollback": {"status": "Active"}, "error": None, "data": None}, case_id=cid, run_id=run, actor="cordon"))
        if error:
            recs.append(ledger.append("run.error", {"state": "FAILED", "message": "boom: verification crashed"},
                                      case_id=cid, run_id=run, actor="cordon"))
            status = "error"
        else:
            recs.append(ledger.append("verify.held", {"action": "aws.deactivate-access-key", "target": target_desc,
                                                      "held": True, "state": {"status": "Inactive"}},
                                      case_id=cid, run_id=run, actor="cordon"))
    if status != "error":
        recs.append(ledger.append("case.closed", {"status": status, "verified": status == "contained",
                                                  "approval": {"decision": decision, "approver": approver}},
                                  case_id=cid, run_id=run, actor="cordon"))
    ledger.set_case(cid, status=status)
    recs.insert(0, None)  # keep indexes readable: recs[1] is detection.received
    return Seeded(cid, provider, account, actor, target, playbook, decision, status, [r for r in recs if r])


@pytest.fixture
def four(ledger):
    """Four cases: approved+contained (evil user agent, a joined detection), denied, expired on
    GCP in another project, approved but errored in another account."""
    a = seed_case(ledger, actor="mallory", target="build-bot", key_id="AKIAEXAMPLE0000001", tta=95.0,
                  user_agent=EVIL_UA, join_again=True)
    b = seed_case(ledger, actor="eve", target="deploy", key_id="AKIAEXAMPLE0000002", decision="deny", tta=30.0,
                  playbook="aws-login-profile")
    c = seed_case(ledger, provider="gcp", account="proj-blue", actor="trudy", target="sa-1",
                  key_id="projects/proj-blue/serviceAccounts/sa-1/keys/k1", decision="expired", tta=3600.0,
                  playbook="gcp-sa-key-created")
    d = seed_case(ledger, account="444455556666", actor="mallory", target="ci", key_id="AKIAEXAMPLE0000004",
                  tta=10.0, error=True)
    return ledger, [a, b, c, d]


def ids(cases) -> set[str]:
    return {c.case_id for c in cases}


def test_filters_select_exactly_the_matching_cases(four):
    ledger, (a, b, c, d) = four
    assert ids(list_cases(ledger)) == ids([a, b, c, d])
    assert ids(list_cases(ledger, CaseFilter.parse(provider="gcp"))) == {c.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(provider="aws"))) == ids([a, b, d])
    assert ids(list_cases(ledger, CaseFilter.parse(account="444455556666"))) == {d.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(principal="MALLORY"))) == ids([a, d])  # actor, any case
    assert ids(list_cases(ledger, CaseFilter.parse(principal="deploy"))) == {b.case_id}  # target
    assert ids(list_cases(ledger, CaseFilter.parse(playbook="aws-access-key-created"))) == ids([a, d])
    assert ids(list_cases(ledger, CaseFilter.parse(decision="approve"))) == ids([a, d])
    assert ids(list_cases(ledger, CaseFilter.parse(decision="deny"))) == {b.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(outcome="contained"))) == {a.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(outcome="error"))) == {d.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(provider="aws", decision="approve", outcome="contained"))) \
        == {a.case_id}
    # time range on opened_at: [since, until)
    opened = {s.case_id: s.opened_at for s in list_cases(ledger)}
    assert ids(list_cases(ledger, CaseFilter.parse(since=opened[b.case_id]))) == ids([b, c, d])
    assert ids(list_cases(ledger, CaseFilter.parse(until=opened[b.case_id]))) == {a.case_id}
    assert ids(list_cases(ledger, CaseFilter.parse(since=opened[b.case_id], until=opened[d.case_id]))) \
        == ids([b, c])
    assert list_cases(ledger, CaseFilter.parse(since="2000-01-01", until="2000-02-01")) == []
    # newest first, and paging
    assert [s.case_id for s in list_cases(ledger)] == [d.case_id, c.case_id, b.case_id, a.case_id]
    assert [s.case_id for s in list_cases(ledger, limit=2, offset=1)] == [c.case_id, b.case_id]


@pytest.mark.parametrize("values,field_name", [
    ({"since": "yesterday"}, "since"), ({"until": "2025-13-40"}, "until"), ({"decision": "maybe"}, "decision"),
    ({"colour": "red"}, "colour"), ({"since": "2025-02-01", "until": "2025-01-01"}, "until"),
])
def test_bad_filters_name_the_field(values, field_name):
    with pytest.raises(QueryError) as exc:
        CaseFilter.parse(**values)
    assert exc.value.field == field_name and str(exc.value).startswith(field_name + ":")


def test_summary_figures_and_approvals(four):
    ledger, (a, b, c, d) = four
    s = case_summary(ledger, a.case_id)
    by_kind = {}
    for r in a.records:
        by_kind.setdefault(r.kind, r)  # the first of each kind
    assert s.decision == "approve" and s.approver == "slack:U0APPROVER" and s.status == "contained"
    assert s.time_to_approve == pytest.approx(95.0)
    received = datetime.fromisoformat(by_kind["detection.received"].ts)
    held = datetime.fromisoformat(by_kind["verify.held"].ts)
    assert s.time_to_contain == pytest.approx((held - received).total_seconds())
    assert s.detections == 2  # the joined detection counts
    (appr,) = s.approvals
    assert (appr.approver, appr.approver_name, appr.team_id) == ("slack:U0APPROVER", "Alice Approver", "T0WORKSPACE")
    assert appr.plan_hash == by_kind["approval.given"].payload["plan_hash"]
    assert appr.asked_at == by_kind["approval.asked"].ts and appr.seconds_to_decide == pytest.approx(95.0)
    denied = case_summary(ledger, b.case_id)
    assert denied.decision == "deny" and denied.time_to_approve is None and denied.time_to_contain is None
    assert denied.approvals[0].seconds_to_decide == pytest.approx(30.0)
    errored = case_summary(ledger, d.case_id)
    assert errored.errors == 1 and errored.time_to_approve == pytest.approx(10.0) and errored.time_to_contain is None
    assert case_summary(ledger, "case-nope") is None


def test_timeline_is_every_record_in_order_with_one_liners(four):
    ledger, (a, *_rest) = four
    tl = timeline(ledger, a.case_id)
    assert [e.seq for e in tl.entries] == [r.seq for r in a.records]
    assert [e.kind for e in tl.entries] == [r.kind for r in a.records]
    text = {e.kind: e.text for e in tl.entries}
    det = a.records[0].payload
    assert det["raw_ref"]["sha256"] in text["detection.received"]
    assert "mallory" in text["detection.received"] and "203.0.113.7" in text["detection.received"]
    assert text["case.opened"].startswith("Case opened") and "aws-access-key-created" in text["case.opened"]
    assert "joined the open case" in text["case.joined"]
    assert "aws.describe-user" in text["enrichment.completed"]
    assert "Approval asked (slack) in Slack channel C0SEC" in text["approval.asked"]
    given = {r.kind: r for r in a.records}["approval.given"].payload
    for part in ("slack:U0APPROVER", "Alice Approver", "T0WORKSPACE", given["decided_at"], given["plan_hash"][:12]):
        assert part in text["approval.given"], part
    assert "status=Active → after status=Inactive" in text["action.contained"]
    assert "containment held" in text["verify.held"]
    assert text["case.closed"].startswith("Case closed: contained")
    assert timeline(ledger, "case-nope") is None


def test_percentiles_and_metrics(four):
    assert percentile([], 95) is None and median([]) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0 and percentile(values, 50) == 50.0 and median(values) == 50.5
    assert percentile([3.0, 1.0, 2.0], 95) == 3.0
    with pytest.raises(QueryError):
        percentile([1.0], 0)
    ledger, (a, b, c, d) = four
    extra = seed_case(ledger, target="ops", key_id="AKIAEXAMPLE0000005", tta=20.0)
    m = metrics(ledger)
    book = {f.group: f for f in m.by_playbook}
    akc = book["aws-access-key-created"]  # a (95 s), d (10 s, errored), extra (20 s)
    assert (akc.cases, akc.approved, akc.contained) == (3, 3, 2)
    assert akc.tta_median == pytest.approx(20.0) and akc.tta_p95 == pytest.approx(95.0)
    ttc = sorted(x for x in (case_summary(ledger, a.case_id).time_to_contain,
                             case_summary(ledger, extra.case_id).time_to_contain))
    assert akc.ttc_median == pytest.approx(sum(ttc) / 2) and akc.ttc_p95 == pytest.approx(ttc[-1])
    assert book["aws-login-profile"].tta_median is None and book["aws-login-profile"].cases == 1
    month = datetime.fromisoformat(case_summary(ledger, a.case_id).opened_at).strftime("%Y-%m")
    assert [f.group for f in m.by_month] == [month] and m.by_month[0].cases == 5 == m.overall.cases
    only_gcp = metrics(ledger, CaseFilter.parse(provider="gcp"))
    assert only_gcp.overall.cases == 1 and only_gcp.overall.approved == 0


def _all_records(ledger):
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(ledger_table).order_by(ledger_table.c.seq)).all()


def test_jsonl_export_is_the_ledger_and_rechains(four):
    ledger, _ = four
    lines = "".join(export(ledger, "jsonl")).splitlines()
    rows = _all_records(ledger)
    assert len(lines) == len(rows)
    prev = GENESIS
    for line, row in zip(lines, rows, strict=True):
        doc = json.loads(line)
        assert (doc["seq"], doc["hash"], doc["kind"]) == (row.seq, row.hash, row.kind)
        assert canonical_json(doc["payload"]) == row.payload
        body = {k: doc[k] for k in ("seq", "ts", "case_id", "run_id", "kind", "actor")}
        body["payload"] = canonical_json(doc["payload"])
        assert doc["prev_hash"] == prev
        assert hashlib.sha256((prev + canonical_json(body)).encode()).hexdigest() == doc["hash"]
        prev = doc["hash"]


def test_jsonl_export_filters_by_time_and_case(four):
    ledger, (a, b, c, d) = four
    rows = _all_records(ledger)
    mid = rows[len(rows) // 2].ts
    after = [json.loads(x) for x in "".join(export(ledger, "jsonl", since=mid)).splitlines()]
    assert after and all(x["ts"] >= mid for x in after)
    assert [x["seq"] for x in after] == [r.seq for r in rows if r.ts >= mid]
    before = [json.loads(x) for x in "".join(export(ledger, "jsonl", until=mid)).splitlines()]
    assert len(before) + len(after) == len(rows)
    only_b = [json.loads(x) for x in "".join(export(ledger, "jsonl", case_ids=[b.case_id])).splitlines()]
    assert {x["case_id"] for x in only_b} == {b.case_id} and len(only_b) == len(b.records)
    gcp = [json.loads(x) for x in "".join(export(ledger, "jsonl", cases=CaseFilter.parse(provider="gcp"))).splitlines()]
    assert {x["case_id"] for x in gcp} == {c.case_id}
    with pytest.raises(QueryError) as exc:
        list(export(ledger, "xml"))
    assert exc.value.field == "format"


def test_csv_export_parses_and_guards_against_formulas(four):
    ledger, (a, *_rest) = four
    ledger.append("note.added", {"text": "=HYPERLINK(\"http://evil\")"}, case_id=a.case_id,
                  actor="=cmd|' /C calc'!A0")
    text = "".join(export(ledger, "csv"))
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(_all_records(ledger))
    assert list(rows[0]) == ["seq", "ts", "case_id", "run_id", "kind", "actor", "summary", "payload", "prev_hash",
                             "hash"]
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["note.added"]["actor"] == "'=cmd|' /C calc'!A0"
    assert json.loads(by_kind["action.contained"]["payload"])["after"] == {"status": "Inactive"}
    assert by_kind["approval.given"]["summary"].startswith("Approved by slack:U0APPROVER")
    # the evil user agent survives as data (quoted by the csv module), not as extra columns
    received = [r for r in rows if r["kind"] == "detection.received"][0]
    assert json.loads(received["payload"])["detection"]["actor"]["user_agent"] == EVIL_UA


BASE_REQUIRED = ("activity_id", "category_uid", "class_uid", "type_uid", "time", "severity_id", "metadata")


def test_ocsf_export_has_the_required_fields(four):
    ledger, (a, b, c, d) = four
    events = [json.loads(x) for x in "".join(export(ledger, "ocsf")).splitlines()]
    for e in events:
        for key in BASE_REQUIRED:
            assert key in e, (key, e)
        assert e["metadata"]["version"] == "1.8.0" and e["metadata"]["product"]["vendor_name"] == "Cordon"
        assert e["type_uid"] == e["class_uid"] * 100 + e["activity_id"]
        assert isinstance(e["time"], int) and e["metadata"]["uid"]
    findings = [e for e in events if e["class_uid"] == DETECTION_FINDING]
    apis = [e for e in events if e["class_uid"] == API_ACTIVITY]
    assert all(e["category_uid"] == 2 and e["finding_info"]["uid"] and e["finding_info"]["title"] for e in findings)
    # one Create per case, one Update per joined detection, one Close per closed case
    assert sorted(e["finding_info"]["uid"] for e in findings if e["activity_id"] == 1) == sorted(ids([a, b, c, d]))
    assert [e["finding_info"]["uid"] for e in findings if e["activity_id"] == 2] == [a.case_id]
    closes = {e["finding_info"]["uid"]: e for e in findings if e["activity_id"] == 3}
    assert set(closes) == ids([a, b, c])  # d errored: never closed
    assert closes[a.case_id]["status_id"] == 4 and closes[b.case_id]["status"] == "denied"
    create_a = next(e for e in findings if e["activity_id"] == 1 and e["finding_info"]["uid"] == a.case_id)
    assert create_a["evidences"][0]["http_request"]["user_agent"] == EVIL_UA
    assert create_a["finding_info"]["attacks"][0]["technique"]["uid"] == "T1098"  # OCSF 1.8.0: sub-technique apart
    assert create_a["finding_info"]["attacks"][0]["sub_technique"]["uid"] == "T1098.001"
    assert create_a["severity_id"] == 4 and create_a["cloud"]["provider"] == "AWS"
    # API Activity: one per call Cordon made (cases a and d contained one key each)
    assert len(apis) == 2
    for e in apis:
        assert e["category_uid"] == 6 and e["activity_id"] == 3 and e["type_uid"] == 600303
        for key in ("actor", "api", "cloud", "src_endpoint"):
            assert key in e
        assert e["api"]["operation"] == "UpdateAccessKey" and e["api"]["service"]["name"] == "iam"
        assert e["cloud"]["provider"] == "AWS" and e["status_id"] == 1
        assert e["actor"]["user"]["uid"].endswith(":role/cordon")
        assert e["unmapped"]["cordon"]["before"] == {"status": "Active"}
    assert {e["metadata"]["correlation_uid"] for e in apis} == ids([a, d])


@pytest.mark.parametrize("op,activity", [
    ("UpdateAccessKey", 3), ("DeleteLoginProfile", 4), ("PutUserPolicy", 1), ("DetachUserPolicy", 4),
    ("projects.serviceAccounts.keys.disable", 3), ("applications.removePassword", 4),
    ("role_assignments.delete_by_id", 4), ("users.revokeSignInSessions", 3), ("GetUser", 2), ("Frobnicate", 99),
])
def test_api_activity_ids(op, activity):
    assert api_activity_id(op) == activity


def _bulk_chain(ledger: Ledger, n: int) -> None:
    """n valid chained records in one transaction (the Ledger's own hash function), head updated."""
    from cordon.audit.ledger import _body, _hash

    prev = GENESIS
    rows = []
    for seq in range(1, n + 1):
        ts = (datetime(2025, 1, 1) + timedelta(seconds=seq)).isoformat() + "+00:00"
        payload = canonical_json({
            "name": "aws.deactivate-access-key", "target": f"user/u{seq} access-key AKIA{seq:016d}",
            "status": "contained", "before": {"status": "Active"}, "after": {"status": "Inactive"},
            "calls": [{"service": "iam", "operation": "UpdateAccessKey", "region": None,
                       "params": {"AccessKeyId": f"AKIA{seq:016d}", "Status": "Inactive", "UserName": f"u{seq}"}}],
            "note": "x" * 200})
        case_id = f"case-bulk{seq % 50:04d}"
        digest = _hash(prev, _body(seq, ts, case_id, None, "action.contained", "cordon", payload))
        rows.append({"seq": seq, "ts": ts, "case_id": case_id, "run_id": None, "kind": "action.contained",
                     "actor": "cordon", "payload": payload, "prev_hash": prev, "hash": digest})
        prev = digest
    with ledger.writer.begin() as conn:
        for i in range(0, n, 2000):
            conn.execute(ledger_table.insert(), rows[i:i + 2000])
        conn.execute(head_table.update().where(head_table.c.id == 1).values(seq=n, hash=prev))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "ocsf"])
def test_export_streams_a_large_range_page_by_page(ledger, fmt):
    n, page = 20_000, 1000
    _bulk_chain(ledger, n)
    assert ledger.verify().ok
    selects: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM ledger" in statement and "max(" not in statement:
            selects.append(statement)

    sa.event.listen(ledger.engine, "before_cursor_execute", count)
    try:
        stream = export(ledger, fmt, page_size=page)
        first = next(stream)
        if fmt == "csv":
            first = next(stream)  # past the header: the first record
        # a record came out after exactly one page was read: the rest of the range is still in the database
        assert len(selects) == 1 and first
        rest = sum(1 for _ in stream)
    finally:
        sa.event.remove(ledger.engine, "before_cursor_execute", count)
    # every page read once: ceil(n / page) pages, plus one that finds nothing only if n is a multiple
    assert len(selects) == math.ceil(n / page)
    assert rest + 1 == n  # one line (one OCSF API Activity) per record; the CSV header was read before


def test_iter_records_rejects_bad_input(ledger):
    with pytest.raises(QueryError) as exc:
        list(iter_records(ledger, page_size=0))
    assert exc.value.field == "page_size"
    with pytest.raises(QueryError) as exc:
        list(iter_records(ledger, since="not a time"))
    assert exc.value.field == "since"


def test_markdown_timeline_escapes_and_keys(four):
    ledger, (a, *_rest) = four
    md = markdown_timeline(ledger, a.case_id)
    assert md.startswith(f"# Cordon case {a.case_id}")
    assert "**Time to approve:** 1 min 35 s" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(a.records)  # header + one row per record
    # every row has exactly 5 cells: no injected pipe broke the table; no raw HTML or links survive
    for row in table:
        assert len([c for c in row.split(" | ")]) == 5, row
    assert "<script>" not in md and "<img" not in md and "](javascript:" not in md
    assert artifact_key(a.case_id) == f"cordon-timeline-{a.case_id}"
    assert artifact_key("Case_ÄB 12") == "cordon-timeline-case-b-12"
    with pytest.raises(KeyError):
        markdown_timeline(ledger, "case-nope")


def test_csv_writer_handles_no_records():
    assert "".join(to_csv([])) == "seq,ts,case_id,run_id,kind,actor,summary,payload,prev_hash,hash\r\n"


def test_cli_list_show_export(tmp_path):
    """``cordon audit list/show/export`` as a user runs them: the executable in a child process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{tmp_path}/ledger.db"
    ledger = Ledger(url)
    a = seed_case(ledger, user_agent=EVIL_UA)
    b = seed_case(ledger, provider="gcp", account="proj-blue", target="sa-1", key_id="k1", decision="deny",
                  playbook="gcp-sa-key-created")
    ledger.append("note.added", {"text": "hello"}, case_id=a.case_id, actor="[link=http://evil.example]click[/link]")
    cordon = str(Path(sys.executable).with_name("cordon"))
    env = {**os.environ, "CORDON_DATABASE_URL": url, "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cordon, "audit", *args], env=env, capture_output=True, text=True, timeout=120)

    listed = run("list", "--provider", "gcp", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    (doc,) = [json.loads(x) for x in listed.stdout.splitlines()]
    assert doc["case_id"] == b.case_id and doc["decision"] == "deny"
    text = run("list", "--decision", "approve")
    assert a.case_id in text.stdout and b.case_id not in text.stdout and "tta=1 min 35 s" in text.stdout
    bad = run("list", "--since", "last week")
    assert bad.returncode == 2 and "since" in bad.stderr
    shown = run("show", a.case_id)
    assert shown.returncode == 0 and "approval.given" in shown.stdout and "time to approve 1 min 35 s" in shown.stdout
    assert "[link=http://evil.example]click[/link]" in shown.stdout  # Rich markup in the ledger printed as text
    md = run("show", a.case_id, "--output", "markdown")
    assert md.stdout.startswith(f"# Cordon case {a.case_id}")
    assert run("show", "case-nope").returncode == 1
    out = tmp_path / "audit.ocsf.jsonl"
    exported = run("export", "--format", "ocsf", "--case", a.case_id, "-o", str(out))
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(x) for x in out.read_text().splitlines()]
    assert {e["class_uid"] for e in events} == {DETECTION_FINDING, API_ACTIVITY}
    assert f"exported {len(events)} event(s)" in exported.stderr and not (tmp_path / "audit.ocsf.jsonl.part").exists()
    csv_out = run("export", "-f", "csv", "--provider", "gcp")
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout, newline="")))
    assert rows and {r["case_id"] for r in rows} == {b.case_id}


def test_one_liners_of_the_approval_policy_and_manual_records():
    from cordon.audit.ledger import LedgerRecord
    from cordon.audit.query import describe, entry

    def rec(kind, payload, actor="sweeper"):
        return LedgerRecord(1, "2025-01-01T00:00:00+00:00", "case-1", "run-1", kind, actor, payload, GENESIS, "h")

    assert describe(rec("approval.escalated", {"plan_hash": "ab" * 32, "escalate_to": "S0ONCALL",
                                               "after_seconds": 900, "votes": ["U1"]})) \
        == "Approval escalated to S0ONCALL after 900 s (1 vote(s) so far)"
    assert describe(rec("approval.reminded", {"n": 2, "votes": []})) == "Approval reminder #2 sent (0 vote(s) so far)"
    vote = describe(rec("approval.vote", {"approver": "slack:U1", "user_name": "alice", "count": 1, "quorum": 2,
                                          "plan_hash": "cd" * 32}, actor="slack:U1"))
    assert vote == f"Vote by slack:U1 (alice): 1 of 2; plan {'cd' * 6}"
    manual = rec("manual.requested", {"playbook": "aws-access-key-created", "parameters": {"access_key_id": "AKIA1"},
                                      "requested_by": "cli:bob"}, actor="cli:bob")
    assert describe(manual).startswith("Manual run of aws-access-key-created requested by cli:bob with {")
    assert entry(rec("manual.refused", {"playbook": "x", "errors": {"p": "bad"}})).level == "warning"
    assert entry(rec("run.error", {"message": "boom"})).level == "error"
    assert describe(rec("something.new", {"b": 1, "a": "x"})) == 'something.new: a="x", b=1'
