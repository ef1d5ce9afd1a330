"""A local Kubernetes API server stand-in for rehearsals and tests: the official ``kubernetes``
Python client talks to it over real HTTP.

Why our own rather than kmock (or a kind/k3s cluster): kmock is a mocking library for Python
*clients* of the Kubernetes API (it answers what a test scripts); Cordon needs API semantics it does
not script: server dry runs that persist nothing, ``DeleteOptions.preconditions.uid`` refused with
409 when the object was re-created, ``AlreadyExists`` on create, generated uids and resourceVersions,
bearer-token authentication, and seeding from a detection, in one small threaded ``http.server``
with no cluster, container runtime or extra dependency.

Endpoints (https://kubernetes.io/docs/reference/kubernetes-api/): ``GET`` / ``DELETE`` of one object
and ``POST`` / ``GET`` (list) of a collection for ``clusterrolebindings`` and
``namespaces/{ns}/rolebindings`` (``/apis/rbac.authorization.k8s.io/v1``; ``GET`` of ``rolebindings``
without a namespace lists every namespace), ``namespaces/{ns}/serviceaccounts``,
``namespaces/{ns}/secrets`` and ``namespaces/{ns}/pods`` (``/api/v1``),
``certificatesigningrequests`` (``/apis/certificates.k8s.io/v1``)
and ``PUT`` of its ``/approval`` subresource (conditions ``Approved`` / ``Denied``, mutually exclusive:
422). ``?dryRun=All`` validates without persisting. Errors are ``Status`` objects (``reason``
``NotFound`` 404, ``AlreadyExists`` 409, ``Conflict`` 409 for a failed uid precondition, ``Invalid``
422, ``Unauthorized`` 401 without the bearer token).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

RBAC = "/apis/rbac.authorization.k8s.io/v1"
CORE = "/api/v1"
CERTIFICATES = "/apis/certificates.k8s.io/v1"
#: kind -> (API prefix, namespaced, object kind, apiVersion)
KINDS: dict[str, tuple[str, bool, str, str]] = {
    "clusterrolebindings": (RBAC, False, "ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
    "rolebindings": (RBAC, True, "RoleBinding", "rbac.authorization.k8s.io/v1"),
    "serviceaccounts": (CORE, True, "ServiceAccount", "v1"),
    "secrets": (CORE, True, "Secret", "v1"),
    "pods": (CORE, True, "Pod", "v1"),
    "certificatesigningrequests": (CERTIFICATES, False, "CertificateSigningRequest", "certificates.k8s.io/v1"),
}
#: Cordon's own ServiceAccount in the sandbox (the guard never contains it)
CORDON_SA = "system:serviceaccount:cordon:cordon-responder"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class KubernetesStandIn:
    """The HTTP server and its objects: ``objects[(kind, namespace or "", name)] -> object`` with
    ``kind`` a key of :data:`KINDS`. Thread-safe; ``start()`` / ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.token = secrets.token_urlsafe(24)
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._version = 1000
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
                    return
                url = urlparse(self.path)
                dry = "All" in parse_qs(url.query).get("dryRun", [])
                with standin._lock:
                    standin.requests.append((method, self.path))
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    self._answer(400, _status(400, "BadRequest", "body is not JSON"))
                    return
                self._answer(*standin.serve(method, url.path, body, dry))

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubernetesStandIn:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="k8s-standin")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _route(self, path: str) -> tuple[str, str, str | None, str | None] | None:
        """``(kind, namespace, name or None, subresource or None)`` of an API path, else ``None``."""
        for kind, (prefix, namespaced, _, _) in KINDS.items():
            if not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1:].split("/")
            namespace = ""
            if namespaced and len(parts) >= 3 and parts[0] == "namespaces":
                namespace, parts = parts[1], parts[2:]
            if parts[0] != kind or len(parts) > 3:
                continue
            if namespaced and not namespace and len(parts) > 1:
                continue
            return kind, namespace, parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
        return None

    def put(self, kind: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as a new object (uid, resourceVersion, creationTimestamp set)."""
        with self._lock:
            self._version += 1
            obj = json.loads(json.dumps(obj))
            meta = obj.setdefault("metadata", {})
            meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._version),
                        creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            if namespace:
                meta["namespace"] = namespace
            _, _, obj["kind"], obj["apiVersion"] = KINDS[kind]
            self.objects[(kind, namespace, meta["name"])] = obj
            return obj

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self.objects.get((kind, namespace, name))

    def serve(self, method: str, path: str, body: dict[str, Any], dry: bool) -> tuple[int, dict[str, Any]]:
        """Answer one request: ``(HTTP status, JSON body)``."""
        route = self._route(path)
        if route is None:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        kind, namespace, name, sub = route
        group = KINDS[kind][3].rpartition("/")[0] or ""
        what = f"{kind}.{group}" if group else kind
        if name is None:
            if method == "GET":
                with self._lock:
                    items = [o for (k, ns, _), o in self.objects.items()
                             if k == kind and (not namespace or ns == namespace)]
                return 200, {"kind": KINDS[kind][2] + "List", "apiVersion": KINDS[kind][3],
                             "metadata": {}, "items": items}
            if method == "POST":
                new = (body.get("metadata") or {}).get("name")
                if not new or (kind.endswith("rolebindings") and not isinstance(body.get("roleRef"), dict)):
                    return 422, _status(422, "Invalid", "metadata.name (and a binding's roleRef) are required")
                if self.get(kind, namespace, new) is not None:
                    return 409, _status(409, "AlreadyExists", f'{what} "{new}" already exists')
                if dry:
                    return 201, body
                return 201, self.put(kind, namespace, body)
            return 405, _status(405, "MethodNotAllowed", method)
        obj = self.get(kind, namespace, name)
        if obj is None:
            return 404, _status(404, "NotFound", f'{what} "{name}" not found')
        if sub is not None:
            if kind == "certificatesigningrequests" and sub == "approval" and method == "PUT":
                return self._approve(obj, body, dry)
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        if method == "GET":
            return 200, obj
        if method == "DELETE":
            want = (body.get("preconditions") or {}).get("uid")
            have = obj["metadata"]["uid"]
            if want is not None and want != have:
                return 409, _status(409, "Conflict", f"Precondition failed: UID in precondition: {want}, "
                                                     f"UID in object meta: {have}")
            if not dry:
                with self._lock:
                    self.objects.pop((kind, namespace, name), None)
            if kind == "pods":  # a Pod's registry returns the deleted object (ReturnDeletedObject); others a Status
                return 200, obj
            return 200, _status(200, "", "") | {"status": "Success"}
        return 405, _status(405, "MethodNotAllowed", method)

    def _approve(self, obj: dict[str, Any], body: dict[str, Any], dry: bool) -> tuple[int, dict[str, Any]]:
        """``PUT .../certificatesigningrequests/{name}/approval``: the body's ``status.conditions``
        replace the object's; ``metadata.uid`` in the body must match (409); ``Approved`` and
        ``Denied`` together, or a decided request changed, is ``Invalid`` (422)."""
        want = (body.get("metadata") or {}).get("uid")
        if want is not None and want != obj["metadata"]["uid"]:
            return 409, _status(409, "Conflict", f"Precondition failed: UID in precondition: {want}, "
                                                 f"UID in object meta: {obj['metadata']['uid']}")
        conditions = list((body.get("status") or {}).get("conditions") or [])
        types = {c.get("type") for c in conditions}
        had = {c.get("type") for c in (obj.get("status") or {}).get("conditions") or []}
        if {"Approved", "Denied"} <= (types | had):
            return 422, _status(422, "Invalid", "status.conditions: Approved and Denied are mutually exclusive")
        if dry:
            return 200, obj
        with self._lock:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj.setdefault("status", {})["conditions"] = [{**c, "lastUpdateTime": c.get("lastUpdateTime") or stamp}
                                                          for c in conditions]
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)
        return 200, obj


class KubernetesSandbox:
    """The stand-in plus Cordon's identity (``cordon.standins`` entry point ``kubernetes``):
    ``start()``, ``seed_from_detection(detection)``, ``cloud_params()``, ``clients(service)``, ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.standin = KubernetesStandIn(host, port)

    @property
    def url(self) -> str:
        """The stand-in's base URL (``http://127.0.0.1:PORT``)."""
        return self.standin.url

    def start(self) -> KubernetesSandbox:
        self.standin.start()
        return self

    def stop(self) -> None:
        self.standin.stop()

    def reset(self) -> None:
        """Forget every object."""
        with self.standin._lock:
            self.standin.objects.clear()
            self.standin.requests.clear()

    def cloud_params(self) -> dict[str, Any]:
        """``{"sandbox": True, "host", "token", "service_account"}`` for
        :func:`cordon.providers.kubernetes.clients.kubernetes_clients`."""
        return {"sandbox": True, "host": self.standin.url, "token": self.standin.token, "verify_ssl": False,
                "service_account": CORDON_SA}

    def clients(self, service: str) -> Any:
        """A client of ``service`` (``rbac``, ``core``, ``api``) pointed at the stand-in."""
        from cordon.providers.kubernetes.clients import kubernetes_clients

        return kubernetes_clients(self.cloud_params())(service)

    def seed_from_detection(self, detection: Any) -> dict[str, Any]:
        """Create what a detection names when absent, plus an unrelated neighbour containment must
        leave alone (``cordon-sandbox-neighbour``):

        * ``k8s_role_binding``: the binding (``roleRef`` / ``subjects`` from ``credential.attributes``);
        * ``k8s_secret``: a ``kubernetes.io/service-account-token`` Secret (or the type the Event
          named) with a token value, as the token controller fills it;
        * ``k8s_service_account``: the ServiceAccount and a RoleBinding to ``edit`` naming it;
        * ``k8s_csr``: a pending CertificateSigningRequest with the Event's signer and usages.

        Returns ``{"bindings": [...], "objects": [credential uids created]}``."""
        import base64

        cred = detection.credential
        made: list[str] = []
        objects: list[str] = []
        if cred is None or not cred.uid:
            return {"bindings": made, "objects": objects}
        attrs = cred.attributes or {}
        parts = cred.uid.split("/")
        if cred.kind == "k8s_role_binding":
            from cordon.providers.kubernetes.actions import parse_binding

            namespace, name = parse_binding(cred.uid)
            kind = "rolebindings" if namespace else "clusterrolebindings"
            if self.standin.get(kind, namespace or "", name) is None:
                role = attrs.get("roleRef") or {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                 "name": "cluster-admin"}
                self.standin.put(kind, namespace or "", {"metadata": {"name": name}, "roleRef": role,
                                                         "subjects": attrs.get("subjects") or []})
                made.append(cred.uid)
        elif cred.kind == "k8s_secret" and len(parts) == 4 and self.standin.get("secrets", parts[1], parts[3]) is None:
            token = base64.b64encode(secrets.token_urlsafe(32).encode()).decode()
            self.standin.put("secrets", parts[1], {"metadata": {"name": parts[3], "annotations": {
                "kubernetes.io/service-account.name": "default"}}, "type": attrs.get("type") or
                "kubernetes.io/service-account-token", "data": {"token": token}})
            objects.append(cred.uid)
        elif cred.kind == "k8s_service_account" and len(parts) == 4 \
                and self.standin.get("serviceaccounts", parts[1], parts[3]) is None:
            self.standin.put("serviceaccounts", parts[1], {"metadata": {"name": parts[3]}})
            self.standin.put("rolebindings", parts[1], {"metadata": {"name": f"{parts[3]}-edit"}, "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"kind": "ServiceAccount", "name": parts[3], "namespace": parts[1]}]})
            objects.append(cred.uid)
        elif cred.kind == "k8s_csr" and self.standin.get("certificatesigningrequests", "", parts[1]) is None:
            self.standin.put("certificatesigningrequests", "", {"metadata": {"name": parts[1]}, "spec": {
                "signerName": attrs.get("signerName") or "kubernetes.io/kube-apiserver-client",
                "usages": attrs.get("usages") or ["client auth"], "username": cred.owner.name if cred.owner else None,
                "request": ""}, "status": {}})
            objects.append(cred.uid)
        if self.standin.get("clusterrolebindings", "", "cordon-sandbox-neighbour") is None:
            self.standin.put("clusterrolebindings", "", {"metadata": {"name": "cordon-sandbox-neighbour"},
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                         "name": "view"},
                             "subjects": [{"kind": "User", "name": "auditor@example.com"}]})
        return {"bindings": made, "objects": objects}
