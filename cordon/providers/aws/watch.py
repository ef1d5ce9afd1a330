"""Use of a contained AWS credential after containment, from CloudTrail (issue 14, item 2: "watch
CloudTrail for 30 minutes after", as AWS's incident-response playbooks ask).

``LookupEvents`` (https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html,
one lookup attribute per call, management events of the last 90 days, eventually consistent: an
event is typically searchable about 5 minutes after the call) is asked, for the credential's kind:

* ``aws_access_key``: ``AccessKeyId`` = the key: any call signed with it (a call with an inactive or
  deleted key fails authentication and is not delivered with that key; a call that is, is a use);
* ``aws_login_profile``: ``Username`` = the user, kept when ``eventName`` is ``ConsoleLogin`` (a
  console sign-in with the password created in the case);
* ``aws_iam_user``: ``Username`` = the user: anything the quarantined backdoor user did.

Other kinds are not searched (``None``): their verification is the state read again.

CloudTrail's ``eventTime`` has whole seconds, so the search starts at the second containment happened
in (``since`` rounded down): a call in that same second cannot be ordered against the containment,
and the watch errs toward raising it rather than missing it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

#: credential kind -> (lookup attribute, the detection's field holding its value, eventName kept or None)
SEARCHES: dict[str, tuple[str, str, str | None]] = {
    "aws_access_key": ("AccessKeyId", "credential.uid", None),
    "aws_login_profile": ("Username", "credential.owner.name", "ConsoleLogin"),
    "aws_iam_user": ("Username", "credential.uid", None),
}


def _value(detection: Any, path: str) -> str | None:
    obj: Any = detection
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return str(obj)


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value) if value is not None else None


def credential_usage(detection: Any, since: datetime, clients: Any, *, limit: int = 200) -> list[dict[str, Any]] | None:
    """CloudTrail events after ``since`` (an aware datetime: when the case was contained) that used
    ``detection``'s credential (a :class:`cordon.detections.model.Detection`), newest first:
    ``[{event_id, event_name, event_time (ISO 8601), event_source, source_ip, user_agent,
    access_key_id, username}]``, at most ``limit``; ``None`` for a kind not searched (module
    docstring). ``clients`` is the case's client factory (``clients("cloudtrail", region=...)``).
    Raises botocore's ``ClientError`` / ``BotoCoreError`` when CloudTrail refuses or is unreachable."""
    cred = detection.credential
    if cred is None or cred.kind not in SEARCHES:
        return None
    key, path, only = SEARCHES[cred.kind]
    value = _value(detection, path)
    if not value:
        return None
    client = clients("cloudtrail", region=detection.region)
    pages = client.get_paginator("lookup_events").paginate(
        LookupAttributes=[{"AttributeKey": key, "AttributeValue": value}], StartTime=since.replace(microsecond=0))
    out: list[dict[str, Any]] = []
    for page in pages:
        for ev in page.get("Events", []):
            if only and ev.get("EventName") != only:
                continue
            raw = json.loads(ev["CloudTrailEvent"]) if ev.get("CloudTrailEvent") else {}
            out.append({"event_id": ev.get("EventId"), "event_name": ev.get("EventName"),
                        "event_time": _iso(ev.get("EventTime")),
                        "event_source": ev.get("EventSource") or raw.get("eventSource"),
                        "source_ip": raw.get("sourceIPAddress"), "user_agent": raw.get("userAgent"),
                        "access_key_id": ev.get("AccessKeyId"), "username": ev.get("Username")})
            if len(out) >= limit:
                return out
    return out
