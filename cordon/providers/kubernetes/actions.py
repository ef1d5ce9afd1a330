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

    def plan(self, ctx: ActionContext) -> ActionResult:
        """The plan, checked by the API server: each call is sent with ``dryRun=All`` (nothing is
        changed); a refusal (403, 409, 422) makes the plan ``failed`` naming it."""
        result = super().plan(ctx)
        try:
            for api in result.calls:
                self.execute(ctx, api, dry_run=True)
        except Exception as err:  # noqa: BLE001 - reported in the plan
            return result.model_copy(update={"status": "failed", "error": f"server dry run refused: "
                                             f"{type(err).__name__}: {http_status(err) or ''} {err}"[:2000]})
        return result.model_copy(update={"data": {"server_dry_run": "accepted"}})

    @staticmethod
    def read(ctx: ActionContext, service: str, operation: str, **args: Any) -> dict[str, Any] | None:
        """``ctx.clients(service).<operation>(**args)`` as a plain dict (``ApiClient.sanitize_for_serialization``),
        ``None`` when the API answers 404; other ``ApiException``s propagate."""
        try:
            obj = getattr(ctx.clients(service), operation)(**args)
        except Exception as err:
            if http_status(err) == 404:
                return None
            raise
        return ctx.clients("api").sanitize_for_serialization(obj)


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
    does_not = ("revoke a credential: tokens, client certificates and keys its subjects hold stay valid, and "
                "other bindings granting them the same rights stay")
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
        actor = actor_facts(ctx.detection.raw)
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


def strip_server_fields(obj: dict[str, Any], *extra: str) -> dict[str, Any]:
    """A copy of ``obj`` for ``create``: server-managed metadata and ``status`` dropped, plus the
    top-level keys ``extra``."""
    body = copy.deepcopy(obj)
    meta = body.setdefault("metadata", {})
    for key in _SERVER_FIELDS:
        meta.pop(key, None)
    for key in ("status", *extra):
        body.pop(key, None)
    return body


SECRET = re.compile(r"^namespaces/(?P<ns>[^/\s]+)/secrets/(?P<name>[^/\s]+)$")
#: The Secret type whose ``data.token`` the token controller fills with a non-expiring token
#: (https://kubernetes.io/docs/concepts/configuration/secret/#serviceaccount-token-secrets)
TOKEN_SECRET_TYPE = "kubernetes.io/service-account-token"
#: Annotations that can carry a Secret's values (kubectl apply's copy of the object): never stored
_VALUE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


@register
class DeleteTokenSecret(KubernetesContainmentAction):
    """Delete exactly one long-lived ServiceAccount token Secret (``secret``:
    ``namespaces/NS/secrets/NAME``, the detection's ``credential.uid``): the API server stops
    accepting its token once the Secret is gone.

    Secrets are audited at ``Metadata`` level, so the Event does not say what the Secret holds: the
    Secret is read (GET) and acted on only when its ``type`` is ``kubernetes.io/service-account-token``;
    any other type is refused with the reason (it holds no ServiceAccount token; Cordon leaves it).
    Its values (``data``, ``stringData``, kubectl's last-applied annotation) are never read into the
    state, the plan or the ledger. The delete is checked by a server dry run when planned and
    carries the uid precondition of the Secret read.

    State: ``{secret, uid, type, service_account, object}`` (``object``: metadata and type, no
    values), ``None`` when absent. Contained when absent (404). No rollback: a token Secret made
    again gets a new token from the token controller; the deleted token cannot come back, and
    nothing needs it to.
    API: https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/secret-v1/

    .. code-block:: yaml

        contain:
          - action: kubernetes.delete-token-secret
            with:
              secret: "{{ credential.uid }}"
    """

    name = "kubernetes.delete-token-secret"
    does_not = "change what the ServiceAccount may do; its other tokens stay valid until they expire"
    permissions = ("/secrets:get", "/secrets:delete")
    credential_kinds = ("k8s_secret",)

    class Params(Params):
        secret: Annotated[str, Identifies("credential.uid"), Field(pattern=SECRET.pattern)]

    class State(State):
        secret: str
        uid: str
        type: str
        service_account: str | None
        object: dict[str, Any]

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["secret"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        m = SECRET.match(ctx.params["secret"])
        data = self.read(ctx, "core", "read_namespaced_secret", name=m["name"], namespace=m["ns"])
        if data is None:
            return None
        meta = dict(data.get("metadata") or {})
        if meta.get("name") != m["name"] or meta.get("namespace") != m["ns"]:
            raise GuardError(f"the API answered {meta.get('namespace')}/{meta.get('name')} for {ctx.params['secret']}")
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _VALUE_ANNOTATIONS}
        meta["annotations"] = annotations
        kind = data.get("type") or "Opaque"
        if kind != TOKEN_SECRET_TYPE:
            raise GuardError(f"{ctx.params['secret']} is of type {kind}, not {TOKEN_SECRET_TYPE}: it holds no "
                             "ServiceAccount token, so there is nothing to contain; Cordon leaves it")
        return {"secret": ctx.params["secret"], "uid": meta.get("uid"), "type": kind,
                "service_account": annotations.get("kubernetes.io/service-account.name"),
                "object": {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": kind}}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        m = SECRET.match(ctx.params["secret"])
        return [ApiCall(service="core", operation="delete_namespaced_secret",
                        params={"name": m["name"], "namespace": m["ns"],
                                "precondition_uid": state["uid"] if state else None})]


CSR = re.compile(r"^certificatesigningrequests/(?P<name>[^/\s]+)(?:/approval)?$")
#: How each cloud's managed Kubernetes replaces the cluster CA (the only way to make a client
#: certificate in ``system:masters`` stop working)
CA_ROTATION = {
    "GKE": "gcloud container clusters update CLUSTER --start-credential-rotation (then --complete-credential-rotation)",
    "AKS": "az aks rotate-certs --resource-group GROUP --name CLUSTER",
    "EKS": "EKS cannot rotate a cluster's CA: create a new cluster and move the workloads",
    "self-managed": "kubeadm certs renew all does not replace the CA: replace the CA by hand "
                    "(kubernetes.io/docs/tasks/tls/manual-rotation-of-ca-certificates/)",
}


def csr_subject(request_b64: str | None) -> tuple[str | None, list[str]]:
    """``(CN, [O, ...])`` of a CSR's PKCS#10 request (``spec.request``: base64 of the PEM), the user
    and groups a certificate issued for it authenticates as; ``(None, [])`` when it does not parse."""
    import base64

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        req = x509.load_pem_x509_csr(base64.b64decode(request_b64 or ""))
    except Exception:  # noqa: BLE001 - an unreadable request names no subject
        return None, []
    cn = [a.value for a in req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (str(cn[0]) if cn else None), orgs


@register
class DenyCertificateSigningRequest(KubernetesContainmentAction):
    """Deny exactly one pending CertificateSigningRequest (``csr``: ``certificatesigningrequests/NAME``,
    the detection's ``credential.uid``; an ``/approval`` suffix is accepted): the ``Denied``
    condition is added through the ``approval`` subresource with the uid read, so the request can
    never be approved and no certificate is issued for it.

    A request already ``Approved`` is refused with what a person must do: a certificate cannot be
    revoked in Kubernetes; it authenticates as the request's subject (CN = user, O = groups) until
    it expires, so the bindings naming that user and those groups must be removed, and a
    certificate in ``system:masters`` (which no binding grants) needs the cluster CA replaced
    (:data:`CA_ROTATION`).

    State: ``{csr, uid, signer, usages, requested_by, subject_user, subject_groups, decision, issued,
    spec}`` (``spec``: the request's own, sent back unchanged with the decision as the API requires),
    ``None`` when absent. Contained when absent or ``decision`` is ``Denied``. No rollback: a denied
    request is final (it cannot be approved afterwards; the requester can ask again).
    API: https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/certificate-signing-request-v1/

    .. code-block:: yaml

        contain:
          - action: kubernetes.deny-csr
            with:
              csr: "{{ credential.uid }}"
    """

    name = "kubernetes.deny-csr"
    does_not = ("revoke a certificate already issued (Kubernetes cannot); a certificate in system:masters "
                "needs the cluster CA replaced by a person")
    permissions = ("certificates.k8s.io/certificatesigningrequests:get",
                   "certificates.k8s.io/certificatesigningrequests/approval:update",
                   # the CSR approval admission plugin checks `approve` on the signer for any decision
                   "certificates.k8s.io/signers:approve")
    credential_kinds = ("k8s_csr",)

    class Params(Params):
        csr: Annotated[str, Identifies("credential.uid"), Field(pattern=CSR.pattern)]

    class State(State):
        csr: str
        uid: str
        signer: str | None
        usages: list[str]
        requested_by: str | None
        subject_user: str | None
        subject_groups: list[str]
        decision: str | None
        issued: bool
        spec: dict[str, Any]

    def target(self, ctx: ActionContext) -> str:
        return f"certificatesigningrequests/{CSR.match(ctx.params['csr'])['name']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        name = CSR.match(ctx.params["csr"])["name"]
        data = self.read(ctx, "certificates", "read_certificate_signing_request", name=name)
        if data is None:
            return None
        spec, status = data.get("spec") or {}, data.get("status") or {}
        decisions = [c.get("type") for c in status.get("conditions") or [] if c.get("type") in ("Approved", "Denied")]
        user, groups = csr_subject(spec.get("request"))
        state = {"csr": f"certificatesigningrequests/{name}", "uid": (data.get("metadata") or {}).get("uid"),
                 "signer": spec.get("signerName"), "usages": spec.get("usages") or [],
                 "requested_by": spec.get("username"), "subject_user": user, "subject_groups": groups,
                 "decision": decisions[-1] if decisions else None, "issued": bool(status.get("certificate")),
                 "spec": spec}
        if state["decision"] == "Approved":
            who = f"user {user!r} and groups {groups}" if user else "the request's subject (CN, O; unreadable here)"
            rotate = ""
            if "system:masters" in groups:
                rotate = ("; it is in system:masters, which no binding grants: the cluster CA must be replaced ("
                          + "; ".join(f"{k}: {v}" for k, v in CA_ROTATION.items()) + ")")
            raise GuardError(f"{state['csr']} was already approved{' and issued' if state['issued'] else ''}: a "
                             f"Kubernetes certificate cannot be revoked and stays valid until it expires; remove "
                             f"every binding for {who}{rotate}. Left to a person.")
        return state

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["decision"] == "Denied"

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        name = CSR.match(ctx.params["csr"])["name"]
        body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"name": name, "uid": state["uid"] if state else None},
                "spec": (state or {}).get("spec") or {},
                "status": {"conditions": [{"type": "Denied", "status": "True", "reason": "CordonContained",
                                           "message": "Denied by Cordon: a client certificate requested "
                                                      "outside the expected path (T1098.001)"}]}}
        return [ApiCall(service="certificates", operation="replace_certificate_signing_request_approval",
                        params={"name": name, "body": body})]


SERVICE_ACCOUNT = re.compile(r"^namespaces/(?P<ns>[^/\s]+)/serviceaccounts/(?P<name>[^/\s]+)$")


def names_service_account(binding: dict[str, Any], namespace: str, name: str) -> bool:
    """Whether ``binding`` (a plain ClusterRoleBinding / RoleBinding) has the ServiceAccount
    ``namespace/name`` among its subjects (a RoleBinding's subject without a namespace is in the
    binding's own)."""
    own = (binding.get("metadata") or {}).get("namespace")
    return any(s.get("kind") == "ServiceAccount" and s.get("name") == name
               and (s.get("namespace") or own) == namespace for s in binding.get("subjects") or [])


@register
class DeleteServiceAccount(KubernetesContainmentAction):
    """Remove a new ServiceAccount's bindings, then the ServiceAccount (``service_account``:
    ``namespaces/NS/serviceaccounts/NAME``, the detection's ``credential.uid``). Deleting the
    ServiceAccount invalidates every token issued for it (bound tokens carry its uid; its token
    Secrets are garbage-collected).

    Every ClusterRoleBinding and RoleBinding naming it is read and stored; each delete (bindings
    first, then the ServiceAccount) carries the uid read and is checked by a server dry run when
    planned. A binding that also grants another subject is refused (deleting it would take that
    subject's access too; edit it by hand), and so is a ``system:`` binding.

    State: ``{service_account, uid, object, bindings: [{binding, uid, role, object}]}``, ``None``
    when the ServiceAccount is gone and no binding names it. Contained when ``None``.
    Rollback: create the stored ServiceAccount (a new uid; its old tokens stay invalid) and its
    bindings again.
    API: https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/service-account-v1/

    .. code-block:: yaml

        contain:
          - action: kubernetes.delete-service-account
            with:
              service_account: "{{ credential.uid }}"
    """

    name = "kubernetes.delete-service-account"
    does_not = "touch a binding that also grants someone else, nor a person who used the account's tokens"
    permissions = ("/serviceaccounts:get", "/serviceaccounts:delete", "/serviceaccounts:create",
                   "rbac.authorization.k8s.io/clusterrolebindings:list",
                   "rbac.authorization.k8s.io/clusterrolebindings:delete",
                   "rbac.authorization.k8s.io/clusterrolebindings:create",
                   "rbac.authorization.k8s.io/rolebindings:list", "rbac.authorization.k8s.io/rolebindings:delete",
                   "rbac.authorization.k8s.io/rolebindings:create",
                   "rbac.authorization.k8s.io/clusterroles:bind", "rbac.authorization.k8s.io/roles:bind")
    credential_kinds = ("k8s_service_account",)
    rollback_supported = True

    class Params(Params):
        service_account: Annotated[str, Identifies("credential.uid"), Field(pattern=SERVICE_ACCOUNT.pattern)]

    class State(State):
        service_account: str
        uid: str | None
        object: dict[str, Any] | None
        bindings: list[dict[str, Any]]

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["service_account"]

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        m = SERVICE_ACCOUNT.match(ctx.params["service_account"])
        ns, name = m["ns"], m["name"]
        sa = self.read(ctx, "core", "read_namespaced_service_account", name=name, namespace=ns)
        api = ctx.clients("api")
        rbac = ctx.clients("rbac")
        bindings = []
        for kind, items in (("clusterrolebindings", rbac.list_cluster_role_binding().items),
                            ("rolebindings", rbac.list_role_binding_for_all_namespaces().items)):
            for item in items:
                data = api.sanitize_for_serialization(item)
                if not names_service_account(data, ns, name):
                    continue
                meta = data["metadata"]
                path = (f"clusterrolebindings/{meta['name']}" if kind == "clusterrolebindings"
                        else f"namespaces/{meta['namespace']}/rolebindings/{meta['name']}")
                if meta["name"].startswith("system:"):
                    raise GuardError(f"{path} is a system: binding naming {ctx.params['service_account']}; "
                                     "Cordon never deletes one")
                others = [s for s in data.get("subjects") or [] if not names_service_account(
                    {"metadata": meta, "subjects": [s]}, ns, name)]
                if others:
                    raise GuardError(f"{path} also grants {len(others)} other subject(s) "
                                     f"({', '.join(str(s.get('name')) for s in others)}): deleting it would take "
                                     "their access too; remove the ServiceAccount from it by hand")
                bindings.append({"binding": path, "uid": meta.get("uid"),
                                 "role": (data.get("roleRef") or {}).get("name"), "object": data})
        if sa is None and not bindings:
            return None
        sa_meta = (sa or {}).get("metadata") or {}
        return {"service_account": ctx.params["service_account"], "uid": sa_meta.get("uid"), "object": sa,
                "bindings": sorted(bindings, key=lambda b: b["binding"])}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        calls = []
        for b in (state or {}).get("bindings", []):
            namespace, name = parse_binding(b["binding"])
            op = "delete_namespaced_role_binding" if namespace else "delete_cluster_role_binding"
            calls.append(ApiCall(service="rbac", operation=op, params={
                "name": name, **({"namespace": namespace} if namespace else {}), "precondition_uid": b["uid"]}))
        if state and state.get("uid"):
            m = SERVICE_ACCOUNT.match(ctx.params["service_account"])
            calls.append(ApiCall(service="core", operation="delete_namespaced_service_account",
                                 params={"name": m["name"], "namespace": m["ns"], "precondition_uid": state["uid"]}))
        return calls

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """Create the stored ServiceAccount (without its token ``secrets`` list) and bindings again."""
        before = (result.rollback or {}).get("before") if result.status == "contained" else None
        if not before:
            return []
        calls = []
        if before.get("object"):
            m = SERVICE_ACCOUNT.match(before["service_account"])
            calls.append(ApiCall(service="core", operation="create_namespaced_service_account", params={
                "namespace": m["ns"], "body": strip_server_fields(before["object"], "secrets")}))
        for b in before.get("bindings", []):
            namespace, _ = parse_binding(b["binding"])
            op = "create_namespaced_role_binding" if namespace else "create_cluster_role_binding"
            calls.append(ApiCall(service="rbac", operation=op, params={
                "body": strip_server_fields(b["object"]), **({"namespace": namespace} if namespace else {})}))
        return calls


@register
class DescribeActor(EnrichmentAction):
    """Who made the Kubernetes change: ``{"actor": {username, groups, source_ips, user_agent, kind}}``
    from the audit Event (``kind``: node / controller / serviceaccount / person, see
    :func:`principal_kind`). Reads the detection only; no API call.
    Source: https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Event

    .. code-block:: yaml

        enrich:
          - action: kubernetes.describe-actor
    """

    name = "kubernetes.describe-actor"
    provider = "kubernetes"
    credential_kinds = ("k8s_secret", "k8s_csr", "k8s_service_account", "k8s_sa_token", "k8s_aws_auth")

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        return {"actor": actor_facts(ctx.detection.raw)}


def actor_facts(record: dict[str, Any]) -> dict[str, Any]:
    """The actor of the audit Event in ``record`` (any layout): ``{username, groups, source_ips,
    user_agent, kind}``; empty values when the record holds no readable Event."""
    from cordon.providers.kubernetes.events import EventError, event_of

    try:
        event = event_of(record)
    except EventError:
        event = {}
    user = event.get("user") if isinstance(event.get("user"), dict) else {}
    return {"username": user.get("username"), "groups": user.get("groups") or [],
            "source_ips": event.get("sourceIPs") or [], "user_agent": event.get("userAgent"),
            "kind": principal_kind(user.get("username"))}


TOKEN_REQUEST = re.compile(r"^namespaces/(?P<ns>[^/\s]+)/serviceaccounts/(?P<sa>[^/\s]+)/token$")
#: What a bound token can be bound to and Cordon may delete (a Node never: that is an outage)
_BOUND_KINDS = {"Pod": ("read_namespaced_pod", "delete_namespaced_pod"),
                "Secret": ("read_namespaced_secret", "delete_namespaced_secret")}


@register
class DeleteTokenBoundObject(KubernetesContainmentAction):
    """Invalidate one requested ServiceAccount token by deleting the object it is bound to
    (``token_request``: ``namespaces/NS/serviceaccounts/NAME/token``, the detection's
    ``credential.uid``; the object from the TokenRequest's ``spec.boundObjectRef`` as the audit
    Event recorded it at RequestResponse level, in ``credential.attributes.boundObjectRef``). The API
    server rejects a bound token once the object with that uid is gone; a Pod a controller makes
    again has a new uid, so the token stays dead.

    Only a Pod or a Secret, and only the object with the uid the token names: an object re-created
    under the same name is another object, and the token is already dead (contained, nothing
    deleted). Refused, with the reason, when the token is bound to nothing (it stays valid until it
    expires: ``expirationSeconds``; deleting the ServiceAccount would end it with every other token
    of that account, which is a person's call) or to a Node.

    State: ``{object, kind, name, uid}``, ``None`` when the bound object is gone. No rollback: the
    token cannot come back.
    API: https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-request-v1/

    .. code-block:: yaml

        contain:
          - action: kubernetes.delete-token-bound-object
            with:
              token_request: "{{ credential.uid }}"
    """

    name = "kubernetes.delete-token-bound-object"
    does_not = "end a token bound to nothing: it stays valid until it expires"
    permissions = ("/pods:get", "/pods:delete", "/secrets:get", "/secrets:delete")
    credential_kinds = ("k8s_sa_token",)

    class Params(Params):
        token_request: Annotated[str, Identifies("credential.uid"), Field(pattern=TOKEN_REQUEST.pattern)]

    class State(State):
        object: str
        kind: str
        name: str
        uid: str

    def target(self, ctx: ActionContext) -> str:
        return ctx.params["token_request"]

    def _bound(self, ctx: ActionContext) -> dict[str, Any]:
        cred = getattr(ctx.detection, "credential", None)
        ref = (cred.attributes if cred else {}).get("boundObjectRef") or {}
        if not ref.get("name"):
            secs = (cred.attributes if cred else {}).get("expirationSeconds")
            raise GuardError(f"{ctx.params['token_request']}: the token is bound to no object (or the audit level did "
                             "not record the request), so it stays valid until it expires"
                             f"{f' ({secs} s after issue)' if secs else ''}; deleting the ServiceAccount would end "
                             "it together with every other token of that account: left to a person")
        if ref.get("kind") not in _BOUND_KINDS:
            raise GuardError(f"{ctx.params['token_request']}: the token is bound to a {ref.get('kind')}; "
                             "Cordon deletes only a bound Pod or Secret")
        if not ref.get("uid"):
            raise GuardError(f"{ctx.params['token_request']}: boundObjectRef names no uid; "
                             "Cordon will not guess the object")
        return ref

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        ref = self._bound(ctx)
        ns = TOKEN_REQUEST.match(ctx.params["token_request"])["ns"]
        data = self.read(ctx, "core", _BOUND_KINDS[ref["kind"]][0], name=ref["name"], namespace=ns)
        uid = ((data or {}).get("metadata") or {}).get("uid")
        if data is None or uid != ref["uid"]:
            return None  # the object the token is bound to is gone: the token is dead
        plural = "pods" if ref["kind"] == "Pod" else "secrets"
        return {"object": f"namespaces/{ns}/{plural}/{ref['name']}", "kind": ref["kind"], "name": ref["name"],
                "uid": uid}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        ns = TOKEN_REQUEST.match(ctx.params["token_request"])["ns"]
        return [ApiCall(service="core", operation=_BOUND_KINDS[state["kind"]][1],
                        params={"name": state["name"], "namespace": ns, "precondition_uid": state["uid"]})]
