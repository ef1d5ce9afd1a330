"""Microsoft Azure: Entra ID directory audit records and Azure Activity Log events matched by a Sigma
rule, normalised to :class:`Detection`.

Entra audit records come in two shapes, both read here:

* the Microsoft Graph ``directoryAudit`` resource
  (https://learn.microsoft.com/graph/api/resources/directoryaudit): ``activityDisplayName``,
  ``activityDateTime``, ``category``, ``loggedByService``, ``operationType``, ``result``
  (``success`` / ``failure`` / ``timeout``), ``initiatedBy`` (``user``: ``id``,
  ``userPrincipalName``, ``displayName``, ``ipAddress``; ``app``: ``appId``, ``displayName``,
  ``servicePrincipalId``), ``targetResources[]`` (``id``, ``displayName``, ``type``,
  ``userPrincipalName``, ``modifiedProperties[]`` of ``{displayName, oldValue, newValue}`` whose
  values are JSON-encoded text), ``additionalDetails[]`` (``{key, value}``);
* the Azure Monitor diagnostic-settings form (Event Hub, storage, Log Analytics export; "Azure
  Monitor audit log schema", https://learn.microsoft.com/entra/identity/monitoring-health/
  reference-azure-monitor-audit-log-schema): ``time``, ``operationName``, ``category``
  (``AuditLogs``), ``tenantId``, ``resourceId``, ``resultType``, ``callerIpAddress`` and a
  ``properties`` object holding the ``directoryAudit`` fields above.

**Normalisation for matching.** Sigma rules for ``product: azure, service: auditlogs`` are evaluated
on :func:`entra_match_view`, the Graph ``directoryAudit`` shape whatever the input form, so a rule
names ``activityDisplayName``, ``result``, ``targetResources.type``,
``targetResources.modifiedProperties.displayName`` once. The view also carries ``operationName``
(the diagnostic field, else ``activityDisplayName``), ``tenantId`` and ``properties`` (the same
Graph-shaped object), so rules written against the diagnostic form (``properties.activityDisplayName``)
match too. Activity Log events (``service: activitylogs``) are evaluated on
:func:`activity_match_view`, the Activity Log event schema as the REST API and the portal write it
(https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema):
``operationName.value``, ``status.value`` (``Succeeded`` / ``Failed`` / ``Started`` /
``Accepted``), ``category.value``, ``caller``, ``eventTimestamp``, ``resourceId``,
``subscriptionId``, ``claims``, ``authorization``, ``httpRequest.clientIpAddress``, ``properties``;
events in the storage / Event Hub form (``operationName`` a string, ``resultType``, ``time``,
``identity.claims``, ``identity.authorization``, ``callerIpAddress``) are mapped with the schema's
own mapping table (``resultType`` ``Success`` becomes ``status.value`` ``Succeeded``, ``Failure``
``Failed``, ``Start`` ``Started``, ``Accept`` ``Accepted``). The parsers read the raw record and
name raw dotted paths (``properties.targetResources[0].modifiedProperties``) in their errors.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from cordon.detections.cloudtrail import RecordFields, SigmaMatchLike, detection_uid, severity_label, type_name
from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256

#: ATT&CK techniques used when the matching rule carries none, by Cordon's activity label.
FALLBACK_TECHNIQUES: dict[str, list[str]] = {
    "sp_credential": ["T1098.001"],
    "federated_credential": ["T1098.001"],
    "service_principal": ["T1136.003"],
    "application": ["T1136.003"],
    "user": ["T1136.003"],
    "directory_role": ["T1098.003"],
    "app_role_assignment": ["T1098.003"],
    "owner": ["T1098"],
    "elevate_access": ["T1098.003"],
    "role_assignment": ["T1098.003"],
    "keyvault_secret": ["T1098.001"],
    "managed_identity": ["T1136.003"],
}

#: Built-in Azure RBAC role definitions whose assignment Cordon treats as persistence / escalation
#: (Azure built-in roles reference). Assigning any other known role definition is recognised but
#: suppressed; an assignment whose role definition the record does not name is not suppressed.
PRIVILEGED_ROLE_DEFINITIONS: dict[str, str] = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
    "fb1c8493-542b-48eb-b624-b4c8fea62acd": "Security Admin",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
}

_DASHES = re.compile(r"\s*[\u2013\u2014\u2012-]\s*")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TENANT_RESOURCE = re.compile(r"^/tenants/([^/]+)/", re.IGNORECASE)
_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_ROLE_ASSIGNMENT_ID = re.compile(r"/providers/Microsoft\.Authorization/roleAssignments/[^/]+$", re.IGNORECASE)
_KEY_FIELD = re.compile(r"(KeyIdentifier|KeyType|KeyUsage|DisplayName)=")

#: Entra ``activityDisplayName`` (lower case, dashes normalised to "-") -> Cordon's activity label.
ENTRA_ACTIVITIES: dict[str, str] = {
    "add service principal credentials": "sp_credential",
    "update application - certificates and secrets management": "sp_credential",
    "add service principal": "service_principal",
    "add application": "application",
    "add user": "user",
    "add member to role": "directory_role",
    "add eligible member to role": "directory_role",
    "add scoped member to role": "directory_role",
    "add member to role in pim completed (permanent)": "directory_role",
    "add member to role in pim completed (timebound)": "directory_role",
    "add app role assignment to service principal": "app_role_assignment",
    "add owner to application": "owner",
    "add owner to service principal": "owner",
    "update application": "federated_credential",
    "user has elevated their access to user access administrator for their azure resources": "elevate_access",
}

#: Activity Log ``operationName`` (lower case) -> Cordon's activity label.
ACTIVITY_OPERATIONS: dict[str, str] = {
    "microsoft.authorization/roleassignments/write": "role_assignment",
    "microsoft.authorization/elevateaccess/action": "elevate_access",
    "microsoft.keyvault/vaults/secrets/write": "keyvault_secret",
    "microsoft.managedidentity/userassignedidentities/write": "managed_identity",
}

_RESULT_TYPE_TO_STATUS = {"success": "Succeeded", "failure": "Failed", "start": "Started", "accept": "Accepted"}


def entra_activity_key(name: str) -> str:
    """``activityDisplayName`` lower-cased, with any en dash, em dash or hyphen (and the spaces
    around it) written `` - ``: "Update application – Certificates and secrets management" and
    "Update application - Certificates and secrets management" give the same key."""
    return _DASHES.sub(" - ", name.strip()).lower()


class _Fields(RecordFields):
    def first(self, paths: list[str], kind: type | tuple[type, ...]) -> tuple[str, Any]:
        for path in paths:
            value = self.get(path, kind)
            if value is not None and value != "":
                return path, value
        return paths[0], None

    def value(self, paths: list[str], kind: type | tuple[type, ...]) -> Any:
        return self.first(paths, kind)[1]


def _graph_prefix(record: dict[str, Any]) -> str:
    """``"properties."`` for the Azure Monitor diagnostic form, ``""`` for the Graph shape."""
    if "activityDisplayName" in record or "initiatedBy" in record or "targetResources" in record:
        return ""
    return "properties." if isinstance(record.get("properties"), dict) else ""


# -- match views -------------------------------------------------------------------------------


def entra_match_view(record: dict[str, Any]) -> dict[str, Any]:
    """The Graph ``directoryAudit`` shape of an Entra audit record, for Sigma matching.

    A Graph record is returned as a copy plus ``operationName`` (= ``activityDisplayName``) and
    ``properties`` (the Graph fields again). A diagnostic record gives its ``properties`` fields
    at the top, then ``operationName``, ``tenantId``, ``time``, ``resourceId``,
    ``callerIpAddress`` from the top level; ``activityDisplayName`` falls back to
    ``operationName``, ``result`` to the top-level ``result`` / ``resultType``; ``category`` is the
    Graph category (``ApplicationManagement``, ...), the diagnostic ``AuditLogs`` kept as
    ``logCategory``. Never raises; values are not type-checked (the parser does that).
    """
    if _graph_prefix(record) == "":
        graph = {k: v for k, v in record.items() if k != "properties"}
        view = dict(graph)
        view.setdefault("operationName", record.get("activityDisplayName"))
    else:
        props = record["properties"]
        graph = dict(props)
        graph.setdefault("activityDisplayName", record.get("operationName"))
        if "result" not in graph:
            result = record.get("result", record.get("resultType"))
            if result is not None:
                graph["result"] = result
        if props.get("category") is None and record.get("category") not in (None, "AuditLogs"):
            graph["category"] = record.get("category")
        view = dict(graph)
        for key in ("operationName", "tenantId", "time", "resourceId", "callerIpAddress"):
            if key in record:
                view[key] = record[key]
        view["logCategory"] = record.get("category")
    view["properties"] = graph
    return view


def activity_match_view(record: dict[str, Any]) -> dict[str, Any]:
    """The Activity Log event schema (REST form) of an Activity Log record, for Sigma matching.

    ``operationName``, ``status``, ``subStatus``, ``category`` become ``{"value": ...}`` objects;
    a storage / Event Hub record's ``resultType`` becomes ``status.value`` (``Success`` ->
    ``Succeeded``, ``Failure`` -> ``Failed``, ``Start`` -> ``Started``, ``Accept`` -> ``Accepted``),
    ``resultSignature`` ``subStatus.value``, ``time`` ``eventTimestamp``, ``identity.claims`` /
    ``identity.authorization`` ``claims`` / ``authorization``, ``callerIpAddress``
    ``httpRequest.clientIpAddress``; ``caller`` falls back to the claims' UPN, ``name``, ``appid``;
    ``subscriptionId`` to the ``/subscriptions/<id>`` of ``resourceId``. Never raises.
    """
    view = dict(record)

    def wrap(key: str, value: Any) -> None:
        if value is None:
            return
        view[key] = value if isinstance(value, dict) else {"value": value, "localizedValue": value}

    wrap("operationName", record.get("operationName"))
    wrap("category", record.get("category"))
    status = record.get("status")
    if status is None and isinstance(record.get("resultType"), str):
        status = _RESULT_TYPE_TO_STATUS.get(record["resultType"].lower(), record["resultType"])
    wrap("status", status)
    wrap("subStatus", record.get("subStatus", record.get("resultSignature")))
    identity = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    if "claims" not in view and isinstance(identity.get("claims"), dict):
        view["claims"] = identity["claims"]
    if "authorization" not in view and isinstance(identity.get("authorization"), dict):
        view["authorization"] = identity["authorization"]
    view.setdefault("eventTimestamp", record.get("time"))
    if "httpRequest" not in view and record.get("callerIpAddress") is not None:
        view["httpRequest"] = {"clientIpAddress": record["callerIpAddress"]}
    claims = view.get("claims") if isinstance(view.get("claims"), dict) else {}
    if view.get("caller") is None:
        view["caller"] = (
            claims.get("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn")
            or claims.get("name")
            or claims.get("appid")
        )
    if view.get("subscriptionId") is None and isinstance(record.get("resourceId"), str):
        m = _SUBSCRIPTION.match(record["resourceId"])
        if m:
            view["subscriptionId"] = m.group(1)
    return view


# -- shared pieces -----------------------------------------------------------------------------


def _rule(match: SigmaMatchLike) -> RuleRef:
    return RuleRef(
        type="sigma",
        uid=getattr(match, "id", None),
        name=getattr(match, "title", None),
        path=str(match.path) if getattr(match, "path", None) is not None else None,
    )


def _techniques(match: SigmaMatchLike, label: str | None) -> list[str]:
    techniques = list(getattr(match, "technique_ids", None) or [])
    if not techniques and label:
        techniques = list(FALLBACK_TECHNIQUES.get(label, []))
    return techniques


def _json_text(value: Any) -> Any:
    """A ``modifiedProperties`` value: JSON-encoded text decoded (``"\\"x\\""`` -> ``"x"``,
    ``"[\\"a\\"]"`` -> ``["a"]``); text that is not JSON is returned as is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _as_list(value: Any) -> list[Any]:
    value = _json_text(value)
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


# -- Entra audit -------------------------------------------------------------------------------


class _Entra:
    """Reads of one Entra audit record in either shape; paths are raw dotted paths."""

    def __init__(self, record: dict[str, Any], origin: str, position: int):
        self.f = _Fields(record, origin, position)
        self.p = _graph_prefix(record)
        if self.p:
            self.f.get("properties", dict, required=True)
        self.record = record

    def targets(self) -> list[tuple[str, dict[str, Any]]]:
        path = f"{self.p}targetResources"
        items = self.f.get(path, list) or []
        out = []
        for i, item in enumerate(items):
            base = f"{path}[{i}]"
            if not isinstance(item, dict):
                raise self.f.error(base, f"expected an object, got {type_name(item)}")
            for key in ("id", "displayName", "type", "userPrincipalName"):
                self.f.get(key, str, base=item, prefix=base)
            out.append((base, item))
        return out

    def modified(self, base: str, target: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
        """``(path, displayName, oldValue decoded, newValue decoded)`` of a target's modifiedProperties."""
        path = f"{base}.modifiedProperties"
        items = self.f.get("modifiedProperties", list, base=target, prefix=base) or []
        out = []
        for i, item in enumerate(items):
            ibase = f"{path}[{i}]"
            if not isinstance(item, dict):
                raise self.f.error(ibase, f"expected an object, got {type_name(item)}")
            name = self.f.get("displayName", str, base=item, prefix=ibase) or ""
            out.append((ibase, name, _json_text(item.get("oldValue")), _json_text(item.get("newValue"))))
        return out

    def additional(self) -> dict[str, Any]:
        items = self.f.get(f"{self.p}additionalDetails", list) or []
        return {i.get("key"): i.get("value") for i in items if isinstance(i, dict) and isinstance(i.get("key"), str)}


def _principal(target: dict[str, Any], tenant: str | None) -> Principal:
    ptype = target.get("type")
    if isinstance(ptype, str) and ptype.replace(" ", "").lower() == "serviceprincipal":
        ptype = "ServicePrincipal"
    return Principal(
        uid=target.get("id") or None,
        name=target.get("userPrincipalName") or target.get("displayName") or None,
        type=ptype,
        account_uid=tenant,
    )


def _entra_actor(e: _Entra, tenant: str | None, user_agent: str | None) -> Actor:
    f, p = e.f, e.p
    ib = f"{p}initiatedBy"
    f.get(ib, dict)
    user = f.get(f"{ib}.user", dict)
    app = f.get(f"{ib}.app", dict)
    src_ip = None
    if user:
        for key in ("id", "userPrincipalName", "displayName", "ipAddress"):
            f.get(f"{ib}.user.{key}", str)
        principal = Principal(
            uid=user.get("id") or None,
            name=user.get("userPrincipalName") or user.get("displayName") or None,
            type="User",
            account_uid=tenant,
        )
        src_ip = user.get("ipAddress") or None
    elif app:
        for key in ("appId", "displayName", "servicePrincipalId", "servicePrincipalName"):
            f.get(f"{ib}.app.{key}", str)
        principal = Principal(
            uid=app.get("servicePrincipalId") or app.get("appId") or None,
            name=app.get("displayName") or app.get("servicePrincipalName") or None,
            type="ServicePrincipal",
            account_uid=tenant,
        )
    else:
        principal = Principal()
    src_ip = src_ip or f.get("callerIpAddress", str) or None
    if user_agent and user_agent.startswith("Mozilla/"):
        access_path = "console"
    elif app and not user:
        access_path = "service"
    elif principal.uid or principal.name:
        access_path = "api"
    else:
        access_path = "unknown"
    return Actor(
        user=principal,
        session_issuer=app.get("appId") if app and not user else None,
        src_ip=src_ip,
        user_agent=user_agent,
        access_path=access_path,
    )


_KEY_TYPE_KIND = {
    "password": "azure_sp_password",
    "asymmetricx509cert": "azure_sp_key",
    "x509certandpassword": "azure_sp_key",
    "symmetric": "azure_sp_password",
}


def _parse_key_description(text: str) -> dict[str, str]:
    """``[KeyIdentifier=<guid>,KeyType=Password,KeyUsage=Verify,DisplayName=x]`` as a dict (the
    display name may itself hold commas: fields are split on the known names only)."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    out: dict[str, str] = {}
    marks = list(_KEY_FIELD.finditer(body))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        out[m.group(1)] = body[m.end() : end].rstrip(",").strip()
    return out


def _new_keys(e: _Entra, base: str, target: dict[str, Any]) -> tuple[list[dict[str, str]], str, bool]:
    """``(new keys, path of the modifiedProperties read, whether any key list was logged)``.

    Keys come from ``KeyDescription`` (a list of ``[KeyIdentifier=...,KeyType=...]`` strings, the new
    ones being those in ``newValue`` and not in ``oldValue``) or ``KeyIdentifier`` (a list of GUIDs,
    with ``KeyType`` / ``KeyUsage`` / ``KeyDisplayName`` lists in the same order)."""
    props = e.modified(base, target)
    path = f"{base}.modifiedProperties"
    named = False
    for ipath, name, old, new in props:
        if name.lower() != "keydescription":
            continue
        old_ids = {_parse_key_description(s).get("KeyIdentifier") for s in _as_list(old) if isinstance(s, str)}
        entries = [_parse_key_description(s) for s in _as_list(new) if isinstance(s, str)]
        entries = [k for k in entries if k.get("KeyIdentifier")]
        if entries:
            named = True
            return [k for k in entries if k["KeyIdentifier"] not in old_ids], ipath, named
    by_name = {name.lower(): (ipath, old, new) for ipath, name, old, new in props}
    if "keyidentifier" in by_name:
        ipath, old, new = by_name["keyidentifier"]
        ids = [s for s in _as_list(new) if isinstance(s, str) and s]
        if ids:
            named = True
            old_ids = set(_as_list(old))
            extra = {
                k: _as_list(by_name[k.lower()][2]) if k.lower() in by_name else []
                for k in ("KeyType", "KeyUsage", "KeyDisplayName")
            }
            out = []
            for i, key_id in enumerate(ids):
                if key_id in old_ids:
                    continue
                entry = {"KeyIdentifier": key_id}
                for k, values in extra.items():
                    if i < len(values) and isinstance(values[i], str):
                        entry["DisplayName" if k == "KeyDisplayName" else k] = values[i]
                out.append(entry)
            return out, ipath, named
    return [], path, named


def _new_federated(e: _Entra, base: str, target: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """New federated identity credentials in a ``FederatedIdentityCredentials`` modified property
    (a JSON list of objects with ``Name``, ``Issuer``, ``Subject``, ``Audiences``, perhaps ``Id``),
    compared with ``oldValue`` by ``Id`` else ``Name``; the second value says whether the property
    was logged at all."""
    for _ipath, name, old, new in e.modified(base, target):
        if name.lower() != "federatedidentitycredentials":
            continue

        def key(item: dict[str, Any]) -> Any:
            return item.get("Id") or item.get("id") or item.get("Name") or item.get("name")

        old_keys = {key(i) for i in _as_list(old) if isinstance(i, dict)}
        return [i for i in _as_list(new) if isinstance(i, dict) and key(i) not in old_keys], True
    return [], False


def _role_of(e: _Entra, targets: list[tuple[str, dict[str, Any]]]) -> tuple[str | None, str | None]:
    """``(template id, display name)`` of the directory role: ``Role.TemplateId`` /
    ``Role.DisplayName`` modified properties, else a ``type: Role`` target (PIM) with its
    ``TemplateId`` property and display name."""
    template = name = None
    for base, target in targets:
        for _ipath, prop, _old, new in e.modified(base, target):
            low = prop.lower()
            if low in ("role.templateid", "templateid") and isinstance(new, str) and new:
                template = template or new
            elif low == "role.displayname" and isinstance(new, str) and new:
                name = name or new
        if (target.get("type") or "").lower() == "role":
            name = name or target.get("displayName")
    return template, name


def detections_from_entra_audit(
    record: dict[str, Any], match: SigmaMatchLike, origin: str, position: int
) -> list[Detection]:
    """Normalise one Entra audit record (Graph ``directoryAudit`` or the Azure Monitor diagnostic
    form, see the module docstring) that ``match`` (a Sigma rule) flagged.

    Returns ``Detection`` objects with ``provider="azure"``, ``source="entra"``, ``event_name`` =
    ``activityDisplayName`` (else ``operationName``), ``time`` = ``activityDateTime`` else ``time``,
    ``account_uid`` = the tenant (``tenantId``, else ``/tenants/<id>/`` of ``resourceId``, else
    ``additionalDetails`` ``tid``), ``actor`` from ``initiatedBy.user`` (uid = object id, name = UPN,
    ``src_ip`` = ``ipAddress``) or ``initiatedBy.app`` (uid = ``servicePrincipalId`` else ``appId``,
    type ``ServicePrincipal``). By activity (:data:`ENTRA_ACTIVITIES`, dashes normalised):

    * "Add service principal credentials", "Update application – Certificates and secrets
      management": one detection per *new* key (in ``newValue`` and not in ``oldValue`` of the
      target's ``KeyDescription`` / ``KeyIdentifier`` modified property): ``azure_sp_password``
      (``KeyType`` Password) or ``azure_sp_key`` (certificates), uid = ``keyId``, owner = the target
      (``ServicePrincipal`` or ``Application``: object id, display name). No new key (a removal) is
      one suppressed detection without credential;
    * "Update application" with a ``FederatedIdentityCredentials`` property: one
      ``azure_federated_credential`` per new entry, uid ``<app object id>/federatedIdentityCredentials/<Id>``
      (the ``Name`` when the log carries no ``Id``; Graph addresses a credential by either);
      without that property the update is suppressed as not a credential change;
    * "Add service principal": ``azure_service_principal`` (uid = target object id);
    * "Add user": ``azure_user`` (uid = target object id);
    * "Add member to role" (also eligible, scoped, PIM completed): ``azure_directory_role``, uid
      ``<role template id or display name>#<principal object id>``;
    * "Add application", "Add app role assignment to service principal", "Add owner to
      application / service principal", elevation to User Access Administrator: no credential kind
      fits, ``credential`` is ``None``; ``target`` is the application / assignee service principal /
      new owner / the actor.

    A record whose ``result`` is present and not ``success`` is ``suppressed`` and names no uid.

    Raises :class:`RecordError` naming the raw dotted field for a missing activity name or time, a
    field of the wrong type, a successful credential addition whose modified properties name no
    ``KeyIdentifier`` (field ``...targetResources[i].modifiedProperties``), or a created object
    without ``id``.
    """
    e = _Entra(record, origin, position)
    f, p = e.f, e.p
    name_path, activity = f.first([f"{p}activityDisplayName", "operationName", f"{p}operationName"], str)
    if activity is None:
        raise f.error(f"{p}activityDisplayName", "required field missing (no operationName either)")
    time_path = next((t for t in (f"{p}activityDateTime", "time") if f.get(t, str)), f"{p}activityDateTime")
    time: datetime = f.time(time_path)  # type: ignore[assignment]
    details = e.additional()
    tenant = f.value(["tenantId", f"{p}tenantId"], str)
    if tenant is None:
        m = _TENANT_RESOURCE.match(f.get("resourceId", str) or "")
        tenant = m.group(1) if m else (details.get("tid") if isinstance(details.get("tid"), str) else None)
    user_agent = details.get("User-Agent") if isinstance(details.get("User-Agent"), str) else None
    actor = _entra_actor(e, tenant, user_agent)
    targets = e.targets()
    result = f.value([f"{p}result", "result", "resultType"], str)
    label = ENTRA_ACTIVITIES.get(entra_activity_key(activity))
    suppressed = None
    if result is not None and result.lower() != "success":
        reason = f.value([f"{p}resultReason"], str)
        suppressed = (
            f"the {activity!r} operation did not succeed (result {result!r}"
            + (f": {reason})" if reason else ")")
            + ": nothing was created or granted"
        )

    rule = _rule(match)
    rule_uid = rule.uid
    techniques = _techniques(match, label)
    severity = severity_label(getattr(match, "level", None))
    raw_ref = RawRef(origin=origin, position=position, sha256=record_sha256(record))

    def make(target: Principal, credential: Credential | None, reason: str | None, salt: str = "") -> Detection:
        return Detection(
            uid=detection_uid(record, f"{rule_uid or ''}{salt}"),
            provider="azure",
            source="entra",
            event_name=activity,
            technique_ids=techniques,
            rule=rule,
            severity=severity,
            time=time,
            account_uid=tenant,
            actor=actor,
            target=target,
            credential=credential,
            suppressed=reason,
            raw_ref=raw_ref,
            raw=record,
        )

    def first_target(*types: str) -> tuple[str, dict[str, Any]] | None:
        wanted = {t.replace(" ", "").lower() for t in types}
        for base, target in targets:
            if (target.get("type") or "").replace(" ", "").lower() in wanted:
                return base, target
        return None

    if label == "sp_credential":
        found = first_target("ServicePrincipal", "Application") or (targets[0] if targets else None)
        if found is None:
            raise f.error(f"{p}targetResources", "required field missing: the application or service principal")
        base, target = found
        owner = _principal(target, tenant)
        if suppressed:
            return [make(owner, None, suppressed)]
        keys, path, named = _new_keys(e, base, target)
        if not target.get("id"):
            raise f.error(f"{base}.id", "required field missing: the owner's object id")
        if not named:
            # The record says a credential was added but logs no KeyIdentifier: the new key cannot
            # be named, so no playbook may pretend to remove exactly it. The detection carries the
            # credential with uid None; playbooks that need no key ID (disable the owner) answer it.
            kind = "azure_sp_password"
            for prop in _as_list(target.get("modifiedProperties")):
                if isinstance(prop, dict) and prop.get("displayName") == "KeyType" and "cert" in str(
                        prop.get("newValue", "")).lower():
                    kind = "azure_sp_key"
            attrs = {"objectType": owner.type, "displayName": target.get("displayName"), "keyId": "not logged",
                     "reason": f"no KeyIdentifier in {base}.modifiedProperties"}
            cred = Credential(kind=kind, uid=None, owner=owner, attributes={k: v for k, v in attrs.items() if v})
            return [make(owner, cred, None)]
        if not keys:
            return [
                make(
                    owner,
                    None,
                    f"no credential was added to {owner.name or owner.uid} (keys removed or unchanged in {path})",
                )
            ]
        out = []
        for key in keys:
            key_type = key.get("KeyType") or ""
            kind = _KEY_TYPE_KIND.get(key_type.lower(), "azure_sp_key" if "cert" in key_type.lower() else None)
            if kind is None:
                raise f.error(path, f"unknown KeyType {key_type!r} for key {key['KeyIdentifier']}")
            attrs: dict[str, Any] = {"objectType": owner.type, "displayName": target.get("displayName")}
            for src, dst in (("KeyType", "keyType"), ("KeyUsage", "keyUsage"), ("DisplayName", "keyDisplayName")):
                if key.get(src):
                    attrs[dst] = key[src]
            if isinstance(details.get("AppId"), str):
                attrs["appId"] = details["AppId"]
            cred = Credential(
                kind=kind,
                uid=key["KeyIdentifier"],
                owner=owner,
                attributes={k: v for k, v in attrs.items() if v is not None},
            )
            out.append(make(owner, cred, None, salt=f"#{key['KeyIdentifier']}"))
        return out

    if label == "federated_credential":
        found = first_target("Application") or (targets[0] if targets else None)
        if found is None:
            raise f.error(f"{p}targetResources", "required field missing: the application")
        base, target = found
        owner = _principal(target, tenant)
        new, logged = _new_federated(e, base, target)
        if suppressed:
            return [make(owner, None, suppressed)]
        if not logged or not new:
            return [make(owner, None, "the application update added no federated identity credential")]
        if not target.get("id"):
            raise f.error(f"{base}.id", "required field missing: the application's object id")
        out = []
        for item in new:
            ident = item.get("Id") or item.get("id") or item.get("Name") or item.get("name")
            if not isinstance(ident, str) or not ident:
                raise f.error(f"{base}.modifiedProperties", "a new federated identity credential has no Id nor Name")
            attrs = {
                k.lower() if k != "Audiences" else "audiences": v
                for k, v in item.items()
                if k in ("Name", "Issuer", "Subject", "Audiences", "Description") and v is not None
            }
            attrs["objectType"] = owner.type
            cred = Credential(
                kind="azure_federated_credential",
                uid=f"{target['id']}/federatedIdentityCredentials/{ident}",
                owner=owner,
                attributes=attrs,
            )
            out.append(make(owner, cred, None, salt=f"#{ident}"))
        return out

    if label in ("service_principal", "user"):
        kind = "azure_service_principal" if label == "service_principal" else "azure_user"
        found = first_target("ServicePrincipal") if label == "service_principal" else first_target("User")
        found = found or (targets[0] if targets else None)
        if found is None:
            raise f.error(f"{p}targetResources", "required field missing: the created object")
        base, target = found
        owner = _principal(target, tenant)
        if suppressed:
            return [make(owner, Credential(kind=kind, uid=None, owner=owner), suppressed)]
        if not target.get("id"):
            raise f.error(f"{base}.id", "required field missing: the created object's id")
        attrs = {"displayName": target.get("displayName")}
        if target.get("userPrincipalName"):
            attrs["userPrincipalName"] = target["userPrincipalName"]
        for _ipath, prop, _old, new in e.modified(base, target):
            if prop in ("AppId", "AppAddress") and isinstance(new, str | list) and new:
                attrs["appId"] = new[0] if isinstance(new, list) else new
        cred = Credential(
            kind=kind, uid=target["id"], owner=owner, attributes={k: v for k, v in attrs.items() if v is not None}
        )
        return [make(owner, cred, None)]

    if label == "directory_role":
        found = first_target("User", "ServicePrincipal", "Group")
        if found is None:
            raise f.error(f"{p}targetResources", "required field missing: the principal added to the role")
        base, target = found
        member = _principal(target, tenant)
        template, role_name = _role_of(e, targets)
        if suppressed:
            return [make(member, None, suppressed)]
        role = template or role_name
        if not role:
            raise f.error(f"{base}.modifiedProperties", "required field missing: Role.TemplateId / Role.DisplayName")
        if not target.get("id"):
            raise f.error(f"{base}.id", "required field missing: the principal's object id")
        attrs = {k: v for k, v in (("roleTemplateId", template), ("roleDisplayName", role_name)) if v}
        cred = Credential(kind="azure_directory_role", uid=f"{role}#{target['id']}", owner=member, attributes=attrs)
        return [make(member, cred, None)]

    if label == "app_role_assignment":
        assignee = None
        for base, target in targets:
            props = {prop: new for _ip, prop, _o, new in e.modified(base, target)}
            if isinstance(props.get("ServicePrincipal.ObjectID"), str):
                assignee = Principal(
                    uid=props["ServicePrincipal.ObjectID"],
                    name=props.get("ServicePrincipal.DisplayName") or None,
                    type="ServicePrincipal",
                    account_uid=tenant,
                )
                break
        if assignee is None:
            found = first_target("ServicePrincipal") or (targets[0] if targets else None)
            assignee = _principal(found[1], tenant) if found else Principal()
        return [make(assignee, None, suppressed)]

    if label in ("owner", "application"):
        found = first_target("User", "ServicePrincipal") if label == "owner" else first_target("Application")
        found = found or (targets[0] if targets else None)
        return [make(_principal(found[1], tenant) if found else Principal(), None, suppressed)]

    return [make(actor.user.model_copy(), None, suppressed)]


# -- Azure Activity Log ------------------------------------------------------------------------


def detections_from_azure_activity(
    record: dict[str, Any], match: SigmaMatchLike, origin: str, position: int
) -> list[Detection]:
    """Normalise one Azure Activity Log event (REST / portal form or storage / Event Hub form, see
    :func:`activity_match_view`) that ``match`` flagged; returns one :class:`Detection`.

    ``provider="azure"``, ``source="azure_activity"``, ``event_name`` = ``operationName`` (its
    ``value``), ``time`` = ``eventTimestamp`` else ``time``, ``account_uid`` = ``subscriptionId``
    else the subscription of ``resourceId``, ``region`` = ``location`` (when not empty),
    ``actor``: uid = the claims' ``oid`` (``http://schemas.microsoft.com/identity/claims/objectidentifier``)
    else ``caller``, name = UPN / ``name`` / ``caller``, ``src_ip`` = ``httpRequest.clientIpAddress``
    / ``callerIpAddress``. By operation (:data:`ACTIVITY_OPERATIONS`):

    * ``Microsoft.Authorization/roleAssignments/write``: ``azure_role_assignment``, uid = ``resourceId``
      when it is a role assignment ID, else ``properties.entity``; owner = the assignee
      (``PrincipalId`` / ``PrincipalType`` of ``properties.requestbody``); attributes
      ``roleDefinitionId``, ``roleName`` (for :data:`PRIVILEGED_ROLE_DEFINITIONS`), ``scope``.
      A known role definition outside :data:`PRIVILEGED_ROLE_DEFINITIONS` is ``suppressed``;
    * ``elevateAccess/action``, ``Microsoft.KeyVault/vaults/secrets/write``,
      ``Microsoft.ManagedIdentity/userAssignedIdentities/write``: no credential kind fits (a Key
      Vault secret and a managed identity resource are not Entra credentials Cordon can revoke),
      ``credential`` is ``None``, ``target`` the actor (elevation) or the resource (uid
      ``resourceId``, type the resource type).

    Status ``Failed`` (``resultType`` ``Failure``) or not yet complete (``Started``, ``Accepted``)
    is ``suppressed``. Raises :class:`RecordError` naming the raw dotted field for a missing
    ``operationName`` or time, a field of the wrong type, a role assignment with no assignment ID
    in ``resourceId`` nor ``properties.entity``, or a ``requestbody`` that is not JSON.
    """
    f = _Fields(record, origin, position)
    raw_op = f.get("operationName", (str, dict), required=True)
    operation = f.get("operationName.value", str, required=True) if isinstance(raw_op, dict) else raw_op
    time_path = next((t for t in ("eventTimestamp", "time") if f.get(t, str)), "eventTimestamp")
    time: datetime = f.time(time_path)  # type: ignore[assignment]
    resource_id = f.get("resourceId", str)
    subscription = f.get("subscriptionId", str)
    if not subscription and resource_id:
        m = _SUBSCRIPTION.match(resource_id)
        subscription = m.group(1) if m else None
    region = f.get("location", str) or None
    identity = f.get("identity", (dict, str))  # the storage form's identity object (a name string in some exports)
    claims = f.get("claims", dict) or (f.get("identity.claims", dict) if isinstance(identity, dict) else None) or {}
    oid = claims.get("http://schemas.microsoft.com/identity/claims/objectidentifier")
    upn = claims.get("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn") or claims.get("name")
    caller = f.get("caller", str)
    appid = claims.get("appid")
    ptype = "User" if upn or (caller and "@" in caller) else ("ServicePrincipal" if appid else None)
    user = Principal(
        uid=oid or caller or upn,
        name=upn or caller,
        type=ptype,
        account_uid=f.value(["tenantId", "claims.http://schemas.microsoft.com/identity/claims/tenantid"], str),
    )
    src_ip = f.value(["httpRequest.clientIpAddress", "callerIpAddress"], str)
    actor = Actor(user=user, src_ip=src_ip, access_path="api" if (user.uid or src_ip) else "unknown")
    raw_status = f.get("status", (str, dict))
    status = f.get("status.value", str) if isinstance(raw_status, dict) else raw_status
    if status is None:
        result_type = f.get("resultType", str)
        status = _RESULT_TYPE_TO_STATUS.get((result_type or "").lower(), result_type)
    label = ACTIVITY_OPERATIONS.get(operation.lower())
    suppressed = None
    if status is not None and status.lower() != "succeeded":
        suppressed = (
            f"the {operation} operation has status {status!r}, not Succeeded: nothing is known to have "
            "been created or granted"
        )

    rule = _rule(match)
    raw_ref = RawRef(origin=origin, position=position, sha256=record_sha256(record))

    def make(target: Principal, credential: Credential | None, reason: str | None) -> Detection:
        return Detection(
            uid=detection_uid(record, rule.uid),
            provider="azure",
            source="azure_activity",
            event_name=operation,
            technique_ids=_techniques(match, label),
            rule=rule,
            severity=severity_label(getattr(match, "level", None)),
            time=time,
            account_uid=subscription,
            region=region,
            actor=actor,
            target=target,
            credential=credential,
            suppressed=reason,
            raw_ref=raw_ref,
            raw=record,
        )

    if label == "role_assignment":
        body_text = f.get("properties.requestbody", str) or f.get("properties.requestBody", str)
        body: dict[str, Any] = {}
        if body_text:
            try:
                body = json.loads(body_text)
            except ValueError as exc:
                raise f.error("properties.requestbody", f"not JSON: {exc}") from None
            if not isinstance(body, dict):
                raise f.error("properties.requestbody", f"expected a JSON object, got {type_name(body)}")
        props = body.get("Properties") or body.get("properties") or {}
        props = props if isinstance(props, dict) else {}
        principal_id = props.get("PrincipalId") or props.get("principalId")
        owner = Principal(
            uid=principal_id, type=props.get("PrincipalType") or props.get("principalType"), account_uid=subscription
        )
        role_def = props.get("RoleDefinitionId") or props.get("roleDefinitionId")
        last = (role_def or "").rstrip("/").rsplit("/", 1)[-1]  # .../roleDefinitions/<guid>: the last segment
        role_guid = last.lower() if _GUID.fullmatch(last) else None
        if resource_id and _ROLE_ASSIGNMENT_ID.search(resource_id):
            uid = resource_id
        else:
            uid = f.get("properties.entity", str)
            if not uid or not _ROLE_ASSIGNMENT_ID.search(uid):
                if suppressed:
                    uid = None
                else:
                    raise f.error(
                        "resourceId",
                        "not a role assignment ID .../providers/Microsoft.Authorization/"
                        "roleAssignments/<guid> (nor is properties.entity)",
                    )
        attrs: dict[str, Any] = {"roleDefinitionId": role_def, "scope": props.get("Scope") or props.get("scope")}
        if role_guid in PRIVILEGED_ROLE_DEFINITIONS:
            attrs["roleName"] = PRIVILEGED_ROLE_DEFINITIONS[role_guid]
        elif role_guid and not suppressed:
            suppressed = (
                f"role definition {role_guid} is not a privileged role "
                f"({', '.join(sorted(PRIVILEGED_ROLE_DEFINITIONS.values()))})"
            )
        cred = Credential(
            kind="azure_role_assignment",
            uid=None if status and status.lower() != "succeeded" else uid,
            owner=owner,
            attributes={k: v for k, v in attrs.items() if v is not None},
        )
        return [make(owner, cred, suppressed)]
    if label == "elevate_access" or label is None:
        return [make(user.model_copy(), None, suppressed)]
    rtype = (
        "Microsoft.KeyVault/vaults/secrets"
        if label == "keyvault_secret"
        else "Microsoft.ManagedIdentity/userAssignedIdentities"
    )
    name = resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None
    return [make(Principal(uid=resource_id, name=name, type=rtype, account_uid=subscription), None, suppressed)]


__all__ = [
    "ACTIVITY_OPERATIONS",
    "ENTRA_ACTIVITIES",
    "FALLBACK_TECHNIQUES",
    "PRIVILEGED_ROLE_DEFINITIONS",
    "activity_match_view",
    "detections_from_azure_activity",
    "detections_from_entra_audit",
    "entra_activity_key",
    "entra_match_view",
]
