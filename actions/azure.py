"""Azure enrichment and containment actions (msgraph-sdk, azure-mgmt-authorization).

Same shape as :mod:`actions.gcp` (Cloud Custodian-like self-describing classes): each action
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

Clients come from ``ctx.clients(service)`` (:func:`cordon.clouds_azure.azure_clients`);
``ctx.clients.own_identity()`` is Cordon's client id (appId) and ``own_object_id()`` its
service principal's object id, never contained.
API references: https://learn.microsoft.com/graph/api/resources/serviceprincipal?view=graph-rest-1.0 ,
https://learn.microsoft.com/graph/api/resources/application?view=graph-rest-1.0 ,
https://learn.microsoft.com/rest/api/authorization/role-assignments .
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from cordon.action import (
    ActionContext,
    ActionResult,
    ApiCall,
    ContainmentAction,
    EnrichmentAction,
    GuardError,
    register,
)

GUID = {"type": "string", "pattern": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
OBJECT_TYPE = {"type": "string", "enum": ["Application", "ServicePrincipal"],
               "description": "which directory object carries the credential (default: the detection's owner type)"}
ASSIGNMENT_ID = {
    "type": "string",
    "pattern": r"^/(?:[^/\s]+/)*[^/\s]+/providers/[Mm]icrosoft\.[Aa]uthorization/[Rr]ole[Aa]ssignments/"
               r"[0-9a-fA-F-]{36}$",
    "description": "full ARM ID /{scope}/providers/Microsoft.Authorization/roleAssignments/{guid}"}
FEDERATED_UID = {"type": "string",
                 "pattern": r"^[0-9a-fA-F-]{36}/federatedIdentityCredentials/[^/\s]+$",
                 "description": "<application object id>/federatedIdentityCredentials/<id>"}
OWNER_PATHS = ("credential.owner.uid", "target.uid")
AZURE_KINDS = ("azure_sp_password", "azure_sp_key", "azure_federated_credential", "azure_role_assignment",
               "azure_user", "azure_service_principal")


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


def _graph_object(graph: Any, object_type: str, object_id: str) -> Any:
    if object_type == "Application":
        return graph.applications.by_application_id(object_id)
    return graph.service_principals.by_service_principal_id(object_id)


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
    keep = [k for k in current if str(k.key_id).lower() != str(p["keyId"]).lower()]
    if len(keep) == len(current):
        return None
    body = Application(key_credentials=keep) if object_type == "Application" else ServicePrincipal(
        key_credentials=keep)
    await builder.patch(body)
    return None


def _delete_federated(graph: Any, p: dict[str, Any]) -> Any:
    return (graph.applications.by_application_id(p["id"]).federated_identity_credentials
            .by_federated_identity_credential_id(p["federatedIdentityCredentialId"]).delete())


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
}


def graph_run(ctx: ActionContext, make: Callable[[Any], Any]) -> Any:
    """Run ``make(graph_client)`` (a coroutine) with ``ctx.clients.run``; returns its result.
    Raises ``TypeError`` if the client factory has no ``run`` (not an Azure factory)."""
    run = getattr(ctx.clients, "run", None)
    if not callable(run):
        raise TypeError("ctx.clients is not an Azure client factory (no run())")
    return run(make(ctx.clients("graph")))


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

    schema = {"type": "object", "additionalProperties": False, "required": ["object_id", "key_id"],
              "properties": {"object_id": GUID, "key_id": GUID, "object_type": OBJECT_TYPE}}
    permissions = ("Application.ReadWrite.All",)
    rollback_supported = False
    identifies = {"key_id": ("credential.uid",), "object_id": OWNER_PATHS}
    noun: str
    sdk_list: str
    state_list: str
    view: Any

    def target(self, ctx: ActionContext) -> str:
        return f"{_object_type(ctx)} {ctx.params['object_id']} {self.noun} {ctx.params['key_id']}"

    def read(self, ctx: ActionContext) -> dict[str, Any] | None:
        otype, oid, key_id = _object_type(ctx), ctx.params["object_id"], str(ctx.params["key_id"]).lower()
        _refuse_self(ctx, oid, what=f"{otype} {oid}")
        obj = graph_read(ctx, lambda g: _graph_object(g, otype, oid).get())
        if obj is None:
            return None
        _refuse_self(ctx, obj.app_id, what=f"{otype} {oid} (appId {obj.app_id})")
        items = [type(self).view(c) for c in (getattr(obj, self.sdk_list) or [])]
        return {"object_id": oid, "object_type": otype, "app_id": obj.app_id, "display_name": obj.display_name,
                "key_id": key_id, "present": any((c["key_id"] or "").lower() == key_id for c in items),
                self.state_list: items}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]


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
    among the object's password credentials. Limit: a keyId that was put on the *other* object
    (the application rather than its service principal) reads as absent here; name the object
    the audit log names.
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
    credential_kinds = ("azure_sp_password",)
    noun, sdk_list, state_list, view = "password", "password_credentials", "password_credentials", _password_view

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        op = "applications" if _object_type(ctx) == "Application" else "servicePrincipals"
        return [ApiCall(service="graph", operation=f"{op}.removePassword",
                        params={"id": ctx.params["object_id"], "keyId": str(ctx.params["key_id"]).lower()})]


@register
class RemoveSpKey(_SpCredentialAction):
    """Remove one certificate credential, by keyId, from the application or service principal that
    carries it: read ``keyCredentials`` with ``$select`` (so Graph returns each certificate's
    public ``key``) and ``PATCH`` the collection without that keyId (Graph replaces the whole
    collection; the others are sent back unchanged). The ``removeKey`` action is not used: it
    demands a proof-of-possession JWT signed with one of the object's *existing* private keys,
    which a responder does not hold. Graph has no etag on this collection: a certificate added
    between Cordon's read and its PATCH would be dropped (one round trip).

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
    credential_kinds = ("azure_sp_key",)
    noun, sdk_list, state_list, view = "certificate", "key_credentials", "key_credentials", _key_view

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        op = "applications" if _object_type(ctx) == "Application" else "servicePrincipals"
        return [ApiCall(service="graph", operation=f"{op}.removeKeyCredential",
                        params={"id": ctx.params["object_id"], "keyId": str(ctx.params["key_id"]).lower()})]


@register
class DisableServicePrincipal(AzureContainmentAction):
    """Disable sign-in for a service principal (Graph ``PATCH /servicePrincipals/{id}`` with
    ``{"accountEnabled": false}``): no token is issued for it any more, whatever secret, key or
    federated credential is presented; existing tokens live until they expire.

    Guard: ``object_id`` must be the detection's credential owner, target, or (for
    ``azure_service_principal``) the credential itself; Cordon's own service principal is refused.
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
    schema = {"type": "object", "additionalProperties": False, "required": ["object_id"],
              "properties": {"object_id": GUID}}
    permissions = ("Application.ReadWrite.All",)
    credential_kinds = ("azure_sp_password", "azure_sp_key", "azure_service_principal")
    rollback_supported = True
    identifies = {"object_id": (*OWNER_PATHS, "credential.uid")}

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
    schema = {"type": "object", "additionalProperties": False, "required": ["assignment_id"],
              "properties": {"assignment_id": ASSIGNMENT_ID}}
    permissions = ("Microsoft.Authorization/roleAssignments/read", "Microsoft.Authorization/roleAssignments/delete",
                   "Microsoft.Authorization/roleAssignments/write")
    credential_kinds = ("azure_role_assignment",)
    rollback_supported = True
    identifies = {"assignment_id": ("credential.uid",)}

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
    schema = {"type": "object", "additionalProperties": False, "required": ["credential"],
              "properties": {"credential": FEDERATED_UID}}
    permissions = ("Application.ReadWrite.All",)
    credential_kinds = ("azure_federated_credential",)
    rollback_supported = False
    identifies = {"credential": ("credential.uid",)}

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

    Guard: ``user_id`` must be the detection's credential uid (``azure_user``) or target.
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
    schema = {"type": "object", "additionalProperties": False, "required": ["user_id"],
              "properties": {"user_id": GUID}}
    permissions = ("User.RevokeSessions.All", "User.Read.All")
    credential_kinds = ("azure_user",)
    rollback_supported = False
    identifies = {"user_id": ("credential.uid", "target.uid")}

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
                "revoked_since_detection": bool(valid_from and valid_from >= ctx.detection.time)}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["revoked_since_detection"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="graph", operation="users.revokeSignInSessions", params={"id": ctx.params["user_id"]})]


# -- enrichment ---------------------------------------------------------------------------------
@register
class ServicePrincipalFacts(EnrichmentAction):
    """Everything Graph says about one service principal or application: who owns it and every
    credential it carries.

    Returns ``{"exists": False, "object_id", "object_type"}`` when it does not exist, else
    ``{exists, object_id, object_type, display_name, app_id, account_enabled (None for an
    application), service_principal_type, owners: [{id, type ("user"|"servicePrincipal"|...),
    display_name, user_principal_name, app_id}], password_credentials: [{key_id, display_name,
    hint, start, end}], key_credentials: [{key_id, display_name, type, usage, start, end}],
    password_count, key_count, credential_in_detection_present}``. Secrets and key material are
    never returned. ``object_type`` defaults to the detection owner's type.
    API: https://learn.microsoft.com/graph/api/serviceprincipal-get?view=graph-rest-1.0 ,
    https://learn.microsoft.com/graph/api/serviceprincipal-list-owners?view=graph-rest-1.0

    .. code-block:: yaml

        enrich:
          - action: azure.service-principal
            with:
              object_id: "{{ credential.owner.uid }}"
    """

    name = "azure.service-principal"
    provider = "azure"
    schema = {"type": "object", "additionalProperties": False, "required": ["object_id"],
              "properties": {"object_id": GUID, "object_type": OBJECT_TYPE}}
    permissions = ("Application.Read.All", "Directory.Read.All")
    credential_kinds = AZURE_KINDS

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        otype, oid = _object_type(ctx), ctx.params["object_id"]
        obj = graph_read(ctx, lambda g: _graph_object(g, otype, oid).get())
        if obj is None:
            return {"exists": False, "object_id": oid, "object_type": otype}
        owners_page = graph_run(ctx, lambda g: _graph_object(g, otype, oid).owners.get())
        owners = []
        for o in (owners_page.value if owners_page else None) or []:
            kind = (o.odata_type or "").rsplit(".", 1)[-1] or None
            owners.append({"id": o.id, "type": kind, "display_name": getattr(o, "display_name", None),
                           "user_principal_name": getattr(o, "user_principal_name", None),
                           "app_id": getattr(o, "app_id", None)})
        passwords = [_password_view(p) for p in (obj.password_credentials or [])]
        keys = [_key_view(k) for k in (obj.key_credentials or [])]
        cred = ctx.detection.credential
        named = (cred.uid or "").lower() if cred and cred.kind in ("azure_sp_password", "azure_sp_key") else None
        present = None if named is None else any((c["key_id"] or "").lower() == named for c in passwords + keys)
        return {"exists": True, "object_id": oid, "object_type": otype, "display_name": obj.display_name,
                "app_id": obj.app_id,
                "account_enabled": getattr(obj, "account_enabled", None) if otype == "ServicePrincipal" else None,
                "service_principal_type": getattr(obj, "service_principal_type", None), "owners": owners,
                "password_credentials": passwords, "key_credentials": keys, "password_count": len(passwords),
                "key_count": len(keys), "credential_in_detection_present": present}
