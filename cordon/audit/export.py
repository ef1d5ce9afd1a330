"""Export the audit ledger as JSON lines, CSV or OCSF, streaming (generators, constant memory).

Each exporter takes an iterable of :class:`~cordon.audit.ledger.LedgerRecord` (normally
:func:`cordon.audit.query.iter_records`, which reads the ledger in keyset pages) and yields
text chunks, one record (or OCSF event) per line, so ``for chunk in export(...):
out.write(chunk)`` never holds more than one page of the ledger.

Formats
-------
``jsonl``
    One JSON object per record: ``seq, ts, case_id, run_id, kind, actor, payload, prev_hash,
    hash`` exactly as stored (``payload`` decoded), so the chain can be re-verified from the file.
``csv``
    RFC 4180 via :mod:`csv` with a header row: ``seq, ts, case_id, run_id, kind, actor, summary,
    payload, prev_hash, hash`` (``summary`` = :func:`cordon.audit.query.describe`, ``payload`` as
    compact JSON). Against spreadsheet formula injection (OWASP "CSV Injection"), a text cell
    that begins with ``=``, ``+``, ``-``, ``@``, tab or carriage return is prefixed with ``'``.
``ocsf``
    JSON lines of OCSF 1.3.0 events (https://schema.ocsf.io/1.3.0/):

    * **Detection Finding** (``class_uid`` 2004, ``category_uid`` 2 Findings,
      ``type_uid`` = 2004 × 100 + ``activity_id``) — one finding per case,
      ``finding_info.uid`` = the case ID: ``case.opened`` → activity 1 *Create* (status 1 New),
      ``case.joined`` → 2 *Update* (another detection of the same credential), ``case.closed`` →
      3 *Close* (status 4 Resolved when contained, else 99 Other with Cordon's status in
      ``status``). A suppressed detection (no case) is its own finding, created with status 3
      Suppressed and ``finding_info.uid`` = the detection's uid.
    * **API Activity** (``class_uid`` 6003, ``category_uid`` 6 Application Activity,
      ``type_uid`` = 6003 × 100 + ``activity_id``) — one event per cloud API call Cordon made in a
      containment or rollback (``action.*``, ``rollback.failed`` records; a call's verb gives
      ``activity_id``: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other); ``status_id`` 1 Success or
      2 Failure. An action that made no call (``already_contained``) has no API Activity.

    Every event carries ``metadata.version`` ``1.3.0``, ``metadata.product`` (Cordon),
    ``metadata.uid`` (the ledger record's hash, ``-<n>`` per call), ``metadata.sequence`` (the
    record's ``seq``), ``metadata.correlation_uid`` (the case ID), ``time`` (epoch ms) and
    ``time_dt``. Other ledger records (enrichment, approvals, verification) have no OCSF class
    here; they are in the JSONL and CSV exports, and the decision is summarised in the Close
    finding's ``unmapped.cordon``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from cordon.audit.ledger import Ledger, LedgerRecord
from cordon.audit.query import CaseFilter, QueryError, describe, iter_cases, iter_records

FORMATS = ("jsonl", "csv", "ocsf")
OCSF_VERSION = "1.3.0"
CSV_COLUMNS = ("seq", "ts", "case_id", "run_id", "kind", "actor", "summary", "payload", "prev_hash", "hash")

DETECTION_FINDING = 2004
API_ACTIVITY = 6003
_SEVERITY_IDS = {"unknown": 0, "informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_PROVIDERS = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cordon")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "0"


def record_dict(r: LedgerRecord) -> dict[str, Any]:
    """The stored fields of a record as a dict (``payload`` decoded)."""
    return {"seq": r.seq, "ts": r.ts, "case_id": r.case_id, "run_id": r.run_id, "kind": r.kind, "actor": r.actor,
            "payload": r.payload, "prev_hash": r.prev_hash, "hash": r.hash}


def to_jsonl(records: Iterable[LedgerRecord]) -> Iterator[str]:
    """One JSON object per record, newline-terminated (see the module docstring)."""
    for r in records:
        yield json.dumps(record_dict(r), ensure_ascii=False, sort_keys=True, default=str) + "\n"


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(records: Iterable[LedgerRecord]) -> Iterator[str]:
    """A header line, then one CSV row per record (``csv`` module, RFC 4180 quoting, ``\\r\\n``
    line ends; formula-injection guard described in the module docstring)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    for r in records:
        buf.seek(0)
        buf.truncate()
        payload = json.dumps(r.payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
        writer.writerow([_csv_cell(v) for v in (r.seq, r.ts, r.case_id, r.run_id, r.kind, r.actor, describe(r),
                                                payload, r.prev_hash, r.hash)])
        yield buf.getvalue()


# -- OCSF ---------------------------------------------------------------------------------------

def _time(ts: str) -> tuple[int, str]:
    dt = datetime.fromisoformat(ts)
    return int(dt.timestamp() * 1000), dt.isoformat()


def _metadata(r: LedgerRecord, suffix: str = "") -> dict[str, Any]:
    meta = {"version": OCSF_VERSION, "product": {"name": "Cordon", "vendor_name": "Cordon", "version": _version()},
            "uid": r.hash + suffix, "sequence": r.seq, "log_name": "cordon-ledger", "profiles": ["datetime"],
            "original_time": r.ts}
    if r.case_id:
        meta["correlation_uid"] = r.case_id
    return meta


def _user(principal: dict[str, Any] | None) -> dict[str, Any]:
    p = principal or {}
    user = {k: p[k] for k in ("uid", "name", "type") if p.get(k)}
    if p.get("account_uid"):
        user["account"] = {"uid": p["account_uid"]}
    return user


def _finding_info(det: dict[str, Any], uid: str, created: int) -> dict[str, Any]:
    rule = det.get("rule") or {}
    info: dict[str, Any] = {
        "uid": uid,
        "title": f"{det.get('event_name') or det.get('finding_type') or 'detection'}: "
                 f"{rule.get('name') or rule.get('title') or rule.get('uid') or 'credential persistence'}",
        "created_time": created,
        "types": [t for t in (det.get("source"), det.get("finding_type") or det.get("event_name")) if t],
    }
    if rule:
        info["analytic"] = {k: v for k, v in (("uid", rule.get("uid") or rule.get("id")),
                                               ("name", rule.get("name") or rule.get("title")),
                                               ("type_id", 1), ("type", "Rule")) if v is not None}
    if det.get("technique_ids"):
        info["attacks"] = [{"technique": {"uid": t}, "version": "v15"} for t in det["technique_ids"]]
    return info


def _detection_finding(r: LedgerRecord, det: dict[str, Any], *, uid: str, activity_id: int, status_id: int,
                       status: str | None, message: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    t, t_dt = _time(r.ts)
    names = {1: "Create", 2: "Update", 3: "Close"}
    statuses = {1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved", 99: status or "Other"}
    severity = str(det.get("severity") or "unknown")
    actor = det.get("actor") or {}
    cred = det.get("credential") or {}
    event: dict[str, Any] = {
        "class_uid": DETECTION_FINDING, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": names[activity_id],
        "type_uid": DETECTION_FINDING * 100 + activity_id,
        "type_name": f"Detection Finding: {names[activity_id]}",
        "time": t, "time_dt": t_dt,
        "severity_id": _SEVERITY_IDS.get(severity, 0), "severity": severity.capitalize(),
        "status_id": status_id, "status": statuses[status_id],
        "message": message,
        "metadata": _metadata(r),
        "finding_info": _finding_info(det, uid, t),
        "is_alert": activity_id == 1,
    }
    if det.get("provider"):
        event["cloud"] = {"provider": _PROVIDERS.get(det["provider"], det["provider"])}
        if det.get("account_uid"):
            event["cloud"]["account"] = {"uid": det["account_uid"]}
        if det.get("region"):
            event["cloud"]["region"] = det["region"]
    evidence: dict[str, Any] = {}
    if actor.get("user"):
        evidence["actor"] = {"user": _user(actor["user"])}
        if actor.get("session_uid"):
            evidence["actor"]["session"] = {"uid": actor["session_uid"]}
    if actor.get("src_ip"):
        evidence["src_endpoint"] = {"ip": actor["src_ip"]}
        if actor.get("src_location"):  # OCSF location object: city, region, country, isp, desc
            evidence["src_endpoint"]["location"] = actor["src_location"]
    if actor.get("user_agent"):
        evidence.setdefault("http_request", {})["user_agent"] = actor["user_agent"]
    if det.get("event_name"):
        evidence["api"] = {"operation": det["event_name"]}
    if evidence:
        event["evidences"] = [evidence]
    resources = []
    if cred:
        resources.append({"uid": cred.get("uid"), "type": cred.get("kind"),
                          "owner": _user(cred.get("owner"))} if cred.get("owner") else
                         {"uid": cred.get("uid"), "type": cred.get("kind")})
    target = det.get("target") or {}
    if target.get("uid") or target.get("name"):
        resources.append({"uid": target.get("uid") or target.get("name"), "name": target.get("name"),
                          "type": target.get("type") or "principal"})
    if resources:
        event["resources"] = resources
    if extra:
        event["unmapped"] = extra
    return event


_VERBS = (
    (1, ("create", "put", "attach", "add", "import", "insert", "set")),
    (2, ("get", "list", "describe", "read", "lookup")),
    (3, ("update", "patch", "disable", "enable", "deactivate", "activate", "revoke", "modify")),
    (4, ("delete", "remove", "detach", "destroy")),
)


def api_activity_id(operation: str) -> int:
    """OCSF API Activity ``activity_id`` for an operation name (``UpdateAccessKey``,
    ``projects.serviceAccounts.keys.disable``, ``applications.removePassword``,
    ``role_assignments.delete_by_id``): 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other."""
    last = operation.rsplit(".", 1)[-1].lower()
    for activity, verbs in _VERBS:
        if any(last.startswith(v) for v in verbs):
            return activity
    return 99


def _api_activities(r: LedgerRecord, det: dict[str, Any], cordon_identity: str | None) -> Iterator[dict[str, Any]]:
    p = r.payload
    t, t_dt = _time(r.ts)
    ok = p.get("status") in ("contained", "rolled_back", "already_contained", "already_rolled_back")
    names = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
    provider = det.get("provider") or "aws"
    for i, call in enumerate(p.get("calls") or []):
        op = str(call.get("operation") or "unknown")
        activity = api_activity_id(op)
        cloud: dict[str, Any] = {"provider": _PROVIDERS.get(provider, provider)}
        region = call.get("region") or det.get("region")
        if region:
            cloud["region"] = region
        if det.get("account_uid"):
            cloud["account"] = {"uid": det["account_uid"]}
        event = {
            "class_uid": API_ACTIVITY, "class_name": "API Activity",
            "category_uid": 6, "category_name": "Application Activity",
            "activity_id": activity, "activity_name": names[activity] if activity != 99 else op,
            "type_uid": API_ACTIVITY * 100 + activity, "type_name": f"API Activity: {names[activity]}",
            "time": t, "time_dt": t_dt,
            "severity_id": 1, "severity": "Informational",
            "status_id": 1 if ok else 2, "status": "Success" if ok else "Failure",
            "message": f"{p.get('name')}: {op} on {p.get('target')} ({p.get('status')})",
            "metadata": _metadata(r, f"-{i}"),
            "actor": {"user": {"uid": cordon_identity or (r.actor or "cordon"), "type": "Other"},
                      "app_name": "cordon", "invoked_by": r.actor or "cordon"},
            "api": {"operation": op, "service": {"name": str(call.get("service") or "")},
                    "request": {"uid": f"{r.hash[:16]}-{i}", "data": call.get("params") or {}}},
            "cloud": cloud,
            "src_endpoint": {"svc_name": "cordon"},
            "resources": [{"uid": p.get("target"), "type": p.get("name")}],
            "unmapped": {"cordon": {"action": p.get("name"), "action_status": p.get("status"),
                                    "before": p.get("before"), "after": p.get("after"), "kind": r.kind}},
        }
        if p.get("error"):
            event["status_detail"] = str(p["error"])
        yield event


class _CaseCache:
    """The few facts the OCSF mapper needs per case, bounded (LRU of ``size`` cases)."""

    def __init__(self, ledger: Ledger | None, size: int = 256):
        self.ledger = ledger
        self.size = size
        self.data: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, case_id: str | None) -> dict[str, Any]:
        if not case_id:
            return {"detection": {}, "identity": None, "joined": {}}
        if case_id in self.data:
            self.data.move_to_end(case_id)
            return self.data[case_id]
        det: dict[str, Any] = {}
        if self.ledger is not None:
            row = self.ledger.case(case_id)
            if row and row.get("detection"):
                det = json.loads(row["detection"])
        item = {"detection": det, "identity": None, "joined": {}}
        self.data[case_id] = item
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return item


def to_ocsf(records: Iterable[LedgerRecord], ledger: Ledger | None = None) -> Iterator[str]:
    """OCSF 1.3.0 events as JSON lines (mapping in the module docstring). ``ledger`` is read for
    each case's first detection (``cases.detection``), a bounded LRU of cases at a time."""
    cache = _CaseCache(ledger)
    for r in records:
        for event in ocsf_events(r, cache):
            yield json.dumps(event, ensure_ascii=False, sort_keys=True, default=str) + "\n"


def ocsf_events(r: LedgerRecord, cache: _CaseCache | None = None) -> list[dict[str, Any]]:
    """The OCSF events (possibly none) for one ledger record (see the module docstring)."""
    cache = cache or _CaseCache(None)
    p = r.payload
    case = cache.get(r.case_id)
    if r.kind == "detection.received":
        det = p.get("detection") or {}
        if r.case_id and det.get("uid"):
            joined = case["joined"]
            joined[det["uid"]] = det
            while len(joined) > 64:
                joined.pop(next(iter(joined)))
        if not case["detection"] and det and r.case_id:
            case["detection"] = det
        if r.case_id is None and det.get("suppressed"):
            return [_detection_finding(r, det, uid=str(det.get("uid")), activity_id=1, status_id=3, status=None,
                                       message=f"Suppressed: {det['suppressed']}",
                                       extra={"cordon": {"raw_ref": p.get("raw_ref")}})]
        return []
    if r.kind == "guard.passed":
        case["identity"] = p.get("cordon_identity")
        return []
    if r.kind == "case.opened":
        det = case["detection"]
        return [_detection_finding(r, det, uid=r.case_id or "", activity_id=1, status_id=1, status=None,
                                   message=f"Case {r.case_id} opened; playbook {p.get('playbook') or 'none'}",
                                   extra={"cordon": {"case_key": p.get("case_key"),
                                                     "detection_uid": p.get("detection_uid"),
                                                     "playbook": p.get("playbook")}})]
    if r.kind == "case.joined":
        det = case["joined"].get(p.get("detection_uid")) or case["detection"]
        return [_detection_finding(r, det, uid=r.case_id or "", activity_id=2, status_id=2, status=None,
                                   message=f"Detection {p.get('detection_uid')} joined case {r.case_id}",
                                   extra={"cordon": {"detection_uid": p.get("detection_uid"),
                                                     "duplicate": p.get("duplicate")}})]
    if r.kind == "case.closed":
        status = str(p.get("status"))
        contained = status == "contained"
        return [_detection_finding(r, case["detection"], uid=r.case_id or "", activity_id=3,
                                   status_id=4 if contained else 99, status=status,
                                   message=f"Case {r.case_id} closed: {status}",
                                   extra={"cordon": {"status": status, "verified": p.get("verified"),
                                                     "approval": p.get("approval")}})]
    if r.kind.startswith("action.") or r.kind == "rollback.failed":
        return list(_api_activities(r, case["detection"], case["identity"]))
    return []


def export(ledger: Ledger, fmt: str, *, since: datetime | str | None = None, until: datetime | str | None = None,
           cases: CaseFilter | None = None, case_ids: Iterable[str] | None = None,
           page_size: int = 1000) -> Iterator[str]:
    """Stream the ledger's records with ``ts`` in ``[since, until)`` as ``fmt`` (``jsonl``,
    ``csv`` or ``ocsf``) text chunks. ``cases`` (a :class:`~cordon.audit.query.CaseFilter`)
    and/or ``case_ids`` keep only the records of those cases (the matching case IDs are held in
    memory; the records are not). Raises :class:`~cordon.audit.query.QueryError` (field
    ``format``) for an unknown format."""
    if fmt not in FORMATS:
        raise QueryError("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    ids: set[str] | None = set(case_ids) if case_ids is not None else None
    if cases is not None and any(v is not None for v in vars(cases).values()):
        matched = {c.case_id for c in iter_cases(ledger, cases)}
        ids = matched if ids is None else ids & matched
    records = iter_records(ledger, since=since, until=until, case_ids=ids, page_size=page_size)
    if fmt == "jsonl":
        return to_jsonl(records)
    if fmt == "csv":
        return to_csv(records)
    return to_ocsf(records, ledger)
