"""Incidents in the audit readers (issue 14, item 1: the ledger, the pages and the exports show the
incident with its cases): ``cordon audit show / incidents / incident``, the Markdown timeline, the
audit pages and the exports (OCSF ``related_events``, JSONL, CSV).

The ledgers are written through the Ledger's API (open_case, assign_incident, append, close_case)
in the order and with the payload shapes the engine (``Responder.accept``, ``correlate``,
``accept_actor_access``, ``delegate``) and the respond flow's incident path
(``approval.incident``, ``case.closed`` with ``incident_id``, the lead's ``plan.created`` with
``incident``) write them, on SQLite and PostgreSQL where the readers are the ledger's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cordon.audit.export import DETECTION_FINDING, export, to_ocsf
from cordon.audit.ledger import Ledger, LedgerRecord
from cordon.audit.query import case_incident, entry, incident, list_incidents, timeline
from cordon.audit.report import markdown_timeline
from cordon.server.pages import PageAuth, audit_pages, hash_password
from tests.test_audit_query import make_detection, seed_case
from tests.test_ocsf import OcsfValidator, assert_all_valid

ACCOUNT = "111122223333"
MALLORY = f"arn:aws:iam::{ACCOUNT}:user/mallory"
SIGNING_KEY = "AKIAEXAMPLEMALLORY01"
ACTOR_KEY = f"aws|{ACCOUNT}|{MALLORY}|{SIGNING_KEY}"
EVIL_ACTOR = '<script>alert("x")</script>'
BECAUSE = ("actor arn:aws:iam::111122223333:role/terraform matches infrastructure_principals pattern "
           "'*:role/terraform': answered by aws-infra-user-triage, triage: nothing contained")
USER, PASSWORD = "alice", "correct horse battery staple"


@dataclass
class World:
    """The seeded ledger: an incident of mallory's key (lead contained, a member contained by the
    lead's decision, a member refused, the case of the key mallory signed with, opened behind the
    lead by its actor's access and joined to the incident), a triage case routed because of an
    infrastructure principal in an incident of its own, and a lone case in none."""

    ledger: Ledger
    incident_id: str
    triage_incident_id: str
    lead: str
    member: str
    refused: str
    access: str
    triage: str
    lone: str
    plan_hash: str
    records: dict[str, list[LedgerRecord]] = field(default_factory=dict)


def _open(ledger: Ledger, *, target: str, key_id: str, playbook: str, event: str = "CreateAccessKey",
          actor: str = "mallory", because: str | None = None, severity: str = "high") -> tuple[str, dict]:
    """``Responder.accept``'s records: the case, ``detection.received``, ``case.opened``."""
    det = make_detection(actor=actor, target=target, key_id=key_id).model_dump(mode="json")
    det["event_name"], det["severity"] = event, severity
    det["actor"]["session_uid"] = SIGNING_KEY
    uid = hashlib.sha256(f"{target}{key_id}{event}".encode()).hexdigest()[:32]
    case_key = f"aws|{ACCOUNT}|{det['credential']['kind']}|{key_id}"
    cid = ledger.open_case(case_key, uid, det, playbook).case_id
    ledger.append("detection.received", {"detection": det, "raw_ref": det["raw_ref"]}, case_id=cid,
                  actor=det["actor"]["user"]["uid"])
    ledger.append("case.opened", {"case_key": case_key, "detection_uid": uid, "playbook": playbook,
                                  **({"because": because} if because else {})}, case_id=cid)
    return cid, det


def _correlate(ledger: Ledger, cid: str, det: dict, key: str = ACTOR_KEY) -> str:
    """``Responder.correlate``: the case into its actor's incident."""
    actor = {k: det["actor"][k] for k in ("user", "session_uid", "src_ip") if k in det["actor"]}
    return ledger.assign_incident(cid, key, window_seconds=900, actor=actor, provider="aws").incident_id


def seed_world(ledger: Ledger) -> World:
    """Write :class:`World` into ``ledger``."""
    lead, lead_det = _open(ledger, target="backdoor", key_id="AKIAEXAMPLEBACKDOOR1", playbook="aws-access-key-created")
    incident_id = _correlate(ledger, lead, lead_det)
    member, member_det = _open(ledger, target="backdoor", key_id=f"arn:aws:iam::{ACCOUNT}:user/backdoor",
                               playbook="aws-backdoor-user", event="CreateUser")
    _correlate(ledger, member, member_det)
    refused, refused_det = _open(ledger, target="break-glass", key_id="AKIAEXAMPLEBREAKGL01",
                                 playbook="aws-access-key-created")
    _correlate(ledger, refused, refused_det)
    # the actor's own access (Responder.accept_actor_access): the key mallory signed with, its own case,
    # joined to the incident of the case that revealed it; case.actor_access on both
    access, access_det = _open(ledger, target="mallory", key_id=SIGNING_KEY, playbook="aws-actor-access-key")
    _correlate(ledger, access, access_det)
    what = {"kind": "aws_access_key", "uid": SIGNING_KEY, "owner": MALLORY}
    ledger.append("case.actor_access", {"actor_case": access, "credential": what, "opened": True}, case_id=lead)
    ledger.append("case.actor_access", {"revealed_by_case": lead, "credential": what}, case_id=access)
    # one run for the burst: the lead's, naming the others; each member delegated to it
    members = [{"case_id": c, "playbook": p, "cloud": {"account_id": ACCOUNT}}
               for c, p in ((member, "aws-backdoor-user"), (refused, "aws-access-key-created"),
                            (access, "aws-actor-access-key"))]
    ledger.append("run.requested", {"attempt": 1, "mode": "slack", "where": "deployment", "cloud": {},
                                    "members": members}, case_id=lead, actor="cordon")
    for m in members:
        ledger.append("run.delegated", {"attempt": 1, "incident_id": incident_id, "lead_case_id": lead},
                      case_id=m["case_id"], actor="cordon")
    run = "run-incident1"
    plan_hash = hashlib.sha256(b"incident plan").hexdigest()
    view = {"incident_id": incident_id, "actor_key": ACTOR_KEY, "cases": [
        {"case_id": c, "playbook": "p", "event_name": "CreateAccessKey", "credential": None, "target": "backdoor",
         "steps": 0 if c == refused else 1, **({"refused": "protected principal"} if c == refused else {})}
        for c in (lead, member, refused, access)]}
    ledger.append("guard.refused", {"ok": False, "reason": "protected principal break-glass"}, case_id=refused,
                  run_id=run, actor="cordon")
    ledger.close_case(refused, "refused", {"status": "refused", "verified": None, "approval": None,
                                           "incident_id": incident_id}, run_id=run, actor="cordon")
    ledger.append("plan.created", {"case_id": lead, "playbook": "aws-access-key-created", "hash": plan_hash,
                                   "incident": view, "steps": [
                                       {"case_id": c, "action": "aws.deactivate-access-key", "params": {},
                                        "target": c, "describe": [f"iam:UpdateAccessKey({c})"]}
                                       for c in (lead, member, access)]}, case_id=lead, run_id=run, actor="cordon")
    ledger.append("approval.asked", {"mode": "slack", "channel": "C0SEC", "plan_hash": plan_hash}, case_id=lead,
                  run_id=run, actor="cordon")
    decision = {"decision": "approve", "approver": "slack:U0APPROVER", "plan_hash": plan_hash}
    ledger.append("approval.given", decision, case_id=lead, run_id=run, actor="slack:U0APPROVER")
    for c in (lead, member, access):
        if c != lead:
            ledger.append("approval.incident", {"lead_case_id": lead, "incident_id": incident_id,
                                                "plan_hash": plan_hash, "decision": "approve",
                                                "approver": "slack:U0APPROVER"},
                          case_id=c, run_id=run, actor="slack:U0APPROVER")
        ledger.append("action.contained", {"name": "aws.deactivate-access-key", "target": c, "status": "contained",
                                           "before": {"status": "Active"}, "after": {"status": "Inactive"},
                                           "calls": [], "error": None}, case_id=c, run_id=run, actor="cordon")
        ledger.append("verify.held", {"action": "aws.deactivate-access-key", "target": c, "held": True},
                      case_id=c, run_id=run, actor="cordon")
        ledger.close_case(c, "contained", {"status": "contained", "verified": True, "approval": decision,
                                           **({"incident_id": incident_id} if c != lead else {})},
                          run_id=run, actor="cordon")
    # a triage case: routed because its actor is an infrastructure principal; an incident of its own
    triage, triage_det = _open(ledger, target="svc-user", key_id="AKIAEXAMPLETRIAGE001", playbook="aws-infra-triage",
                               actor="terraform", because=BECAUSE, severity="medium")
    triage_incident = _correlate(ledger, triage, triage_det, key=f"aws|{ACCOUNT}|{EVIL_ACTOR}|ASIATF")
    ledger.append("actor_access.no_playbook", {"playbook": "aws-actor-role-sessions"}, case_id=triage)
    lone = seed_case(ledger, actor="eve", target="deploy", key_id="AKIAEXAMPLELONE00001").case_id
    w = World(ledger, incident_id, triage_incident, lead, member, refused, access, triage, lone, plan_hash)
    w.records = {c: list(ledger.records(case_id=c)) for c in (lead, member, refused, access, triage, lone)}
    return w


@pytest.fixture
def world(ledger_url) -> World:
    """:func:`seed_world` on SQLite and on PostgreSQL (the readers')."""
    ledger = Ledger(ledger_url)
    yield seed_world(ledger)
    ledger.engine.dispose()


@pytest.fixture
def sqlite_world(tmp_path) -> World:
    """:func:`seed_world` on SQLite (the command line and the pages, which render the readers)."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    yield seed_world(ledger)
    ledger.engine.dispose()


# -- the readers -------------------------------------------------------------------------------------
def test_an_incident_is_read_with_each_case_and_its_status(world):
    led = world.ledger
    inc = incident(led, world.incident_id)
    assert inc.lead_case_id == world.lead and inc.actor_key == ACTOR_KEY and inc.provider == "aws"
    assert [c.case_id for c in inc.cases] == [world.lead, world.member, world.refused, world.access]
    assert {c.case_id: c.status for c in inc.cases} == {world.lead: "contained", world.member: "contained",
                                                        world.refused: "refused", world.access: "contained"}
    assert inc.statuses() == {"contained": 3, "refused": 1} and inc.status_text() == "contained 3, refused 1"
    assert inc.actor_name == MALLORY
    member = next(c for c in inc.cases if c.case_id == world.member)
    assert (member.playbook, member.event, member.target) == ("aws-backdoor-user", "CreateUser",
                                                              f"arn:aws:iam::{ACCOUNT}:user/backdoor")
    assert [c.case_id for c in inc.others(world.member)] == [world.lead, world.refused, world.access]
    doc = json.loads(json.dumps(inc.to_dict()))
    assert doc["statuses"] == {"contained": 3, "refused": 1} and doc["cases"][0]["case_id"] == world.lead
    assert case_incident(led, world.access).incident_id == world.incident_id
    assert case_incident(led, world.lone) is None and incident(led, "incident-nope") is None
    # newest first; limit and offset in SQL
    assert [i.incident_id for i in list_incidents(led)] == [world.triage_incident_id, world.incident_id]
    assert [i.incident_id for i in list_incidents(led, limit=1, offset=1)] == [world.incident_id]
    # a case the incident names but the cases table lacks is listed, status unknown
    led.assign_incident("case-ghost", ACTOR_KEY, window_seconds=900)
    ghost = incident(led, world.incident_id)
    assert ghost.cases[-1].case_id == "case-ghost" and ghost.cases[-1].status is None
    assert ghost.statuses() == {"contained": 3, "refused": 1, "unknown": 1}


def test_a_timeline_names_its_incident_and_says_each_new_record_in_english(world):
    led = world.ledger
    tl = timeline(led, world.member)
    assert tl.incident is not None and tl.incident.incident_id == world.incident_id
    text = {e.kind: e.text for e in tl.entries}
    iid, lead = world.incident_id, world.lead
    assert text["incident.case_added"] == f"Case added to incident {iid} (lead case {lead}; actor key {ACTOR_KEY})"
    assert text["run.delegated"] == f"Answered by the run of lead case {lead} of incident {iid} (attempt 1)"
    assert text["approval.incident"] == (f"Covered by the decision on lead case {lead} of incident {iid}: approve "
                                         f"by slack:U0APPROVER; plan {world.plan_hash[:12]}")
    assert text["case.closed"].endswith(f"; incident {iid}")
    lead_text = {e.kind: e.text for e in timeline(led, lead).entries}
    assert lead_text["incident.opened"] == f"Incident {iid} opened, this case its lead (actor {MALLORY})"
    assert lead_text["incident.case_added"].startswith(f"Case added to incident {iid} (this case leads it;")
    assert lead_text["plan.created"].startswith(f"Plan {world.plan_hash[:12]} created for incident {iid} (4 case(s)): "
                                                "3 step(s)")
    assert lead_text["run.requested"] == (f"Run requested: attempt 1, approval slack, deployment; also answers "
                                          f"incident case(s) {world.member}, {world.refused}, {world.access}")
    assert lead_text["case.actor_access"] == (f"The access this case's actor signed with (aws_access_key {SIGNING_KEY})"
                                              f" is case {world.access} (opened for it)")
    access_text = {e.kind: e.text for e in timeline(led, world.access).entries}
    assert access_text["case.actor_access"] == (f"Case of the access the actor of case {lead} signed with "
                                                f"(aws_access_key {SIGNING_KEY})")
    triage = timeline(led, world.triage)
    (warn,) = [e for e in triage.entries if e.kind == "actor_access.no_playbook"]
    assert warn.level == "warning" and "aws-actor-role-sessions is not loaded" in warn.text
    assert triage.because == BECAUSE and triage.incident.incident_id == world.triage_incident_id
    # the links a timeline holds
    (link,) = timeline(led, lead).actor_access
    assert (link.case_id, link.relation, link.opened) == (world.access, "actor_access", True)
    (back,) = timeline(led, world.access).actor_access
    assert (back.case_id, back.relation) == (lead, "revealed_by")
    assert tl.covered_by["lead_case_id"] == lead and tl.covered_by["decision"] == "approve"
    assert tl.summary.decision == "none"  # one decision, counted once: on the lead
    lone = timeline(led, world.lone)
    assert lone.incident is None and lone.actor_access == [] and lone.because is None and lone.covered_by is None
    # no generic "kind: key=value" rendering is left for the incident records
    for e in timeline(led, lead).entries + timeline(led, world.member).entries:
        assert not e.text.startswith(e.kind + ":"), e.text
    assert entry(world.records[world.member][-1]).text == text["case.closed"]


def test_the_markdown_timeline_has_the_incident_line(world):
    led = world.ledger
    md = markdown_timeline(led, world.member)
    (line,) = [ln for ln in md.splitlines() if ln.startswith("- **Incident:**")]
    assert line == (f"- **Incident:** {world.incident_id} (lead case {world.lead}; actor "
                    f"arn:aws:iam::{ACCOUNT}:user/mallory); other cases: {world.lead} (contained), "
                    f"{world.refused} (refused), {world.access} (contained)")
    assert f"- **Decision:** approve by slack:U0APPROVER on lead case {world.lead}\n" in md
    assert "this case leads it" in markdown_timeline(led, world.lead)
    access = markdown_timeline(led, world.access)
    assert f"- **Opened for the actor of:** case {world.lead} (aws\\_access\\_key {SIGNING_KEY})" in access
    assert f"- **The actor's own access:** case {world.access}" in markdown_timeline(led, world.lead)
    triage = markdown_timeline(led, world.triage)
    assert "- **Routed because:** actor arn:aws:iam::111122223333:role/terraform" in triage
    # the attacker-chosen actor in the key is escaped, not markup
    assert "<script>" not in triage and "&lt;script&gt;" in triage
    assert "**Incident:**" not in markdown_timeline(led, world.lone)


# -- the exports -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ocsf() -> OcsfValidator:
    return OcsfValidator()


def _events(chunks) -> list[dict]:
    return [json.loads(line) for line in "".join(chunks).splitlines()]


def _finding(events, case_id: str, activity: int) -> dict:
    return next(e for e in events if e["class_uid"] == DETECTION_FINDING and e["activity_id"] == activity
                and e["finding_info"]["uid"] == case_id)


def test_each_cases_ocsf_findings_carry_its_incident_and_actor_access_links(world, ocsf):
    led = world.ledger
    events = _events(export(led, "ocsf"))
    assert_all_valid(ocsf, events)
    creates = {e["finding_info"]["uid"]: e for e in events
               if e["class_uid"] == DETECTION_FINDING and e["activity_id"] == 1}
    # the member's Create and Close name the lead's and the others' Create findings (their metadata.uid)
    for activity in (1, 3):
        member = _finding(events, world.member, activity)
        related = member["finding_info"]["related_events"]
        assert member["finding_info"]["related_events_count"] == 3
        assert [r["uid"] for r in related] == [creates[c]["metadata"]["uid"]
                                               for c in (world.lead, world.refused, world.access)]
        lead = related[0]
        assert lead["type_uid"] == 200401 and lead["type_name"] == "Detection Finding: Create"
        assert lead["title"] == f"Cordon case {world.lead}"
        assert lead["tags"] == [{"name": "case_id", "value": world.lead},
                                {"name": "relation", "value": "incident_lead"}]
        assert lead["created_time"] == creates[world.lead]["finding_info"]["created_time"]
        assert lead["severity_id"] == 4 and lead["severity"] == "High"
        assert member["unmapped"]["cordon"]["incident_id"] == world.incident_id
        assert member["unmapped"]["cordon"]["lead_case_id"] == world.lead
    # the lead: the access case is a case of its incident and the access its actor signed with: one entry
    lead = creates[world.lead]
    (access,) = [r for r in lead["finding_info"]["related_events"]
                 if {"name": "case_id", "value": world.access} in r["tags"]]
    assert [t["value"] for t in access["tags"] if t["name"] == "relation"] == ["incident_case", "actor_access"]
    assert SIGNING_KEY in access["desc"]
    assert lead["unmapped"]["cordon"]["actor_access"] == [
        {"case_id": world.access, "relation": "actor_access",
         "credential": {"kind": "aws_access_key", "uid": SIGNING_KEY, "owner": MALLORY}}]
    back = creates[world.access]["unmapped"]["cordon"]["actor_access"]
    assert back[0]["case_id"] == world.lead and back[0]["relation"] == "revealed_by"
    # why the playbook was routed; a triage case alone in its incident relates to no other case
    triage = creates[world.triage]
    assert triage["unmapped"]["cordon"]["because"] == BECAUSE
    assert "related_events" not in triage["finding_info"]
    assert triage["unmapped"]["cordon"]["incident_id"] == world.triage_incident_id
    lone = creates[world.lone]
    assert "related_events" not in lone["finding_info"]
    assert not {"incident_id", "because", "actor_access"} & set(lone["unmapped"]["cordon"])
    # one case exported alone still names its links (read from the ledger, not the exported range)
    only = _events(export(led, "ocsf", case_ids=[world.member]))
    assert {e["metadata"]["correlation_uid"] for e in only} == {world.member}
    assert _finding(only, world.member, 1)["finding_info"]["related_events"] == \
        _finding(events, world.member, 1)["finding_info"]["related_events"]


def test_the_ocsf_export_reads_the_links_of_a_batch_of_cases_in_one_query(world):
    """The links cost one query per 200 records streamed, not one per case (the ledger here holds
    fewer than 200 records and six cases with findings)."""
    import sqlalchemy as sa

    led = world.ledger
    reads: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if "FROM ledger" in statement and "kind ||" in statement:
            reads.append(statement)

    assert len(list(led.records())) < 200
    sa.event.listen(led.engine, "before_cursor_execute", count)
    try:
        events = _events(export(led, "ocsf"))
    finally:
        sa.event.remove(led.engine, "before_cursor_execute", count)
    assert len({e["finding_info"]["uid"] for e in events if e["class_uid"] == DETECTION_FINDING}) == 6
    assert len(reads) == 1, reads


def test_without_a_ledger_the_ocsf_mapper_learns_the_links_from_the_stream(world, ocsf):
    events = _events(to_ocsf(world.ledger.records()))
    assert_all_valid(ocsf, events)
    close = _finding(events, world.member, 3)
    assert close["unmapped"]["cordon"]["incident_id"] == world.incident_id
    # no ledger to read the lead's Create hash from: the related case named by its ID
    lead = close["finding_info"]["related_events"][0]
    assert lead["uid"] == world.lead and lead["type"] == "Cordon case" and "type_uid" not in lead
    assert _finding(events, world.triage, 1)["unmapped"]["cordon"]["because"] == BECAUSE


def test_jsonl_and_csv_exports_of_a_case_carry_its_links(world):
    led = world.ledger
    docs = _events(export(led, "jsonl", case_ids=[world.access]))
    by_kind = {d["kind"]: d for d in docs}
    assert by_kind["incident.case_added"]["payload"]["incident_id"] == world.incident_id
    assert by_kind["incident.case_added"]["payload"]["lead_case_id"] == world.lead
    assert by_kind["case.actor_access"]["payload"]["revealed_by_case"] == world.lead
    triage = {d["kind"]: d for d in _events(export(led, "jsonl", case_ids=[world.triage]))}
    assert triage["case.opened"]["payload"]["because"] == BECAUSE
    rows = list(csv.DictReader(io.StringIO("".join(export(led, "csv", case_ids=[world.member])), newline="")))
    summary = {r["kind"]: r["summary"] for r in rows}
    assert summary["approval.incident"].startswith(f"Covered by the decision on lead case {world.lead}")
    assert summary["run.delegated"].startswith("Answered by the run of lead case")


# -- the command line ---------------------------------------------------------------------------------
def _cli(url: str, *args: str) -> subprocess.CompletedProcess:
    cordon = str(Path(sys.executable).with_name("cordon"))
    env = {**os.environ, "CORDON_DATABASE_URL": url, "COLUMNS": "250"}
    return subprocess.run([cordon, "audit", *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_cli_shows_a_cases_incident_and_reads_incidents(sqlite_world):
    world, ledger_url = sqlite_world, sqlite_world.ledger.url
    shown = _cli(ledger_url, "show", world.member)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"incident {world.incident_id}: lead case {world.lead}; 4 case(s): contained 3, refused 1" in out
    assert f"    {world.lead} (lead) contained aws-access-key-created CreateAccessKey" in out
    assert f"    {world.refused} refused" in out and f"    {world.access} contained" in out
    assert "run.delegated" in out and "Covered by the decision on lead case" in out
    assert f"  decision approve by slack:U0APPROVER on lead case {world.lead}; time to approve -" in out
    lead = _cli(ledger_url, "show", world.lead).stdout
    assert f"incident {world.incident_id}: lead case this case;" in lead
    assert f"the actor's own access is case {world.access} (aws_access_key {SIGNING_KEY})" in lead
    assert f"routed because: {BECAUSE}" in _cli(ledger_url, "show", world.triage).stdout
    assert "incident" not in _cli(ledger_url, "show", world.lone).stdout.split("approval #")[0]
    # json: the incident first, then one record per line as before
    first, *records = [json.loads(x) for x in _cli(ledger_url, "show", world.member, "--output", "json")
                       .stdout.splitlines()]
    assert first["incident"]["incident_id"] == world.incident_id and first["incident"]["lead_case_id"] == world.lead
    assert {c["case_id"]: c["status"] for c in first["incident"]["cases"]}[world.refused] == "refused"
    assert [r["kind"] for r in records] == [r.kind for r in world.records[world.member]]
    lone = [json.loads(x) for x in _cli(ledger_url, "show", world.lone, "--output", "json").stdout.splitlines()]
    assert all("kind" in r for r in lone)
    # the incidents, newest first; one incident
    listed = _cli(ledger_url, "incidents")
    assert listed.returncode == 0 and "2 incident(s)" in listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(world.triage_incident_id) and lines[1].startswith(world.incident_id)
    assert f"4 case(s): contained 3, refused 1  lead={world.lead}  actor={ACTOR_KEY}" in lines[1]
    assert EVIL_ACTOR in lines[0]  # Rich markup and HTML in the ledger printed as text
    docs = [json.loads(x) for x in
            _cli(ledger_url, "incidents", "--output", "json", "--limit", "1").stdout.splitlines()]
    assert [d["incident_id"] for d in docs] == [world.triage_incident_id]
    one = _cli(ledger_url, "incident", world.incident_id)
    assert one.returncode == 0
    assert f"actor {MALLORY}; key {ACTOR_KEY}" in one.stdout
    assert f"lead   {world.lead}  contained" in one.stdout and f"member {world.refused}  refused" in one.stdout
    doc = json.loads(_cli(ledger_url, "incident", world.incident_id, "--output", "json").stdout)
    assert [c["case_id"] for c in doc["cases"]] == [world.lead, world.member, world.refused, world.access]
    missing = _cli(ledger_url, "incident", "incident-nope")
    assert missing.returncode == 1 and "no incident incident-nope" in missing.stderr


# -- the audit pages ---------------------------------------------------------------------------------
@pytest.fixture
def client(sqlite_world):
    app = FastAPI()
    app.include_router(audit_pages(sqlite_world.ledger, PageAuth(users={USER: hash_password(PASSWORD)})))
    with TestClient(app) as c:
        yield c


def test_the_incident_pages_list_the_cases_and_need_a_sign_in(sqlite_world, client):
    world = sqlite_world
    for path in ("/audit/incidents", f"/audit/incidents/{world.incident_id}"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
        assert world.lead not in r.text
        assert client.get(path, auth=(USER, "wrong")).status_code == 401
    listing = client.get("/audit/incidents", auth=(USER, PASSWORD))
    assert listing.status_code == 200 and "default-src 'none'" in listing.headers["content-security-policy"]
    html = listing.text
    assert html.index(f'data-incident="{world.triage_incident_id}"') < \
        html.index(f'data-incident="{world.incident_id}"')
    row = html.split(f'data-incident="{world.incident_id}"', 1)[1].split("</tr>", 1)[0]
    assert f'href="/audit/incidents/{world.incident_id}"' in row and '<td class="num count">4</td>' in row
    assert "contained 3" in row and "refused 1" in row and f'href="/audit/cases/{world.lead}"' in row
    assert "<script>alert" not in html and "&lt;script&gt;" in html  # the actor key is text
    page = client.get(f"/audit/incidents/{world.incident_id}", auth=(USER, PASSWORD))
    assert page.status_code == 200
    cases = page.text.split('id="incident-cases"', 1)[1].split("</table>", 1)[0]
    for cid, status in ((world.lead, "contained"), (world.member, "contained"), (world.refused, "refused"),
                        (world.access, "contained")):
        tr = cases.split(f'data-case="{cid}"', 1)[1].split("</tr>", 1)[0]
        assert f'<a href="/audit/cases/{cid}">{cid}</a>' in tr and f">{status}</span>" in tr
    assert f'id="lead-link">{world.lead}</a>' in page.text and "contained 3, refused 1" in page.text
    assert client.get("/audit/incidents/incident-nope", auth=(USER, PASSWORD)).status_code == 404
    assert client.get("/audit/incidents?page=0", auth=(USER, PASSWORD)).status_code == 400
    assert '<a href="/audit/incidents">Incidents</a>' in html


def test_a_case_page_shows_its_incident_with_links_to_its_other_cases(sqlite_world, client):
    world = sqlite_world
    html = client.get(f"/audit/cases/{world.member}", auth=(USER, PASSWORD)).text
    section = html.split('id="incident"', 1)[1].split("</section>", 1)[0]
    assert f'href="/audit/incidents/{world.incident_id}" id="incident-link">{world.incident_id}</a>' in section
    assert f'id="lead-link">{world.lead}</a>' in section
    rows = section.split('id="incident-cases"', 1)[1]
    assert [r.split('"', 1)[0] for r in rows.split('data-case="')[1:]] == [world.lead, world.refused, world.access]
    assert f'<a href="/audit/cases/{world.refused}">{world.refused}</a>' in rows and ">refused</span>" in rows
    decision = html.split('id="decision">', 1)[1].split("</td>", 1)[0]
    assert decision == (f'approve by slack:U0APPROVER on lead case <a href="/audit/cases/{world.lead}">{world.lead}</a>'
                        " (its decision covers this case)")
    lead = client.get(f"/audit/cases/{world.lead}", auth=(USER, PASSWORD)).text
    assert "this case leads it" in lead.split('id="incident"', 1)[1]
    assert f'data-case="{world.access}" data-relation="actor_access"' in lead
    access = client.get(f"/audit/cases/{world.access}", auth=(USER, PASSWORD)).text
    assert f'data-case="{world.lead}" data-relation="revealed_by"' in access
    triage = client.get(f"/audit/cases/{world.triage}", auth=(USER, PASSWORD)).text
    assert f'id="because">{BECAUSE.replace(chr(39), "&#39;")}</td>' in triage
    assert "No other case (yet)." in triage
    # the printable report carries the incident too; a case in none shows no incident section
    assert 'id="incident"' in client.get(f"/audit/cases/{world.member}?format=print", auth=(USER, PASSWORD)).text
    assert 'id="incident"' not in client.get(f"/audit/cases/{world.lone}", auth=(USER, PASSWORD)).text
