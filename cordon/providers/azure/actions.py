"""Azure enrichment and containment actions (msgraph-sdk, azure-mgmt-authorization).

Same shape as :mod:`cordon.providers.gcp.actions` (Cloud Custodian-like self-describing classes): each action
declares its playbook ``name``, parameter ``schema``, the exact ``permissions`` it needs
(Microsoft Graph *application* permissions such as ``Application.ReadWrite.All``, Azure RBAC
actions such as ``Microsoft.Authorization/roleAssignments/delete``), the credential kinds it acts
on, whether it can roll back, and which parameters must name the detection's credential
(``identifies``). Containment reads the state before and after and is idempotent (see
:mod:`cordon.action`). Each containment action also checks ``identifies`` itself and refuses an
object that is Cordon's own identity: a wrong target raises :class:`~cordon.action.GuardError`
and the run is ``refused`` with nothing changed.

**Calls.** An :class:`~cordon.action.ApiCall` names the SDK in ``service``:

* ``"graph"``: ``operation`` is a Graph operation from :data:`GRAPH_OPS`
  (``"servicePrincipals.removePassword"``, ``"servicePrincipals.update"``...), ``params`` its
  path ids and body fields in Graph's own names (``{"id", "keyId"}``). The coroutine is run with
  ``ctx.clients.run(...)`` on the factory's private event loop; kiota's ``RetryHandler`` retries
  429 / 503 / 504.
* ``"authorization"``: ``operation`` is the method path on ``AuthorizationManagementClient``
  (``"role_assignments.delete_by_id"``), ``params`` its keyword arguments (``parameters`` as a
  dict of ``RoleAssignmentCreateParameters`` fields); azure-core's ``RetryPolicy`` retries 408 /
  429 / 5xx.

Clients come from ``ctx.clients(service)`` (:func:`cordon.providers.azure.clients.azure_clients`);
``ctx.clients.own_identity()`` is Cordon's client id (appId) and ``own_object_id()`` its
service principal's object id, never contained.
API references: https://learn.microsoft.com/graph/api/resources/serviceprincipal?view=graph-rest-1.0 ,
https://learn.microsoft.com/graph/api/resources/application?view=graph-rest-1.0 ,
https://learn.microsoft.com/rest/api/authorization/role-assignments .
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from azure.core.exceptions import ResourceNotFoundError
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from cordon.action import (
    ActionContext,
    ActionResult,
    ApiCall,
    ContainmentAction,
    EnrichmentAction,
    GuardError,
    Identifies,
    Params,
    State,
    register,
)
from cordon.providers.azure.detections import GRAPH_APP_ID, RISKY_GRAPH_PERMISSIONS

GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
#: Which directory object carries a credential.
ObjectTypeName = Literal["Application", "ServicePrincipal"]

#: Parameter types (pydantic), shared by the actions' ``Params`` models.
Guid = Annotated[str, Field(pattern=GUID_PATTERN)]
ObjectType = Annotated[ObjectTypeName, Field(
    description="which directory object carries the credential (default: the detection's owner type)")]
AssignmentId = Annotated[str, Field(
    pattern=r"^/(?:[^/\s]+/)*[^/\s]+/providers/[Mm]icrosoft\.[Aa]uthorization/[Rr]ole[Aa]ssignments/"
            r"[0-9a-fA-F-]{36}$",
    description="full ARM ID /{scope}/providers/Microsoft.Authorization/roleAssignments/{guid}")]
FederatedUid = Annotated[str, Field(pattern=r"^[0-9a-fA-F-]{36}/federatedIdentityCredentials/[^/\s]+$",
                                    description="<application object id>/federatedIdentityCredentials/<id>")]
DirectoryRoleUid = Annotated[str, Field(pattern=r"^[^#\s][^#]{0,120}#[0-9a-fA-F-]{36}$",
                                        description="<role template id or name>#<member object id>")]
AppRoleUid = Annotated[str, Field(
    pattern=r"^[0-9a-fA-F-]{36}#[0-9a-fA-F-]{36}#[0-9a-fA-F-]{36}$",
    description="<assignee service principal id>#<resource service principal id>#<appRoleId>")]
ManagementGroup = Annotated[str, Field(pattern=r"^[\w.()-]{1,90}$")]

OWNER_PATHS = ("credential.owner.uid", "target.uid")
AZURE_KINDS = ("azure_sp_password", "azure_sp_key", "azure_federated_credential", "azure_role_assignment",
               "azure_user", "azure_service_principal", "azure_directory_role", "azure_app_role_assignment",
               "azure_user_sessions", "azure_sp_sign_in")


def odata_status(err: BaseException) -> int | None:
    """The HTTP status of a kiota ``APIError`` / msgraph ``ODataError`` (``None`` for others)."""
    status = getattr(err, "response_status_code", None)
    return int(status) if status else None


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value) if value is not None else None


def _password_view(p: Any) -> dict[str, Any]:
    """A password credential without its secret: ``{key_id, display_name, hint, start, end}``."""
    return {"key_id": str(p.key_id) if p.key_id else None, "display_name": p.display_name, "hint": p.hint,
            "start": _iso(p.start_date_time), "end": _iso(p.end_date_time)}


def _key_view(k: Any) -> dict[str, Any]:
    """A key credential's metadata: ``{key_id, display_name, type, usage, start, end}``."""
    return {"key_id": str(k.key_id) if k.key_id else None, "display_name": k.display_name, "type": k.type,
            "usage": k.usage, "start": _iso(k.start_date_time), "end": _iso(k.end_date_time)}


# -- parts of the containment actions' ``State`` models (checked on every read) --------------------------
class PasswordView(State):
    """A password credential as :func:`_password_view` shows it (never its secret)."""

    key_id: str | None
    display_name: str | None
    hint: str | None
    start: str | None
    end: str | None


class KeyView(State):
    """A key credential's metadata as :func:`_key_view` shows it (never key material)."""

    key_id: str | None
    display_name: str | None
    type: str | None
    usage: str | None
    start: str | None
    end: str | None


class ObjectRef(State):
    """One application or service principal: ``{object_type, object_id}``."""

    object_type: ObjectTypeName
    object_id: str


class PairedPasswords(ObjectRef):
    password_credentials: list[PasswordView]


class PairedKeys(ObjectRef):
    key_credentials: list[KeyView]


def _graph_object(graph: Any, object_type: str, object_id: str) -> Any:
    if object_type == "Application":
        return graph.applications.by_application_id(object_id)
    return graph.service_principals.by_service_principal_id(object_id)


def _by_app_id(graph: Any, object_type: str, app_id: str) -> Any:
    """The request builder of the application or service principal with ``appId`` (Graph's
    alternate key ``/applications(appId='...')``)."""
    if object_type == "Application":
        return graph.applications_with_app_id(app_id)
    return graph.service_principals_with_app_id(app_id)


def _remove_password(graph: Any, object_type: str, p: dict[str, Any]) -> Any:
    if object_type == "Application":
        from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
            RemovePasswordPostRequestBody,
        )
    else:
        from msgraph.generated.service_principals.item.remove_password.remove_password_post_request_body import (
            RemovePasswordPostRequestBody,
        )
    body = RemovePasswordPostRequestBody(key_id=uuid.UUID(p["keyId"]))
    return _graph_object(graph, object_type, p["id"]).remove_password.post(body)


def _update_sp(graph: Any, p: dict[str, Any]) -> Any:
    from msgraph.generated.models.service_principal import ServicePrincipal

    body = ServicePrincipal(account_enabled=p["accountEnabled"])
    return _graph_object(graph, "ServicePrincipal", p["id"]).patch(body)


async def _remove_key_credential(graph: Any, object_type: str, p: dict[str, Any]) -> None:
    """Read the object's keyCredentials *with* their ``key`` (``$select=keyCredentials``: Graph
    returns the public key only then) and PATCH the collection without ``keyId``. Graph has no
    etag here: a certificate added between this read and the PATCH would be dropped; the window
    is one round trip."""
    from msgraph.generated.models.application import Application
    from msgraph.generated.models.service_principal import ServicePrincipal

    builder = _graph_object(graph, object_type, p["id"])
    cls = builder.ApplicationItemRequestBuilderGetQueryParameters if object_type == "Application" \
        else builder.ServicePrincipalItemRequestBuilderGetQueryParameters
    from kiota_abstractions.base_request_configuration import RequestConfiguration

    config = RequestConfiguration(query_parameters=cls(select=["id", "keyCredentials"]))
    obj = await builder.get(request_configuration=config)
    current = list(obj.key_credentials or []) if obj else []
    gone = str(p["keyId"]).lower()
    keep = [k for k in current if str(k.key_id).lower() != gone]
    if len(keep) == len(current):
        return None
    body = Application(key_credentials=keep) if object_type == "Application" else ServicePrincipal(
        key_credentials=keep)
    await builder.patch(body)
    # Re-read and verify: the key is gone and every key sent back is still there. A certificate added by
    # someone else between the read and the PATCH would have been dropped by the PATCH and cannot be
    # seen here (Graph has no etag on keyCredentials); a PATCH that lost ours is caught.
    after = await builder.get(request_configuration=config)
    now = {str(k.key_id).lower() for k in ((after.key_credentials if after else None) or [])}
    kept = {str(k.key_id).lower() for k in keep}
    if gone in now or not kept <= now:
        raise RuntimeError(f"keyCredentials of {object_type} {p['id']} after PATCH: {sorted(now)}; expected "
                           f"{sorted(kept)} without {gone}")
    return None


def _delete_federated(graph: Any, p: dict[str, Any]) -> Any:
    return (graph.applications.by_application_id(p["id"]).federated_identity_credentials
            .by_federated_identity_credential_id(p["federatedIdentityCredentialId"]).delete())


def _create_directory_role_assignment(graph: Any, p: dict[str, Any]) -> Any:
    from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment

    body = UnifiedRoleAssignment(principal_id=p["principalId"], role_definition_id=p["roleDefinitionId"],
                                 directory_scope_id=p.get("directoryScopeId") or "/")
    return graph.role_management.directory.role_assignments.post(body)


def _create_app_role_assignment(graph: Any, p: dict[str, Any]) -> Any:
    from msgraph.generated.models.app_role_assignment import AppRoleAssignment

    body = AppRoleAssignment(principal_id=uuid.UUID(p["principalId"]), resource_id=uuid.UUID(p["resourceId"]),
                             app_role_id=uuid.UUID(p["appRoleId"]))
    return graph.service_principals.by_service_principal_id(p["id"]).app_role_assignments.post(body)


def _update_user(graph: Any, p: dict[str, Any]) -> Any:
    from msgraph.generated.models.user import User

    return graph.users.by_user_id(p["id"]).patch(User(account_enabled=bool(p["accountEnabled"])))


def _add_group_member(graph: Any, p: dict[str, Any]) -> Any:
    from msgraph.generated.models.reference_create import ReferenceCreate

    base = graph.request_adapter.base_url.rstrip("/")
    return graph.groups.by_group_id(p["id"]).members.ref.post(
        ReferenceCreate(odata_id=f"{base}/directoryObjects/{p['memberId']}"))


#: Graph operations an :class:`~cordon.action.ApiCall` may name: ``operation -> fn(graph, params)``
#: returning the SDK coroutine. Params use Graph's names (path ids ``id``, body ``keyId``...).
GRAPH_OPS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "servicePrincipals.removePassword": lambda g, p: _remove_password(g, "ServicePrincipal", p),
    "applications.removePassword": lambda g, p: _remove_password(g, "Application", p),
    "servicePrincipals.update": _update_sp,
    "servicePrincipals.removeKeyCredential": lambda g, p: _remove_key_credential(g, "ServicePrincipal", p),
    "applications.removeKeyCredential": lambda g, p: _remove_key_credential(g, "Application", p),
    "applications.federatedIdentityCredentials.delete": _delete_federated,
    "users.revokeSignInSessions": lambda g, p: g.users.by_user_id(p["id"]).revoke_sign_in_sessions.post(),
    "users.update": lambda g, p: _update_user(g, p),
    "groups.members.add": lambda g, p: _add_group_member(g, p),
    "groups.members.remove":
        lambda g, p: g.groups.by_group_id(p["id"]).members.by_directory_object_id(p["memberId"]).ref.delete(),
    "roleManagement.directory.roleAssignments.delete":
        lambda g, p: g.role_management.directory.role_assignments.by_unified_role_assignment_id(p["id"]).delete(),
    "roleManagement.directory.roleAssignments.create": lambda g, p: _create_directory_role_assignment(g, p),
    "servicePrincipals.appRoleAssignments.delete":
        lambda g, p: g.service_principals.by_service_principal_id(p["id"]).app_role_assignments
        .by_app_role_assignment_id(p["appRoleAssignmentId"]).delete(),
    "servicePrincipals.appRoleAssignments.create": lambda g, p: _create_app_role_assignment(g, p),
}


def graph_run(ctx: ActionContext, make: Callable[[Any], Any]) -> Any:
    """Run ``make(graph_client)`` (a coroutine) with ``ctx.clients.run``; returns its result.
    Raises ``TypeError`` if the client factory has no ``run`` (not an Azure factory)."""
    run = getattr(ctx.clients, "run", None)
    if not callable(run):
        raise TypeError("ctx.clients is not an Azure client factory (no run())")
    return run(make(ctx.clients("graph")))


def beta_sign_ins_url(graph: Any, flt: str, top: int) -> str:
    """Graph's beta ``auditLogs/signIns`` URL on ``graph``'s host (its request adapter's base URL,
    ``/v1.0`` replaced by ``/beta``) with ``$filter`` ``flt`` and ``$top`` ``top``."""
    base = str(graph.request_adapter.base_url).rstrip("/")
    root = base[: -len("/v1.0")] if base.endswith("/v1.0") else base
    return f"{root}/beta/auditLogs/signIns?$filter={quote(flt, safe='')}&$top={top}"


def graph_read(ctx: ActionContext, make: Callable[[Any], Any]) -> Any:
    """:func:`graph_run`, but ``None`` when Graph answers 404."""
    try:
        return graph_run(ctx, make)
    except Exception as err:
        if odata_status(err) == 404:
            return None
        raise


def _own(ctx: ActionContext) -> set[str]:
    out = set()
    for attr in ("own_identity", "own_object_id"):
        fn = getattr(ctx.clients, attr, None)
        try:
            value = fn() if callable(fn) else None
        except Exception:  # noqa: BLE001 - unknown identity: the other guards still apply
            value = None
        if value:
            out.add(str(value).lower())
    return out


def _refuse_self(ctx: ActionContext, *ids: str | None, what: str) -> None:
    mine = _own(ctx)
    for value in ids:
        if value and str(value).lower() in mine:
            raise GuardError(f"{what} is Cordon's own identity ({value})")


# -- containment --------------------------------------------------------------------------------
class AzureContainmentAction(ContainmentAction):
    """Base of Azure containment actions: :meth:`call` makes one SDK call (see module doc) and
    :meth:`read_state` first refuses parameters that do not name the detection's credential
    (:meth:`~cordon.action.Action.check_identifies`), then calls :meth:`read`.

    Raises whatever the SDK raises (``ODataError`` from msgraph, ``HttpResponseError`` from
    azure-core) and ``ValueError`` for an unknown operation.
    """

    provider = "azure"

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        params = copy.deepcopy(api.params)
        if api.service == "graph":
            op = GRAPH_OPS.get(api.operation)
            if op is None:
                raise ValueError(f"unknown Graph operation {api.operation!r}")
            return graph_run(ctx, lambda g: op(g, params))
        if api.service == "authorization":
            client: Any = ctx.clients("authorization")
            *path, method = api.operation.split(".")
            for part in path:
                client = getattr(client, part)
            if isinstance(params.get("parameters"), dict):
                from azure.mgmt.authorization.models import RoleAssignmentCreateParameters

                params["parameters"] = RoleAssignmentCreateParameters(**params["parameters"])
            return getattr(client, method)(**params)
        raise ValueError(f"unknown Azure service {api.service!r}")

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        reason = self.check_identifies(ctx.params, ctx.detection)
        if reason:
            raise GuardError(reason)
        return self.read(ctx)

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:  # pragma: no cover - interface
        raise NotImplementedError

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """No calls unless ``result`` changed something (``contained`` with rollback data)."""
        if result.status != "contained" or not result.rollback:
            return []
        return self.undo_calls(ctx, result.rollback.get("before"))

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        raise GuardError(f"action '{self.name}' cannot be rolled back")


def _object_type(ctx: ActionContext) -> str:
    """``params.object_type``, else the detection owner's ``attributes.objectType`` / ``type``,
    else ``ServicePrincipal``."""
    if ctx.params.get("object_type"):
        return str(ctx.params["object_type"])
    cred = ctx.detection.credential
    hint = (cred.attributes.get("objectType") if cred else None) or (cred.owner.type if cred else None)
    return "Application" if str(hint or "").lower() == "application" else "ServicePrincipal"


class _SpCredentialAction(AzureContainmentAction):
    """Shared state read of one credential on an application or service principal: which list
    (``password_credentials`` or ``key_credentials``) is read, how an entry is shown, and the
    word used in the target name are the subclass's."""

    class Params(Params):
        object_id: Annotated[Guid, Identifies(*OWNER_PATHS)]
        key_id: Annotated[Guid, Identifies("credential.uid")]
        object_type: ObjectType | SkipJsonSchema[None] = None

    class State(State):
        """What both subclasses read; each adds its list of credentials (and types ``paired``)."""

        object_id: str
        object_type: ObjectTypeName
        app_id: str | None
        display_name: str | None
        key_id: str
        present: bool
        found_on: ObjectRef | None
        paired: ObjectRef | None

    permissions = ("Application.ReadWrite.All",)
    rollback_supported = False
    noun: str
    sdk_list: str
    state_list: str
    view: Any

    def target(self, ctx: ActionContext) -> str:
        return f"{_object_type(ctx)} {ctx.params['object_id']} {self.noun} {ctx.params['key_id']}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        """The state (see the subclass doc). When the keyId is not on the named object, the paired
        object (the application of a service principal, or the service principal of an application,
        found by ``appId``) is read too: ``found_on`` says where the keyId is (``{object_type,
        object_id}``, ``None`` when on neither) and ``paired`` holds the other object's credentials."""
        otype, oid, key_id = _object_type(ctx), ctx.params["object_id"], str(ctx.params["key_id"]).lower()
        _refuse_self(ctx, oid, what=f"{otype} {oid}")
        obj = graph_read(ctx, lambda g: _graph_object(g, otype, oid).get())
        if obj is None:
            return None
        _refuse_self(ctx, obj.app_id, what=f"{otype} {oid} (appId {obj.app_id})")
        items = [type(self).view(c) for c in (getattr(obj, self.sdk_list) or [])]
        here = any((c["key_id"] or "").lower() == key_id for c in items)
        state: dict[str, Any] = {
            "object_id": oid, "object_type": otype, "app_id": obj.app_id, "display_name": obj.display_name,
            "key_id": key_id, "present": here, self.state_list: items,
            "found_on": {"object_type": otype, "object_id": oid} if here else None, "paired": None}
        if not here and obj.app_id:
            pair_type = "ServicePrincipal" if otype == "Application" else "Application"
            pair = graph_read(ctx, lambda g: _by_app_id(g, pair_type, obj.app_id).get())
            if pair is not None:
                _refuse_self(ctx, pair.id, what=f"{pair_type} {pair.id} paired with {otype} {oid}")
                pitems = [type(self).view(c) for c in (getattr(pair, self.sdk_list) or [])]
                there = any((c["key_id"] or "").lower() == key_id for c in pitems)
                state["paired"] = {"object_type": pair_type, "object_id": pair.id, self.state_list: pitems}
                if there:
                    state["present"] = True
                    state["found_on"] = {"object_type": pair_type, "object_id": pair.id}
        return state

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]

    def _where(self, ctx: ActionContext, state: dict[str, Any] | None) -> tuple[str, str]:
        found = (state or {}).get("found_on") or {"object_type": _object_type(ctx),
                                                  "object_id": ctx.params["object_id"]}
        return ("applications" if found["object_type"] == "Application" else "servicePrincipals",
                found["object_id"])


@register
class RemoveSpPassword(_SpCredentialAction):
    """Remove one password credential (client secret), by keyId, from the application or service
    principal that carries it (Graph ``POST /{applications|servicePrincipals}/{id}/removePassword``
    with ``{"keyId"}``). Irreversible: a secret cannot be restored (``addPassword`` mints a new
    one), so there is no rollback.

    Guard: ``key_id`` must be the detection's credential uid and ``object_id`` its owner (or
    target); the object must not be Cordon's own app / service principal. ``object_type``
    defaults to the detection owner's type (``Application`` / ``ServicePrincipal``).

    State: ``{object_id, object_type, app_id, display_name, key_id, present,
    password_credentials: [{key_id, display_name, hint, start, end}]}`` (never ``secretText``);
    ``None`` when the object does not exist (then nothing can sign in with it:
    ``already_contained`` with ``data={"missing": True}``). Contained when the keyId is not
    among the object's password credentials *and* those of its paired object: a keyId put on the
    application while the audit log names the service principal (or the reverse) is found on the
    pair (same ``appId``; ``found_on`` in the state) and removed there.
    API: https://learn.microsoft.com/graph/api/serviceprincipal-removepassword?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/application-removepassword?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-sp-password
            with:
              object_id: "{{ credential.owner.uid }}"
              key_id: "{{ credential.uid }}"
    """

    name = "azure.remove-sp-password"
    does_not = "revoke access tokens already issued with the secret: they stay valid until they expire"

    class State(_SpCredentialAction.State):
        password_credentials: list[PasswordView]
        paired: PairedPasswords | None

    credential_kinds = ("azure_sp_password",)
    noun, sdk_list, state_list, view = "password", "password_credentials", "password_credentials", _password_view

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        op, oid = self._where(ctx, state)
        return [ApiCall(service="graph", operation=f"{op}.removePassword",
                        params={"id": oid, "keyId": str(ctx.params["key_id"]).lower()})]


@register
class RemoveSpKey(_SpCredentialAction):
    """Remove one certificate credential, by keyId, from the application or service principal that
    carries it: read ``keyCredentials`` with ``$select`` (so Graph returns each certificate's
    public ``key``) and ``PATCH`` the collection without that keyId (Graph replaces the whole
    collection; the others are sent back unchanged). The ``removeKey`` action is not used: it
    demands a proof-of-possession JWT signed with one of the object's *existing* private keys,
    which a responder does not hold. Graph has no etag on this collection: a certificate added
    between Cordon's read and its PATCH would be dropped (one round trip). After the PATCH the
    collection is read again and checked (the keyId gone, every other key still there); a mismatch
    fails the run (``RuntimeError``). As for passwords, the paired object is searched when the
    keyId is not on the named one.

    Guard: as ``azure.remove-sp-password`` (``key_id`` = the detection's credential uid,
    ``object_id`` its owner or target, never Cordon's own object).
    State: ``{object_id, object_type, app_id, display_name, key_id, present, key_credentials:
    [{key_id, display_name, type, usage, start, end}]}`` (never key material); ``None`` when the
    object does not exist. Contained when the keyId is absent. No rollback (re-adding a
    certificate is a deliberate act).
    API: https://learn.microsoft.com/graph/api/application-update?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-update?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/resources/keycredential?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-sp-key
            with:
              object_id: "{{ credential.owner.uid }}"
              key_id: "{{ credential.uid }}"
    """

    name = "azure.remove-sp-key"

    class State(_SpCredentialAction.State):
        key_credentials: list[KeyView]
        paired: PairedKeys | None

    credential_kinds = ("azure_sp_key",)
    noun, sdk_list, state_list, view = "certificate", "key_credentials", "key_credentials", _key_view

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        op, oid = self._where(ctx, state)
        return [ApiCall(service="graph", operation=f"{op}.removeKeyCredential",
                        params={"id": oid, "keyId": str(ctx.params["key_id"]).lower()})]


@register
class DisableServicePrincipal(AzureContainmentAction):
    """Disable sign-in for a service principal (Graph ``PATCH /servicePrincipals/{id}`` with
    ``{"accountEnabled": false}``): no token is issued for it any more, whatever secret, key or
    federated credential is presented; existing tokens live until they expire.

    Guard: ``object_id`` must be the detection's credential owner, target, or (for
    ``azure_service_principal`` and ``azure_sp_sign_in``, the service principal an actor signed in as)
    the credential itself; Cordon's own service principal is refused.
    State: ``{object_id, app_id, display_name, account_enabled, service_principal_type}``;
    ``None`` when it does not exist (``already_contained``, ``data={"missing": True}``).
    Contained when ``account_enabled`` is false. Rollback: ``accountEnabled: true`` when it was
    enabled before.
    API: https://learn.microsoft.com/graph/api/serviceprincipal-update?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.disable-service-principal
            with:
              object_id: "{{ credential.owner.uid }}"
    """

    name = "azure.disable-service-principal"

    class Params(Params):
        object_id: Annotated[Guid, Identifies(*OWNER_PATHS, "credential.uid")]

    class State(State):
        object_id: str
        app_id: str | None
        display_name: str | None
        account_enabled: bool
        service_principal_type: str | None

    permissions = ("Application.ReadWrite.All",)
    credential_kinds = ("azure_sp_password", "azure_sp_key", "azure_service_principal", "azure_sp_sign_in")
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return f"ServicePrincipal {ctx.params['object_id']}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        oid = ctx.params["object_id"]
        _refuse_self(ctx, oid, what=f"service principal {oid}")
        sp = graph_read(ctx, lambda g: g.service_principals.by_service_principal_id(oid).get())
        if sp is None:
            return None
        _refuse_self(ctx, sp.app_id, what=f"service principal {oid} (appId {sp.app_id})")
        return {"object_id": oid, "app_id": sp.app_id, "display_name": sp.display_name,
                "account_enabled": sp.account_enabled is not False,
                "service_principal_type": sp.service_principal_type}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["account_enabled"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="servicePrincipals.update",
                        params={"id": ctx.params["object_id"], "accountEnabled": False})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("account_enabled"):
            return []
        return [ApiCall(service="graph", operation="servicePrincipals.update",
                        params={"id": before["object_id"], "accountEnabled": True})]


#: Seconds either side of the audit record's time in which the credential an unnamed "Add service
#: principal credentials" record added is looked for (see :func:`credentials_started_at`).
UNNAMED_WINDOW_SECONDS = 120

#: Credential kind -> (noun, the SDK / state list, its view, the Graph operation that removes one).
_UNNAMED_KINDS: dict[str, tuple[str, str, Callable[[Any], dict[str, Any]], str]] = {
    "azure_sp_password": ("password", "password_credentials", _password_view, "removePassword"),
    "azure_sp_key": ("certificate", "key_credentials", _key_view, "removeKeyCredential"),
}


class CredentialAt(State):
    """One password or certificate of the object or its pair, and how far its ``startDateTime`` is
    from the audit record's time (``offset_seconds``: start minus record time)."""

    object_type: ObjectTypeName
    object_id: str
    key_id: str | None
    display_name: str | None
    start: str | None
    end: str | None
    offset_seconds: float | None


class ServicePrincipalView(State):
    """The service principal that is disabled when no single credential matches."""

    object_id: str
    app_id: str | None
    display_name: str | None
    account_enabled: bool
    service_principal_type: str | None


def _unnamed_kind(detection: Any) -> tuple[str, str, Callable[[Any], dict[str, Any]], str]:
    kind = detection.credential.kind if detection.credential else None
    if kind not in _UNNAMED_KINDS:
        raise GuardError(f"the detection's credential ({kind}) is not an application or service principal "
                         "password or certificate")
    return _UNNAMED_KINDS[kind]


def _record_time(detection: Any) -> datetime:
    when = detection.time
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _record_iso(detection: Any) -> str:
    """The audit record's time as ISO 8601 UTC with milliseconds (``2024-05-01T10:00:00.123Z``)."""
    return _record_time(detection).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sp_view(sp: Any) -> dict[str, Any]:
    return {"object_id": sp.id, "app_id": sp.app_id, "display_name": sp.display_name,
            "account_enabled": sp.account_enabled is not False, "service_principal_type": sp.service_principal_type}


def credentials_started_at(ctx: ActionContext, object_id: str, tolerance: int) -> dict[str, Any] | None:
    """The passwords (``azure_sp_password`` detections) or certificates (``azure_sp_key``) of the
    application or service principal ``object_id`` and of its pair (same ``appId``), with those whose
    ``startDateTime`` is within ``tolerance`` seconds of the audit record's time (``in_window``).

    Why the start time names the credential an audit record logged without a KeyIdentifier: Graph's
    ``addPassword`` sets ``startDateTime`` to "now" when the caller gives none (API reference:
    https://learn.microsoft.com/graph/api/application-addpassword?view=graph-rest-1.0 , "The default
    value is now"), in the very request the directory audits, so the record's ``activityDateTime`` and
    the credential's ``startDateTime`` are one request's clock apart (well under a second). Clients
    that send their own ``startDateTime`` (Azure CLI's ``az ad app credential reset`` sends its host's
    UTC now) are off by that host's clock error plus the request's latency. The default window,
    :data:`UNNAMED_WINDOW_SECONDS` (120 s either side), covers a host clock that is not synchronised
    to the second with a wide margin, and stays narrow enough that a second credential of the same
    kind added to the same object inside it is rare; when one is, nothing is guessed (more than one
    in the window: no single match). A certificate's ``startDateTime`` is the certificate's own
    ``notBefore`` (or what the client sent), often earlier than the upload: it matches only when
    that falls in the window too. A credential backdated or post-dated by its creator never matches.

    Returns ``{object_id, object_type, app_id, display_name, kind ("password"|"certificate"),
    added_at (the record's time, ISO), tolerance_seconds, credentials: [CredentialAt], in_window:
    [keyId], paired: {object_type, object_id} | None, service_principal: ServicePrincipalView | None
    (the named one, or the application's service principal in this tenant)}``; ``None`` when
    ``object_id`` does not exist. Raises :class:`GuardError` when the object, its pair or the service
    principal is Cordon's own identity, or the detection is not a password / certificate one; Graph
    errors (``ODataError``) propagate.
    API: https://learn.microsoft.com/graph/api/resources/passwordcredential?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/resources/keycredential?view=graph-rest-1.0
    """
    noun, sdk_list, view, _ = _unnamed_kind(ctx.detection)
    otype, when = _object_type(ctx), _record_time(ctx.detection)
    _refuse_self(ctx, object_id, what=f"{otype} {object_id}")
    obj = graph_read(ctx, lambda g: _graph_object(g, otype, object_id).get())
    if obj is None:
        return None
    _refuse_self(ctx, obj.app_id, what=f"{otype} {object_id} (appId {obj.app_id})")
    objects: list[tuple[str, str, Any]] = [(otype, object_id, obj)]
    pair_type = "ServicePrincipal" if otype == "Application" else "Application"
    pair = graph_read(ctx, lambda g: _by_app_id(g, pair_type, obj.app_id).get()) if obj.app_id else None
    if pair is not None:
        _refuse_self(ctx, pair.id, what=f"{pair_type} {pair.id} paired with {otype} {object_id}")
        objects.append((pair_type, str(pair.id), pair))
    creds: list[dict[str, Any]] = []
    for t, oid, o in objects:
        for c in getattr(o, sdk_list) or []:
            v = view(c)
            start = c.start_date_time
            if isinstance(start, datetime) and start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
            offset = round((start - when).total_seconds(), 3) if isinstance(start, datetime) else None
            creds.append({"object_type": t, "object_id": oid, "key_id": (v["key_id"] or "").lower() or None,
                          "display_name": v["display_name"], "start": v["start"], "end": v["end"],
                          "offset_seconds": offset})
    in_window = [c["key_id"] for c in creds
                 if c["key_id"] and c["offset_seconds"] is not None and abs(c["offset_seconds"]) <= tolerance]
    sp = obj if otype == "ServicePrincipal" else pair
    return {"object_id": object_id, "object_type": otype, "app_id": obj.app_id, "display_name": obj.display_name,
            "kind": noun, "added_at": _record_iso(ctx.detection), "tolerance_seconds": tolerance,
            "credentials": creds, "in_window": in_window,
            "paired": {"object_type": pair_type, "object_id": str(pair.id)} if pair is not None else None,
            "service_principal": _sp_view(sp) if sp is not None else None}


def _where(state: dict[str, Any]) -> str:
    paired = state.get("paired")
    return f"{state['object_type']} {state['object_id']}" + (
        f" or its {paired['object_type']} {paired['object_id']}" if paired else "")


def single_match(state: dict[str, Any]) -> tuple[str | None, str]:
    """``(keyId, reason)`` of :func:`credentials_started_at`'s state: the keyId when exactly one
    credential started in the window, else ``None``; ``reason`` says which, in words."""
    noun, window = state["kind"], f"within {state['tolerance_seconds']} s of the record's time {state['added_at']}"
    found = state["in_window"]
    if len(found) == 1:
        start = next(c["start"] for c in state["credentials"] if c["key_id"] == found[0])
        return found[0], (f"exactly one {noun} on {_where(state)} started {window}: keyId {found[0]} "
                          f"(startDateTime {start}); only it is removed")
    what = f"no {noun}" if not found else f"{len(found)} {noun}s ({', '.join(found)})"
    return None, (f"{what} of the {len(state['credentials'])} on {_where(state)} started {window}: the one the "
                  "record added cannot be told apart, so the service principal is disabled instead")


@register
class RemoveUnnamedCredential(AzureContainmentAction):
    """Contain a password or certificate that an audit record says was added to an application or
    service principal but logs without a KeyIdentifier: remove exactly the one credential whose
    ``startDateTime`` matches the record's time, or, when no single credential does, disable the
    service principal (``accountEnabled: false``) and say why.

    ``key_id`` is what ``azure.unnamed-credential`` found before the plan (``null`` when no single
    credential of the detection's kind, on the object or its pair, started within ``tolerance_seconds``
    of the record's time: :func:`credentials_started_at` documents the window and why). With a keyId:
    it must still be a credential of that kind on the object or its pair whose ``startDateTime`` is
    in the window, else ``GuardError`` (run ``refused``: it is not the credential the record added);
    it is removed as ``azure.remove-sp-password`` (Graph ``removePassword``) or
    ``azure.remove-sp-key`` (``PATCH keyCredentials`` without it) do, every other credential
    untouched, the service principal left enabled. Without: the service principal (the named one, or
    the application's own in this tenant) is disabled as ``azure.disable-service-principal`` does;
    an application without a service principal here is refused (``GuardError``: nothing to disable,
    a person must look). The plan's target says which, and why.

    Guard: ``object_id`` must be the detection's credential owner or target; the object, its pair
    and the service principal must not be Cordon's own.
    State: :func:`credentials_started_at`'s (``credentials`` with their start times, ``in_window``,
    ``service_principal`` with ``account_enabled``) plus ``{decision ("remove"|"disable"), key_id,
    present, found_on}``; ``None`` when the object does not exist (``already_contained``). Contained
    when the keyId is on neither object (remove), or the service principal is disabled (disable).
    Rollback: a disabled service principal is enabled again (when it was enabled before); a removed
    secret or certificate cannot be restored (``GuardError``, rollback ``failed`` with the reason).
    Errors: ``ODataError`` (HTTP status in the message; kiota retries 429 / 503 / 504).
    API: https://learn.microsoft.com/graph/api/serviceprincipal-removepassword?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/application-update?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-update?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-unnamed-credential
            with:
              object_id: "{{ credential.owner.uid }}"
              key_id: "{{ enrichment['azure.unnamed-credential'].key_id }}"
    """

    name = "azure.remove-unnamed-credential"

    class Params(Params):
        object_id: Annotated[Guid, Identifies(*OWNER_PATHS)]
        key_id: Annotated[Guid | None, Field(
            description="keyId of the one credential that started at the record's time (from "
                        "azure.unnamed-credential); null: no single one did, the service principal is disabled")]
        object_type: ObjectType | SkipJsonSchema[None] = None
        tolerance_seconds: Annotated[int, Field(ge=1, le=900)] = UNNAMED_WINDOW_SECONDS

    class State(State):
        object_id: str
        object_type: ObjectTypeName
        app_id: str | None
        display_name: str | None
        kind: Literal["password", "certificate"]
        added_at: str
        tolerance_seconds: int
        credentials: list[CredentialAt]
        in_window: list[str]
        paired: ObjectRef | None
        service_principal: ServicePrincipalView | None
        decision: Literal["remove", "disable"]
        key_id: str | None
        present: bool
        found_on: ObjectRef | None

    permissions = ("Application.ReadWrite.All",)
    credential_kinds = ("azure_sp_password", "azure_sp_key")
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        noun = _UNNAMED_KINDS.get(ctx.detection.credential.kind if ctx.detection.credential else "",
                                  ("credential",))[0]
        p, otype = ctx.params, _object_type(ctx)
        tol = p.get("tolerance_seconds", UNNAMED_WINDOW_SECONDS)
        window = (f"started within {tol} s of the record's time {_record_iso(ctx.detection)}; "
                  "the record logs no KeyIdentifier")
        if p.get("key_id"):
            return f"{otype} {p['object_id']} {noun} {p['key_id']} (the only {noun} that {window})"
        sp = f"ServicePrincipal {p['object_id']}" if otype == "ServicePrincipal" else \
            f"the ServicePrincipal of Application {p['object_id']}"
        return f"{sp}: disable sign-in (fallback: no single {noun} on it or its pair {window})"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        tol = int(ctx.params.get("tolerance_seconds", UNNAMED_WINDOW_SECONDS))
        state = credentials_started_at(ctx, ctx.params["object_id"], tol)
        if state is None:
            return None
        key_id = str(ctx.params.get("key_id") or "").lower() or None
        if key_id is None:
            if state["service_principal"] is None:
                raise GuardError(f"no single {state['kind']} on {_where(state)} started within {tol} s of the "
                                 f"record's time, and {state['object_type']} {state['object_id']} has no service "
                                 "principal in this tenant to disable: a person must find the credential")
            return {**state, "decision": "disable", "key_id": None, "present": False, "found_on": None}
        found = next((c for c in state["credentials"] if c["key_id"] == key_id), None)
        if found is not None and key_id not in state["in_window"]:
            raise GuardError(f"{state['kind']} {key_id} on {found['object_type']} {found['object_id']} started at "
                             f"{found['start']}, not within {tol} s of the record's time {state['added_at']}: it "
                             "is not the credential the record added")
        where = {"object_type": found["object_type"], "object_id": found["object_id"]} if found else None
        return {**state, "decision": "remove", "key_id": key_id, "present": found is not None, "found_on": where}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        if state is None:
            return True
        if state["decision"] == "remove":
            return not state["present"]
        return not state["service_principal"]["account_enabled"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        assert state is not None  # contained otherwise
        if state["decision"] == "disable":
            return [ApiCall(service="graph", operation="servicePrincipals.update",
                            params={"id": state["service_principal"]["object_id"], "accountEnabled": False})]
        found, remove = state["found_on"], _UNNAMED_KINDS[ctx.detection.credential.kind][3]
        collection = "applications" if found["object_type"] == "Application" else "servicePrincipals"
        return [ApiCall(service="graph", operation=f"{collection}.{remove}",
                        params={"id": found["object_id"], "keyId": state["key_id"]})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        if before["decision"] == "remove":
            raise GuardError(f"{before['kind']} {before['key_id']} was removed: a secret or certificate cannot be "
                             "restored (adding one mints a new credential); nothing was rolled back")
        sp = before.get("service_principal") or {}
        if not sp.get("account_enabled"):
            return []
        return [ApiCall(service="graph", operation="servicePrincipals.update",
                        params={"id": sp["object_id"], "accountEnabled": True})]


@register
class RemoveRoleAssignment(AzureContainmentAction):
    """Delete exactly one Azure RBAC role assignment by its full ARM ID
    (``RoleAssignments.delete_by_id``, ``DELETE /{scope}/providers/Microsoft.Authorization/
    roleAssignments/{name}?api-version=2022-04-01``).

    Guard: ``assignment_id`` must be the detection's credential uid; an assignment whose
    principal is Cordon's own service principal is refused.
    State: ``{assignment_id, name, scope, principal_id, principal_type, role_definition_id,
    condition, condition_version, description}``; ``None`` when it does not exist (404:
    ``already_contained``, ``data={"missing": True}``). Contained when it does not exist.
    Rollback: ``create_by_id`` (PUT) of the same ID with the recorded principal, role definition,
    principal type, condition and description.
    API: https://learn.microsoft.com/rest/api/authorization/role-assignments/delete-by-id

    .. code-block:: yaml

        contain:
          - action: azure.remove-role-assignment
            with:
              assignment_id: "{{ credential.uid }}"
    """

    name = "azure.remove-role-assignment"

    class Params(Params):
        assignment_id: Annotated[AssignmentId, Identifies("credential.uid")]

    class State(State):
        assignment_id: str
        name: str | None
        scope: str | None
        principal_id: str
        principal_type: str | None
        role_definition_id: str
        condition: str | None
        condition_version: str | None
        description: str | None

    permissions = ("Microsoft.Authorization/roleAssignments/read", "Microsoft.Authorization/roleAssignments/delete",
                   "Microsoft.Authorization/roleAssignments/write")
    credential_kinds = ("azure_role_assignment",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["assignment_id"]

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        aid = ctx.params["assignment_id"]
        try:
            ra = ctx.clients("authorization").role_assignments.get_by_id(aid)
        except ResourceNotFoundError:
            return None
        _refuse_self(ctx, ra.principal_id, what=f"role assignment {aid}'s principal")
        return {"assignment_id": ra.id, "name": ra.name, "scope": ra.scope, "principal_id": ra.principal_id,
                "principal_type": ra.principal_type, "role_definition_id": ra.role_definition_id,
                "condition": ra.condition, "condition_version": ra.condition_version, "description": ra.description}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="authorization", operation="role_assignments.delete_by_id",
                        params={"role_assignment_id": ctx.params["assignment_id"]})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        parameters = {"role_definition_id": before["role_definition_id"], "principal_id": before["principal_id"],
                      "principal_type": before.get("principal_type")}
        for k in ("condition", "condition_version", "description"):
            if before.get(k):
                parameters[k] = before[k]
        return [ApiCall(service="authorization", operation="role_assignments.create_by_id",
                        params={"role_assignment_id": before["assignment_id"], "parameters": parameters})]


@register
class RemoveFederatedCredential(AzureContainmentAction):
    """Delete one federated identity credential of an application (Graph ``DELETE
    /applications/{id}/federatedIdentityCredentials/{fid}``): the external identity provider
    (GitHub Actions, a Kubernetes service account...) can no longer exchange its tokens for the
    application's. No rollback: re-creating it is a deliberate act, not an undo.

    Guard: ``credential`` must be the detection's credential uid
    (``<application object id>/federatedIdentityCredentials/<id>``); Cordon's own application is
    refused. State: ``{credential, application_id, id, name, issuer, subject, audiences}``;
    ``None`` when it (or the application) does not exist. Contained when it does not exist.
    API: https://learn.microsoft.com/graph/api/federatedidentitycredential-delete?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-federated-credential
            with:
              credential: "{{ credential.uid }}"
    """

    name = "azure.remove-federated-credential"

    class Params(Params):
        credential: Annotated[FederatedUid, Identifies("credential.uid")]

    class State(State):
        credential: str
        application_id: str
        id: str | None
        name: str | None
        issuer: str | None
        subject: str | None
        audiences: list[str]

    permissions = ("Application.ReadWrite.All",)
    credential_kinds = ("azure_federated_credential",)
    rollback_supported = False

    @staticmethod
    def ids(uid: str) -> tuple[str, str]:
        app, _, fid = uid.partition("/federatedIdentityCredentials/")
        return app, fid

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["credential"]

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        app_id, fid = self.ids(ctx.params["credential"])
        _refuse_self(ctx, app_id, what=f"application {app_id}")
        app = graph_read(ctx, lambda g: g.applications.by_application_id(app_id).get())
        if app is None:
            return None
        _refuse_self(ctx, app.app_id, what=f"application {app_id} (appId {app.app_id})")
        fic = graph_read(ctx, lambda g: g.applications.by_application_id(app_id).federated_identity_credentials
                         .by_federated_identity_credential_id(fid).get())
        if fic is None:
            return None
        return {"credential": ctx.params["credential"], "application_id": app_id, "id": fic.id, "name": fic.name,
                "issuer": fic.issuer, "subject": fic.subject, "audiences": list(fic.audiences or [])}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        app_id, fid = self.ids(ctx.params["credential"])
        return [ApiCall(service="graph", operation="applications.federatedIdentityCredentials.delete",
                        params={"id": app_id, "federatedIdentityCredentialId": fid})]


@register
class RevokeUserSessions(AzureContainmentAction):
    """Invalidate a user's refresh tokens and session cookies (Graph ``POST
    /users/{id}/revokeSignInSessions``), which resets ``signInSessionsValidFromDateTime`` to now.

    Guard: ``user_id`` must be the detection's credential uid (``azure_user``; ``azure_user_sessions``,
    the user an actor signed in as) or target.
    State: ``{user_id, user_principal_name, account_enabled, sessions_valid_from}``; ``None`` when
    the user does not exist. Contained when ``sessions_valid_from`` is later than the detection's
    time (every session issued before the detection is already revoked), so a second run makes no
    call. No rollback (revoked tokens cannot be restored).
    API: https://learn.microsoft.com/graph/api/user-revokesigninsessions?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.revoke-user-sessions
            with:
              user_id: "{{ credential.uid }}"
    """

    name = "azure.revoke-user-sessions"

    class Params(Params):
        user_id: Annotated[Guid, Identifies("credential.uid", "target.uid")]

    class State(State):
        user_id: str
        user_principal_name: str | None
        account_enabled: bool | None
        sessions_valid_from: str | None
        revoked_since_detection: bool

    permissions = ("User.RevokeSessions.All", "User.Read.All")
    credential_kinds = ("azure_user", "azure_user_sessions", "azure_user_app_password")
    rollback_supported = False

    def target(self, ctx: ActionContext) -> str:
        return f"user {ctx.params['user_id']}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        uid = ctx.params["user_id"]
        _refuse_self(ctx, uid, what=f"user {uid}")
        user = graph_read(ctx, lambda g: g.users.by_user_id(uid).get())
        if user is None:
            return None
        valid_from = user.sign_in_sessions_valid_from_date_time
        return {"user_id": uid, "user_principal_name": user.user_principal_name,
                "account_enabled": user.account_enabled, "sessions_valid_from": _iso(valid_from),
                # Graph gives signInSessionsValidFromDateTime in whole seconds: compare at that
                # precision, or a revocation in the detection's own second reads as not done
                "revoked_since_detection": bool(valid_from and valid_from >= ctx.detection.time.replace(microsecond=0))}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["revoked_since_detection"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="users.revokeSignInSessions", params={"id": ctx.params["user_id"]})]


@register
class BlockAppPasswords(AzureContainmentAction):
    """Stop a user's app passwords: add the user to the security group a Conditional Access policy
    blocks legacy authentication for (``azure.legacy_auth_block_group`` in ``cordon.yaml``; Graph
    ``POST /groups/{id}/members/$ref``), since app passwords only sign in through legacy protocols;
    with ``azure.app_password_disable_account: true`` also disable the account (``PATCH /users/{id}``
    ``accountEnabled: false``). Graph has no call that lists or deletes a user's app passwords: that
    stays a manual step (the per-user MFA page), which the playbook declares and the case waits for.

    Guard: ``user_id`` must be the detection's credential uid (``azure_user_app_password``); Cordon's
    own identity is refused; without a configured group the step refuses, naming the key.
    State: ``{user_id, user_principal_name, account_enabled, group_id, group_name, member,
    disable_account}``; ``None`` when the user does not exist. Membership is read with ``POST
    /users/{id}/checkMemberGroups``. Contained when the user is a member (and disabled, when asked).
    Rollback: remove the membership (``DELETE /groups/{id}/members/{user}/$ref``) and re-enable an
    account this step disabled.
    API: https://learn.microsoft.com/graph/api/group-post-members?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/group-delete-members?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/directoryobject-checkmembergroups?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/user-update?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.block-app-passwords
            with:
              user_id: "{{ credential.uid }}"
    """

    name = "azure.block-app-passwords"

    class Params(Params):
        user_id: Annotated[Guid, Identifies("credential.uid")]

    class State(State):
        user_id: str
        user_principal_name: str | None
        account_enabled: bool | None
        group_id: str
        group_name: str | None
        member: bool
        disable_account: bool

    permissions = ("GroupMember.ReadWrite.All", "User.EnableDisableAccount.All", "User.Read.All")
    credential_kinds = ("azure_user_app_password",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return f"user {ctx.params['user_id']}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
            CheckMemberGroupsPostRequestBody,
        )

        from cordon.providers.azure.settings import azure_settings

        settings = azure_settings()
        gid = settings.legacy_auth_block_group
        if not gid:
            raise GuardError("no azure.legacy_auth_block_group in cordon.yaml: the group a Conditional Access "
                             "policy blocks legacy authentication for is not configured, so app passwords "
                             "cannot be stopped")
        uid = ctx.params["user_id"]
        _refuse_self(ctx, uid, what=f"user {uid}")
        user = graph_read(ctx, lambda g: g.users.by_user_id(uid).get())
        if user is None:
            return None
        group = graph_read(ctx, lambda g: g.groups.by_group_id(gid).get())
        if group is None:
            raise GuardError(f"azure.legacy_auth_block_group {gid}: no such group in the tenant")
        found = graph_run(ctx, lambda g: g.users.by_user_id(uid).check_member_groups.post(
            CheckMemberGroupsPostRequestBody(group_ids=[gid])))
        member = gid.lower() in {str(v).lower() for v in (getattr(found, "value", None) or [])}
        return {"user_id": uid, "user_principal_name": user.user_principal_name,
                "account_enabled": user.account_enabled, "group_id": gid, "group_name": group.display_name,
                "member": member, "disable_account": settings.app_password_disable_account}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        if state is None:
            return True
        return state["member"] and not (state["disable_account"] and state["account_enabled"])

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        if state is None:
            return []
        calls = []
        if not state["member"]:
            calls.append(ApiCall(service="graph", operation="groups.members.add",
                                 params={"id": state["group_id"], "memberId": state["user_id"]}))
        if state["disable_account"] and state["account_enabled"]:
            calls.append(ApiCall(service="graph", operation="users.update",
                                 params={"id": state["user_id"], "accountEnabled": False}))
        return calls

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if before is None:
            return []
        calls = []
        if not before["member"]:
            calls.append(ApiCall(service="graph", operation="groups.members.remove",
                                 params={"id": before["group_id"], "memberId": before["user_id"]}))
        if before["disable_account"] and before["account_enabled"]:
            calls.append(ApiCall(service="graph", operation="users.update",
                                 params={"id": before["user_id"], "accountEnabled": True}))
        return calls


class DirectoryRoleAssignmentView(State):
    """An active ``unifiedRoleAssignment`` of a directory role, as the state shows it."""

    id: str
    principal_id: str
    role_definition_id: str
    directory_scope_id: str | None


@register
class RemoveDirectoryRoleMember(AzureContainmentAction):
    """Remove one principal from one privileged Entra directory role: delete its active
    ``unifiedRoleAssignment`` of that role at directory scope ``/`` (Graph ``DELETE
    /roleManagement/directory/roleAssignments/{id}``, found with ``GET .../roleAssignments?$filter=
    principalId eq '{member}' and roleDefinitionId eq '{template}' and directoryScopeId eq '/'``;
    the same membership ``DELETE /directoryRoles/{id}/members/{memberId}/$ref`` removes).

    ``credential`` is the detection's uid ``<role template id or display name>#<member object id>``;
    the role is resolved to its built-in template id (:func:`cordon.providers.azure.detections.
    directory_role_template`; the detection's ``roleTemplateId`` / ``roleDisplayName`` attributes
    when the uid carries a name the table does not know). Guard: the credential must be the
    detection's; the role must be privileged (:data:`cordon.providers.azure.detections.
    PRIVILEGED_DIRECTORY_ROLES`: a reader role is never contained); Cordon's own service principal is
    refused. Scoped grants (administrative units) and PIM *eligible* assignments are not touched.
    State: ``{credential, member_id, role_template_id, role_name, present, assignments: [{id,
    principal_id, role_definition_id, directory_scope_id}]}``. Contained when no such assignment
    exists. Rollback: re-create each removed assignment (``POST .../roleAssignments`` with the
    recorded principal, role and scope; the new assignment gets a new id).
    API: https://learn.microsoft.com/graph/api/rbacapplication-list-roleassignments?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/unifiedroleassignment-delete?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/rbacapplication-post-roleassignments?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-directory-role-member
            with:
              credential: "{{ credential.uid }}"
    """

    name = "azure.remove-directory-role-member"

    class Params(Params):
        credential: Annotated[DirectoryRoleUid, Identifies("credential.uid")]

    class State(State):
        credential: str
        member_id: str
        role_template_id: str
        role_name: str | None
        present: bool
        assignments: list[DirectoryRoleAssignmentView]

    permissions = ("RoleManagement.ReadWrite.Directory",)
    credential_kinds = ("azure_directory_role",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        role, _, member = ctx.params["credential"].partition("#")
        return f"directory role {role} member {member}"

    def _role(self, ctx: ActionContext) -> tuple[str, str | None]:
        from cordon.providers.azure.detections import (
            DIRECTORY_ROLE_TEMPLATES,
            PRIVILEGED_DIRECTORY_ROLES,
            directory_role_template,
        )

        role = ctx.params["credential"].partition("#")[0]
        attrs = ctx.detection.credential.attributes if ctx.detection.credential else {}
        template = next((t for t in (directory_role_template(role),
                                     directory_role_template(attrs.get("roleTemplateId")),
                                     directory_role_template(attrs.get("roleDisplayName"))) if t), None)
        if template is None:
            raise GuardError(f"directory role {role!r} is not a known built-in role: not contained")
        if template not in PRIVILEGED_DIRECTORY_ROLES:
            raise GuardError(f"directory role {DIRECTORY_ROLE_TEMPLATES[template]} is not privileged: not contained")
        return template, DIRECTORY_ROLE_TEMPLATES.get(template)

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        template, role_name = self._role(ctx)
        member = ctx.params["credential"].partition("#")[2].lower()
        _refuse_self(ctx, member, what=f"directory role member {member}")
        flt = f"principalId eq '{member}' and roleDefinitionId eq '{template}' and directoryScopeId eq '/'"
        builder = ctx.clients("graph").role_management.directory.role_assignments
        page = graph_run(ctx, lambda g: g.role_management.directory.role_assignments.get(
            request_configuration=_query(builder, filter=flt)))
        found = [{"id": a.id, "principal_id": a.principal_id, "role_definition_id": a.role_definition_id,
                  "directory_scope_id": a.directory_scope_id} for a in (page.value if page else None) or []
                 if (a.principal_id or "").lower() == member and (a.role_definition_id or "").lower() == template]
        return {"credential": ctx.params["credential"], "member_id": member, "role_template_id": template,
                "role_name": role_name, "present": bool(found), "assignments": found}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="roleManagement.directory.roleAssignments.delete",
                        params={"id": a["id"]}) for a in (state or {}).get("assignments") or []]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="roleManagement.directory.roleAssignments.create",
                        params={"principalId": a["principal_id"], "roleDefinitionId": a["role_definition_id"],
                                "directoryScopeId": a["directory_scope_id"] or "/"})
                for a in (before or {}).get("assignments") or []]


class AppRoleAssignmentView(State):
    """An ``appRoleAssignment`` as :func:`_assignment_view` shows it."""

    id: str
    principal_id: str | None
    principal_display_name: str | None
    resource_id: str | None
    resource_display_name: str | None
    app_role_id: str | None
    created: str | None


def _assignment_view(a: Any) -> dict[str, Any]:
    """An ``appRoleAssignment`` as ``{id, principal_id, principal_display_name, resource_id,
    resource_display_name, app_role_id, created}`` (ids lower-case text)."""
    return {"id": a.id, "principal_id": str(a.principal_id).lower() if a.principal_id else None,
            "principal_display_name": a.principal_display_name,
            "resource_id": str(a.resource_id).lower() if a.resource_id else None,
            "resource_display_name": a.resource_display_name,
            "app_role_id": str(a.app_role_id).lower() if a.app_role_id else None, "created": _iso(a.created_date_time)}


async def _list_app_role_assignments(graph: Any, sp_id: str) -> list[Any]:
    """Every ``appRoleAssignment`` of service principal ``sp_id`` (``GET /servicePrincipals/{id}/
    appRoleAssignments``, following ``@odata.nextLink`` page by page); ``[]`` for an empty answer."""
    builder = graph.service_principals.by_service_principal_id(sp_id).app_role_assignments
    page = await builder.get()
    out: list[Any] = []
    while page is not None:
        out.extend(page.value or [])
        if not page.odata_next_link:
            break
        page = await builder.with_url(page.odata_next_link).get()
    return out


@register
class RemoveAppRoleAssignment(AzureContainmentAction):
    """Take one dangerous Microsoft Graph application permission away from a service principal: delete
    the ``appRoleAssignment`` the detection names (Graph ``DELETE /servicePrincipals/{assignee}/
    appRoleAssignments/{id}``). The audit record "Add app role assignment to service principal" does not
    carry the assignment's id, so it is found by listing ``GET /servicePrincipals/{assignee}/
    appRoleAssignments`` (every page) and matching ``resourceId`` and ``appRoleId``.

    ``credential`` is the detection's uid ``<assignee SP id>#<resource SP id>#<appRoleId>``
    (:func:`cordon.providers.azure.detections._app_role_grant`). Guard: the credential must be the detection's;
    the role must be a dangerous Graph application permission *as the directory defines it now*: the
    resource service principal is read (``GET /servicePrincipals/{resource}``), its ``appId`` must be
    Microsoft Graph's and the ``appRole`` with that id must have a ``value`` in
    :data:`cordon.providers.azure.detections.RISKY_GRAPH_PERMISSIONS`; any other role (``Mail.Read``, a custom
    API's role, an id the resource does not define) is refused, nothing changed. Cordon's own service
    principal is refused as the assignee. Other assignments of the same service principal (other roles,
    other resources) and other principals' assignments of the same role are never touched.

    State: ``{credential, assignee_id, resource_id, resource_display_name, resource_app_id, app_role_id,
    app_role_value, present, assignments: [{id, principal_id, principal_display_name, resource_id,
    resource_display_name, app_role_id, created}]}``; ``None`` when the assignee or the resource does not
    exist (nothing can hold the permission: ``already_contained``, ``data={"missing": True}``). Contained
    when no matching assignment exists, so a second run makes no call. Rollback: re-create each removed
    assignment (``POST /servicePrincipals/{assignee}/appRoleAssignments`` with ``{principalId, resourceId,
    appRoleId}``; Graph gives it a new id), skipping one that exists again. Errors: msgraph's
    ``ODataError`` (HTTP status in the message; kiota retries 429 / 503 / 504), :class:`GuardError`.
    API: https://learn.microsoft.com/graph/api/serviceprincipal-list-approleassignments?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-delete-approleassignments?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-post-approleassignments?view=graph-rest-1.0

    .. code-block:: yaml

        contain:
          - action: azure.remove-app-role-assignment
            with:
              credential: "{{ credential.uid }}"
    """

    name = "azure.remove-app-role-assignment"

    class Params(Params):
        credential: Annotated[AppRoleUid, Identifies("credential.uid")]

    class State(State):
        credential: str
        assignee_id: str
        resource_id: str
        resource_display_name: str | None
        resource_app_id: str
        app_role_id: str
        app_role_value: str
        present: bool
        assignments: list[AppRoleAssignmentView]

    # DELETE and POST need AppRoleAssignment.ReadWrite.All; reading the resource's appRoles (and POST,
    # per Graph's table) Application.Read.All.
    permissions = ("AppRoleAssignment.ReadWrite.All", "Application.Read.All")
    credential_kinds = ("azure_app_role_assignment",)
    rollback_supported = True

    @staticmethod
    def ids(uid: str) -> tuple[str, str, str]:
        """``(assignee, resource, appRoleId)`` of a uid, lower-cased."""
        assignee, resource, role = (part.lower() for part in uid.split("#"))
        return assignee, resource, role

    def target(self, ctx: ActionContext) -> str:
        assignee, resource, role = self.ids(ctx.params["credential"])
        return f"service principal {assignee} app role {role} of resource {resource}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        assignee, resource_id, role_id = self.ids(ctx.params["credential"])
        _refuse_self(ctx, assignee, what=f"service principal {assignee}")
        resource = graph_read(ctx, lambda g: g.service_principals.by_service_principal_id(resource_id).get())
        if resource is None:
            return None
        role = next((r for r in resource.app_roles or [] if str(r.id).lower() == role_id), None)
        value = role.value if role is not None else None
        if (resource.app_id or "").lower() != GRAPH_APP_ID:
            raise GuardError(f"resource {resource_id} ({resource.display_name}, appId {resource.app_id}) is not "
                             "Microsoft Graph: not contained")
        if value not in RISKY_GRAPH_PERMISSIONS:
            raise GuardError(f"app role {role_id} ({value or 'not defined by Microsoft Graph'}) is not a dangerous "
                             "Graph application permission: not contained")
        try:
            found = graph_run(ctx, lambda g: _list_app_role_assignments(g, assignee))
        except Exception as err:
            if odata_status(err) == 404:
                return None
            raise
        matching = [_assignment_view(a) for a in found]
        matching = [a for a in matching if a["principal_id"] in (assignee, None) and a["resource_id"] == resource_id
                    and a["app_role_id"] == role_id]
        return {"credential": ctx.params["credential"], "assignee_id": assignee, "resource_id": resource_id,
                "resource_display_name": resource.display_name, "resource_app_id": resource.app_id,
                "app_role_id": role_id, "app_role_value": value, "present": bool(matching), "assignments": matching}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="servicePrincipals.appRoleAssignments.delete",
                        params={"id": state["assignee_id"], "appRoleAssignmentId": a["id"]})
                for a in (state or {}).get("assignments") or []]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("assignments"):
            return []
        now = self.read(ctx)
        if now is not None and now["present"]:
            return []  # granted again since (by someone, or an earlier rollback): nothing to re-create
        return [ApiCall(service="graph", operation="servicePrincipals.appRoleAssignments.create",
                        params={"id": before["assignee_id"], "principalId": before["assignee_id"],
                                "resourceId": before["resource_id"], "appRoleId": before["app_role_id"]})]


# -- enrichment ---------------------------------------------------------------------------------
#: Azure built-in RBAC role definition names by GUID (the detections' privileged table plus common others).
_RBAC_NAMES: dict[str, str] = {
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
    "9980e02c-c2be-4d73-94e8-173b1dc7cf3c": "Virtual Machine Contributor",
}


def _err_text(err: BaseException) -> str:
    """``HTTP <status> <code>: <message>`` for a Graph / ARM error, else ``<Type>: <text>``."""
    status = odata_status(err) or getattr(getattr(err, "response", None), "status_code", None) or getattr(
        err, "status_code", None)
    main = getattr(err, "error", None)
    code = getattr(main, "code", None) or getattr(err, "error_code", None)
    message = getattr(main, "message", None) or getattr(err, "message", None) or str(err)
    if status:
        return f"HTTP {status}{' ' + code if code else ''}: {message}"[:500]
    return f"{type(err).__name__}: {message}"[:500]


def _query(builder: Any, **params: Any) -> Any:
    """A kiota ``RequestConfiguration`` carrying ``builder``'s own GET query-parameter class."""
    from kiota_abstractions.base_request_configuration import RequestConfiguration

    cls = next(getattr(builder, n) for n in dir(builder) if n.endswith("GetQueryParameters"))
    return RequestConfiguration(query_parameters=cls(**params))


def _owners(ctx: ActionContext, otype: str, oid: str) -> list[dict[str, Any]]:
    page = graph_run(ctx, lambda g: _graph_object(g, otype, oid).owners.get())
    out = []
    for o in (page.value if page else None) or []:
        kind = (o.odata_type or "").rsplit(".", 1)[-1] or None
        out.append({"id": o.id, "type": kind, "display_name": getattr(o, "display_name", None),
                    "user_principal_name": getattr(o, "user_principal_name", None),
                    "app_id": getattr(o, "app_id", None)})
    return out


def _publisher_view(obj: Any) -> dict[str, Any] | None:
    vp = getattr(obj, "verified_publisher", None) if obj is not None else None
    if vp is None or not (vp.display_name or vp.verified_publisher_id):
        return None
    return {"display_name": vp.display_name, "verified_publisher_id": vp.verified_publisher_id,
            "added": _iso(vp.added_date_time)}


def _directory_roles(ctx: ActionContext, collection: str, oid: str) -> list[dict[str, Any]]:
    """The directory roles ``oid`` (a service principal or user) is a direct member of (Graph
    ``GET /{collection}/{id}/memberOf``, ``directoryRole`` entries only)."""
    def make(g: Any) -> Any:
        base = g.service_principals.by_service_principal_id(oid) if collection == "servicePrincipals" \
            else g.users.by_user_id(oid)
        return base.member_of.get()

    page = graph_run(ctx, make)
    out = []
    for o in (page.value if page else None) or []:
        if (o.odata_type or "").lower().endswith("directoryrole"):
            out.append({"id": o.id, "display_name": getattr(o, "display_name", None),
                        "role_template_id": getattr(o, "role_template_id", None)})
    return out


class _Sections:
    """Runs the optional parts of an enrichment; a part that fails is recorded in ``unavailable``
    (``{section: "HTTP 403 Authorization_RequestDenied: ..."}``) instead of failing the run."""

    def __init__(self) -> None:
        self.unavailable: dict[str, str] = {}

    def run(self, name: str, fn: Callable[[], Any], default: Any) -> Any:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - reported in the result
            self.unavailable[name] = _err_text(err)
            return default


@register
class ServicePrincipalFacts(EnrichmentAction):
    """Everything Graph and ARM say about one service principal or application *and its pair* (the
    application of a service principal, the service principal of an application, by ``appId``):
    who owns them, who published them, every credential they carry, what they are allowed to do.

    Returns ``{"exists": False, "object_id", "object_type"}`` when the named object does not exist,
    else (all lists may be empty):

    * ``exists, object_id, object_type, display_name, app_id, account_enabled`` (``None`` for an
      application), ``service_principal_type``; ``owners`` of the named object
      (``[{id, type ("user"|"servicePrincipal"|...), display_name, user_principal_name, app_id}]``),
      ``password_credentials`` ``[{key_id, display_name, hint, start, end}]`` and
      ``key_credentials`` ``[{key_id, display_name, type, usage, start, end}]`` of the named
      object, ``password_count``, ``key_count``;
    * ``application``: ``{object_id, display_name, publisher_domain, sign_in_audience, owners,
      password_credentials, key_credentials, federated_identity_credentials: [{id, name, issuer,
      subject, audiences}]}`` or ``None`` (not registered in this tenant: a multi-tenant app);
    * ``service_principal``: ``{object_id, display_name, account_enabled, service_principal_type,
      app_owner_organization_id, owners, password_credentials, key_credentials}`` or
      ``None``;
    * ``publisher``: ``{name (the verified publisher's, else the application's publisher domain),
      domain, verified (bool), verified_publisher ({display_name,
      verified_publisher_id, added} or None), app_owner_organization_id, home_tenant (bool: the app
      belongs to this tenant)}``;
    * ``all_owners``: owners of both objects, each with ``of`` (``["Application",
      "ServicePrincipal"]``); ``credential_in_detection_present`` (the detection's keyId on either
      object; ``None`` when the detection names no keyId) and ``credential_in_detection``
      (``{key_id, on, kind, display_name, start, end, type}`` or ``None``);
    * ``app_role_assignments``: application permissions granted to the service principal
      ``[{id, resource_id, resource_display_name, resource_app_id, app_role_id, permission,
      created}]``; ``oauth2_permission_grants``: delegated ``[{id, resource_id, consent_type,
      principal_id, scopes: [...]}]``; ``risky_permissions``: ``[{permission, type
      ("application"|"delegated"), resource}]`` for Graph permissions in
      :data:`cordon.providers.azure.detections.RISKY_GRAPH_PERMISSIONS`;
    * ``directory_roles``: Entra roles the service principal is a member of ``[{id, display_name,
      role_template_id}]``;
    * ``rbac_role_assignments``: Azure RBAC assignments of the service principal at subscription
      scope (and below, as ARM lists them) and at each management group of ``management_groups``
      ``[{id, scope, scope_level ("management_group"|"subscription"|"resource_group"|"resource"),
      role_definition_id, role_name, principal_type}]``;
    * ``sign_ins``: ``{available: True, scope, events: [{time, ip, app_display_name, status,
      resource, interactive}]}`` (the ``$top`` most recent of the service principal's own sign-ins:
      beta ``servicePrincipalId eq`` and ``signInEventTypes`` ``servicePrincipal``; v1.0 lists
      interactive user sign-ins only) or
      ``{available: False, reason}`` (Graph's sign-in log needs ``AuditLog.Read.All`` and an
      Entra ID P1/P2 tenant; otherwise 403 ``Authentication_RequestFromNonPremiumTenantOrB2CTenant``);
    * ``unavailable``: ``{section: reason}`` for every part that could not be read (403, 5xx after
      retries...): the rest is still returned.

    Secrets and key material are never returned. ``object_type`` defaults to the detection owner's
    type. Only the first page of each Graph collection is read (100 entries by default).
    API: https://learn.microsoft.com/graph/api/resources/serviceprincipal?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-list-approleassignments?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-list-oauth2permissiongrants?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-list-memberof?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/application-list-federatedidentitycredentials?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/signin-list?view=graph-rest-1.0 ,
    https://learn.microsoft.com/rest/api/authorization/role-assignments/list-for-scope

    .. code-block:: yaml

        enrich:
          - action: azure.service-principal
            with:
              object_id: "{{ credential.owner.uid }}"
              management_groups: [contoso-root]
    """

    name = "azure.service-principal"
    provider = "azure"

    class Params(Params):
        object_id: Guid
        object_type: ObjectType | SkipJsonSchema[None] = None
        management_groups: Annotated[list[ManagementGroup], Field(max_length=10)] | SkipJsonSchema[None] = None
        sign_in_limit: Annotated[int, Field(ge=0, le=50)] = 10

    permissions = ("Application.Read.All", "Directory.Read.All", "AuditLog.Read.All",
                   "Microsoft.Authorization/roleAssignments/read")
    credential_kinds = AZURE_KINDS

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        otype, oid = _object_type(ctx), ctx.params["object_id"]
        obj = graph_read(ctx, lambda g: _graph_object(g, otype, oid).get())
        if obj is None:
            return {"exists": False, "object_id": oid, "object_type": otype}
        parts = _Sections()
        pair_type = "ServicePrincipal" if otype == "Application" else "Application"
        pair = parts.run(f"{pair_type} (by appId)",
                         lambda: graph_read(ctx, lambda g: _by_app_id(g, pair_type, obj.app_id).get())
                         if obj.app_id else None, None)
        app, sp = (obj, pair) if otype == "Application" else (pair, obj)
        owners = _owners(ctx, otype, oid)
        pair_owners = parts.run(f"{pair_type} owners", lambda: _owners(ctx, pair_type, pair.id), []) \
            if pair is not None else []
        app_owners, sp_owners = (owners, pair_owners) if otype == "Application" else (pair_owners, owners)

        application = None
        if app is not None:
            fics = parts.run("federated_identity_credentials", lambda: [
                {"id": f.id, "name": f.name, "issuer": f.issuer, "subject": f.subject,
                 "audiences": list(f.audiences or [])}
                for f in (graph_run(ctx, lambda g: g.applications.by_application_id(app.id)
                                    .federated_identity_credentials.get()).value or [])], [])
            application = {"object_id": app.id, "display_name": app.display_name,
                           "publisher_domain": app.publisher_domain, "sign_in_audience": app.sign_in_audience,
                           "owners": app_owners,
                           "password_credentials": [_password_view(c) for c in app.password_credentials or []],
                           "key_credentials": [_key_view(c) for c in app.key_credentials or []],
                           "federated_identity_credentials": fics}
        service_principal = None
        if sp is not None:
            service_principal = {
                "object_id": sp.id, "display_name": sp.display_name, "account_enabled": sp.account_enabled,
                "service_principal_type": sp.service_principal_type,
                "app_owner_organization_id": str(sp.app_owner_organization_id) if sp.app_owner_organization_id
                else None, "owners": sp_owners,
                "password_credentials": [_password_view(c) for c in sp.password_credentials or []],
                "key_credentials": [_key_view(c) for c in sp.key_credentials or []]}

        verified = _publisher_view(app) or _publisher_view(sp)
        home = getattr(ctx.clients, "tenant_id", None)
        owner_org = service_principal["app_owner_organization_id"] if service_principal else None
        domain = app.publisher_domain if app is not None else None
        publisher = {"name": (verified or {}).get("display_name") or domain, "domain": domain,
                     "verified": verified is not None,
                     "verified_publisher": verified, "app_owner_organization_id": owner_org,
                     "home_tenant": (app is not None) or bool(owner_org and home and owner_org.lower() == home.lower())}

        all_owners: dict[str, dict[str, Any]] = {}
        for of, items in (("Application", app_owners if app is not None else []),
                          ("ServicePrincipal", sp_owners if sp is not None else [])):
            for o in items:
                all_owners.setdefault(o["id"], {**o, "of": []})["of"].append(of)

        cred = ctx.detection.credential
        named = (cred.uid or "").lower() if cred and cred.kind in ("azure_sp_password", "azure_sp_key") \
            and cred.uid else None
        found = None
        for holder, info in (("Application", application), ("ServicePrincipal", service_principal)):
            for kind, items in (("password", (info or {}).get("password_credentials") or []),
                                ("certificate", (info or {}).get("key_credentials") or [])):
                for c in items:
                    if named and (c["key_id"] or "").lower() == named and found is None:
                        found = {**c, "on": holder, "kind": kind}

        sp_id = sp.id if sp is not None else None
        grants = self._app_roles(ctx, parts, sp_id) if sp_id else []
        delegated = self._delegated(ctx, parts, sp_id) if sp_id else []
        risky = [{"permission": g["permission"], "type": "application", "resource": g["resource_display_name"]}
                 for g in grants if g["resource_app_id"] == GRAPH_APP_ID and g["permission"] in RISKY_GRAPH_PERMISSIONS]
        risky += [{"permission": scope, "type": "delegated", "resource": d["resource_display_name"]}
                  for d in delegated if d["resource_app_id"] == GRAPH_APP_ID for scope in d["scopes"]
                  if scope in RISKY_GRAPH_PERMISSIONS]
        roles = parts.run("directory_roles", lambda: _directory_roles(ctx, "servicePrincipals", sp_id), []) \
            if sp_id else []
        rbac = self._rbac(ctx, parts, sp_id) if sp_id else []
        sign_ins = self._sign_ins(ctx, sp_id) if sp_id else {"available": False,
                                                             "reason": "no service principal in this tenant"}
        return {"exists": True, "object_id": oid, "object_type": otype, "display_name": obj.display_name,
                "app_id": obj.app_id,
                "account_enabled": getattr(obj, "account_enabled", None) if otype == "ServicePrincipal" else None,
                "service_principal_type": getattr(obj, "service_principal_type", None), "owners": owners,
                "password_credentials": [_password_view(p) for p in (obj.password_credentials or [])],
                "key_credentials": [_key_view(k) for k in (obj.key_credentials or [])],
                "password_count": len(obj.password_credentials or []), "key_count": len(obj.key_credentials or []),
                "credential_in_detection_present": None if named is None else found is not None,
                "credential_in_detection": found, "application": application,
                "service_principal": service_principal, "publisher": publisher,
                "all_owners": list(all_owners.values()), "app_role_assignments": grants,
                "oauth2_permission_grants": delegated, "risky_permissions": risky, "directory_roles": roles,
                "rbac_role_assignments": rbac, "sign_ins": sign_ins, "unavailable": parts.unavailable}

    @staticmethod
    def _resource(ctx: ActionContext, cache: dict[str, Any], rid: str) -> Any:
        if rid not in cache:
            cache[rid] = graph_read(ctx, lambda g: g.service_principals.by_service_principal_id(rid).get())
        return cache[rid]

    def _app_roles(self, ctx: ActionContext, parts: _Sections, sp_id: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            page = graph_run(ctx, lambda g: g.service_principals.by_service_principal_id(sp_id)
                             .app_role_assignments.get())
            cache: dict[str, Any] = {}
            out = []
            for a in (page.value if page else None) or []:
                res = self._resource(ctx, cache, str(a.resource_id))
                role = next((r for r in (res.app_roles or []) if str(r.id) == str(a.app_role_id)), None) \
                    if res is not None else None
                out.append({"id": a.id, "resource_id": str(a.resource_id), "resource_display_name":
                            a.resource_display_name, "resource_app_id": res.app_id if res is not None else None,
                            "app_role_id": str(a.app_role_id), "permission": role.value if role else None,
                            "created": _iso(a.created_date_time)})
            return out
        return parts.run("app_role_assignments", read, [])

    def _delegated(self, ctx: ActionContext, parts: _Sections, sp_id: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            page = graph_run(ctx, lambda g: g.service_principals.by_service_principal_id(sp_id)
                             .oauth2_permission_grants.get())
            cache: dict[str, Any] = {}
            out = []
            for d in (page.value if page else None) or []:
                res = self._resource(ctx, cache, str(d.resource_id)) if d.resource_id else None
                out.append({"id": d.id, "resource_id": d.resource_id,
                            "resource_display_name": res.display_name if res is not None else None,
                            "resource_app_id": res.app_id if res is not None else None,
                            "consent_type": d.consent_type, "principal_id": d.principal_id,
                            "scopes": (d.scope or "").split()})
            return out
        return parts.run("oauth2_permission_grants", read, [])

    def _rbac(self, ctx: ActionContext, parts: _Sections, sp_id: str) -> list[dict[str, Any]]:
        from cordon.providers.azure.detections import PRIVILEGED_ROLE_DEFINITIONS

        names = {**_RBAC_NAMES, **PRIVILEGED_ROLE_DEFINITIONS}
        scopes = []
        sub = getattr(ctx.clients, "subscription_id", None)
        if sub:
            scopes.append(f"/subscriptions/{sub}")
        scopes += [f"/providers/Microsoft.Management/managementGroups/{mg}"
                   for mg in ctx.params.get("management_groups") or []]
        if not scopes:
            parts.unavailable["rbac_role_assignments"] = "no subscription id and no management group to look at"
            return []
        seen: dict[str, dict[str, Any]] = {}
        for scope in scopes:
            def read(scope: str = scope) -> None:
                auth = ctx.clients("authorization")
                for ra in auth.role_assignments.list_for_scope(scope, filter=f"principalId eq '{sp_id}'"):
                    rd = (ra.role_definition_id or "").rstrip("/").rsplit("/", 1)[-1].lower()
                    low = (ra.scope or "").lower()
                    level = ("management_group" if "/managementgroups/" in low else "resource" if "/providers/" in
                             low else "resource_group" if "/resourcegroups/" in low else "subscription")
                    seen.setdefault(ra.id.lower(), {
                        "id": ra.id, "scope": ra.scope, "scope_level": level,
                        "role_definition_id": ra.role_definition_id, "role_name": names.get(rd),
                        "principal_type": ra.principal_type})
            parts.run(f"rbac_role_assignments at {scope}", read, None)
        return list(seen.values())

    def _sign_ins(self, ctx: ActionContext, sp_id: str) -> dict[str, Any]:
        limit = int(ctx.params.get("sign_in_limit", 10))
        if limit == 0:
            return {"available": False, "reason": "not asked for (sign_in_limit 0)"}
        # the service principal's own sign-ins: v1.0 lists interactive user sign-ins only; the
        # event-type filter is beta's (https://learn.microsoft.com/graph/api/signin-list?view=graph-rest-beta)
        flt = f"servicePrincipalId eq '{sp_id}' and signInEventTypes/any(t: t eq 'servicePrincipal')"
        try:
            page = graph_run(ctx, lambda g: g.audit_logs.sign_ins.with_url(beta_sign_ins_url(g, flt, limit)).get())
        except Exception as err:  # noqa: BLE001 - the sign-in log is optional; said so
            return {"available": False, "reason": _err_text(err)}
        events = []
        for e in (page.value if page else None) or []:
            status = e.status.error_code if e.status else None
            events.append({"time": _iso(e.created_date_time), "ip": e.ip_address, "app_display_name":
                           e.app_display_name, "status": "success" if status == 0 else f"error {status}",
                           "resource": e.resource_display_name, "interactive": e.is_interactive})
        return {"available": True, "scope": f"{flt}, newest {limit}", "events": events}


_GUID_RE = re.compile(GUID_PATTERN)


@register
class UnnamedCredentialFacts(EnrichmentAction):
    """Which credential an audit record added without logging its KeyIdentifier: the passwords
    (``azure_sp_password``) or certificates (``azure_sp_key``) of the application or service principal
    and of its pair, and the one whose ``startDateTime`` is within ``tolerance_seconds`` of the record's
    time (:func:`credentials_started_at`: the window and why it names the credential).

    Returns :func:`credentials_started_at`'s state plus ``{key_id (the single match, else None),
    found_on: {object_type, object_id} | None, decision ("remove"|"disable"), reason}``; for an object
    that does not exist, ``{exists: false, object_id, key_id: None, decision: "disable", reason}``
    (``azure.remove-unnamed-credential`` then finds nothing to contain). ``azure-sp-credential-unnamed``
    renders ``azure.remove-unnamed-credential``'s ``key_id`` from it. Errors: ``ODataError``,
    :class:`GuardError` (Cordon's own object) propagate (recorded as the enrichment's ``error``; the
    playbook's containment then cannot be rendered and the guard refuses the case).
    API: https://learn.microsoft.com/graph/api/serviceprincipal-get?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/application-get?view=graph-rest-1.0

    .. code-block:: yaml

        enrich:
          - action: azure.unnamed-credential
            with:
              object_id: "{{ credential.owner.uid }}"
    """

    name = "azure.unnamed-credential"
    provider = "azure"

    class Params(Params):
        object_id: Guid
        object_type: ObjectType | SkipJsonSchema[None] = None
        tolerance_seconds: Annotated[int, Field(ge=1, le=900)] = UNNAMED_WINDOW_SECONDS

    permissions = ("Application.Read.All",)
    credential_kinds = ("azure_sp_password", "azure_sp_key")

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        oid = ctx.params["object_id"]
        state = credentials_started_at(ctx, oid, int(ctx.params.get("tolerance_seconds", UNNAMED_WINDOW_SECONDS)))
        if state is None:
            return {"exists": False, "object_id": oid, "key_id": None, "found_on": None, "decision": "disable",
                    "reason": f"{_object_type(ctx)} {oid} does not exist"}
        key_id, reason = single_match(state)
        found = next((c for c in state["credentials"] if key_id and c["key_id"] == key_id), None)
        return {"exists": True, **state, "key_id": key_id, "reason": reason,
                "found_on": {"object_type": found["object_type"], "object_id": found["object_id"]} if found else None,
                "decision": "remove" if key_id else "disable"}


@register
class ActorFacts(EnrichmentAction):
    """Who made the change: the detection's actor (``actor.user``: object id / UPN, or the acting
    service principal), from which IP address and user agent, what Graph knows of them, and whether
    they own the application or service principal the change was made to.

    Returns ``{actor: {uid, name, type}, src_ip, user_agent, access_path, exists (bool, None when
    the actor names no object Graph can look up), display_name, user_principal_name, app_id,
    account_enabled, directory_roles: [{id, display_name, role_template_id}], owns_app (bool;
    None without ``object_id``), owner_of: ["Application" | "ServicePrincipal", ...],
    unavailable: {section: reason}}``. A user actor is looked up by object id, else by UPN
    (``GET /users/{id | userPrincipalName}``); a service principal actor by object id, else appId.
    ``object_type`` defaults to the detection owner's type; the pair (same ``appId``) is checked
    too, so an owner of the application counts as owning its service principal.
    API: https://learn.microsoft.com/graph/api/user-get?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/application-list-owners?view=graph-rest-1.0

    .. code-block:: yaml

        enrich:
          - action: azure.actor
            with: {object_id: "{{ credential.owner.uid }}"}
    """

    name = "azure.actor"
    provider = "azure"

    class Params(Params):
        object_id: Guid | SkipJsonSchema[None] = None
        object_type: ObjectType | SkipJsonSchema[None] = None

    permissions = ("User.Read.All", "Application.Read.All", "Directory.Read.All")
    credential_kinds = AZURE_KINDS

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        actor = ctx.detection.actor
        user = actor.user
        parts = _Sections()
        out: dict[str, Any] = {
            "actor": {"uid": user.uid, "name": user.name, "type": user.type}, "src_ip": actor.src_ip,
            "user_agent": actor.user_agent, "access_path": actor.access_path, "exists": None,
            "display_name": None, "user_principal_name": None, "app_id": None, "account_enabled": None,
            "directory_roles": [], "owns_app": None, "owner_of": []}
        is_sp = str(user.type or "").lower() == "serviceprincipal"
        key = user.uid if user.uid and _GUID_RE.fullmatch(user.uid) else None
        actor_id: str | None = None
        if is_sp and (key or actor.session_issuer):
            def sp_get(g: Any) -> Any:
                if key:
                    return g.service_principals.by_service_principal_id(key).get()
                return g.service_principals_with_app_id(str(actor.session_issuer)).get()
            obj = parts.run("actor", lambda: graph_read(ctx, sp_get), None)
            if "actor" not in parts.unavailable:
                out["exists"] = obj is not None
            if obj is not None:
                actor_id = obj.id
                out.update(display_name=obj.display_name, app_id=obj.app_id, account_enabled=obj.account_enabled)
        elif not is_sp and (key or (user.name and "@" in user.name)):
            ident = key or str(user.name)
            obj = parts.run("actor", lambda: graph_read(ctx, lambda g: g.users.by_user_id(ident).get()), None)
            if "actor" not in parts.unavailable:
                out["exists"] = obj is not None
            if obj is not None:
                actor_id = obj.id
                out.update(display_name=obj.display_name, user_principal_name=obj.user_principal_name,
                           account_enabled=obj.account_enabled)
        if actor_id:
            out["directory_roles"] = parts.run(
                "directory_roles", lambda: _directory_roles(ctx, "servicePrincipals" if is_sp else "users",
                                                            actor_id), [])
        oid = ctx.params.get("object_id")
        if oid:
            otype = _object_type(ctx)
            mine = {v.lower() for v in (actor_id, user.uid, user.name, out["user_principal_name"]) if v}

            def owned_by_actor() -> list[str]:
                found = []
                obj = graph_read(ctx, lambda g: _graph_object(g, otype, oid).get())
                if obj is None:
                    return found
                pair_type = "ServicePrincipal" if otype == "Application" else "Application"
                pair = graph_read(ctx, lambda g: _by_app_id(g, pair_type, obj.app_id).get()) if obj.app_id else None
                for t, i in ((otype, oid), (pair_type, pair.id if pair is not None else None)):
                    if i and any({(o["id"] or "").lower(), (o["user_principal_name"] or "").lower()} & mine
                                 for o in _owners(ctx, t, i)):
                        found.append(t)
                return found
            out["owner_of"] = parts.run("owners", owned_by_actor, [])
            out["owns_app"] = None if "owners" in parts.unavailable else bool(out["owner_of"])
        out["unavailable"] = parts.unavailable
        return out
