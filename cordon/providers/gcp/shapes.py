"""Which Google Cloud record shape a bare record has (called by :func:`cordon.detections.intake.classify`).

Google Cloud Audit Log entry (``gcp_audit``; ``LogEntry``,
https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry, with an ``AuditLog``
payload, https://cloud.google.com/logging/docs/reference/audit/auditlog/rest/Shared.Types/AuditLog):
a ``protoPayload`` object whose ``@type`` (Panther's normalised logs: ``at_sign_type``) is
``type.googleapis.com/google.cloud.audit.AuditLog``; or, when it has no ``@type`` at all
(hand-written test logs), a ``protoPayload`` with ``methodName`` or ``serviceName`` plus one of
``logName``, ``resource``, ``timestamp``, ``receiveTimestamp``. A ``protoPayload`` of another
``@type`` (App Engine request logs, ...) is not recognised.

Security Command Center finding (``gcp_scc``; Finding,
https://cloud.google.com/security-command-center/docs/reference/rest/v1/organizations.sources.findings):
an object with a ``finding`` object (a notification ``{"notificationConfigName", "finding",
"resource"}``, a ``ListFindings`` result ``{"finding", "resource"}``, or ``{"finding"}`` alone),
or a bare finding: ``name`` of the form ``organizations/O/sources/S/findings/F`` (also
``folders/`` / ``projects/`` parents and ``/locations/L/``) and a ``category``.

Google SecOps (Chronicle) detection object (``chronicle``; :mod:`cordon.providers.gcp.chronicle`):
``type`` ``RULE_DETECTION`` / ``GCTI_FINDING`` with ``id`` and ``detection``; a
``legacySearchDetections`` page ``{"detections": [...]}`` is unpacked (:func:`unpack`).

Only presence is checked here; field types are validated by the parsers.
"""

from __future__ import annotations

import re
from typing import Any

#: How the dead-letter reason describes the shapes recognised here.
SHAPES = ("a Google Cloud Audit Log entry (protoPayload with @type google.cloud.audit.AuditLog), a Security "
          "Command Center finding (finding, or name .../sources/S/findings/F with category), a Google SecOps "
          "detection (type RULE_DETECTION / GCTI_FINDING with id and detection)")

#: ``@type`` of a Cloud Audit Log ``protoPayload`` (Panther writes it as ``at_sign_type``).
_AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
_LOG_ENTRY_KEYS = ("logName", "resource", "timestamp", "receiveTimestamp")
#: SCC finding resource name: organizations|folders|projects/X/sources/S[/locations/L]/findings/F.
_SCC_FINDING_NAME = re.compile(
    r"^(organizations|folders|projects)/[^/]+/sources/[^/]+(/locations/[^/]+)?/findings/[^/]+$"
)


def unpack(record: dict[str, Any]) -> list[Any] | None:
    """The detection objects of a Chronicle ``{"detections": [...]}`` page, else ``None``."""
    from cordon.providers.gcp.chronicle import chronicle_records, is_detection

    items = record.get("detections")
    if isinstance(items, list) and items and any(is_detection(i) for i in items):
        return chronicle_records(record)
    if items == [] and set(record) <= _PAGE_KEYS:  # an empty page: nothing to read, nothing to reject
        return []
    return None


#: The keys of a detections page (``legacySearchDetections``; the stream's batches)
_PAGE_KEYS = {"detections", "nextPageToken", "moreDataAvailable", "continuationTime", "respTooLargeDetections"}


def classify(record: dict[str, Any]) -> str | None:
    """``gcp_audit``, ``gcp_scc``, ``chronicle`` or ``None`` (see the module docstring). A
    ``protoPayload`` of another ``@type`` is claimed as unrecognised: ``False`` stops the search there."""
    from cordon.providers.gcp.chronicle import is_detection

    if is_detection(record):
        return "chronicle"
    payload = record.get("protoPayload")
    if isinstance(payload, dict):
        ptype = payload.get("@type", payload.get("at_sign_type"))
        if ptype == _AUDIT_LOG_TYPE:
            return "gcp_audit"
        if (
            ptype is None
            and ("methodName" in payload or "serviceName" in payload)
            and any(k in record for k in _LOG_ENTRY_KEYS)
        ):
            return "gcp_audit"
        return None
    finding = record.get("finding")
    if isinstance(finding, dict) and _is_scc_finding(finding):
        return "gcp_scc"
    if _is_scc_finding(record):
        return "gcp_scc"
    return None


def claims(record: dict[str, Any]) -> bool:
    """Whether the record is a Cloud Logging entry (a ``protoPayload``) even when not an audit log:
    no other provider's shape is tried on it."""
    return isinstance(record.get("protoPayload"), dict)


def _is_scc_finding(obj: dict[str, Any]) -> bool:
    name = obj.get("name")
    return isinstance(name, str) and "category" in obj and _SCC_FINDING_NAME.match(name) is not None
