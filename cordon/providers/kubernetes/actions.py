"""Kubernetes actions over the official ``kubernetes`` client (RBAC API,
https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/cluster-role-binding-v1/
and ``role-binding-v1/``).

A binding is named as in ``credential.uid``: ``clusterrolebindings/NAME`` or
``namespaces/NS/rolebindings/NAME``.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any

from pydantic import Field

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

BINDING = re.compile(r"^(?:clusterrolebindings/(?P<cname>[^/\s]+)|namespaces/(?P<ns>[^/\s]+)/rolebindings/"
                     r"(?P<name>[^/\s]+))$")
#: Server-managed metadata dropped from a stored object before it is created again
_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")


def parse_binding(uid: str) -> tuple[str | None, str]:
    """``(namespace or None, name)`` of a binding named ``clusterrolebindings/NAME`` or
    ``namespaces/NS/rolebindings/NAME``. Raises ``ValueError`` for anything else."""
    m = BINDING.match(uid or "")
    if not m:
        raise ValueError(f"not a binding name (clusterrolebindings/NAME or namespaces/NS/rolebindings/NAME): {uid!r}")
    return (m.group("ns"), m.group("name")) if m.group("ns") else (None, m.group("cname"))


def http_status(err: Exception) -> int | None:
    """The HTTP status of a ``kubernetes.client.ApiException`` (``None`` for other errors)."""
    return getattr(err, "status", None)


class KubernetesContainmentAction(ContainmentAction):
    """Base of Kubernetes containment actions: :meth:`call` makes one client call.

    ``ApiCall(service="rbac", operation="delete_cluster_role_binding", params={"name": N,
    "precondition_uid": U})`` becomes ``ctx.clients("rbac").delete_cluster_role_binding(name=N,
    body=V1DeleteOptions(preconditions=V1Preconditions(uid=U)))``; ``dry_run="All"`` is added for a
    server dry run. ``kubernetes.client.ApiException`` propagates (409 when the precondition fails).
    """

    provider = "kubernetes"

    @staticmethod
    def execute(ctx: ActionContext, api: ApiCall, *, dry_run: bool = False) -> Any:
        """Make ``api`` (see the class doc); ``dry_run`` asks the API server not to persist it."""
        from kubernetes import client

        params = copy.deepcopy(api.params)
        uid = params.pop("precondition_uid", None)
        if uid is not None:
            params["body"] = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        if dry_run:
            params["dry_run"] = "All"
        return getattr(ctx.clients(api.service), api.operation)(**params)

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        return self.execute(ctx, api)


@register
class DeleteRoleBinding(KubernetesContainmentAction):
    """Delete exactly one ClusterRoleBinding or RoleBinding (``binding``: ``clusterrolebindings/NAME``
    or ``namespaces/NS/rolebindings/NAME``, the detection's ``credential.uid``).

    The object is read first and stored whole (state before, the rollback's source). The plan is
    checked by a server dry run of the delete (``dryRun=All``); the delete carries
    ``DeleteOptions.preconditions.uid`` of the object read, so a binding deleted and re-created
    under the same name since is never touched (the API server answers 409). Removing a binding
    does not revoke a credential: tokens, certificates and keys its subjects hold stay valid; it
    removes only the permissions the binding granted.

    Guard (:meth:`cordon.providers.kubernetes.KubernetesProvider.guard` and here): ``system:``-prefixed
    bindings are refused; the binding read must be the kind and name asked for.

    State: ``{binding, uid, role_ref, subjects, object}`` (``object``: the binding as the API
    returned it), ``None`` when absent. Contained when absent (a read answering 404).
    Rollback: create the stored object again (server-managed metadata dropped).
    API: https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/cluster-role-binding-v1/

    .. code-block:: yaml

        contain:
          - action: kubernetes.delete-role-binding
            with:
              binding: "{{ credential.uid }}"
    """

    name = "kubernetes.delete-role-binding"
    #: RBAC verbs on rbac.authorization.k8s.io (rendered as a ClusterRole)
    permissions = ("rbac.authorization.k8s.io/clusterrolebindings:get", "rbac.authorization.k8s.io/"
                   "clusterrolebindings:delete", "rbac.authorization.k8s.io/clusterrolebindings:create",
                   "rbac.authorization.k8s.io/rolebindings:get", "rbac.authorization.k8s.io/rolebindings:delete",
                   "rbac.authorization.k8s.io/rolebindings:create",
                   # re-creating a binding to a role Cordon does not hold itself (rollback) needs `bind`
                   # (RBAC privilege-escalation prevention, kubernetes.io/docs/reference/access-authn-authz/rbac/)
                   "rbac.authorization.k8s.io/clusterroles:bind")
    credential_kinds = ("k8s_role_binding",)
    rollback_supported = True

    class Params(Params):
        binding: Annotated[str, Identifies("credential.uid"), Field(pattern=BINDING.pattern)]

    class State(State):
        binding: str
        uid: str
        role_ref: dict[str, Any]
        subjects: list[dict[str, Any]]
        object: dict[str, Any]

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["binding"]

    def _op(self, verb: str, namespace: str | None) -> str:
        return f"{verb}_namespaced_role_binding" if namespace else f"{verb}_cluster_role_binding"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        namespace, name = parse_binding(ctx.params["binding"])
        if name.startswith("system:"):
            raise GuardError(f"binding {name} is a system: binding; Cordon never deletes one")
        args = {"name": name, **({"namespace": namespace} if namespace else {})}
        try:
            obj = getattr(ctx.clients("rbac"), self._op("read", namespace))(**args)
        except Exception as err:
            if http_status(err) == 404:
                return None
            raise
        data = ctx.clients("api").sanitize_for_serialization(obj)
        meta = data.get("metadata") or {}
        if meta.get("name") != name or (namespace and meta.get("namespace") != namespace):
            raise GuardError(f"the API answered {meta.get('namespace')}/{meta.get('name')} for {ctx.params['binding']}")
        return {"binding": ctx.params["binding"], "uid": meta.get("uid"), "role_ref": data.get("roleRef") or {},
                "subjects": data.get("subjects") or [], "object": data}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        namespace, name = parse_binding(ctx.params["binding"])
        params: dict[str, Any] = {"name": name, "precondition_uid": state["uid"] if state else None}
        if namespace:
            params["namespace"] = namespace
        return [ApiCall(service="rbac", operation=self._op("delete", namespace), params=params)]

    def plan(self, ctx: ActionContext) -> ActionResult:
        """The plan, checked by the API server: each delete is sent with ``dryRun=All`` (nothing is
        deleted); a refusal (403, 409) makes the plan ``failed`` naming it."""
        result = super().plan(ctx)
        try:
            for api in result.calls:
                self.execute(ctx, api, dry_run=True)
        except Exception as err:  # noqa: BLE001 - reported in the plan
            return result.model_copy(update={"status": "failed", "error": f"server dry run refused: "
                                             f"{type(err).__name__}: {http_status(err) or ''} {err}"[:2000]})
        return result.model_copy(update={"data": {"server_dry_run": "accepted"}})

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """Create the stored object again when ``result`` deleted it."""
        before = (result.rollback or {}).get("before") if result.status == "contained" else None
        if not before:
            return []
        namespace, _ = parse_binding(before["binding"])
        body = copy.deepcopy(before["object"])
        meta = body.setdefault("metadata", {})
        for key in _SERVER_FIELDS:
            meta.pop(key, None)
        params: dict[str, Any] = {"body": body, **({"namespace": namespace} if namespace else {})}
        return [ApiCall(service="rbac", operation=self._op("create", namespace), params=params)]


def principal_kind(username: str | None) -> str:
    """``node`` (``system:node:*``), ``controller`` (other ``system:`` principals and kube-system
    ServiceAccounts), ``serviceaccount`` (a workload's ``system:serviceaccount:*``), ``person``
    (anything else), ``unknown`` without a username."""
    from cordon.providers.kubernetes.detections import is_system

    if not username:
        return "unknown"
    if username.startswith("system:node:"):
        return "node"
    if is_system(username):
        return "controller"
    return "serviceaccount" if username.startswith("system:serviceaccount:") else "person"


@register
class DescribeBinding(EnrichmentAction):
    """Who made the binding and what it grants now: the actor (``user.username``, ``user.groups``,
    ``sourceIPs``, ``userAgent`` from the audit Event; ``kind`` node / controller / serviceaccount /
    person), the binding as the API returns it now (``None`` when gone), and every other
    ClusterRoleBinding naming one of its subjects (the subject's other grants, which deleting this
    binding leaves in place). Reads only.
    API: https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/cluster-role-binding-v1/

    .. code-block:: yaml

        enrich:
          - action: kubernetes.describe-binding
            with:
              binding: "{{ credential.uid }}"
    """

    name = "kubernetes.describe-binding"
    provider = "kubernetes"
    permissions = ("rbac.authorization.k8s.io/clusterrolebindings:get",
                   "rbac.authorization.k8s.io/clusterrolebindings:list",
                   "rbac.authorization.k8s.io/rolebindings:get")
    credential_kinds = ("k8s_role_binding",)

    class Params(Params):
        binding: Annotated[str, Identifies("credential.uid"), Field(pattern=BINDING.pattern)]

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        from cordon.providers.kubernetes.events import EventError, event_of

        try:
            event = event_of(ctx.detection.raw)
        except EventError:
            event = {}
        user = event.get("user") if isinstance(event.get("user"), dict) else {}
        actor = {"username": user.get("username"), "groups": user.get("groups") or [],
                 "source_ips": event.get("sourceIPs") or [], "user_agent": event.get("userAgent"),
                 "kind": principal_kind(user.get("username"))}
        state = DeleteRoleBinding().read_state(ctx)
        subjects = {(s.get("kind"), s.get("name"), s.get("namespace")) for s in (state or {}).get("subjects", [])}
        api = ctx.clients("api")
        others = []
        for item in ctx.clients("rbac").list_cluster_role_binding().items:
            data = api.sanitize_for_serialization(item)
            name = data["metadata"]["name"]
            if f"clusterrolebindings/{name}" == ctx.params["binding"]:
                continue
            if any((s.get("kind"), s.get("name"), s.get("namespace")) in subjects for s in data.get("subjects") or []):
                role = (data.get("roleRef") or {}).get("name")
                others.append({"binding": f"clusterrolebindings/{name}", "role": role})
        return {"actor": actor, "binding_now": state and state["object"], "subject_other_bindings": others}
