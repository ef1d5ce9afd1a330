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

**Names as logs spell them.** Both views are matched under a field normalisation declared once per
source (:data:`ENTRA_NAMES`, :data:`ACTIVITY_NAMES`, given to :class:`cordon.providers.Source`): the
operation names (and results) are trimmed and every dash variant is one "-", in the view and in every
rule's values of those fields alike, so "Update application – Certificates and secrets management "
(trailing space, en dash) matches a rule written with a hyphen. The parsers look activities up with the
same canonical spelling (:func:`entra_activity_key`, :func:`activity_operation_key`) and report
``event_name`` as the record spells it, trimmed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from cordon.detections.errors import RecordError
from cordon.detections.fields import RecordFields, SigmaMatchLike, detection_uid, severity_label, type_name
from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.sigma.normalise import FieldNormalisation

#: ATT&CK techniques used when the matching rule carries none, by Cordon's activity label.
FALLBACK_TECHNIQUES: dict[str, list[str]] = {
    "sp_credential": ["T1098.001"],
    "federated_credential": ["T1098.001"],
    "service_principal": ["T1136.003"],
    "application": ["T1136.003"],
    "user": ["T1136.003"],
    "app_password": ["T1098.001"],
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

#: Built-in Entra directory roles by template id (the role definition id of ``unifiedRoleDefinition``;
#: Microsoft Entra built-in roles reference, https://learn.microsoft.com/entra/identity/role-based-access-control/
#: permissions-reference). Used to name a role and to judge whether granting it is privileged.
DIRECTORY_ROLE_TEMPLATES: dict[str, str] = {
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "e8611ab8-c189-46e8-94e1-60213ab1f814": "Privileged Role Administrator",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": "Privileged Authentication Administrator",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2": "Hybrid Identity Administrator",
    "194ae4cb-b126-40b2-bd5b-6091b380977d": "Security Administrator",
    "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f": "Authentication Administrator",
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "3a2c62db-5318-420d-8d74-23affee5d9d5": "Intune Administrator",
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator",
    "88d8e3e3-8f55-4a1e-953a-9b9898b8876b": "Directory Readers",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
    "4a5d8f65-41da-4de4-8968-e035b65339cf": "Reports Reader",
    "790c1fb9-7f7d-4f88-86a1-ef1f95c05c1b": "Message Center Reader",
}

#: Directory roles whose grant Cordon contains (the member is removed from the role): the roles that
#: can take over the tenant or any application's credentials. A grant of any other role (a reader, or a
#: role the record names only by an unknown id) is answered by triage only, never contained.
PRIVILEGED_DIRECTORY_ROLES: frozenset[str] = frozenset({
    "62e90394-69f5-4237-9190-012177145e10", "e8611ab8-c189-46e8-94e1-60213ab1f814",
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13", "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3",
    "158c047a-c907-4556-b7ef-446551a6b5f7", "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2",
    "194ae4cb-b126-40b2-bd5b-6091b380977d", "fe930be7-5e62-47db-91af-98c3a49a38b1",
    "c4e39bd9-1100-46d3-8c65-fb160da0071f", "29232cdf-9323-42fd-ade2-1d097af3e4de",
    "3a2c62db-5318-420d-8d74-23affee5d9d5", "729827e3-9c14-49f7-bb1b-9608f156bbb8",
})


#: Microsoft Graph's appId (the same in every tenant): app roles defined by the service principal with
#: this appId are Microsoft Graph application permissions.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

#: Graph permissions that let their holder take over the tenant or any application's credentials
#: (grant itself any role or permission, add secrets to any app, write the directory, weaken
#: Conditional Access, reset authentication methods). The one list Cordon has: the enrichment
#: (``cordon.providers.azure.actions.ServicePrincipalFacts``) flags them in ``risky_permissions`` whether granted as an
#: application permission (app role) or as a delegated scope; an "Add app role assignment to service
#: principal" of one of them on Microsoft Graph is contained (``azure_app_role_assignment``,
#: ``cordon.providers.azure.actions.RemoveAppRoleAssignment``).
RISKY_GRAPH_PERMISSIONS: frozenset[str] = frozenset({
    "RoleManagement.ReadWrite.Directory", "AppRoleAssignment.ReadWrite.All", "Application.ReadWrite.All",
    "Application.ReadWrite.OwnedBy", "Directory.ReadWrite.All", "Directory.AccessAsUser.All",
    "Policy.ReadWrite.ConditionalAccess", "UserAuthenticationMethod.ReadWrite.All",
    "RoleAssignmentSchedule.ReadWrite.Directory", "RoleEligibilitySchedule.ReadWrite.Directory",
    "PrivilegedAccess.ReadWrite.AzureAD", "Domain.ReadWrite.All", "User.ReadWrite.All", "Group.ReadWrite.All",
    "ServicePrincipalEndpoint.ReadWrite.All", "Organization.ReadWrite.All",
})


#: The first-party application "Managed Service Identity" (one appId in every tenant) through which Azure
#: creates, rotates the certificates of and deletes managed identities' service principals. Evidence: a
#: directoryAudit record that app initiated (SumoLogic/sumologic-documentation,
#: docs/integrations/saas-cloud/microsoft-graph-azure-ad-reporting.md, "Audit Activity Message") logs
#: ``initiatedBy.app`` ``{displayName: "Managed Service Identity", appId: null}`` and the actor's names in
#: the modified property ``ActorId.ServicePrincipalNames``:
#: ``"ef5d5c69-a5df-46bb-acaf-426f161a21a2;https://serviceidentity.azure.net/"``.
MANAGED_SERVICE_IDENTITY_APP_ID = "ef5d5c69-a5df-46bb-acaf-426f161a21a2"

#: A managed identity's service principal (``servicePrincipalType`` ``ManagedIdentity``, Microsoft Graph
#: servicePrincipal resource) has a service principal name under this prefix; audit records list it in
#: ``TargetId.ServicePrincipalNames`` (``"<appId>;https://identity.azure.net/<hash>"`` in the record above).
MANAGED_IDENTITY_SPN_PREFIX = "https://identity.azure.net/"


def is_dangerous_graph_app_role(value: str | None, resource_app_id: str | None) -> bool:
    """Whether an app role ``value`` of the resource whose appId is ``resource_app_id`` is a Microsoft
    Graph permission in :data:`RISKY_GRAPH_PERMISSIONS` (the same value defined by another API, a custom
    ``Directory.ReadWrite.All`` of a line-of-business app, is not)."""
    return bool(value) and value in RISKY_GRAPH_PERMISSIONS and (resource_app_id or "").lower() == GRAPH_APP_ID


def directory_role_template(role: str | None) -> str | None:
    """The built-in template id for ``role`` (a template id, any case, or a display name such as
    "Global Administrator"); ``None`` when it is neither."""
    if not role:
        return None
    low = role.strip().lower()
    if low in DIRECTORY_ROLE_TEMPLATES:
        return low
    for tid, name in DIRECTORY_ROLE_TEMPLATES.items():
        if name.lower() == low:
            return tid
    return None


def is_privileged_directory_role(template_id: str | None, display_name: str | None) -> bool:
    """Whether a directory role named by ``template_id`` and/or ``display_name`` is in
    :data:`PRIVILEGED_DIRECTORY_ROLES` (either name suffices: audit records of test tenants carry
    placeholder template ids next to the real display name)."""
    return any(directory_role_template(r) in PRIVILEGED_DIRECTORY_ROLES for r in (template_id, display_name) if r)


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TENANT_RESOURCE = re.compile(r"^/tenants/([^/]+)/", re.IGNORECASE)
_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_ROLE_ASSIGNMENT_ID = re.compile(r"/providers/Microsoft\.Authorization/roleAssignments/[^/]+$", re.IGNORECASE)
_KEY_FIELD = re.compile(r"(KeyIdentifier|KeyType|KeyUsage|DisplayName)=")

#: How Entra audit records are normalised for Sigma matching (:class:`cordon.providers.Source`
#: ``normalise``): the operation names, the result and the modified properties' names rules match on, in
#: both record forms as :func:`entra_match_view` shows them, are trimmed, with runs of whitespace made one
#: space and every dash variant (en dash, em dash, hyphen...) with the spaces around it made one "-"
#: (:data:`cordon.sigma.normalise.NAME_SPELLING`), in the record and in the rules alike. Real records
#: carry "Update application – Certificates and secrets management " (a trailing space, an en dash) where
#: the documentation and the rules write a hyphen and no space.
ENTRA_NAMES = FieldNormalisation(fields=(
    "activityDisplayName", "operationName", "OperationName", "properties.activityDisplayName",
    "properties.operationName", "properties.message", "result", "properties.result",
    "targetResources.modifiedProperties.displayName", "properties.targetResources.modifiedProperties.displayName",
))

#: The same for Azure Activity Log events as :func:`activity_match_view` shows them: ``operationName``
#: (its ``value`` and ``localizedValue``), ``status.value``, ``subStatus.value``, ``category.value``.
ACTIVITY_NAMES = FieldNormalisation(fields=(
    "operationName", "operationName.value", "operationName.localizedValue", "status.value", "subStatus.value",
    "category.value",
))

#: Entra ``activityDisplayName`` -> Cordon's activity label; compared by :func:`entra_activity_key`
#: (case, surrounding whitespace and dash variants ignored).
ENTRA_ACTIVITIES: dict[str, str] = {
    "add service principal credentials": "sp_credential",
    "update application - certificates and secrets management": "sp_credential",
    "add service principal": "service_principal",
    "add application": "application",
    "add user": "user",
    "create application password for user": "app_password",
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

#: Activity Log ``operationName`` -> Cordon's activity label; compared by :func:`activity_operation_key`.
ACTIVITY_OPERATIONS: dict[str, str] = {
    "microsoft.authorization/roleassignments/write": "role_assignment",
    "microsoft.authorization/elevateaccess/action": "elevate_access",
    "microsoft.keyvault/vaults/secrets/write": "keyvault_secret",
    "microsoft.managedidentity/userassignedidentities/write": "managed_identity",
}

_RESULT_TYPE_TO_STATUS = {"success": "Succeeded", "failure": "Failed", "start": "Started", "accept": "Accepted"}


def entra_activity_key(name: str) -> str:
    """``activityDisplayName`` in :data:`ENTRA_NAMES`' canonical spelling, lower-cased:
    "Update application – Certificates and secrets management " and "Update application - Certificates
    and secrets management" give the same key (the one Sigma rules are matched with)."""
    return ENTRA_NAMES.text(name).lower()


def activity_operation_key(name: str) -> str:
    """An Activity Log ``operationName`` in :data:`ACTIVITY_NAMES`' canonical spelling, lower-cased."""
    return ACTIVITY_NAMES.text(name).lower()


_ENTRA_LABELS = {entra_activity_key(k): v for k, v in ENTRA_ACTIVITIES.items()}
_ACTIVITY_LABELS = {activity_operation_key(k): v for k, v in ACTIVITY_OPERATIONS.items()}


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

_UPN_CLAIM = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"


def _claim(claims: dict[str, Any], claims_path: str, name: str, f: RecordFields) -> str | None:
    """The string value of one token claim of an Activity Log ``claims`` object, or ``None``.

    Claim names are URIs with dots (``http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn``), so
    they are looked up directly rather than by dotted path. Raises :class:`RecordError` naming
    ``<claims_path>.<claim name>`` when the value is not a string (a list, a number, an object): Azure
    writes every claim as a string (Activity Log event schema,
    https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema).
    """
    value = claims.get(name)
    if value is None or isinstance(value, str):
        return value
    raise RecordError(f.origin, f.position, f"{claims_path}.{name}",
                      f"expected a string, got {type_name(value)}")


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
        """``(path, displayName trimmed, oldValue decoded, newValue decoded)`` of a target's modifiedProperties."""
        path = f"{base}.modifiedProperties"
        items = self.f.get("modifiedProperties", list, base=target, prefix=base) or []
        out = []
        for i, item in enumerate(items):
            ibase = f"{path}[{i}]"
            if not isinstance(item, dict):
                raise self.f.error(ibase, f"expected an object, got {type_name(item)}")
            name = (self.f.get("displayName", str, base=item, prefix=ibase) or "").strip()
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


def _app_role_grant(e: _Entra, targets: list[tuple[str, dict[str, Any]]], tenant: str | None) -> dict[str, Any]:
    """What an "Add app role assignment to service principal" record says was granted:
    ``{"assignee": Principal, "uid": "<assignee>#<resource>#<appRoleId>" or None, "attributes": {...}}``.

    **Which id is which** (evidence, read when this parser was written):

    * Splunk's attack_data, ``datasets/attack_techniques/T1098.003/azure_ad_bypass_admin_consent/
      azure_ad_bypass_admin_consent.log`` (a record captured in a test tenant, Azure Monitor form):
      ``targetResources[0]`` is ``{id, displayName "Office 365 Exchange Online", type ServicePrincipal}``
      and carries ``AppRole.Id`` / ``AppRole.Value`` ``full_access_as_app``, an app role that *Exchange
      Online* defines: that target is the **resource** (the API defining the role, Graph's
      ``appRoleAssignment.resourceId``). Its ``ServicePrincipal.ObjectID`` / ``ServicePrincipal.DisplayName``
      name the test client application the role was given to (not Exchange): they are the **assignee**
      (``appRoleAssignment.principalId``); the initiator was a third app.
    * Public KQL run on Sentinel workspaces reads the same convention: kqlsearch.com
      "AuditLogs-AzureADRoleManagementPermissionGrant" takes the granted app's id and name from
      ``ServicePrincipal.ObjectID`` / ``ServicePrincipal.DisplayName`` (``AppRole.Value`` for the
      permission), and a write-up of the grant events states that ``TargetResources[0]`` is the resource
      and ``TargetResources[1]`` the client service principal ("Add delegated permission grant" has the
      same layout).
    * Graph's model (https://learn.microsoft.com/graph/api/serviceprincipal-post-approleassignments):
      an assignment is ``{principalId (the client service principal), resourceId (the resource service
      principal), appRoleId}``, listed under ``/servicePrincipals/{principalId}/appRoleAssignments``.

    So: assignee = ``ServicePrincipal.ObjectID`` (else a ``ServicePrincipal`` target that carries no
    ``AppRole.*`` property, ``targetResources[1]``); resource = the target carrying ``AppRole.*`` when its
    id is not the assignee's; its appId from ``TargetId.ServicePrincipalNames`` (``"<appId>;https://
    graph.microsoft.com;..."``). ``ServicePrincipal.AppId`` is the assignee's appId. The record carries
    **no appRoleAssignment id** (only ``AppRoleAssignment.CreatedDateTime`` / ``LastModifiedDateTime``):
    the uid names the assignment by its three ids and containment looks it up.

    ``attributes``: ``app_role_value``, ``app_role_id``, ``app_role_display_name``, ``privileged`` (bool,
    :func:`is_dangerous_graph_app_role`), ``resource_id``, ``resource_display_name``, ``resource_app_id``,
    ``appId`` and ``displayName`` of the assignee, ``objectType`` (``ServicePrincipal``), and ``reason``
    when ``uid`` is ``None``. The uid is given only when all three ids are known and ``privileged``.
    Never raises beyond the type checks of :meth:`_Entra.modified`.
    """
    props: dict[str, Any] = {}
    carrier: tuple[str, dict[str, Any]] | None = None
    for base, target in targets:
        found = {prop: new for _ip, prop, _old, new in e.modified(base, target)}
        if carrier is None and any(k.startswith("AppRole.") for k in found):
            carrier = (base, target)
        for k, v in found.items():
            props.setdefault(k, v)

    def text(name: str) -> str | None:
        value = props.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    assignee_id = text("ServicePrincipal.ObjectID")
    assignee_name = text("ServicePrincipal.DisplayName") or text("ServicePrincipal.Name")
    if assignee_id is None:
        other = next((t for b, t in targets if (t.get("type") or "").replace(" ", "").lower() == "serviceprincipal"
                      and (carrier is None or b != carrier[0]) and t.get("id")), None)
        if other is not None:
            assignee_id, assignee_name = other["id"], assignee_name or other.get("displayName") or None
    if assignee_name is None and assignee_id:
        assignee_name = next((t.get("displayName") for _b, t in targets if t.get("id") == assignee_id
                              and t.get("displayName")), None)
    assignee = Principal(uid=assignee_id, name=assignee_name, type="ServicePrincipal", account_uid=tenant) \
        if assignee_id else Principal()
    resource = carrier[1] if carrier is not None else None
    resource_id = resource.get("id") if resource is not None else None
    if resource_id and assignee_id and resource_id.lower() == assignee_id.lower():
        resource_id = None  # a record naming the assignee as its only target does not name the resource
    names = props.get("TargetId.ServicePrincipalNames")
    names = names.split(";") if isinstance(names, str) else names if isinstance(names, list) else []
    resource_app_id = next((n.strip().lower() for n in names if isinstance(n, str) and _GUID.fullmatch(n.strip())),
                           None)
    resource_name = resource.get("displayName") if resource is not None and resource_id else None
    if resource_app_id is None and not names and resource_name == "Microsoft Graph":
        resource_app_id = GRAPH_APP_ID  # no service principal names logged: Graph's display name is reserved
    role_id = text("AppRole.Id")
    role_value = text("AppRole.Value")
    privileged = is_dangerous_graph_app_role(role_value, resource_app_id)
    attrs: dict[str, Any] = {
        "app_role_value": role_value, "app_role_id": role_id.lower() if role_id else None,
        "app_role_display_name": text("AppRole.DisplayName"), "privileged": privileged,
        "resource_id": resource_id, "resource_display_name": resource_name, "resource_app_id": resource_app_id,
        "appId": text("ServicePrincipal.AppId"), "displayName": assignee_name, "objectType": "ServicePrincipal"}
    missing = [n for n, v in (("the assignee (ServicePrincipal.ObjectID)", assignee_id),
                              ("the resource service principal", resource_id),
                              ("AppRole.Id", role_id if role_id and _GUID.fullmatch(role_id) else None)) if not v]
    uid = None
    judged = bool(role_value and resource_app_id)  # both known: privileged or not is decided
    if privileged and not missing:
        uid = f"{assignee_id.lower()}#{resource_id.lower()}#{role_id.lower()}"  # type: ignore[union-attr]
    elif missing and (privileged or not judged):
        attrs["reason"] = f"the record does not name {', '.join(missing)}"
    else:
        of = resource_name or resource_app_id or "an unnamed resource"
        attrs["reason"] = (f"app role {role_value or '(not logged)'} of {of} is not a dangerous Microsoft Graph "
                           "application permission")
    return {"assignee": assignee, "uid": uid, "attributes": attrs}


def _service_principal_names(value: Any) -> list[str]:
    """The names in an ``ActorId.`` / ``TargetId.ServicePrincipalNames`` value (JSON text of one
    ``"a;b"`` string or of a list of them), each trimmed."""
    return [n.strip() for item in _as_list(value) if isinstance(item, str) for n in item.split(";") if n.strip()]


def _managed_identity_rotation(e: _Entra, base: str, target: dict[str, Any]) -> str | None:
    """Why a credential added to ``target`` is Azure rotating a managed identity's own certificate,
    or ``None`` when the record does not show both halves of that:

    * the actor is the first-party app Managed Service Identity: ``initiatedBy.app`` with no user, whose
      ``appId`` is :data:`MANAGED_SERVICE_IDENTITY_APP_ID` or whose ``ActorId.ServicePrincipalNames``
      include it (a display name alone is not enough: any tenant can name an app so);
    * the target is a managed identity: its ``TargetId.ServicePrincipalNames`` include a name under
      :data:`MANAGED_IDENTITY_SPN_PREFIX`.

    A record showing only one half is not suppressed here; enrichment's ``servicePrincipalType`` is
    checked by the provider's guard (:mod:`cordon.providers.azure.guard`)."""
    f, p = e.f, e.p
    app = f.get(f"{p}initiatedBy.app", dict)
    if not app or f.get(f"{p}initiatedBy.user", dict):
        return None
    actor_names: list[str] = []
    target_names: list[str] = []
    for _ipath, prop, _old, new in e.modified(base, target):
        low = prop.strip().lower()
        if low == "actorid.serviceprincipalnames":
            actor_names += _service_principal_names(new)
        elif low == "targetid.serviceprincipalnames":
            target_names += _service_principal_names(new)
    app_id = (app.get("appId") or "").strip().lower()
    if app_id == MANAGED_SERVICE_IDENTITY_APP_ID:
        by = "initiatedBy.app.appId"
    elif MANAGED_SERVICE_IDENTITY_APP_ID in {n.lower() for n in actor_names}:
        by = "ActorId.ServicePrincipalNames"
    else:
        return None
    spn = next((n for n in target_names if n.lower().startswith(MANAGED_IDENTITY_SPN_PREFIX)), None)
    if spn is None:
        return None
    who = target.get("displayName") or target.get("id") or "the service principal"
    return (f"Azure rotated the managed identity's own credential: initiated by the first-party app "
            f"{app.get('displayName') or 'Managed Service Identity'} (appId {MANAGED_SERVICE_IDENTITY_APP_ID}, "
            f"from {by}) on {who}, a service principal of type ManagedIdentity (its servicePrincipalNames "
            f"include {spn}); nothing to contain")


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
      one suppressed detection without credential. Azure rotating a managed identity's own
      certificate (initiated by the first-party app Managed Service Identity on a service principal
      named under ``https://identity.azure.net/``, see :func:`_managed_identity_rotation`) keeps its
      credential (``attributes["servicePrincipalType"] = "ManagedIdentity"``) and is ``suppressed``
      with that reason;
    * "Update application" with a ``FederatedIdentityCredentials`` property: one
      ``azure_federated_credential`` per new entry, uid ``<app object id>/federatedIdentityCredentials/<Id>``
      (the ``Name`` when the log carries no ``Id``; Graph addresses a credential by either);
      without that property the update is suppressed as not a credential change;
    * "Add service principal": ``azure_service_principal`` (uid = target object id);
    * "Add user": ``azure_user`` (uid = target object id);
    * "Create application password for user" (Core Directory, category ``UserManagement``; the unified
      audit log's "Create application password for user."): ``azure_user_app_password``, uid = the
      user's object id (Graph gives an app password no id, and no call lists or deletes one);
    * "Add member to role" (also eligible, scoped, PIM completed): ``azure_directory_role``, uid
      ``<role template id or display name>#<principal object id>`` when the role is privileged
      (:func:`is_privileged_directory_role`); any other role gives the credential with uid ``None``
      and ``attributes["privileged"] = False`` (triage, never containment);
    * "Add app role assignment to service principal": ``azure_app_role_assignment`` owned by and
      targeting the assignee service principal (``ServicePrincipal.ObjectID``, see
      :func:`_app_role_grant` for the evidence), uid ``<assignee>#<resource>#<appRoleId>`` when the role
      is a dangerous Microsoft Graph application permission (:func:`is_dangerous_graph_app_role`) and
      all three ids are logged; otherwise uid ``None`` with ``attributes["privileged"]`` and a
      ``reason`` (triage, never containment);
    * "Add application", "Add owner to application / service principal", elevation to User Access
      Administrator: no credential kind fits, ``credential`` is ``None``; ``target`` is the
      application / new owner / the actor.

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
    label = _ENTRA_LABELS.get(entra_activity_key(activity))
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
            event_name=activity.strip(),  # the real name, trimmed (playbooks route on it)
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
        rotation = _managed_identity_rotation(e, base, target)  # benign: kept, suppressed, with the reason
        managed = {"servicePrincipalType": "ManagedIdentity"} if rotation else {}
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
                     "reason": f"no KeyIdentifier in {base}.modifiedProperties", **managed}
            cred = Credential(kind=kind, uid=None, owner=owner, attributes={k: v for k, v in attrs.items() if v})
            return [make(owner, cred, rotation)]
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
            attrs: dict[str, Any] = {"objectType": owner.type, "displayName": target.get("displayName"), **managed}
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
            out.append(make(owner, cred, rotation, salt=f"#{key['KeyIdentifier']}"))
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

    if label == "app_password":
        # an app password (MFA's legacy-protocol password) created for a user: Graph names no id for it
        # and has no call that lists or deletes it; the credential is the user's app passwords
        found = first_target("User") or (targets[0] if targets else None)
        if found is None:
            raise f.error(f"{p}targetResources", "required field missing: the user the app password is for")
        base, target = found
        owner = _principal(target, tenant)
        if suppressed:
            return [make(owner, Credential(kind="azure_user_app_password", uid=None, owner=owner), suppressed)]
        if not target.get("id"):
            raise f.error(f"{base}.id", "required field missing: the user's object id")
        attrs = {k: v for k, v in (("userPrincipalName", target.get("userPrincipalName")),
                                   ("displayName", target.get("displayName"))) if v}
        return [make(owner, Credential(kind="azure_user_app_password", uid=target["id"], owner=owner,
                                       attributes=attrs), None)]

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
        attrs: dict[str, Any] = {k: v for k, v in (("roleTemplateId", template), ("roleDisplayName", role_name)) if v}
        if not is_privileged_directory_role(template, role_name):
            # Not a privileged role: the grant is recorded and triaged (playbook azure-directory-role-triage,
            # which needs no credential uid) but never contained: no uid, so no containment playbook matches.
            attrs.update(privileged=False, reason=f"directory role {role_name or template} is not privileged")
            return [make(member, Credential(kind="azure_directory_role", uid=None, owner=member, attributes=attrs),
                         None)]
        cred = Credential(kind="azure_directory_role", uid=f"{role}#{target['id']}", owner=member, attributes=attrs)
        return [make(member, cred, None)]

    if label == "app_role_assignment":
        grant = _app_role_grant(e, targets, tenant)
        assignee = grant["assignee"]
        if suppressed:
            return [make(assignee, None, suppressed)]
        attrs = {k: v for k, v in grant["attributes"].items() if v is not None}
        if not grant["uid"]:
            # The record does not name the role, the resource or the assignee, or the role is not a
            # dangerous Graph application permission: triage (azure-app-role-assignment-triage, which
            # needs no uid), never containment.
            return [make(assignee, Credential(kind="azure_app_role_assignment", uid=None, owner=assignee,
                                              attributes=attrs), None)]
        cred = Credential(kind="azure_app_role_assignment", uid=grant["uid"], owner=assignee, attributes=attrs)
        return [make(assignee, cred, None)]

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
    claims_path = "claims" if f.get("claims", dict) else "identity.claims"
    claims = f.get("claims", dict) or (f.get("identity.claims", dict) if isinstance(identity, dict) else None) or {}
    oid = _claim(claims, claims_path, "http://schemas.microsoft.com/identity/claims/objectidentifier", f)
    upn = _claim(claims, claims_path, _UPN_CLAIM, f) or _claim(claims, claims_path, "name", f)
    caller = f.get("caller", str)
    appid = _claim(claims, claims_path, "appid", f)
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
    label = _ACTIVITY_LABELS.get(activity_operation_key(operation))
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
            event_name=operation.strip(),
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
    "ACTIVITY_NAMES",
    "ACTIVITY_OPERATIONS",
    "DIRECTORY_ROLE_TEMPLATES",
    "PRIVILEGED_DIRECTORY_ROLES",
    "ENTRA_ACTIVITIES",
    "ENTRA_NAMES",
    "FALLBACK_TECHNIQUES",
    "GRAPH_APP_ID",
    "MANAGED_IDENTITY_SPN_PREFIX",
    "MANAGED_SERVICE_IDENTITY_APP_ID",
    "PRIVILEGED_ROLE_DEFINITIONS",
    "RISKY_GRAPH_PERMISSIONS",
    "activity_match_view",
    "activity_operation_key",
    "detections_from_azure_activity",
    "detections_from_entra_audit",
    "directory_role_template",
    "entra_activity_key",
    "is_dangerous_graph_app_role",
    "is_privileged_directory_role",
    "entra_match_view",
]
