"""GCP enrichment and containment actions (google-api-python-client).

Same shape as :mod:`cordon.providers.aws.actions` (Cloud Custodian-like self-describing classes): each action
declares its playbook ``name``, parameter ``schema``, the exact IAM ``permissions`` it needs, the
credential kinds it acts on, whether it can roll back, and which parameters must name the
detection's credential (``identifies``). Containment reads the state before and after and is
idempotent (see :mod:`cordon.action`); a target that is not the one named (a key of another
service account, Cordon's own identity, a system-managed key) raises
:class:`~cordon.action.GuardError` and the run is ``refused`` with nothing changed.

**Calls.** An :class:`~cordon.action.ApiCall` names the API *and its version* in ``service``
(``"iam.v1"``, ``"cloudresourcemanager.v1"``, ``"apikeys.v2"``, ``"oslogin.v1"``,
``"storage.v1"``) and the discovery method path in ``operation``
(``"projects.serviceAccounts.keys.disable"``); ``params`` are the method's keyword arguments,
request body under ``body``. :meth:`GcpContainmentAction.call` walks the ``Resource``
(``clients("iam", "v1").projects().serviceAccounts().keys().disable(**params)``) and runs
``.execute(num_retries=3)``: google-api-python-client itself retries 429 and 5xx.

Clients come from ``ctx.clients(service, version)`` (:func:`cordon.providers.gcp.clients.gcp_clients`);
``ctx.clients.own_identity()`` (when present) is Cordon's own email, never contained.
API references: https://cloud.google.com/iam/docs/reference/rest ,
https://cloud.google.com/resource-manager/reference/rest/v1/projects ,
https://cloud.google.com/api-keys/docs/reference/rest/v2/projects.locations.keys ,
https://cloud.google.com/compute/docs/oslogin/rest/v1/users.sshPublicKeys ,
https://cloud.google.com/storage/docs/json_api/v1/projects/hmacKeys .
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from googleapiclient.errors import HttpError
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
    NoParams,
    Params,
    State,
    register,
)

#: ``execute(num_retries=...)`` for every call (429 / 5xx retried by google-api-python-client).
NUM_RETRIES = 3
#: How many times a ``setIamPolicy`` answered 409 ABORTED (stale etag) is re-read and retried.
MAX_ETAG_RETRIES = 3
POLICY_VERSION = 3

ROLE = r"(roles/[A-Za-z0-9_.]+|(projects|organizations)/[A-Za-z0-9_.:-]+/roles/[A-Za-z0-9_.]+)"
MEMBER = r"[A-Za-z]+:[^#\s]+"

#: Parameter types (pydantic), shared by the actions' ``Params`` models.
SaEmail = Annotated[str, Field(pattern=r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.gserviceaccount\.com$",
                               description="service account email")]
SaKeyName = Annotated[str, Field(
    pattern=r"^projects/[a-z0-9.:-]{1,63}/serviceAccounts/[^/\s]+/keys/[A-Za-z0-9]{1,64}$",
    description="projects/P/serviceAccounts/SA_EMAIL/keys/KEY_ID")]
ProjectId = Annotated[str, Field(pattern=r"^([a-z][a-z0-9.:-]{4,62}|-)$")]
BindingUid = Annotated[str, Field(
    pattern=rf"^projects/[a-z0-9.:-]+(/serviceAccounts/[^/#\s]+)?#{ROLE}#{MEMBER}$",
    description="<resource>#<role>#<member>, resource projects/P or projects/P/serviceAccounts/EMAIL")]
ApiKeyName = Annotated[str, Field(pattern=r"^projects/[^/\s]+/locations/[^/\s]+/keys/[^/\s]+$",
                                  description="projects/P/locations/global/keys/KEY_ID")]
SshKeyName = Annotated[str, Field(pattern=r"^users/[^/\s]+/sshPublicKeys/[^/\s]+$",
                                  description="users/USER_EMAIL/sshPublicKeys/FINGERPRINT")]
HmacKeyName = Annotated[str, Field(pattern=r"^projects/[^/\s]+/hmacKeys/[^/\s]+$",
                                   description="projects/P/hmacKeys/ACCESS_ID")]

SA_OWNER_PATHS = ("credential.owner.uid", "credential.owner.name", "target.uid", "target.name")
ACT_AS_ROLES = ("roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator")
GCP_KINDS = ("gcp_sa_key", "gcp_service_account", "gcp_iam_binding", "gcp_api_key", "gcp_oslogin_ssh_key",
             "gcp_hmac_key")


def http_status(err: HttpError) -> int:
    """The HTTP status of a google-api-python-client ``HttpError``."""
    return int(getattr(err.resp, "status", 0) or 0)


def parse_sa_key_name(name: str) -> tuple[str, str, str]:
    """``projects/P/serviceAccounts/SA/keys/K`` -> ``(P, SA, K)``; ``ValueError`` otherwise."""
    m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)/keys/([^/]+)", name)
    if not m:
        raise ValueError(f"not a service account key name: {name}")
    return m.group(1), m.group(2), m.group(3)


def parse_binding_uid(uid: str) -> tuple[str, str, str]:
    """``<resource>#<role>#<member>`` -> ``(resource, role, member)``; ``ValueError`` otherwise."""
    parts = uid.split("#")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a binding uid <resource>#<role>#<member>: {uid}")
    return parts[0], parts[1], parts[2]


def _project_of(email: str, fallback: str | None) -> str:
    m = re.match(r"^[^@]+@([a-z0-9-]+)\.iam\.gserviceaccount\.com$", email)
    return m.group(1) if m else (fallback or "-")


def _own_identity(ctx: ActionContext) -> str | None:
    fn = getattr(ctx.clients, "own_identity", None)
    try:
        return fn() if callable(fn) else None
    except Exception:  # noqa: BLE001 - unknown identity: the other guards still apply
        return None


def _refuse_self(ctx: ActionContext, email: str | None, what: str) -> None:
    me = _own_identity(ctx)
    if me and email and email.lower() == me.lower():
        raise GuardError(f"{what} is Cordon's own identity ({me})")


def _cond_title(binding: dict[str, Any]) -> str | None:
    cond = binding.get("condition")
    return cond.get("title") if isinstance(cond, dict) else None


def _same_condition(binding: dict[str, Any], condition: dict[str, Any] | None) -> bool:
    mine = binding.get("condition") or None
    if not condition or not mine:
        return not condition and not mine
    return (mine.get("title"), mine.get("expression")) == (condition.get("title"), condition.get("expression"))


def policy_without_member(policy: dict[str, Any], role: str, condition_title: str | None,
                          member: str) -> dict[str, Any]:
    """A copy of ``policy`` with ``member`` removed from the binding(s) of ``role`` whose
    condition title is ``condition_title`` (``None``: the unconditional binding). Other members,
    other bindings, conditions and the ``etag`` are kept; a binding left empty is dropped;
    ``version`` is 3 when any binding keeps a condition."""
    new = copy.deepcopy(policy)
    bindings = []
    for b in new.get("bindings", []):
        if b.get("role") == role and _cond_title(b) == condition_title:
            b["members"] = [m for m in b.get("members", []) if m != member]
        if b.get("members"):
            bindings.append(b)
    new["bindings"] = bindings
    new["version"] = POLICY_VERSION if any(b.get("condition") for b in bindings) else int(new.get("version") or 1)
    return new


def policy_with_member(policy: dict[str, Any], role: str, condition: dict[str, Any] | None,
                       member: str) -> dict[str, Any]:
    """A copy of ``policy`` with ``member`` in the binding of ``role`` with exactly
    ``condition`` (created, at the end, when absent); the ``etag`` is kept."""
    new = copy.deepcopy(policy)
    bindings = new.setdefault("bindings", [])
    for b in bindings:
        if b.get("role") == role and _same_condition(b, condition):
            if member not in b.setdefault("members", []):
                b["members"].append(member)
            break
    else:
        binding: dict[str, Any] = {"role": role, "members": [member]}
        if condition:
            binding["condition"] = copy.deepcopy(condition)
        bindings.append(binding)
    if any(b.get("condition") for b in bindings):
        new["version"] = POLICY_VERSION
    return new


# -- containment --------------------------------------------------------------------------------
class GcpContainmentAction(ContainmentAction):
    """Base of GCP containment actions: :meth:`call` makes one google-api-python-client call.

    ``ApiCall(service="iam.v1", operation="projects.serviceAccounts.keys.disable",
    params={"name": ..., "body": {}})`` becomes ``ctx.clients("iam", "v1").projects()
    .serviceAccounts().keys().disable(name=..., body={}).execute(num_retries=3)``; the parsed
    JSON answer is returned; ``googleapiclient.errors.HttpError`` propagates.
    """

    provider = "gcp"

    @staticmethod
    def execute(ctx: ActionContext, service: str, operation: str, **params: Any) -> Any:
        """Run ``operation`` of ``service`` (``"iam.v1"``) with ``params``; see class doc."""
        name, _, version = service.rpartition(".")
        if not name or not version:
            raise ValueError(f"service must be '<api>.<version>', got {service!r}")
        resource = ctx.clients(name, version)
        *path, method = operation.split(".")
        for part in path:
            resource = getattr(resource, part)()
        return getattr(resource, method)(**params).execute(num_retries=NUM_RETRIES)

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        return self.execute(ctx, api.service, api.operation, **copy.deepcopy(api.params))

    def read(self, ctx: ActionContext, service: str, operation: str, **params: Any) -> Any:
        """:meth:`execute`, but ``None`` when the API answers 404."""
        try:
            return self.execute(ctx, service, operation, **params)
        except HttpError as err:
            if http_status(err) == 404:
                return None
            raise

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """No calls unless ``result`` changed something (``contained`` with rollback data)."""
        if result.status != "contained" or not result.rollback:
            return []
        return self.undo_calls(ctx, result.rollback.get("before"))

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        raise GuardError(f"action '{self.name}' cannot be rolled back")


class _SaKeyAction(GcpContainmentAction):
    """Shared read of one service-account key (``projects.serviceAccounts.keys.get``)."""

    class Params(Params):
        key_name: Annotated[SaKeyName, Identifies("credential.uid")]
        service_account: Annotated[SaEmail | SkipJsonSchema[None], Identifies(*SA_OWNER_PATHS)] = None

    class State(State):
        key_name: str
        service_account: str
        key_id: str
        disabled: bool
        key_type: str | None
        key_algorithm: str | None
        key_origin: str | None
        valid_after: str | None
        valid_before: str | None

    credential_kinds = ("gcp_sa_key",)

    def service_account(self, ctx: ActionContext) -> str:
        _, sa, _ = parse_sa_key_name(ctx.params["key_name"])
        return ctx.params.get("service_account") or sa

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["key_name"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        name = ctx.params["key_name"]
        _, named_sa, key_id = parse_sa_key_name(name)
        wanted = self.service_account(ctx)
        if "@" in named_sa and named_sa.lower() != wanted.lower():
            raise GuardError(f"key {key_id} is named under service account {named_sa}, not {wanted}")
        _refuse_self(ctx, wanted, f"service account {wanted}")
        key = self.read(ctx, "iam.v1", "projects.serviceAccounts.keys.get", name=name)
        if key is None:
            return None
        _, owner, _ = parse_sa_key_name(key["name"])
        if owner.lower() != wanted.lower():
            raise GuardError(f"key {key_id} belongs to service account {owner}, not {wanted}")
        if key.get("keyType") == "SYSTEM_MANAGED":
            raise GuardError(f"key {key_id} is system-managed (Google rotates it); it cannot be contained")
        return {"key_name": key["name"], "service_account": owner, "key_id": key_id,
                "disabled": bool(key.get("disabled", False)), "key_type": key.get("keyType"),
                "key_algorithm": key.get("keyAlgorithm"), "key_origin": key.get("keyOrigin"),
                "valid_after": key.get("validAfterTime"), "valid_before": key.get("validBeforeTime")}


@register
class DisableSaKey(_SaKeyAction):
    """Disable one user-managed service-account key (``projects.serviceAccounts.keys.disable``);
    the key stays, so it can be enabled again.

    Guard: ``key_name`` must name the key under ``service_account`` (default: the account in
    ``key_name``) and ``keys.get`` must answer a key of that account; system-managed keys
    (``keyType: SYSTEM_MANAGED``) and keys of Cordon's own identity are refused. A key that does
    not exist (404) cannot authenticate: ``already_contained`` with ``data={"missing": True}``.

    State: ``{key_name, service_account, key_id, disabled, key_type, key_algorithm, key_origin,
    valid_after, valid_before (RFC 3339)}``. Contained when ``disabled``.
    Rollback: ``keys.enable`` when the key was enabled before.
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys/disable

    .. code-block:: yaml

        contain:
          - action: gcp.disable-sa-key
            with:
              key_name: "{{ credential.uid }}"
              service_account: "{{ credential.owner.uid }}"
    """

    name = "gcp.disable-sa-key"
    does_not = "revoke access tokens already minted with the key: they stay valid until they expire (up to 1 h)"
    permissions = ("iam.serviceAccountKeys.get", "iam.serviceAccountKeys.disable", "iam.serviceAccountKeys.enable")
    rollback_supported = True

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or bool(state["disabled"])

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam.v1", operation="projects.serviceAccounts.keys.disable",
                        params={"name": ctx.params["key_name"], "body": {}})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("disabled"):
            return []
        return [ApiCall(service="iam.v1", operation="projects.serviceAccounts.keys.enable",
                        params={"name": before["key_name"], "body": {}})]


@register
class DeleteSaKey(_SaKeyAction):
    """Delete one user-managed service-account key (``projects.serviceAccounts.keys.delete``).
    Irreversible: use it only where a playbook says so (``gcp.disable-sa-key`` is the reversible
    choice). The before state records the key's metadata (the private key is never readable).

    Same guard as ``gcp.disable-sa-key``. State as ``gcp.disable-sa-key``, ``None`` when the key
    does not exist; contained when it does not exist. No rollback.
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys/delete

    .. code-block:: yaml

        contain:
          - action: gcp.delete-sa-key
            with:
              key_name: "{{ credential.uid }}"
              service_account: "{{ credential.owner.uid }}"
    """

    name = "gcp.delete-sa-key"
    permissions = ("iam.serviceAccountKeys.get", "iam.serviceAccountKeys.delete")
    rollback_supported = False

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam.v1", operation="projects.serviceAccounts.keys.delete",
                        params={"name": ctx.params["key_name"]})]


@register
class DisableServiceAccount(GcpContainmentAction):
    """Disable a service account (``projects.serviceAccounts.disable``): its keys and tokens stop
    working until it is enabled again.

    The resource name is ``projects/<project>/serviceAccounts/<email>`` with ``project`` from
    the parameter, else from the email (``...@P.iam.gserviceaccount.com``), else the
    detection's project, else ``-``. Cordon's own identity is refused. A service account that
    does not exist (404) is ``already_contained`` with ``data={"missing": True}``.

    State: ``{name, email, project, unique_id, display_name, disabled}``. Rollback:
    ``projects.serviceAccounts.enable`` when it was enabled before.
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts/disable

    .. code-block:: yaml

        contain:
          - action: gcp.disable-service-account
            with:
              service_account: "{{ credential.owner.uid }}"
    """

    name = "gcp.disable-service-account"

    class Params(Params):
        service_account: Annotated[SaEmail, Identifies("credential.uid", *SA_OWNER_PATHS)]
        project: ProjectId | SkipJsonSchema[None] = None

    class State(State):
        name: str | None
        email: str
        project: str | None
        unique_id: str | None
        display_name: str | None
        disabled: bool

    permissions = ("iam.serviceAccounts.get", "iam.serviceAccounts.disable", "iam.serviceAccounts.enable")
    credential_kinds = ("gcp_service_account", "gcp_sa_key")
    rollback_supported = True

    def resource_name(self, ctx: ActionContext) -> str:
        email = ctx.params["service_account"]
        project = ctx.params.get("project") or _project_of(email, ctx.detection.account_uid)
        return f"projects/{project}/serviceAccounts/{email}"

    def target(self, ctx: ActionContext) -> str:
        return self.resource_name(ctx)

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        email = ctx.params["service_account"]
        _refuse_self(ctx, email, f"service account {email}")
        sa = self.read(ctx, "iam.v1", "projects.serviceAccounts.get", name=self.resource_name(ctx))
        if sa is None:
            return None
        if sa.get("email", "").lower() != email.lower():
            raise GuardError(f"{self.resource_name(ctx)} is {sa.get('email')}, not {email}")
        return {"name": sa.get("name"), "email": sa["email"], "project": sa.get("projectId"),
                "unique_id": sa.get("uniqueId"), "display_name": sa.get("displayName"),
                "disabled": bool(sa.get("disabled", False))}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or bool(state["disabled"])

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam.v1", operation="projects.serviceAccounts.disable",
                        params={"name": self.resource_name(ctx), "body": {}})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("disabled"):
            return []
        return [ApiCall(service="iam.v1", operation="projects.serviceAccounts.enable",
                        params={"name": before["name"], "body": {}})]


@register
class RemoveIamBinding(GcpContainmentAction):
    """Remove exactly one member from one role binding of a project's or a service account's
    IAM policy (read-modify-write with the policy's ``etag``).

    ``binding`` is the detection's uid ``<resource>#<role>#<member>``: resource ``projects/P``
    (Cloud Resource Manager v1 ``projects.getIamPolicy`` / ``setIamPolicy``) or
    ``projects/P/serviceAccounts/EMAIL`` (IAM v1 ``projects.serviceAccounts.getIamPolicy`` /
    ``setIamPolicy``). ``condition_title`` selects a conditional binding (default: the
    unconditional one). The policy is read with ``requestedPolicyVersion: 3``; only the member
    is removed from that binding: the binding's other members, other bindings, conditions and
    audit configs are written back unchanged, with the etag read. When ``setIamPolicy`` answers
    409 ABORTED (a concurrent change: stale etag), the policy is read again, the removal applied
    to it and the write retried, at most :data:`MAX_ETAG_RETRIES` times, so a concurrent change
    is never overwritten; the call recorded is the one that succeeded.

    Guard: removing Cordon's own ``serviceAccount:`` membership is refused. A service account
    that does not exist (404) is ``already_contained`` / missing.
    State: ``{resource, role, member, condition_title, present, condition, binding_members,
    member_elsewhere: [{role, condition_title}], etag, version, policy}``; contained when the
    member is not in the binding. Rollback: re-add the member to the binding of that role and
    condition with a fresh read-modify-write.
    API: https://cloud.google.com/resource-manager/reference/rest/v1/projects/setIamPolicy ,
    https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts/setIamPolicy ,
    https://cloud.google.com/iam/docs/policies#etag

    .. code-block:: yaml

        contain:
          - action: gcp.remove-iam-binding
            with:
              binding: "{{ credential.uid }}"
    """

    name = "gcp.remove-iam-binding"

    class Params(Params):
        binding: Annotated[BindingUid, Identifies("credential.uid")]
        condition_title: Annotated[str, Field(max_length=100)] | None = None

    class State(State):
        resource: str
        role: str
        member: str
        condition_title: str | None
        present: bool
        condition: dict[str, Any] | None
        binding_members: list[str]
        member_elsewhere: list[dict[str, str | None]]
        etag: str | None
        version: int | None
        policy: dict[str, Any]

    permissions = ("resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy",
                   "iam.serviceAccounts.getIamPolicy", "iam.serviceAccounts.setIamPolicy")
    credential_kinds = ("gcp_iam_binding",)
    rollback_supported = True

    def __init__(self) -> None:
        self._edits: dict[int, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}

    def parts(self, ctx: ActionContext) -> tuple[str, str, str]:
        return parse_binding_uid(ctx.params["binding"])

    def target(self, ctx: ActionContext) -> str:
        resource, role, member = self.parts(ctx)
        title = ctx.params.get("condition_title")
        return f"{resource} binding {role} member {member}" + (f" condition '{title}'" if title else "")

    @staticmethod
    def _is_project(resource: str) -> bool:
        return "/serviceAccounts/" not in resource

    def get_policy(self, ctx: ActionContext, resource: str) -> dict[str, Any] | None:
        """The policy of ``resource`` (version 3 requested); ``None`` if it does not exist."""
        if self._is_project(resource):
            return self.read(ctx, "cloudresourcemanager.v1", "projects.getIamPolicy",
                             resource=resource.split("/", 1)[1],
                             body={"options": {"requestedPolicyVersion": POLICY_VERSION}})
        return self.read(ctx, "iam.v1", "projects.serviceAccounts.getIamPolicy", resource=resource,
                         options_requestedPolicyVersion=POLICY_VERSION)

    def set_policy_call(self, resource: str, policy: dict[str, Any]) -> ApiCall:
        if self._is_project(resource):
            return ApiCall(service="cloudresourcemanager.v1", operation="projects.setIamPolicy",
                           params={"resource": resource.split("/", 1)[1], "body": {"policy": policy}})
        return ApiCall(service="iam.v1", operation="projects.serviceAccounts.setIamPolicy",
                       params={"resource": resource, "body": {"policy": policy}})

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        resource, role, member = self.parts(ctx)
        me = _own_identity(ctx)
        if me and member.lower() == f"serviceaccount:{me.lower()}":
            raise GuardError(f"member {member} is Cordon's own identity")
        policy = self.get_policy(ctx, resource)
        if policy is None:
            return None
        title = ctx.params.get("condition_title")
        bindings = policy.get("bindings", [])
        mine = [b for b in bindings if b.get("role") == role and _cond_title(b) == title]
        present = any(member in b.get("members", []) for b in mine)
        elsewhere = [{"role": b.get("role"), "condition_title": _cond_title(b)} for b in bindings
                     if member in b.get("members", []) and b not in mine]
        return {"resource": resource, "role": role, "member": member, "condition_title": title,
                "present": present, "condition": copy.deepcopy(mine[0].get("condition")) if mine else None,
                "binding_members": sorted({m for b in mine for m in b.get("members", [])}),
                "member_elsewhere": elsewhere, "etag": policy.get("etag"), "version": policy.get("version"),
                "policy": policy}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        if state is None:
            return []
        resource, role, member = self.parts(ctx)
        title = ctx.params.get("condition_title")

        def edit(policy: dict[str, Any]) -> dict[str, Any]:
            return policy_without_member(policy, role, title, member)

        api = self.set_policy_call(resource, edit(state["policy"]))
        self._edits[id(api)] = (resource, edit)
        return [api]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("present"):
            return []
        resource, role, member, condition = before["resource"], before["role"], before["member"], before["condition"]
        fresh = self.get_policy(ctx, resource)
        if fresh is None:
            raise GuardError(f"{resource} no longer exists; cannot restore {member} in {role}")

        def edit(policy: dict[str, Any]) -> dict[str, Any]:
            return policy_with_member(policy, role, condition, member)

        new = edit(fresh)
        if new.get("bindings") == fresh.get("bindings"):
            return []
        api = self.set_policy_call(resource, new)
        self._edits[id(api)] = (resource, edit)
        return [api]

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        """``setIamPolicy``; on 409 ABORTED (stale etag) read the policy again, re-apply the edit
        to it and retry (at most :data:`MAX_ETAG_RETRIES` times). ``api.params`` is updated to
        the request that was finally sent."""
        resource, edit = self._edits.get(id(api), (None, None))
        attempt = 0
        while True:
            try:
                return super().call(ctx, api)
            except HttpError as err:
                if http_status(err) != 409 or edit is None or resource is None or attempt >= MAX_ETAG_RETRIES:
                    raise
            attempt += 1
            fresh = self.get_policy(ctx, resource)
            if fresh is None:
                raise GuardError(f"{resource} disappeared during the policy update")
            api.params["body"]["policy"] = edit(fresh)


@register
class DeleteApiKey(GcpContainmentAction):
    """Delete an API key (API Keys v2 ``projects.locations.keys.delete``, with the etag read).
    The real API soft-deletes: ``keys.undelete`` restores the key within 30 days, which is the
    rollback (after 30 days rollback fails with the API's error).

    State: ``{key_name, uid, display_name, create_time, update_time, delete_time, deleted,
    restrictions, etag}`` (never the key string); ``None`` when the key does not exist (404).
    Contained when deleted or missing.
    API: https://cloud.google.com/api-keys/docs/reference/rest/v2/projects.locations.keys/delete ,
    https://cloud.google.com/api-keys/docs/reference/rest/v2/projects.locations.keys/undelete

    .. code-block:: yaml

        contain:
          - action: gcp.delete-api-key
            with:
              key_name: "{{ credential.uid }}"
    """

    name = "gcp.delete-api-key"

    class Params(Params):
        key_name: Annotated[ApiKeyName, Identifies("credential.uid")]

    class State(State):
        key_name: str
        uid: str | None
        display_name: str | None
        create_time: str | None
        update_time: str | None
        delete_time: str | None
        deleted: bool
        restrictions: dict[str, Any]
        etag: str | None

    permissions = ("apikeys.keys.get", "apikeys.keys.delete", "apikeys.keys.undelete")
    credential_kinds = ("gcp_api_key",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["key_name"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        key = self.read(ctx, "apikeys.v2", "projects.locations.keys.get", name=ctx.params["key_name"])
        if key is None:
            return None
        return {"key_name": key["name"], "uid": key.get("uid"), "display_name": key.get("displayName"),
                "create_time": key.get("createTime"), "update_time": key.get("updateTime"),
                "delete_time": key.get("deleteTime"), "deleted": bool(key.get("deleteTime")),
                "restrictions": key.get("restrictions") or {}, "etag": key.get("etag")}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or bool(state["deleted"])

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        params: dict[str, Any] = {"name": ctx.params["key_name"]}
        if state and state.get("etag"):
            params["etag"] = state["etag"]
        return [ApiCall(service="apikeys.v2", operation="projects.locations.keys.delete", params=params)]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("deleted"):
            return []
        return [ApiCall(service="apikeys.v2", operation="projects.locations.keys.undelete",
                        params={"name": before["key_name"], "body": {}})]


@register
class DeleteOsLoginSshKey(GcpContainmentAction):
    """Delete one SSH public key from a user's OS Login profile
    (``users.sshPublicKeys.delete``). Not reversible by Cordon: the before state records the key
    material (``key``) so a human can re-import it (``users.importSshPublicKey``).

    The OS Login API acts on the profile of the caller or of a service account the caller may
    act as (``iam.serviceAccounts.actAs``); a human user's keys need that user's (or a
    domain-wide delegated) credentials. Cordon's own profile is refused.
    State: ``{key_name, user, fingerprint, key, expiration_time_usec}``; ``None`` when the key
    does not exist. Contained when it does not exist.
    API: https://cloud.google.com/compute/docs/oslogin/rest/v1/users.sshPublicKeys/delete

    .. code-block:: yaml

        contain:
          - action: gcp.delete-oslogin-ssh-key
            with:
              key_name: "{{ credential.uid }}"
    """

    name = "gcp.delete-oslogin-ssh-key"

    class Params(Params):
        key_name: Annotated[SshKeyName, Identifies("credential.uid")]

    class State(State):
        key_name: str
        user: str
        fingerprint: str
        key: str | None
        #: int64, which the JSON API sends as a string.
        expiration_time_usec: str | None

    permissions = ("iam.serviceAccounts.actAs",)
    credential_kinds = ("gcp_oslogin_ssh_key",)
    rollback_supported = False

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["key_name"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        name = ctx.params["key_name"]
        _, user, _, fingerprint = name.split("/", 3)
        _refuse_self(ctx, user, f"OS Login user {user}")
        key = self.read(ctx, "oslogin.v1", "users.sshPublicKeys.get", name=name)
        if key is None:
            return None
        return {"key_name": name, "user": user, "fingerprint": key.get("fingerprint") or fingerprint,
                "key": key.get("key"), "expiration_time_usec": key.get("expirationTimeUsec")}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="oslogin.v1", operation="users.sshPublicKeys.delete",
                        params={"name": ctx.params["key_name"]})]


@register
class DeactivateHmacKey(GcpContainmentAction):
    """Deactivate a Cloud Storage HMAC key (JSON API ``projects.hmacKeys.update`` with
    ``state: INACTIVE`` and the etag read: a stale etag fails with 412 and nothing changes).

    State: ``{key_name, project, access_id, service_account_email, state (ACTIVE|INACTIVE|
    DELETED), etag, time_created, updated}``; ``None`` when the key does not exist (404).
    Contained when INACTIVE, DELETED or missing. Keys of Cordon's own identity are refused.
    Rollback: ``state: ACTIVE`` with a freshly read etag, when it was ACTIVE before.
    API: https://cloud.google.com/storage/docs/json_api/v1/projects/hmacKeys/update

    .. code-block:: yaml

        contain:
          - action: gcp.deactivate-hmac-key
            with:
              key_name: "{{ credential.uid }}"
    """

    name = "gcp.deactivate-hmac-key"

    class Params(Params):
        key_name: Annotated[HmacKeyName, Identifies("credential.uid")]

    class State(State):
        key_name: str
        project: str
        access_id: str
        service_account_email: str | None
        state: Literal["ACTIVE", "INACTIVE", "DELETED"] | None
        etag: str | None
        time_created: str | None
        updated: str | None

    permissions = ("storage.hmacKeys.get", "storage.hmacKeys.update")
    credential_kinds = ("gcp_hmac_key",)
    rollback_supported = True

    def ids(self, name: str) -> tuple[str, str]:
        _, project, _, access_id = name.split("/", 3)
        return project, access_id

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["key_name"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        project, access_id = self.ids(ctx.params["key_name"])
        key = self.read(ctx, "storage.v1", "projects.hmacKeys.get", projectId=project, accessId=access_id)
        if key is None:
            return None
        _refuse_self(ctx, key.get("serviceAccountEmail"), f"HMAC key {access_id}'s service account")
        return {"key_name": ctx.params["key_name"], "project": project, "access_id": access_id,
                "service_account_email": key.get("serviceAccountEmail"), "state": key.get("state"),
                "etag": key.get("etag"), "time_created": key.get("timeCreated"), "updated": key.get("updated")}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["state"] in ("INACTIVE", "DELETED")

    def _update(self, name: str, state: str, etag: str | None) -> ApiCall:
        project, access_id = self.ids(name)
        body: dict[str, Any] = {"state": state}
        if etag:
            body["etag"] = etag
        return ApiCall(service="storage.v1", operation="projects.hmacKeys.update",
                       params={"projectId": project, "accessId": access_id, "body": body})

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [self._update(ctx.params["key_name"], "INACTIVE", (state or {}).get("etag"))]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("state") != "ACTIVE":
            return []
        project, access_id = self.ids(before["key_name"])
        now = self.read(ctx, "storage.v1", "projects.hmacKeys.get", projectId=project, accessId=access_id)
        if now is None or now.get("state") != "INACTIVE":
            return []
        return [self._update(before["key_name"], "ACTIVE", now.get("etag"))]


# -- enrichment ---------------------------------------------------------------------------------
@register
class ServiceAccountFacts(EnrichmentAction):
    """Everything IAM says about one service account, and who may act as it.

    Returns ``{"exists": False, "email"}`` when the account does not exist, else ``{exists,
    email, name, display_name, description, disabled, project, unique_id, keys: [{name, key_id,
    key_type, key_algorithm, valid_after, valid_before, disabled}], user_managed_key_count,
    enabled_user_managed_key_count, project_roles: [{role, condition_title}] (project policy
    bindings naming ``serviceAccount:<email>``), can_act_as: [{member, role, where:
    "service_account"|"project", condition_title}] (members with
    ``roles/iam.serviceAccountUser`` / ``roles/iam.serviceAccountTokenCreator`` on the account's
    own policy or the project's), project_policy_readable}``. A project policy Cordon may not
    read (403) leaves ``project_roles`` empty and ``project_policy_readable`` False.
    API: projects.serviceAccounts.get, .keys.list, .getIamPolicy (IAM v1) and
    projects.getIamPolicy (Cloud Resource Manager v1), https://cloud.google.com/iam/docs/reference/rest .

    .. code-block:: yaml

        enrich:
          - action: gcp.service-account
            with:
              service_account: "{{ credential.owner.uid }}"
    """

    name = "gcp.service-account"
    provider = "gcp"

    class Params(Params):
        service_account: SaEmail
        project: ProjectId | SkipJsonSchema[None] = None

    permissions = ("iam.serviceAccounts.get", "iam.serviceAccountKeys.list", "iam.serviceAccounts.getIamPolicy",
                   "resourcemanager.projects.getIamPolicy", "resourcemanager.projects.get",
                   "resourcemanager.folders.getIamPolicy", "resourcemanager.organizations.getIamPolicy")
    credential_kinds = GCP_KINDS

    @staticmethod
    def hierarchy(ctx: ActionContext, project: str) -> list[dict[str, Any]]:
        """The folders and organisation above ``project`` (``projects.getAncestry``, nearest
        first), each ``{"resource", "readable", "policy"}``; an unreadable ancestry or policy is
        reported as such, never an error."""
        ex = GcpContainmentAction.execute
        try:
            ancestry = ex(ctx, "cloudresourcemanager.v1", "projects.getAncestry", projectId=project, body={})
        except HttpError as err:
            if http_status(err) not in (403, 404):
                raise
            return [{"resource": f"projects/{project}", "readable": False, "policy": {}, "what": "ancestry"}]
        out = []
        for item in ancestry.get("ancestor", [])[1:]:
            rid = item.get("resourceId", {})
            kind = {"folder": "folders", "organization": "organizations"}.get(rid.get("type"))
            if not kind:
                continue
            resource = f"{kind}/{rid.get('id')}"
            service = "cloudresourcemanager.v2" if kind == "folders" else "cloudresourcemanager.v1"
            method = "folders.getIamPolicy" if kind == "folders" else "organizations.getIamPolicy"
            try:
                policy = ex(ctx, service, method, resource=resource, body={"options": {"requestedPolicyVersion": 3}})
                out.append({"resource": resource, "readable": True, "policy": policy})
            except HttpError as err:
                if http_status(err) not in (403, 404):
                    raise
                out.append({"resource": resource, "readable": False, "policy": {}})
        return out

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        ex = GcpContainmentAction.execute
        email = ctx.params["service_account"]
        project = ctx.params.get("project") or _project_of(email, ctx.detection.account_uid)
        name = f"projects/{project}/serviceAccounts/{email}"
        try:
            sa = ex(ctx, "iam.v1", "projects.serviceAccounts.get", name=name)
        except HttpError as err:
            if http_status(err) == 404:
                return {"exists": False, "email": email}
            raise
        keys_raw = ex(ctx, "iam.v1", "projects.serviceAccounts.keys.list", name=sa["name"]).get("keys", [])
        keys = [{"name": k["name"], "key_id": k["name"].rsplit("/", 1)[1], "key_type": k.get("keyType"),
                 "key_algorithm": k.get("keyAlgorithm"), "valid_after": k.get("validAfterTime"),
                 "valid_before": k.get("validBeforeTime"), "disabled": bool(k.get("disabled", False))}
                for k in keys_raw]
        sa_policy = ex(ctx, "iam.v1", "projects.serviceAccounts.getIamPolicy", resource=sa["name"],
                       options_requestedPolicyVersion=POLICY_VERSION)
        sa_project = sa.get("projectId") or project
        readable = True
        try:
            proj_policy = ex(ctx, "cloudresourcemanager.v1", "projects.getIamPolicy", resource=sa_project,
                             body={"options": {"requestedPolicyVersion": POLICY_VERSION}})
        except HttpError as err:
            if http_status(err) not in (403, 404):
                raise
            proj_policy, readable = {}, False
        me = f"serviceAccount:{sa['email']}"
        project_roles = [{"role": b["role"], "condition_title": _cond_title(b)}
                         for b in proj_policy.get("bindings", []) if me in b.get("members", [])]
        above = self.hierarchy(ctx, sa_project)
        inherited_roles = [{"resource": h["resource"], "role": b["role"], "condition_title": _cond_title(b)}
                           for h in above for b in h["policy"].get("bindings", []) if me in b.get("members", [])]
        scopes = [("service_account", sa_policy), ("project", proj_policy)] + [(h["resource"], h["policy"])
                                                                             for h in above]
        can_act_as = [{"member": m, "role": b["role"], "where": where, "condition_title": _cond_title(b)}
                      for where, pol in scopes
                      for b in pol.get("bindings", []) if b.get("role") in ACT_AS_ROLES
                      for m in b.get("members", [])]
        user_keys = [k for k in keys if k["key_type"] == "USER_MANAGED"]
        return {
            "exists": True, "email": sa["email"], "name": sa["name"], "display_name": sa.get("displayName"),
            "description": sa.get("description"), "disabled": bool(sa.get("disabled", False)),
            "project": sa_project, "unique_id": sa.get("uniqueId"), "keys": keys,
            "user_managed_key_count": len(user_keys),
            "enabled_user_managed_key_count": sum(1 for k in user_keys if not k["disabled"]),
            "project_roles": project_roles, "can_act_as": can_act_as, "project_policy_readable": readable,
            "inherited_roles": inherited_roles,
            "hierarchy": [{"resource": h["resource"], "readable": h["readable"]} for h in above],
        }


def _dig(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _delegation_chain(det: Any) -> list[str]:
    """Principals a call was delegated through (outermost first), from
    ``credential.attributes`` (``delegationChain``, as :mod:`cordon.providers.gcp.detections` writes it,
    ``delegation_chain`` or ``serviceAccountDelegationInfo``) or the raw
    audit log's ``protoPayload.authenticationInfo.serviceAccountDelegationInfo``."""
    attrs = det.credential.attributes if det.credential else {}
    chain = attrs.get("delegationChain") or attrs.get("delegation_chain")
    if isinstance(chain, list) and chain:
        return [str(c) for c in chain]
    info = attrs.get("serviceAccountDelegationInfo") or _dig(
        det.raw, "protoPayload", "authenticationInfo", "serviceAccountDelegationInfo") or []
    out = []
    for item in info if isinstance(info, list) else []:
        who = (_dig(item, "firstPartyPrincipal", "principalEmail")
               or _dig(item, "thirdPartyPrincipal", "thirdPartyClaims", "sub")
               or item.get("principalSubject") if isinstance(item, dict) else None)
        if who:
            out.append(str(who))
    return out


@register
class GcpActorFacts(EnrichmentAction):
    """Who acted, from the detection alone (no API call).

    Returns ``{principal_email, principal_subject, principal_type, project, caller_ip,
    user_agent, access_path, is_service_account, service_account_key_name (the key the call was
    signed with, when the audit log says), delegation_chain: [emails, outermost first],
    delegated, target_email, actor_is_target}``. Fields come from ``detection.actor`` first,
    then the raw Cloud Audit Log entry (``protoPayload.authenticationInfo``,
    ``protoPayload.requestMetadata``). ``actor_is_target`` is ``None`` when the target is unknown.
    Log format: https://cloud.google.com/logging/docs/reference/audit/auditlog/rest/Shared.Types/AuditLog

    .. code-block:: yaml

        enrich:
          - action: gcp.actor
    """

    name = "gcp.actor"
    provider = "gcp"
    Params = NoParams  # explicit, so ``schema`` is generated (the inherited default differs: no description)
    permissions = ()
    credential_kinds = GCP_KINDS

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        det = ctx.detection
        raw = det.raw if isinstance(det.raw, dict) else {}
        auth = _dig(raw, "protoPayload", "authenticationInfo") or {}
        meta = _dig(raw, "protoPayload", "requestMetadata") or {}
        email = det.actor.user.uid or det.actor.user.name or auth.get("principalEmail")
        target = det.target.uid or det.target.name or (
            (det.credential.owner.uid or det.credential.owner.name) if det.credential else None)
        chain = _delegation_chain(det)
        is_sa = bool(email and email.endswith("gserviceaccount.com"))
        return {
            "principal_email": email, "principal_subject": auth.get("principalSubject"),
            "principal_type": det.actor.user.type or ("serviceAccount" if is_sa else ("user" if email else None)),
            "project": det.actor.user.account_uid or det.account_uid,
            "caller_ip": det.actor.src_ip or meta.get("callerIp"),
            "user_agent": det.actor.user_agent or meta.get("callerSuppliedUserAgent"),
            "access_path": det.actor.access_path, "is_service_account": is_sa,
            "service_account_key_name": auth.get("serviceAccountKeyName") or det.actor.session_uid,
            "delegation_chain": chain, "delegated": bool(chain),
            "target_email": target,
            "actor_is_target": (email.lower() == target.lower()) if email and target else None,
        }


#: How far after the record's time a created key's ``validAfterTime`` may be and still be the key it
#: created (IAM stamps a new key with the time of the call; 120 s also covers log delay). For an
#: uploaded key (its ``validAfterTime`` is the certificate's ``notBefore``, made before the upload),
#: how far before the record's time.
UNNAMED_KEY_WINDOW_SECONDS = 120
#: How far on the other side of the record's time: clock skew between IAM and Cloud Logging. A key
#: that signed the call existed before it, so this side is kept short: it is where that key would be.
UNNAMED_KEY_SKEW_SECONDS = 10
_UPLOAD = "google.iam.admin.v1.UploadServiceAccountKey"


def _key_id(name: str | None) -> str:
    """The key ID of a key resource name (``[//iam.googleapis.com/]projects/P/serviceAccounts/SA/keys/K``) or of a
    bare key ID."""
    return str(name or "").rstrip("/").rsplit("/", 1)[-1]


def sa_keys_created_at(ctx: ActionContext, service_account: str, at: datetime, tolerance_s: int,
                       caller_key: str | None = None, *, not_keys: tuple[str, ...] = (), method: str | None = None,
                       skew_s: int = UNNAMED_KEY_SKEW_SECONDS) -> dict[str, Any]:
    """The user-managed keys of ``service_account`` and which of them the call at ``at`` made
    (``projects.serviceAccounts.keys.list`` with ``keyTypes=USER_MANAGED``; ``validAfterTime``,
    ``keyOrigin``).

    ``CreateServiceAccountKey`` (and an unknown ``method``): a ``GOOGLE_PROVIDED`` (or unspecified)
    key valid from ``[at - skew_s, at + tolerance_s]``: IAM stamps a new key with the time of the
    call, and a key that signed the call existed before it. ``UploadServiceAccountKey``: a
    ``USER_PROVIDED`` key valid from ``[at - tolerance_s, at + skew_s]`` (the certificate's
    ``notBefore``, set when it was made, before the upload). ``caller_key`` and ``not_keys`` (key
    names or IDs: the key that signed the call, and keys the record names that may be it, such as
    Chronicle's ``key_id`` detection field) are never the answer: when one of them is the only key
    in the window, ``key_name`` is ``None`` and ``reason`` says so.

    Returns ``{service_account, at, tolerance_seconds, skew_seconds, method, keys: [{name,
    valid_after, origin}], in_window: [names], set_aside: [names in the window that may be the
    caller's], key_name (the one key in the window, else None), reason}``. Raises ``HttpError``.
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys/list"""
    listed = GcpContainmentAction.execute(ctx, "iam.v1", "projects.serviceAccounts.keys.list",
                                          name=f"projects/-/serviceAccounts/{service_account}",
                                          keyTypes=["USER_MANAGED"])
    keys = [{"name": k["name"], "valid_after": k.get("validAfterTime"), "origin": k.get("keyOrigin")}
            for k in (listed or {}).get("keys") or []]
    upload = method == _UPLOAD
    lo, hi = (-tolerance_s, skew_s) if upload else (-skew_s, tolerance_s)
    avoid = {_key_id(k) for k in (caller_key, *not_keys) if k}
    in_window, set_aside = [], []
    for k in keys:
        if (k["origin"] == "USER_PROVIDED") != upload:  # created keys are Google's, uploaded ones the user's
            continue
        try:
            started = datetime.fromisoformat(str(k["valid_after"]).replace("Z", "+00:00"))
        except ValueError:
            continue
        if lo <= (started - at).total_seconds() <= hi:
            (set_aside if _key_id(k["name"]) in avoid else in_window).append(k["name"])
    one = in_window[0] if len(in_window) == 1 else None
    what = "uploaded" if upload else "created"
    span = f"from {-lo} s before to {hi} s after {at.isoformat()}"
    aside = (f"; set aside as possibly the key that signed the call: {', '.join(set_aside)}" if set_aside else "")
    if one:
        reason = f"the one key of {service_account} {what} {span}{aside}"
    elif not in_window and set_aside:
        reason = (f"the only key of {service_account} {what} {span} is {', '.join(set_aside)}, which the record "
                  "names as the key that signed the call (or as its key_id, which can be that key): Cordon does "
                  "not disable the caller's key by mistake; a person must tell which key the record added")
    else:
        reason = (f"{len(in_window)} keys of {service_account} were {what} {span}"
                  f"{': ' + ', '.join(in_window) if in_window else ''}{aside}; the one the record added cannot be "
                  "told apart, and Cordon never disables every key")
    return {"service_account": service_account, "at": at.isoformat(), "tolerance_seconds": tolerance_s,
            "skew_seconds": skew_s, "method": method, "keys": keys, "in_window": in_window, "set_aside": set_aside,
            "key_name": one, "reason": reason}


def _unnamed_at(ctx: ActionContext) -> dict[str, Any]:
    """What :func:`sa_keys_created_at` takes from the detection: ``at`` (``eventTime``, else the
    detection's time), ``caller_key`` (``callerKey``, else the actor's ``session_uid``: the key
    that signed the call), ``not_keys`` (``notKeys``) and ``method`` (the detection's event name)."""
    det = ctx.detection
    cred = det.credential
    attrs = cred.attributes if cred else {}
    at = attrs.get("eventTime")
    when = datetime.fromisoformat(str(at).replace("Z", "+00:00")) if at else det.time
    not_keys = attrs.get("notKeys") or []
    return {"at": when, "caller_key": attrs.get("callerKey") or det.actor.session_uid,
            "not_keys": tuple(str(k) for k in (not_keys if isinstance(not_keys, list) else [not_keys])),
            "method": det.event_name}


def _find_unnamed(ctx: ActionContext) -> dict[str, Any]:
    found = _unnamed_at(ctx)
    return sa_keys_created_at(ctx, ctx.params["service_account"], found.pop("at"),
                              ctx.params.get("tolerance_seconds", UNNAMED_KEY_WINDOW_SECONDS),
                              found.pop("caller_key"), **found)


@register
class UnnamedSaKey(EnrichmentAction):
    """Find the service-account key a record says was created but does not name (a Google SecOps
    detection whose UDM event holds no key name): :func:`sa_keys_created_at` around the record's
    time (``credential.attributes.eventTime``), by how the record made it (the detection's
    ``event_name``: created or uploaded), never the key that signed the call
    (``credential.attributes.callerKey``, else ``actor.session_uid``) nor a key the record names
    that may be it (``credential.attributes.notKeys``). Reads only.
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys/list

    .. code-block:: yaml

        enrich:
          - action: gcp.unnamed-sa-key
            with:
              service_account: "{{ credential.owner.uid }}"
    """

    name = "gcp.unnamed-sa-key"
    provider = "gcp"
    permissions = ("iam.serviceAccountKeys.list",)
    credential_kinds = ("gcp_sa_key",)

    class Params(Params):
        service_account: Annotated[SaEmail, Identifies(*SA_OWNER_PATHS)]
        tolerance_seconds: Annotated[int, Field(ge=1, le=900)] = UNNAMED_KEY_WINDOW_SECONDS

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        return _find_unnamed(ctx)


@register
class DisableUnnamedSaKey(DisableSaKey):
    """Disable the one key of ``service_account`` created at the record's time, which the record
    does not name (``key_name``: what ``gcp.unnamed-sa-key`` found; ``null`` when no single key was
    created in the window). The key is checked again when read: it must still be the only key of
    that account made in the window around the record's time (:func:`sa_keys_created_at`) and not
    the key that signed the call, else ``GuardError`` (run ``refused``); without a key the case is refused with
    the reason (none, or several: Cordon never disables every key). Then as ``gcp.disable-sa-key``
    (state, rollback ``keys.enable``).
    API: https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys/disable

    .. code-block:: yaml

        contain:
          - action: gcp.disable-unnamed-sa-key
            with:
              service_account: "{{ credential.owner.uid }}"
              key_name: "{{ enrichment['gcp.unnamed-sa-key'].key_name }}"
    """

    name = "gcp.disable-unnamed-sa-key"
    permissions = ("iam.serviceAccountKeys.list", "iam.serviceAccountKeys.get", "iam.serviceAccountKeys.disable",
                   "iam.serviceAccountKeys.enable")

    class Params(Params):
        service_account: Annotated[SaEmail, Identifies(*SA_OWNER_PATHS)]
        key_name: Annotated[SaKeyName | None, Field(
            description="the one key created at the record's time (from gcp.unnamed-sa-key); null: none or several")]
        tolerance_seconds: Annotated[int, Field(ge=1, le=900)] = UNNAMED_KEY_WINDOW_SECONDS

    def target(self, ctx: ActionContext) -> str:
        return ctx.params.get("key_name") or f"the key of {ctx.params['service_account']} created at the record's time"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        found = _find_unnamed(ctx)
        name = ctx.params.get("key_name")
        if not name:
            raise GuardError(found["reason"])
        if found["key_name"] != name:
            raise GuardError(f"{name} is no longer the one key created at the record's time: {found['reason']}")
        return super().read_state(ctx)
