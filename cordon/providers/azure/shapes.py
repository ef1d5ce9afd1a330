"""Which Entra ID / Azure record shape a bare record has (called by
:func:`cordon.detections.intake.classify`).

Entra audit (``entra_audit``): the Microsoft Graph ``directoryAudit`` resource
(https://learn.microsoft.com/graph/api/resources/directoryaudit), i.e. ``activityDisplayName``
with ``initiatedBy`` or ``targetResources`` at the top; or the Azure Monitor diagnostic form
(Azure Monitor audit log schema,
https://learn.microsoft.com/entra/identity/monitoring-health/reference-azure-monitor-audit-log-schema):
``operationName`` and a ``properties`` object, with ``category`` ``AuditLogs`` or
``properties.activityDisplayName`` / ``initiatedBy`` / ``targetResources`` (Panther's test logs
sometimes put the Graph category, ``ApplicationManagement``, at the top: accepted).

Entra sign-in (``entra_signin``): ``category`` ``SignInLogs`` (or the non-interactive, service
principal, managed identity and ADFS sign-in categories), or the Graph ``signIn`` resource
(``createdDateTime``, ``appDisplayName``, ``status``). Sign-ins create no credential: they are
recognised so that a mixed diagnostic export is not dead-lettered, and the pipeline yields
nothing for them.

Azure Activity Log (``azure_activity``; Activity Log event schema,
https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema): ``operationName``
(a string, or ``{"value": ...}`` as the REST API writes it), ``resourceId`` and ``eventTimestamp``
or ``time``, when not an Entra record.

Only presence is checked here; field types are validated by the parsers.
"""

from __future__ import annotations

from typing import Any

#: How the dead-letter reason describes the shapes recognised here.
SHAPES = ("an Entra audit record (activityDisplayName with initiatedBy or targetResources, or operationName "
          "with properties.activityDisplayName / initiatedBy / targetResources), an Entra sign-in record "
          "(category SignInLogs, or createdDateTime with appDisplayName and status), or an Azure Activity Log "
          "event (operationName, resourceId and eventTimestamp or time)")

#: Azure Monitor diagnostic categories of Entra sign-in logs (not credential events; see ``classify``).
_SIGNIN_CATEGORIES = {
    "signinlogs",
    "noninteractiveusersigninlogs",
    "serviceprincipalsigninlogs",
    "managedidentitysigninlogs",
    "adfssigninlogs",
}
_ENTRA_KEYS = ("activityDisplayName", "initiatedBy", "targetResources")


def classify(record: dict[str, Any]) -> str | None:
    """``entra_audit``, ``entra_signin``, ``azure_activity`` or ``None`` (see the module docstring)."""
    if "activityDisplayName" in record and ("initiatedBy" in record or "targetResources" in record):
        return "entra_audit"
    category = record.get("category")
    category_value = category.get("value") if isinstance(category, dict) else category
    props = record.get("properties")
    if isinstance(category_value, str) and category_value.lower() in _SIGNIN_CATEGORIES:
        return "entra_signin"
    if "createdDateTime" in record and "appDisplayName" in record and "status" in record:
        return "entra_signin"
    operation = record.get("operationName")
    if operation is None:
        return None
    if isinstance(props, dict) and (
        category_value == "AuditLogs" or any(k in props for k in _ENTRA_KEYS)
    ):
        return "entra_audit"
    has_value = isinstance(operation, str) or (isinstance(operation, dict) and "value" in operation)
    if has_value and "resourceId" in record and ("eventTimestamp" in record or "time" in record):
        return "azure_activity"
    return None
