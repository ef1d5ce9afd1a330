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
    JSON lines of OCSF 1.8.0 events (https://schema.ocsf.io/1.8.0/), each valid for its class
    with the profiles it lists in ``metadata.profiles``: ``datetime`` (every event carries
    ``time_dt``) and ``cloud`` (every event whose provider is known carries ``cloud``, which that
    profile requires). tests/test_ocsf.py validates every event against the official schema
    (ocsf-json-schema's copy of schema.ocsf.io's export, with ``jsonschema``) and checks each
    ``*_id`` against its caption.

    * **Detection Finding** (``class_uid`` 2004, ``category_uid`` 2 Findings,
      ``type_uid`` = 2004 × 100 + ``activity_id``) — one finding per case,
      ``finding_info.uid`` = the case ID: ``case.opened`` → activity 1 *Create* (status 1 New,
      ``is_alert`` true), ``case.joined`` → 2 *Update* (another detection of the same
      credential), ``case.closed`` → 3 *Close* (``is_alert`` false; status 4 Resolved when
      contained, else 99 Other with Cordon's status, e.g. ``denied``, in ``status``). A
      suppressed detection (no case) is its own finding, created with status 3 Suppressed and
      ``finding_info.uid`` = the detection's uid. ``finding_info``: ``created_time`` (the case's
      opening), ``modified_time`` (Update, Close), ``first_seen_time`` (the detected event's own
      time), ``analytic`` (a Sigma rule: ``type_id`` 1 Rule; a provider's finding type: 99 Other
      with the source, e.g. ``guardduty``), ``attacks`` (``T1098.001`` as ``technique`` T1098 and
      ``sub_technique`` T1098.001). ``evidences[0]``: ``actor.user``, ``actor.session``
      (``credential_uid`` = CloudTrail ``userIdentity.accessKeyId``, ``issuer``, ``is_mfa``,
      ``created_time``), ``src_endpoint`` (``ip``, or ``hostname`` / ``name`` when CloudTrail's
      ``sourceIPAddress`` is a service; ``location`` with ``city``, ``region``, ``country``,
      ``desc``; ``isp``, since ``location.isp`` is deprecated), ``http_request.user_agent``,
      ``api.operation``. ``resources``: the credential (``uid``, ``type`` = Cordon's credential
      kind, ``owner``, ``data``) and the target principal. ``cloud``: ``provider`` (AWS, GCP,
      Azure), ``account`` (``type_id`` 10 AWS Account / 11 GCP Project), ``region``.
    * **API Activity** (``class_uid`` 6003, ``category_uid`` 6 Application Activity,
      ``type_uid`` = 6003 × 100 + ``activity_id``) — one event per cloud API call Cordon made in a
      containment or rollback (``action.*``, ``rollback.failed`` records; a call's verb gives
      ``activity_id``: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other with the operation as
      ``activity_name``); ``status_id`` 1 Success or 2 Failure (``status_detail`` = the cloud's
      error). ``actor.user`` is Cordon's cloud identity from ``guard.passed`` (``type_id`` 4
      Service), ``api`` the operation, service and parameters (``request.data``), ``cloud`` the
      provider (from the detection, else the action name's provider prefix). An
      action that made no call (``already_contained``) has no API Activity.

    **A case's links** (on each of its Detection Findings: Create, Update, Close): the other cases
    of its incident (one actor's burst, :meth:`cordon.audit.ledger.Ledger.assign_incident`) and
    the cases of its actor's own access (``case.actor_access``) are ``finding_info.related_events``
    (with ``related_events_count``): each names the other case's Create finding (``uid`` = its
    ``metadata.uid``, the hash of its ``case.opened`` record; ``type_uid`` 200401), ``created_time``
    (the other finding's ``finding_info.created_time``), its severity, ``title`` ``Cordon case
    <id>``, ``desc`` and ``tags`` ``case_id`` and ``relation`` (``incident_lead``,
    ``incident_case``, ``actor_access``: the case of the access this case's actor signed with,
    ``revealed_by``: the case whose actor signed with this case's credential; a case linked both
    ways has a tag per relation). A linked case without a ``case.opened`` record (so without an
    OCSF finding) is named by its case ID with ``type`` ``Cordon case``. ``unmapped.cordon``
    carries ``incident_id`` and ``lead_case_id``, ``because`` (why the playbook was routed,
    ``case.opened``) and ``actor_access`` (``[{case_id, relation, credential}]``). These are read
    from the ledger once per case (one query; the incident's cases once per incident), so they
    are the case's links as the ledger holds them when the case is first met, not only those
    inside the exported range; without a ledger they are learned from the records streamed. The
    links of the cases met in each batch of 200 records are read in one query (the batch is all
    the exporter holds besides its LRU of cases).

    A principal's provider type (CloudTrail ``userIdentity.type`` such as ``IAMUser``,
    ``ServicePrincipal``, ``ServiceAccount``) is ``user.type`` with ``type_id`` 99 Other, unless
    it is one of OCSF's captions (User, Admin, System, Service). What OCSF has no attribute for is
    in ``unmapped.cordon``: the case key, playbook and detection uid (Create), a case's links
    (above), the approval and Cordon's status (Close), the raw record's reference (suppressed), an
    action's name, status, state before and after, ledger record kind and ``ledger_actor`` (who
    asked, e.g. the Slack user of a rollback) (API Activity), and a location OCSF cannot hold (no
    address, or no city/region/country). Every event carries ``metadata.version`` ``1.8.0``,
    ``metadata.profiles``, ``metadata.product`` (Cordon), ``metadata.uid`` (the ledger record's
    hash, ``-<n>`` per call), ``metadata.sequence`` (the record's ``seq``),
    ``metadata.correlation_uid`` (the case ID), ``time`` (epoch ms) and ``time_dt`` (RFC 3339).
    Other ledger records (enrichment, approvals, verification) have no OCSF class here; they are
    in the JSONL and CSV exports, and the decision is summarised in the Close finding's
    ``unmapped.cordon``.
"""

from __future__ import annotations

import csv
import functools
import io
import ipaddress
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from cordon.audit.ledger import Ledger, LedgerRecord
from cordon.audit.query import (
    ActorAccessLink,
    CaseBrief,
    CaseFilter,
    QueryError,
    actor_access_links,
    case_briefs,
    case_records,
    describe,
    incident,
    iter_cases,
    iter_records,
    opened_hashes,
)

FORMATS = ("jsonl", "csv", "ocsf")
OCSF_VERSION = "1.8.0"
CSV_COLUMNS = ("seq", "ts", "case_id", "run_id", "kind", "actor", "summary", "payload", "prev_hash", "hash")

DETECTION_FINDING = 2004
API_ACTIVITY = 6003


@functools.lru_cache(maxsize=1)
def _version() -> str:
    try:
        from importlib.metadata import version

        from cordon import DISTRIBUTION

        return version(DISTRIBUTION)
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

# Enum captions of OCSF 1.8.0 (https://schema.ocsf.io/1.8.0/): an ``*_id`` and its sibling caption
# attribute always go out together, the caption being the enum's, except for 99 (Other), whose
# caption is the source's own value.
_FINDING_ACTIVITIES = {1: "Create", 2: "Update", 3: "Close"}
_FINDING_STATUSES = {1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved"}
_API_ACTIVITIES = {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"}
_SEVERITY_IDS = {"unknown": 0, "informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_USER_TYPES = {"user": 1, "admin": 2, "system": 3, "service": 4}  # ``user.type_id``; anything else is 99


def _registered(provider: str | None) -> Any:
    """The registered :class:`cordon.providers.Provider` named ``provider``, or ``None``."""
    from cordon.providers import providers

    return providers().get(provider) if provider else None
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+\.?")


def _time(ts: Any) -> tuple[int, str] | None:
    """``(epoch ms, RFC 3339)`` of an ISO 8601 time (a ledger ``ts``, a detection's ``time``);
    ``None`` when it does not parse."""
    try:
        dt = datetime.fromisoformat(str(ts))
    except ValueError:
        return None
    return int(dt.timestamp() * 1000), dt.isoformat()


def _set_time(obj: dict[str, Any], name: str, ts: Any) -> None:
    """``obj[name]`` (epoch ms) and ``obj[name + "_dt"]`` (``datetime`` profile) from ``ts``."""
    t = _time(ts) if ts else None
    if t:
        obj[name], obj[name + "_dt"] = t


def _metadata(r: LedgerRecord, profiles: Iterable[str], suffix: str = "") -> dict[str, Any]:
    meta = {"version": OCSF_VERSION, "product": {"name": "Cordon", "vendor_name": "Cordon", "version": _version()},
            "uid": r.hash + suffix, "sequence": r.seq, "log_name": "cordon-ledger", "profiles": sorted(profiles),
            "original_time": r.ts}
    if r.case_id:
        meta["correlation_uid"] = r.case_id
    return meta


def _account(uid: Any, provider: str | None) -> dict[str, Any]:
    """OCSF ``account``: ``uid``, with ``type_id`` / ``type`` when the provider declares its accounts'
    OCSF type (:attr:`cordon.providers.Provider.ocsf_account`, e.g. 10 *AWS Account*)."""
    account: dict[str, Any] = {"uid": str(uid)}
    registered = _registered(provider)
    if registered is not None and registered.ocsf_account:
        account["type_id"], account["type"] = registered.ocsf_account
    return account


def _user(principal: dict[str, Any] | None, provider: str | None) -> dict[str, Any]:
    """OCSF ``user`` of a :class:`~cordon.detections.model.Principal` dict, ``{}`` when it names
    nobody (``user`` needs one of ``uid``, ``name``, ``account``). The provider's principal type
    (CloudTrail ``userIdentity.type``, Entra ``ServicePrincipal``, ...) is ``type`` with
    ``type_id`` 99 *Other*, unless it is one of OCSF's own captions (User, Admin, System, Service)."""
    p = principal or {}
    user: dict[str, Any] = {k: str(p[k]) for k in ("uid", "name") if p.get(k)}
    if p.get("account_uid"):
        user["account"] = _account(p["account_uid"], provider)
    if not user:
        return {}
    if p.get("type"):
        label = str(p["type"])
        type_id = _USER_TYPES.get(label.lower(), 99)
        user["type_id"], user["type"] = type_id, label.capitalize() if type_id != 99 else label
    return user


def _cloud(provider: str | None, account_uid: Any, region: Any) -> dict[str, Any] | None:
    """OCSF ``cloud`` (``cloud`` profile), ``None`` without a provider (``cloud.provider`` is required)."""
    if not provider:
        return None
    registered = _registered(provider)
    cloud: dict[str, Any] = {"provider": registered.title if registered is not None else provider}
    if account_uid:
        cloud["account"] = _account(account_uid, provider)
    if region:
        cloud["region"] = str(region)
    return cloud


def _src_endpoint(actor: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(network_endpoint, unplaced)`` for the actor's source. An IP address is ``ip``; a
    CloudTrail ``sourceIPAddress`` that is a service's DNS name is ``hostname``, anything else
    ``name``. ``src_location`` becomes ``location`` (``city``, ``region``, ``country``, ``desc``;
    OCSF needs one of the first three) and its ``isp`` the endpoint's ``isp`` (``location.isp`` is
    deprecated in 1.8.0). What has no place (a location without an address, or naming no place)
    is returned in ``unplaced`` for ``unmapped``."""
    endpoint: dict[str, Any] = {}
    unplaced: dict[str, Any] = {}
    src = actor.get("src_ip")
    if src:
        src = str(src)
        try:
            ipaddress.ip_address(src)
            endpoint["ip"] = src
        except ValueError:
            endpoint["hostname" if _HOSTNAME.fullmatch(src) else "name"] = src
    loc = actor.get("src_location") or {}
    if loc:
        place = {k: str(loc[k]) for k in ("city", "region", "country", "desc") if loc.get(k)}
        if not endpoint or not any(k in place for k in ("city", "region", "country")):
            unplaced["src_location"] = loc
        else:
            endpoint["location"] = place
            if loc.get("isp"):
                endpoint["isp"] = str(loc["isp"])
    return endpoint, unplaced


def _attacks(technique_ids: Iterable[str]) -> list[dict[str, Any]]:
    """OCSF ``attack`` objects: ``T1098.001`` is ``technique`` T1098 + ``sub_technique`` T1098.001."""
    attacks = []
    for t in technique_ids:
        t = str(t)
        attack: dict[str, Any] = {"technique": {"uid": t.split(".", 1)[0]}}
        if "." in t:
            attack["sub_technique"] = {"uid": t}
        attacks.append(attack)
    return attacks


def _finding_info(det: dict[str, Any], uid: str, created: Any, modified: Any) -> dict[str, Any]:
    rule = det.get("rule") or {}
    info: dict[str, Any] = {
        "uid": uid,
        "title": f"{det.get('event_name') or det.get('finding_type') or 'detection'}: "
                 f"{rule.get('name') or rule.get('title') or rule.get('uid') or 'credential persistence'}",
        "types": [str(t) for t in (det.get("source"), det.get("finding_type") or det.get("event_name")) if t],
    }
    _set_time(info, "created_time", created)
    if modified:
        _set_time(info, "modified_time", modified)
    _set_time(info, "first_seen_time", det.get("time"))  # the detected event's own time
    analytic = {k: str(v) for k, v in (("uid", rule.get("uid") or rule.get("id")),
                                       ("name", rule.get("name") or rule.get("title"))) if v}
    if analytic:  # a Sigma rule is an OCSF Rule; a provider's finding type (GuardDuty, SCC, ...) is Other
        rule_type = str(rule.get("type") or "sigma")
        analytic["type_id"], analytic["type"] = (1, "Rule") if rule_type == "sigma" else (99, rule_type)
        info["analytic"] = analytic
    if det.get("technique_ids"):
        info["attacks"] = _attacks(det["technique_ids"])
    return info


def _evidence(det: dict[str, Any], provider: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(evidences item, unplaced)``: the actor (``user``, ``session``), ``src_endpoint``,
    ``http_request.user_agent`` and ``api.operation`` (CloudTrail ``eventName``) of the detected
    event. OCSF needs one of ``actor``, ``api``, ``src_endpoint`` (of those Cordon has): without
    one, the rest goes to ``unplaced``."""
    actor = det.get("actor") or {}
    evidence: dict[str, Any] = {}
    who: dict[str, Any] = {}
    user = _user(actor.get("user"), provider)
    if user:
        who["user"] = user
    session: dict[str, Any] = {}
    if actor.get("session_uid"):  # CloudTrail userIdentity.accessKeyId: the credential the call was signed with
        session["credential_uid"] = str(actor["session_uid"])
    if actor.get("session_issuer"):
        session["issuer"] = str(actor["session_issuer"])
    if isinstance(actor.get("mfa"), bool):
        session["is_mfa"] = actor["mfa"]
    _set_time(session, "created_time", actor.get("session_created"))
    if session:
        who["session"] = session
    if who:
        evidence["actor"] = who
    endpoint, unplaced = _src_endpoint(actor)
    if endpoint:
        evidence["src_endpoint"] = endpoint
    if det.get("event_name"):
        evidence["api"] = {"operation": str(det["event_name"])}
    if actor.get("user_agent"):
        evidence["http_request"] = {"user_agent": str(actor["user_agent"])}
    if evidence and not any(k in evidence for k in ("actor", "api", "src_endpoint")):
        unplaced["evidence"], evidence = evidence, {}
    return evidence, unplaced


def _resource(uid: Any, name: Any, rtype: Any, **more: Any) -> dict[str, Any] | None:
    """OCSF ``resource_details`` (``uid`` or ``name`` required), ``None`` when it has neither."""
    res = {k: str(v) for k, v in (("uid", uid), ("name", name), ("type", rtype)) if v}
    if "uid" not in res and "name" not in res:
        return None
    res.update({k: v for k, v in more.items() if v})
    return res


def _detection_finding(r: LedgerRecord, det: dict[str, Any], *, uid: str, activity_id: int, status_id: int,
                       status: str | None, message: str, created: Any, extra: dict[str, Any] | None = None,
                       alert: bool | None = None) -> dict[str, Any]:
    t, t_dt = _time(r.ts) or (0, "")
    severity = str(det.get("severity") or "unknown").lower()
    severity_id = _SEVERITY_IDS.get(severity, 0)
    provider = det.get("provider")
    unmapped: dict[str, Any] = dict(extra or {})
    event: dict[str, Any] = {
        "class_uid": DETECTION_FINDING, "class_name": "Detection Finding",
        "category_uid": 2, "category_name": "Findings",
        "activity_id": activity_id, "activity_name": _FINDING_ACTIVITIES[activity_id],
        "type_uid": DETECTION_FINDING * 100 + activity_id,
        "type_name": f"Detection Finding: {_FINDING_ACTIVITIES[activity_id]}",
        "time": t, "time_dt": t_dt,
        "severity_id": severity_id, "severity": severity.capitalize() if severity_id else "Unknown",
        "status_id": status_id, "status": _FINDING_STATUSES.get(status_id) or status or "Other",
        "message": message,
        "finding_info": _finding_info(det, uid, created, r.ts if activity_id != 1 else None),
    }
    if alert is not None:
        event["is_alert"] = alert
    cloud = _cloud(provider, det.get("account_uid"), det.get("region"))
    if cloud:
        event["cloud"] = cloud
    evidence, unplaced = _evidence(det, provider)
    if evidence:
        event["evidences"] = [evidence]
    resources = []
    cred = det.get("credential") or {}
    if cred:
        owner = _user(cred.get("owner"), provider)
        res = _resource(cred.get("uid"), None, cred.get("kind"), owner=owner, data=cred.get("attributes"))
        if res:
            resources.append(res)
        else:
            unplaced["credential"] = cred
    target = det.get("target") or {}
    res = _resource(target.get("uid") or target.get("name"), target.get("name"), target.get("type") or "principal")
    if res:
        resources.append(res)
    if resources:
        event["resources"] = resources
    if unplaced:
        unmapped.setdefault("cordon", {}).update(unplaced)
    if unmapped:
        event["unmapped"] = unmapped
    event["metadata"] = _metadata(r, ["datetime", "cloud"] if cloud else ["datetime"])
    return event


_VERBS = (
    (1, ("create", "put", "attach", "add", "import", "insert", "set")),
    (2, ("get", "list", "describe", "read", "lookup")),
    (3, ("update", "patch", "disable", "enable", "deactivate", "activate", "revoke", "modify", "undelete",
         "restore")),
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
    t, t_dt = _time(r.ts) or (0, "")
    ok = p.get("status") in ("contained", "rolled_back", "already_contained", "already_rolled_back")
    action = str(p.get("name") or "")
    prefix = action.split(".", 1)[0]
    provider = det.get("provider") or (prefix if _registered(prefix) is not None else None)
    for i, call in enumerate(p.get("calls") or []):
        op = str(call.get("operation") or "unknown")
        activity = api_activity_id(op)
        api: dict[str, Any] = {"operation": op, "request": {"uid": f"{r.hash[:16]}-{i}",
                                                            "data": call.get("params") or {}}}
        if call.get("service"):
            api["service"] = {"name": str(call["service"])}
        event: dict[str, Any] = {
            "class_uid": API_ACTIVITY, "class_name": "API Activity",
            "category_uid": 6, "category_name": "Application Activity",
            "activity_id": activity, "activity_name": _API_ACTIVITIES[activity] if activity != 99 else op,
            "type_uid": API_ACTIVITY * 100 + activity, "type_name": f"API Activity: {_API_ACTIVITIES[activity]}",
            "time": t, "time_dt": t_dt,
            "severity_id": 1, "severity": "Informational",
            "status_id": 1 if ok else 2, "status": "Success" if ok else "Failure",
            "message": f"{action}: {op} on {p.get('target')} ({p.get('status')})",
            # Cordon itself made the call, as the identity the guard recorded for the case
            "actor": {"user": {"uid": cordon_identity or "cordon", "type_id": 4, "type": "Service"},
                      "app_name": "cordon"},
            "api": api,
            "src_endpoint": {"svc_name": "cordon"},
            "unmapped": {"cordon": {"action": action, "action_status": p.get("status"), "before": p.get("before"),
                                    "after": p.get("after"), "kind": r.kind, "ledger_actor": r.actor}},
        }
        cloud = _cloud(provider, det.get("account_uid"), call.get("region") or det.get("region"))
        if cloud:
            event["cloud"] = cloud
        res = _resource(p.get("target"), None, action)
        if res:
            event["resources"] = [res]
        if p.get("error"):
            event["status_detail"] = str(p["error"])
        event["metadata"] = _metadata(r, ["datetime", "cloud"] if cloud else ["datetime"], f"-{i}")
        yield event


#: the records a case's links are read from (:meth:`_CaseCache.links`)
_LINK_KINDS = ("case.opened", "incident.case_added", "case.actor_access")
#: the records that make a case's Detection Findings (whose links :func:`to_ocsf` prefetches)
_FINDING_KINDS = ("case.opened", "case.joined", "case.closed")
#: records :func:`to_ocsf` holds at once: links of the cases they name are read in one query
_BATCH = 200
_RELATIONS = {"incident_lead": "the lead case of incident {incident} (the case that opened it)",
              "incident_case": "another case of incident {incident}",
              "actor_access": "the case of the access this case's actor signed with ({credential})",
              "revealed_by": "the case whose actor signed with this case's credential ({credential})"}


def _empty_links() -> dict[str, Any]:
    return {"because": None, "incident_id": None, "lead_case_id": None, "actor_access": [], "related": None}


def _learn_link(links: dict[str, Any], r: LedgerRecord) -> None:
    """Update ``links`` (:meth:`_CaseCache.links`) with one ``case.opened``, ``incident.case_added``
    or ``case.actor_access`` record of the case."""
    p = r.payload
    if r.kind == "case.opened" and p.get("because") and not links["because"]:
        links["because"] = str(p["because"])
    elif r.kind == "incident.case_added" and p.get("incident_id"):
        links["incident_id"], links["lead_case_id"] = str(p["incident_id"]), p.get("lead_case_id")
    elif r.kind == "case.actor_access":
        links["actor_access"].extend(actor_access_links([r]))
    links["related"] = None  # built again from what is known now


def _related_event(case_id: str, relations: list[str], descs: list[str], brief: CaseBrief | None,
                   opened_hash: str | None) -> dict[str, Any]:
    """OCSF ``related_event`` naming another case's Create finding (see the module docstring)."""
    event: dict[str, Any] = {"uid": opened_hash or case_id, "title": f"Cordon case {case_id}",
                             "desc": "; ".join(descs),
                             "tags": [{"name": "case_id", "value": case_id},
                                      *({"name": "relation", "value": rel} for rel in relations)]}
    if opened_hash:
        event["type_uid"], event["type_name"] = DETECTION_FINDING * 100 + 1, "Detection Finding: Create"
    else:
        event["type"] = "Cordon case"
    if brief is not None:
        _set_time(event, "created_time", brief.opened_at)
        severity = str(brief.severity or "").lower()
        if severity in _SEVERITY_IDS:
            event["severity_id"] = _SEVERITY_IDS[severity]
            event["severity"] = severity.capitalize() if event["severity_id"] else "Unknown"
    return event


def _credential_text(link: ActorAccessLink) -> str:
    cred = link.credential or {}
    return f"{cred.get('kind') or '-'} {cred.get('uid') or '-'}"


class _CaseCache:
    """The few facts the OCSF mapper needs per case, bounded (LRU of ``size`` cases): the case's
    first detection and opening time (``cases.detection``, ``cases.opened_at``, one query per
    case), Cordon's identity from ``guard.passed``, the detections that joined it, and its links
    (:meth:`links`: read for many cases in one query by :meth:`prefetch`, else one query per case
    with a finding; each incident's cases once, in an LRU of its own)."""

    def __init__(self, ledger: Ledger | None, size: int = 256):
        self.ledger = ledger
        self.size = size
        self.data: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.incidents: OrderedDict[str, tuple[list[str], dict[str, CaseBrief], dict[str, str]]] = OrderedDict()
        self.prefetched: dict[str, list[LedgerRecord]] = {}

    def prefetch(self, case_ids: Iterable[str]) -> None:
        """Read the link records (kinds ``_LINK_KINDS``) of the cases among ``case_ids`` whose
        links are not known yet in one query, for :meth:`links` to use (replacing what an earlier
        call read)."""
        if self.ledger is None:
            return
        todo = [c for c in set(case_ids) if c and (c not in self.data or self.data[c].get("links") is None)]
        found = case_records(self.ledger, todo, _LINK_KINDS) if todo else {}
        self.prefetched = {c: found.get(c, []) for c in todo}

    def links(self, case_id: str | None) -> dict[str, Any]:
        """The case's links: ``{because, incident_id, lead_case_id, actor_access: [ActorAccessLink],
        related: [OCSF related_event]}`` (see the module docstring), read from the ledger the first
        time (records of kinds ``_LINK_KINDS``, then the incident's cases, the linked cases'
        ``cases`` rows and ``case.opened`` hashes); without a ledger, what the stream taught."""
        if not case_id:
            return _empty_links()
        item = self.get(case_id)
        links = item.get("links")
        if links is None:
            links = item["links"] = _empty_links()
            if self.ledger is not None:
                if case_id in self.prefetched:
                    records = self.prefetched.pop(case_id)
                else:
                    records = case_records(self.ledger, [case_id], _LINK_KINDS).get(case_id, [])
                for r in records:
                    _learn_link(links, r)
        if links["related"] is None:
            links["related"] = self._related(case_id, links)
        return links

    def learn(self, r: LedgerRecord) -> None:
        """Without a ledger to read, take a case's links from its records as they stream by."""
        if self.ledger is None and r.case_id and r.kind in _LINK_KINDS:
            item = self.get(r.case_id)
            if item.get("links") is None:
                item["links"] = _empty_links()
            _learn_link(item["links"], r)

    def _incident(self, incident_id: str) -> tuple[list[str], dict[str, CaseBrief], dict[str, str]]:
        """``(case IDs, briefs, case.opened hashes)`` of an incident's cases, cached."""
        if incident_id in self.incidents:
            self.incidents.move_to_end(incident_id)
            return self.incidents[incident_id]
        found = incident(self.ledger, incident_id) if self.ledger is not None else None
        ids = [c.case_id for c in found.cases] if found else []
        value = (ids, {c.case_id: c for c in found.cases if c.status is not None} if found else {},
                 opened_hashes(self.ledger, ids) if self.ledger is not None and ids else {})
        self.incidents[incident_id] = value
        if len(self.incidents) > 64:
            self.incidents.popitem(last=False)
        return value

    def _related(self, case_id: str, links: dict[str, Any]) -> list[dict[str, Any]]:
        related: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
        briefs: dict[str, CaseBrief] = {}
        hashes: dict[str, str] = {}
        incident_id, lead = links["incident_id"], links["lead_case_id"]
        if incident_id:
            ids, briefs, hashes = self._incident(incident_id)
            briefs, hashes = dict(briefs), dict(hashes)
            for cid in [*([lead] if lead else []), *ids]:
                if cid and cid != case_id and cid not in related:
                    rel = "incident_lead" if cid == lead else "incident_case"
                    related[cid] = ([rel], [_RELATIONS[rel].format(incident=incident_id)])
        access: list[str] = []
        for link in links["actor_access"]:
            if link.case_id == case_id:
                continue
            rels, descs = related.setdefault(link.case_id, ([], []))
            if link.relation not in rels:
                rels.append(link.relation)
                descs.append(_RELATIONS[link.relation].format(credential=_credential_text(link)))
            if link.case_id not in hashes:
                access.append(link.case_id)
        if access and self.ledger is not None:
            briefs.update(case_briefs(self.ledger, access))
            hashes.update(opened_hashes(self.ledger, access))
        return [_related_event(cid, rels, descs, briefs.get(cid), hashes.get(cid))
                for cid, (rels, descs) in related.items()]

    def get(self, case_id: str | None) -> dict[str, Any]:
        if not case_id:
            return {"detection": {}, "identity": None, "joined": {}, "opened": None}
        if case_id in self.data:
            self.data.move_to_end(case_id)
            return self.data[case_id]
        det: dict[str, Any] = {}
        opened = None
        if self.ledger is not None:
            row = self.ledger.case(case_id)
            if row:
                opened = row.get("opened_at")
                if row.get("detection"):
                    det = json.loads(row["detection"])
        item = {"detection": det, "identity": None, "joined": {}, "opened": opened, "links": None}
        self.data[case_id] = item
        if len(self.data) > self.size:
            self.data.popitem(last=False)
        return item


def to_ocsf(records: Iterable[LedgerRecord], ledger: Ledger | None = None) -> Iterator[str]:
    """OCSF 1.8.0 events as JSON lines (mapping in the module docstring). ``ledger`` is read for
    each case's first detection and opening time (``cases`` row), a bounded LRU of cases at a time."""
    cache = _CaseCache(ledger)
    batch: list[LedgerRecord] = []
    for r in itertools.chain(records, [None]):
        if r is not None:
            batch.append(r)
            if len(batch) < _BATCH:
                continue
        cache.prefetch(b.case_id for b in batch if b.case_id and b.kind in _FINDING_KINDS)
        for b in batch:
            for event in ocsf_events(b, cache):
                yield json.dumps(event, ensure_ascii=False, sort_keys=True, default=str) + "\n"
        batch.clear()


def ocsf_events(r: LedgerRecord, cache: _CaseCache | None = None) -> list[dict[str, Any]]:
    """The OCSF events (possibly none) for one ledger record (see the module docstring)."""
    cache = cache or _CaseCache(None)
    cache.learn(r)
    events = _ocsf_events(r, cache)
    if r.case_id:
        for event in events:
            if event["class_uid"] == DETECTION_FINDING:
                _with_links(event, cache.links(r.case_id))
    return events


def _with_links(event: dict[str, Any], links: dict[str, Any]) -> None:
    """Put a case's links (:meth:`_CaseCache.links`) on one of its Detection Findings."""
    if links["related"]:
        event["finding_info"]["related_events"] = links["related"]
        event["finding_info"]["related_events_count"] = len(links["related"])
    mine = {k: links[k] for k in ("incident_id", "lead_case_id", "because") if links[k]}
    if links["actor_access"]:
        mine["actor_access"] = [{"case_id": a.case_id, "relation": a.relation, "credential": a.credential}
                                for a in links["actor_access"]]
    if mine:
        event.setdefault("unmapped", {}).setdefault("cordon", {}).update(mine)


def _ocsf_events(r: LedgerRecord, cache: _CaseCache) -> list[dict[str, Any]]:
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
                                       message=f"Suppressed: {det['suppressed']}", created=r.ts, alert=False,
                                       extra={"cordon": {"raw_ref": p.get("raw_ref"),
                                                         "suppressed": det["suppressed"]}})]
        return []
    if r.kind == "guard.passed":
        case["identity"] = p.get("cordon_identity")
        return []
    if r.kind == "case.opened":
        det = case["detection"]
        case["opened"] = case["opened"] or r.ts
        return [_detection_finding(r, det, uid=r.case_id or "", activity_id=1, status_id=1, status=None,
                                   message=f"Case {r.case_id} opened; playbook {p.get('playbook') or 'none'}",
                                   created=case["opened"], alert=True,
                                   extra={"cordon": {"case_key": p.get("case_key"),
                                                     "detection_uid": p.get("detection_uid"),
                                                     "playbook": p.get("playbook")}})]
    if r.kind == "case.joined":
        det = case["joined"].get(p.get("detection_uid")) or case["detection"]
        return [_detection_finding(r, det, uid=r.case_id or "", activity_id=2, status_id=2, status=None,
                                   message=f"Detection {p.get('detection_uid')} joined case {r.case_id}",
                                   created=case["opened"] or r.ts,
                                   extra={"cordon": {"detection_uid": p.get("detection_uid"),
                                                     "duplicate": p.get("duplicate")}})]
    if r.kind == "case.closed":
        status = str(p.get("status"))
        contained = status == "contained"
        return [_detection_finding(r, case["detection"], uid=r.case_id or "", activity_id=3,
                                   status_id=4 if contained else 99, status=status,
                                   message=f"Case {r.case_id} closed: {status}",
                                   created=case["opened"] or r.ts, alert=False,
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
