"""A local Kubernetes API server stand-in for rehearsals and tests: the official ``kubernetes``
Python client talks to it over real HTTP.

Why our own rather than kmock (or a kind/k3s cluster): kmock is a mocking library for Python
*clients* of the Kubernetes API (it answers what a test scripts); Cordon needs API semantics it does
not script: server dry runs that persist nothing, ``DeleteOptions.preconditions.uid`` refused with
409 when the object was re-created, ``AlreadyExists`` on create, generated uids and resourceVersions,
bearer-token authentication, and seeding from a detection, in one small threaded ``http.server``
with no cluster, container runtime or extra dependency.

Endpoints (https://kubernetes.io/docs/reference/kubernetes-api/authorization-resources/):
``GET`` / ``DELETE`` ``/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}`` and
``/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}``; ``POST`` to the
collections; ``GET`` of a collection lists it. ``?dryRun=All`` validates without persisting. Errors
are ``Status`` objects (``reason`` ``NotFound`` 404, ``AlreadyExists`` 409, ``Conflict`` 409 for a
failed uid precondition, ``Unauthorized`` 401 without the bearer token).
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
#: Cordon's own ServiceAccount in the sandbox (the guard never contains it)
CORDON_SA = "system:serviceaccount:cordon:cordon-responder"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class KubernetesStandIn:
    """The HTTP server and its objects: ``objects[(kind, namespace or "", name)] -> object`` with
    ``kind`` ``clusterrolebindings`` / ``rolebindings``. Thread-safe; ``start()`` / ``stop()``."""

    KINDS = {"clusterrolebindings": "ClusterRoleBinding", "rolebindings": "RoleBinding"}

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

    def _route(self, path: str) -> tuple[str, str, str | None] | None:
        """``(kind, namespace, name or None)`` of an RBAC path, else ``None``."""
        if not path.startswith(RBAC + "/"):
            return None
        parts = path[len(RBAC) + 1:].split("/")
        if parts[0] == "clusterrolebindings" and len(parts) <= 2:
            return "clusterrolebindings", "", parts[1] if len(parts) == 2 else None
        if len(parts) in (3, 4) and parts[0] == "namespaces" and parts[2] == "rolebindings":
            return "rolebindings", parts[1], parts[3] if len(parts) == 4 else None
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
            obj.setdefault("apiVersion", "rbac.authorization.k8s.io/v1")
            obj["kind"] = self.KINDS[kind]
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
        kind, namespace, name = route
        if name is None:
            if method == "GET":
                with self._lock:
                    items = [o for (k, ns, _), o in self.objects.items()
                             if k == kind and (not namespace or ns == namespace)]
                return 200, {"kind": self.KINDS[kind] + "List", "apiVersion": "rbac.authorization.k8s.io/v1",
                             "metadata": {}, "items": items}
            if method == "POST":
                new = (body.get("metadata") or {}).get("name")
                if not new or not isinstance(body.get("roleRef"), dict):
                    return 422, _status(422, "Invalid", "metadata.name and roleRef are required")
                if self.get(kind, namespace, new) is not None:
                    return 409, _status(409, "AlreadyExists",
                                        f'{kind}.rbac.authorization.k8s.io "{new}" already exists')
                if dry:
                    return 201, body
                return 201, self.put(kind, namespace, body)
            return 405, _status(405, "MethodNotAllowed", method)
        obj = self.get(kind, namespace, name)
        if obj is None:
            return 404, _status(404, "NotFound", f'{kind}.rbac.authorization.k8s.io "{name}" not found')
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
            return 200, _status(200, "", "") | {"status": "Success"}
        return 405, _status(405, "MethodNotAllowed", method)


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
        """Create the binding a ``k8s_role_binding`` detection names (its ``requestObject``'s
        ``roleRef`` and ``subjects``, from ``credential.attributes``) when absent, plus an
        unrelated binding beside it (``cordon-sandbox-neighbour``) that containment must leave
        alone. Returns ``{"bindings": [uids created]}``."""
        cred = detection.credential
        made: list[str] = []
        if cred is None or cred.kind != "k8s_role_binding" or not cred.uid:
            return {"bindings": made}
        from cordon.providers.kubernetes.actions import parse_binding

        namespace, name = parse_binding(cred.uid)
        kind = "rolebindings" if namespace else "clusterrolebindings"
        ns = namespace or ""
        attrs = cred.attributes or {}
        if self.standin.get(kind, ns, name) is None:
            self.standin.put(kind, ns, {"metadata": {"name": name}, "roleRef": attrs.get("roleRef") or {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": attrs.get("subjects") or []})
            made.append(cred.uid)
        if self.standin.get("clusterrolebindings", "", "cordon-sandbox-neighbour") is None:
            self.standin.put("clusterrolebindings", "", {"metadata": {"name": "cordon-sandbox-neighbour"},
                             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                         "name": "view"},
                             "subjects": [{"kind": "User", "name": "auditor@example.com"}]})
        return {"bindings": made}
