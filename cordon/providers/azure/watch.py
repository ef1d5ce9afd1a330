"""Use of a contained Entra credential after containment, from the Entra sign-in log (issue 14,
item 2), for the watch of :mod:`cordon.watch`.

Microsoft Graph ``GET /auditLogs/signIns`` (List signIns,
https://learn.microsoft.com/graph/api/signin-list?view=graph-rest-beta; signIn resource,
https://learn.microsoft.com/graph/api/resources/signin?view=graph-rest-beta). Without an event-type
filter the list holds interactive user sign-ins only; service-principal and non-interactive
sign-ins, the ``signInEventTypes`` property that filters them and
``servicePrincipalCredentialKeyId`` (which secret or certificate a service principal signed in
with) exist on the **beta** endpoint only, so the beta endpoint is asked (through msgraph-sdk's
request builder ``with_url``; the beta-only properties arrive in the model's ``additional_data``).
Tenants without Entra ID P1/P2 get 403 (raised: the watch records ``watch.failed``). Sign-ins
reach the log within minutes, not at once.

By the credential's kind, with ``createdDateTime ge <since>``:

* ``azure_sp_password`` / ``azure_sp_key`` (a secret or certificate): the owner's service-principal
  sign-ins (``servicePrincipalId eq`` for a service principal, ``appId eq`` for an application:
  ``credential.attributes.appId``, else read from Graph) with
  ``signInEventTypes/any(t: t eq 'servicePrincipal')``, kept when ``servicePrincipalCredentialKeyId``
  is the credential's keyId;
* ``azure_sp_sign_in`` (the service principal an actor signed in as, disabled) and
  ``azure_service_principal`` (a created service principal, disabled): every service-principal
  sign-in of it;
* ``azure_user_sessions`` (a user's sessions, revoked) and ``azure_user`` (a created user): the
  user's interactive and non-interactive sign-ins (``userId eq``).

Failed sign-ins are kept too (``succeeded`` false, ``error_code``): a disabled service principal or a
revoked refresh token still being presented is someone trying. Other kinds are not searched
(``None``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

#: kinds searched -> which sign-ins
SP_KINDS = frozenset({"azure_sp_password", "azure_sp_key"})
SP_SIGN_IN_KINDS = frozenset({"azure_sp_sign_in", "azure_service_principal"})
USER_KINDS = frozenset({"azure_user_sessions", "azure_user"})

SERVICE_PRINCIPAL_EVENTS = "signInEventTypes/any(t: t eq 'servicePrincipal')"
USER_EVENTS = "signInEventTypes/any(t: t eq 'interactiveUser' or t eq 'nonInteractiveUser')"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value) if value is not None else None


def _odata_time(dt: datetime) -> str:
    """An OData ``DateTimeOffset`` literal in UTC, whole seconds (``2024-05-01T10:00:00Z``)."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_in_filter(detection: Any, since: datetime, clients: Any) -> tuple[str, str | None] | None:
    """``($filter, keyId to keep or None)`` for ``detection``'s credential, or ``None`` for a kind
    not searched (module docstring). Reads the application's ``appId`` from Graph when a secret on an
    application object does not carry it."""
    cred = detection.credential
    if cred is None or not cred.uid:
        return None
    after = f"createdDateTime ge {_odata_time(since)}"
    if cred.kind in USER_KINDS:
        return f"userId eq '{cred.uid}' and {after} and {USER_EVENTS}", None
    if cred.kind in SP_SIGN_IN_KINDS:
        return f"servicePrincipalId eq '{cred.uid}' and {after} and {SERVICE_PRINCIPAL_EVENTS}", None
    if cred.kind not in SP_KINDS or cred.owner is None or not cred.owner.uid:
        return None
    otype = str(cred.attributes.get("objectType") or cred.owner.type or "ServicePrincipal")
    if otype.lower() == "application":
        app_id = cred.attributes.get("appId") or _application_app_id(clients, cred.owner.uid)
        if not app_id:
            return None
        who = f"appId eq '{app_id}'"
    else:
        who = f"servicePrincipalId eq '{cred.owner.uid}'"
    return f"{who} and {after} and {SERVICE_PRINCIPAL_EVENTS}", str(cred.uid).lower()


def _application_app_id(clients: Any, object_id: str) -> str | None:
    from cordon.providers.azure.actions import odata_status

    try:
        app = clients.run(clients("graph").applications.by_application_id(object_id).get())
    except Exception as err:
        if odata_status(err) == 404:
            return None
        raise
    return getattr(app, "app_id", None)


def _plain(value: Any) -> Any:
    """A value kiota parsed from an untyped property (``additional_data``: GUID text becomes a
    ``UUID``, a time a ``datetime``) as JSON text again; lists item by item."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _row(s: Any) -> dict[str, Any]:
    extra = {k: _plain(v) for k, v in (getattr(s, "additional_data", None) or {}).items()}
    status = getattr(s, "status", None)
    code = getattr(status, "error_code", None)
    types = extra.get("signInEventTypes") or []
    location = getattr(s, "location", None)
    where = None
    if location is not None:
        where = ", ".join(x for x in (getattr(location, "city", None), getattr(location, "country_or_region", None))
                          if x) or None
    return {"event_id": s.id, "event_name": "Sign-in (" + ", ".join(map(str, types)) + ")" if types else "Sign-in",
            "event_time": _iso(s.created_date_time), "source_ip": s.ip_address,
            "app_id": s.app_id, "app_display_name": s.app_display_name,
            "service_principal_id": s.service_principal_id or extra.get("servicePrincipalId"),
            "user_id": s.user_id, "user_principal_name": s.user_principal_name,
            "credential_key_id": extra.get("servicePrincipalCredentialKeyId"),
            "resource": s.resource_display_name, "location": where,
            "error_code": code, "succeeded": code == 0, "failure_reason": getattr(status, "failure_reason", None)}


def credential_usage(detection: Any, since: datetime, clients: Any, *, limit: int = 200) -> list[dict[str, Any]] | None:
    """Entra sign-ins after ``since`` (an aware datetime: when the case was contained) with
    ``detection``'s credential (a :class:`cordon.detections.model.Detection`), newest first:
    ``[{event_id, event_name, event_time (ISO 8601), source_ip, app_id, app_display_name,
    service_principal_id, user_id, user_principal_name, credential_key_id, resource, location,
    error_code, succeeded, failure_reason}]``, at most ``limit``; ``None`` for a kind not searched
    (module docstring). ``clients`` is the case's Azure client factory (``clients("graph")``,
    ``clients.run(coro)``). Follows ``@odata.nextLink``. Raises msgraph's ``ODataError`` (403 for a
    tenant without P1/P2 or without ``AuditLog.Read.All``) or the transport's error."""
    found = sign_in_filter(detection, since, clients)
    if found is None:
        return None
    flt, key_id = found
    from cordon.providers.azure.actions import beta_sign_ins_url

    graph = clients("graph")
    url: str | None = beta_sign_ins_url(graph, flt, min(limit, 1000))
    out: list[dict[str, Any]] = []
    while url and len(out) < limit:
        page = clients.run(graph.audit_logs.sign_ins.with_url(url).get())
        for s in getattr(page, "value", None) or []:
            row = _row(s)
            if key_id and str(row["credential_key_id"] or "").lower() != key_id:
                continue
            out.append(row)
        url = getattr(page, "odata_next_link", None)
    out.sort(key=lambda r: r["event_time"] or "", reverse=True)
    return out[:limit]


__all__ = ["SERVICE_PRINCIPAL_EVENTS", "USER_EVENTS", "credential_usage", "sign_in_filter"]
