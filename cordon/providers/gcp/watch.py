"""Use of a contained service-account key after containment, from Cloud Audit Logs (issue 14,
item 2), for the watch of :mod:`cordon.watch`.

Cloud Logging API v2 ``entries.list`` (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list;
filter syntax: the Logging query language, https://cloud.google.com/logging/docs/view/logging-query-language)
through google-api-python-client (``clients("logging", "v2")``), with

    protoPayload.authenticationInfo.serviceAccountKeyName:"KEY_ID" AND timestamp>="SINCE"

(``:`` is the "has" operator: the key's ID inside the logged full name
``//iam.googleapis.com/projects/P/serviceAccounts/SA/keys/KEY_ID``; each entry found is checked to
name exactly that key), ``orderBy: "timestamp desc"``, over the key's project and the detection's
(``resourceNames``), following ``nextPageToken``. Admin Activity audit logs are always written;
Data Access logs (reads) only where they are enabled, so a key used only to read data may not show.
A call with a disabled key fails authentication and is not logged with the key; an entry that is, is
a use (the key was enabled again, or the entry is from before the disable took effect). Use in
another project than those two is not searched. Other credential kinds are not searched (``None``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from cordon.providers.gcp.clients import NUM_RETRIES
from cordon.providers.gcp.detections import _KEY_NAME

_KEY_UID = re.compile(r"^projects/([^/]+)/serviceAccounts/([^/]+)/keys/([^/]+)$")


def _rfc3339(dt: datetime) -> str:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key_filter(key_id: str, since: datetime) -> str:
    """The Logging query for calls signed with key ``key_id`` at or after ``since``."""
    return (f'protoPayload.authenticationInfo.serviceAccountKeyName:"{key_id}" '
            f'AND timestamp>="{_rfc3339(since)}"')


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    pp = entry.get("protoPayload") or {}
    auth = pp.get("authenticationInfo") or {}
    meta = pp.get("requestMetadata") or {}
    return {"event_id": entry.get("insertId"), "event_name": pp.get("methodName"),
            "event_time": entry.get("timestamp"), "event_source": pp.get("serviceName"),
            "source_ip": meta.get("callerIp") or meta.get("callerIP"),
            "user_agent": meta.get("callerSuppliedUserAgent"), "principal_email": auth.get("principalEmail"),
            "key_name": auth.get("serviceAccountKeyName"), "resource_name": pp.get("resourceName"),
            "log_name": entry.get("logName"), "status_code": (pp.get("status") or {}).get("code", 0)}


def credential_usage(detection: Any, since: datetime, clients: Any, *, limit: int = 200) -> list[dict[str, Any]] | None:
    """Cloud Audit Log entries after ``since`` (an aware datetime: when the case was contained) of
    calls signed with ``detection``'s service-account key (credential kind ``gcp_sa_key``, uid
    ``projects/P/serviceAccounts/SA/keys/KEY_ID``), newest first: ``[{event_id (insertId),
    event_name (methodName), event_time (timestamp), event_source (serviceName), source_ip,
    user_agent, principal_email, key_name, resource_name, log_name, status_code}]``, at most
    ``limit``; ``None`` for another kind (module docstring). ``clients`` is the case's GCP client
    factory. Raises googleapiclient's ``HttpError`` (403 without ``logging.logEntries.list``)."""
    cred = detection.credential
    m = _KEY_UID.match(cred.uid or "") if cred is not None and cred.kind == "gcp_sa_key" else None
    if m is None:
        return None
    key_project, _account, key_id = m.groups()
    projects = [p for p in dict.fromkeys((key_project, detection.account_uid)) if p and p != "-"]
    if not projects:
        return None
    body: dict[str, Any] = {"resourceNames": [f"projects/{p}" for p in projects], "filter": key_filter(key_id, since),
                            "orderBy": "timestamp desc", "pageSize": min(limit, 1000)}
    entries = clients("logging", "v2").entries()
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        page = entries.list(body=body).execute(num_retries=NUM_RETRIES)
        for entry in page.get("entries") or []:
            logged = _KEY_NAME.match(((entry.get("protoPayload") or {}).get("authenticationInfo") or {})
                                     .get("serviceAccountKeyName") or "")
            if logged is None or logged.group(3) != key_id:
                continue  # "has" matched the ID inside another name: not this key
            out.append(_row(entry))
        token = page.get("nextPageToken")
        if not token:
            break
        body = {**body, "pageToken": token}
    out.sort(key=lambda r: r["event_time"] or "", reverse=True)
    return out[:limit]


__all__ = ["credential_usage", "key_filter"]
