"""The GCP sandbox: one local HTTP stand-in for the Google APIs Cordon's GCP actions call.

:class:`GcpStandIn` serves, on 127.0.0.1 and behind **one** URL, the REST shapes of

* IAM v1 (https://cloud.google.com/iam/docs/reference/rest): ``projects.serviceAccounts``
  ``get/list/create/disable/enable/getIamPolicy/setIamPolicy`` and
  ``projects.serviceAccounts.keys`` ``list/get/disable/enable/delete``;
* Cloud Resource Manager v1 (https://cloud.google.com/resource-manager/reference/rest/v1/projects):
  ``projects.getIamPolicy`` / ``projects.setIamPolicy``;
* API Keys v2 (https://cloud.google.com/api-keys/docs/reference/rest/v2/projects.locations.keys):
  ``get/delete/undelete`` (soft delete, as the real API);
* OS Login v1 (https://cloud.google.com/compute/docs/oslogin/rest/v1/users):
  ``users.sshPublicKeys.get/delete`` and ``users.getLoginProfile``;
* Cloud Storage JSON API v1 HMAC keys (https://cloud.google.com/storage/docs/json_api/v1/projects/hmacKeys):
  ``get`` / ``update``;
* Cloud Logging v2 ``entries.list`` (https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list)
  over the entries a test adds (:meth:`GcpStandIn.add_log_entries`): ``resourceNames``
  (``projects/P``: entries whose ``logName`` is under it), ``orderBy`` ``timestamp asc|desc``,
  ``pageSize`` (at most :attr:`GcpStandIn.log_page_size`) / ``pageToken``, and a ``filter`` of
  comparisons joined by ``AND`` in the Logging query language
  (https://cloud.google.com/logging/docs/view/logging-query-language): ``FIELD:"v"`` (has: the value
  inside the field's text), ``FIELD="v"``, and ``timestamp`` with ``>=``, ``>``, ``<=``, ``<``; any
  other expression is 400 ``INVALID_ARGUMENT``;
* Pub/Sub v1 (https://cloud.google.com/pubsub/docs/reference/rest): ``projects.topics``
  ``create`` (PUT) / ``publish``, ``projects.subscriptions`` ``create`` (PUT, ``topic``,
  ``ackDeadlineSeconds`` 10-600, default 10) / ``pull`` (``maxMessages``; each message gets an
  ``ackId`` and ``deliveryAttempt``, and is delivered again once its ack deadline passes
  unacknowledged) / ``acknowledge`` / ``modifyAckDeadline`` (``ackDeadlineSeconds`` 0 hands it
  back at once). A publish fans out to every subscription of the topic; messages get
  ``messageId`` and ``publishTime``. ``pull`` answers at once (``{}`` when nothing is due), as
  with ``returnImmediately``;
* an OAuth 2.0 token endpoint, ``POST /token``, for the JWT-bearer grant
  (``urn:ietf:params:oauth:grant-type:jwt-bearer``, RFC 7523) that
  ``google.oauth2.service_account.Credentials`` sends: the assertion's ``iss`` must be a
  registered identity and its RS256 signature must verify with that identity's public key.

**Routing.** ``googleapiclient.discovery.build(..., client_options={"api_endpoint": E})`` uses
``E`` *instead of* ``rootUrl + servicePath`` (googleapiclient/discovery.py,
``build_from_document``), so each API gets ``E = <url>/<api>/<servicePath>``:
``<url>/iam/``, ``<url>/cloudresourcemanager/``, ``<url>/apikeys/``, ``<url>/oslogin/``,
``<url>/storage/storage/v1/`` (:func:`api_endpoint`). The first path segment picks the API, the
rest is the API's own path (``v1/{+name}:disable`` ...), exactly as on ``<api>.googleapis.com``.

Every API request must carry ``Authorization: Bearer <token issued by /token>`` (else HTTP 401
``UNAUTHENTICATED``). Errors use Google's JSON error shape
``{"error": {"code", "message", "status"}}`` (Storage adds ``errors: [{reason}]``).

Concurrency control as the real APIs: ``setIamPolicy`` (CRM and IAM) with an ``etag`` that is
not the current one answers **409 ABORTED**; Storage ``hmacKeys.update`` with a stale ``etag``
answers **412** ``conditionNotMet``; API Keys ``delete`` with a stale ``etag`` answers 409 ABORTED.

Sandbox approximations (documented, never used against real GCP):

* projects are known by ID only (``projectNumber`` is derived); an unknown project answers 403
  ``PERMISSION_DENIED`` on CRM, as the real API does for projects the caller cannot see;
* ``projects/-/serviceAccounts/<email or uniqueId>`` is resolved like the real API; keys are
  found only under the service account that owns them (another account's key ID is 404);
* policies keep bindings verbatim; ``getIamPolicy`` answers ``version`` 3 when any binding has
  a condition, else the stored version; a policy with conditions set with ``version`` < 3 is 400;
* API key ``get`` on a soft-deleted key returns it with ``deleteTime`` (``undelete`` within
  30 days restores it); long-running operations come back ``done: true`` at once;
* access tokens never expire within a test (``expires_in`` 3600).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DEFAULT_PROJECT = "cordon-sandbox"
CORDON_SA_NAME = "cordon-responder"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
APIS = ("iam", "cloudresourcemanager", "apikeys", "oslogin", "storage", "logging", "pubsub")
#: ``servicePath`` of each API's discovery document (only Storage has one).
SERVICE_PATHS = {"storage": "storage/v1/"}
EMPTY_ETAG = "ACAB"  # what the real APIs answer for an empty policy


def api_endpoint(url: str, api: str) -> str:
    """The ``client_options["api_endpoint"]`` for ``api`` behind the stand-in at ``url``:
    ``<url>/<api>/<servicePath>`` (e.g. ``http://127.0.0.1:5/storage/storage/v1/``)."""
    return f"{url.rstrip('/')}/{api}/{SERVICE_PATHS.get(api, '')}"


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _new_etag() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


def project_of_email(email: str) -> str | None:
    """``sa@P.iam.gserviceaccount.com`` -> ``P``; ``None`` for other domains."""
    m = re.match(r"^[^@]+@([a-z0-9-]+)\.iam\.gserviceaccount\.com$", email or "")
    return m.group(1) if m else None


def generate_service_account_info(email: str, project: str, token_uri: str) -> tuple[dict[str, Any], Any]:
    """A service-account JSON key (the file ``gcloud iam service-accounts keys create`` writes)
    for ``email`` with a fresh 2048-bit RSA key, plus the public key object.

    Returns ``(info, public_key)``; ``info`` has ``type, project_id, private_key_id (40 hex),
    private_key (PKCS#8 PEM), client_email, client_id, auth_uri, token_uri,
    auth_provider_x509_cert_url, client_x509_cert_url, universe_domain``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(10**20 + secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    return info, key.public_key()


class ApiError(Exception):
    """An error answer: HTTP ``status``, gRPC-style ``code`` (``NOT_FOUND``...) and ``message``;
    ``reason`` is the Storage-style ``errors[0].reason``."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.reason = status, code, message, reason


def _not_found(what: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"{what} not found.", "notFound")


class GcpStandIn:
    """The HTTP stand-in (see module doc). State, all guarded by one lock:

    * ``identities``: ``email -> RSA public key`` allowed to get tokens; ``tokens``: ``token -> email``;
    * ``projects``: ``project_id -> {"projectNumber", "policy"}``;
    * ``service_accounts``: ``email -> ServiceAccount`` (IAM's JSON shape) and
      ``sa_policies``: ``email -> Policy``;
    * ``sa_keys``: ``email -> {key_id: ServiceAccountKey}``;
    * ``api_keys``: ``name -> Key``; ``ssh_keys``: ``user -> {fingerprint: SshPublicKey}``;
    * ``hmac_keys``: ``(project, access_id) -> HmacKeyMetadata``;
    * ``requests``: one ``{"api", "method", "path", "query", "body", "auth", "principal",
      "status"}`` per request received (token requests included, ``api="oauth2"``);
    * failures queued by :meth:`fail_next` and one-shot hooks queued by :meth:`on_next`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.RLock()
        self.identities: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}
        self.projects: dict[str, dict[str, Any]] = {}
        self.service_accounts: dict[str, dict[str, Any]] = {}
        self.sa_policies: dict[str, dict[str, Any]] = {}
        #: IAM policies of folders and organisations (``folders/F``, ``organizations/O``); a
        #: resource absent here answers 403, as an unreadable policy does.
        self.hierarchy_policies: dict[str, dict[str, Any]] = {}
        self.sa_keys: dict[str, dict[str, dict[str, Any]]] = {}
        self.api_keys: dict[str, dict[str, Any]] = {}
        self.ssh_keys: dict[str, dict[str, dict[str, Any]]] = {}
        self.hmac_keys: dict[tuple[str, str], dict[str, Any]] = {}
        #: Cloud Audit Log entries (``LogEntry`` JSON) served by Logging's ``entries.list``
        self.log_entries: list[dict[str, Any]] = []
        #: the most entries one ``entries.list`` page holds (the API's own cap is 1000)
        self.log_page_size = 1000
        #: Pub/Sub: topic name -> its subscriptions' names; subscription name -> its state
        #: (``topic``, ``ackDeadlineSeconds``, ``queue`` of messages due, ``outstanding`` by ackId:
        #: ``(message, deadline epoch s, deliveryAttempt)``)
        self.topics: dict[str, list[str]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self._message_ids = itertools.count(1_000_001)
        self.requests: list[dict[str, Any]] = []
        self._failures: list[dict[str, Any]] = []
        self._hooks: list[tuple[str, Callable[[GcpStandIn], None]]] = []
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> GcpStandIn:
        """Serve in a daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="gcp-standin", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def reset(self) -> None:
        """Forget all state, identities, tokens, recorded requests, failures and hooks."""
        with self._lock:
            for store in (self.identities, self.tokens, self.projects, self.service_accounts, self.sa_policies,
                          self.sa_keys, self.api_keys, self.ssh_keys, self.hmac_keys, self.hierarchy_policies):
                store.clear()
            self.log_entries.clear()
            self.log_page_size = 1000
            self.topics.clear()
            self.subscriptions.clear()
            self.requests.clear()
            self._failures.clear()
            self._hooks.clear()

    # -- fault injection and inspection ---------------------------------------------------------
    def fail_next(self, match: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests that match with HTTP ``status`` (and ``headers``,
        e.g. ``{"Retry-After": "0"}``) instead of serving them. ``match`` is an HTTP method
        (``"POST"``), a path prefix (``"/iam/v1/projects/p1/serviceAccounts"``), or
        ``"METHOD /path-prefix"``. The body is Google's error JSON for the status."""
        with self._lock:
            self._failures.append({"match": match, "status": status, "left": times, "headers": dict(headers or {})})

    def on_next(self, match: str, hook: Callable[[GcpStandIn], None]) -> None:
        """Run ``hook(standin)`` once, just before serving the next request that matches
        (same ``match`` rules as :meth:`fail_next`); e.g. change a policy between Cordon's read
        and its write to prove the etag check."""
        with self._lock:
            self._hooks.append((match, hook))

    def api_requests(self, api: str | None = None, mutating: bool | None = None) -> list[dict[str, Any]]:
        """Recorded API requests (not token requests), optionally only of ``api`` and only
        mutating (``POST``/``PUT``/``PATCH``/``DELETE`` other than reads like ``:getIamPolicy``)."""
        with self._lock:
            out = [r for r in self.requests if r["api"] != "oauth2" and (api is None or r["api"] == api)]
        if mutating is not None:
            out = [r for r in out if _is_mutating(r) == mutating]
        return out

    @staticmethod
    def _matches(match: str, method: str, path: str) -> bool:
        if " " in match:
            m, _, prefix = match.partition(" ")
            return m.upper() == method and path.startswith(prefix)
        if match.isalpha() and match.isupper():
            return match == method
        return path.startswith(match)

    def _take_failure(self, method: str, path: str) -> dict[str, Any] | None:
        with self._lock:
            for f in self._failures:
                if self._matches(f["match"], method, path):
                    f["left"] -= 1
                    if f["left"] <= 0:
                        self._failures.remove(f)
                    return f
        return None

    def _take_hook(self, method: str, path: str) -> Callable[[GcpStandIn], None] | None:
        with self._lock:
            for i, (match, hook) in enumerate(self._hooks):
                if self._matches(match, method, path):
                    del self._hooks[i]
                    return hook
        return None

    # -- seeding (direct writes: the stand-in is ours) --------------------------------------------
    def add_identity(self, email: str, public_key: Any) -> None:
        """Allow ``email`` to obtain tokens with JWTs signed by the matching private key."""
        with self._lock:
            self.identities[email] = public_key

    def ensure_project(self, project: str) -> dict[str, Any]:
        """Create project ``project`` (empty policy) if absent; returns its record."""
        with self._lock:
            if project not in self.projects:
                number = str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 10**12)
                self.projects[project] = {"projectId": project, "projectNumber": number,
                                          "policy": {"version": 1, "bindings": [], "etag": EMPTY_ETAG}}
            return self.projects[project]

    def ensure_service_account(self, email: str, project: str | None = None, display_name: str = "",
                               description: str = "", disabled: bool = False) -> dict[str, Any]:
        """Create service account ``email`` in ``project`` (default: from the email) if absent."""
        project = project or project_of_email(email) or DEFAULT_PROJECT
        with self._lock:
            self.ensure_project(project)
            if email not in self.service_accounts:
                unique = str(10**20 + int(hashlib.sha256(email.encode()).hexdigest(), 16) % 10**20)
                self.service_accounts[email] = {
                    "name": f"projects/{project}/serviceAccounts/{email}", "projectId": project,
                    "uniqueId": unique, "email": email, "displayName": display_name or email.split("@")[0],
                    "description": description, "etag": "MDEwMjE5MjA=", "oauth2ClientId": unique,
                    "disabled": disabled,
                }
                self.sa_policies[email] = {"version": 1, "bindings": [], "etag": EMPTY_ETAG}
                self.sa_keys[email] = {}
            return self.service_accounts[email]

    def ensure_sa_key(self, email: str, key_id: str, key_type: str = "USER_MANAGED", disabled: bool = False,
                      valid_after: datetime | None = None, key_origin: str = "GOOGLE_PROVIDED") -> dict[str, Any]:
        """Create key ``key_id`` of service account ``email`` (created if absent) if absent;
        ``key_origin`` ``USER_PROVIDED`` for an uploaded key (its ``valid_after`` is then the
        certificate's ``notBefore``)."""
        sa = self.ensure_service_account(email)
        with self._lock:
            keys = self.sa_keys[email]
            if key_id not in keys:
                after = valid_after or _now()
                before = after + timedelta(days=3650) if key_type == "USER_MANAGED" else after + timedelta(days=90)
                keys[key_id] = {
                    "name": f"projects/{sa['projectId']}/serviceAccounts/{email}/keys/{key_id}",
                    "validAfterTime": _rfc3339(after), "validBeforeTime": _rfc3339(before),
                    "keyAlgorithm": "KEY_ALG_RSA_2048", "keyOrigin": key_origin, "keyType": key_type,
                    "disabled": disabled,
                }
            return keys[key_id]

    def set_ancestry(self, project: str, *ancestors: str, readable: bool = True) -> None:
        """Place ``project`` under ``ancestors`` (``folders/F`` ..., then ``organizations/O``,
        nearest first), each with an empty policy, readable unless ``readable`` is false."""
        with self._lock:
            self.ensure_project(project)["ancestry"] = list(ancestors)
            for res in ancestors:
                if readable:
                    self.hierarchy_policies.setdefault(res, {"version": 1, "bindings": [], "etag": EMPTY_ETAG})
                else:
                    self.hierarchy_policies.pop(res, None)

    def add_binding(self, resource: str, role: str, member: str, condition: dict[str, Any] | None = None) -> None:
        """Add ``member`` to ``role`` (with ``condition``, if any) on ``projects/P`` or
        ``projects/P/serviceAccounts/EMAIL``; new etag when the policy changes."""
        with self._lock:
            policy = self._policy_ref(resource)
            for b in policy["bindings"]:
                if b["role"] == role and b.get("condition") == condition:
                    if member not in b["members"]:
                        b["members"].append(member)
                        policy["etag"] = _new_etag()
                    return
            binding: dict[str, Any] = {"role": role, "members": [member]}
            if condition:
                binding["condition"] = copy.deepcopy(condition)
                policy["version"] = 3
            policy["bindings"].append(binding)
            policy["etag"] = _new_etag()

    def policy(self, resource: str) -> dict[str, Any]:
        """A copy of the IAM policy of ``projects/P`` or ``projects/P/serviceAccounts/EMAIL``."""
        with self._lock:
            return copy.deepcopy(self._policy_ref(resource))

    def _policy_ref(self, resource: str) -> dict[str, Any]:
        parts = resource.split("/")
        if len(parts) == 2 and parts[0] in ("folders", "organizations"):
            return self.hierarchy_policies.setdefault(resource, {"version": 1, "bindings": [], "etag": EMPTY_ETAG})
        if len(parts) == 2 and parts[0] == "projects":
            return self.ensure_project(parts[1])["policy"]
        if len(parts) == 4 and parts[0] == "projects" and parts[2] == "serviceAccounts":
            self.ensure_service_account(parts[3], None if parts[1] == "-" else parts[1])
            return self.sa_policies[parts[3]]
        raise ValueError(f"not a project or service account resource: {resource}")

    def ensure_api_key(self, name: str, display_name: str = "") -> dict[str, Any]:
        """Create API key ``projects/P/locations/global/keys/K`` if absent."""
        with self._lock:
            self.ensure_project(name.split("/")[1])
            if name not in self.api_keys:
                now = _rfc3339(_now())
                self.api_keys[name] = {
                    "name": name, "uid": secrets.token_hex(16), "displayName": display_name or name.rsplit("/", 1)[1],
                    "keyString": "AIza" + secrets.token_urlsafe(26)[:35], "createTime": now, "updateTime": now,
                    "etag": f'W/"{_new_etag()}"', "restrictions": {},
                }
            return self.api_keys[name]

    def ensure_ssh_key(self, user: str, fingerprint: str, key: str | None = None,
                       expiration_usec: str | None = None) -> dict[str, Any]:
        """Put an SSH public key with ``fingerprint`` in ``user``'s OS Login profile if absent."""
        with self._lock:
            keys = self.ssh_keys.setdefault(user, {})
            if fingerprint not in keys:
                material = key or ("ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 "
                                                                      + secrets.token_bytes(32)).decode()
                                   + f" {user}")
                keys[fingerprint] = {"key": material, "fingerprint": fingerprint,
                                     "name": f"users/{user}/sshPublicKeys/{fingerprint}"}
                if expiration_usec:
                    keys[fingerprint]["expirationTimeUsec"] = str(expiration_usec)
            return keys[fingerprint]

    def ensure_hmac_key(self, project: str, access_id: str, service_account_email: str,
                        state: str = "ACTIVE") -> dict[str, Any]:
        """Create HMAC key ``access_id`` in ``project`` for ``service_account_email`` if absent."""
        with self._lock:
            self.ensure_project(project)
            if (project, access_id) not in self.hmac_keys:
                now = _rfc3339(_now())
                self.hmac_keys[(project, access_id)] = {
                    "kind": "storage#hmacKeyMetadata", "id": f"{project}/{access_id}", "accessId": access_id,
                    "projectId": project, "serviceAccountEmail": service_account_email, "state": state,
                    "timeCreated": now, "updated": now, "etag": _new_etag(),
                    "selfLink": f"https://www.googleapis.com/storage/v1/projects/{project}/hmacKeys/{access_id}",
                }
            return self.hmac_keys[(project, access_id)]

    # -- HTTP ---------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                path = split.path
                query = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(split.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization")
                method = self.command
                api = path.strip("/").split("/", 1)[0] if path != "/token" else "oauth2"
                ctype = self.headers.get("Content-Type", "")
                if api == "oauth2":
                    body: Any = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                else:
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        body = raw.decode(errors="replace")
                record = {"api": api, "method": method, "path": unquote(path), "query": query, "body": body,
                          "auth": auth, "principal": None, "status": None, "content_type": ctype}
                with standin._lock:
                    standin.requests.append(record)
                status, payload, headers = standin._dispatch(record)
                record["status"] = status
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server API

        return Handler

    def _dispatch(self, rec: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        method, path, api = rec["method"], rec["path"], rec["api"]
        failure = self._take_failure(method, path)
        if failure is not None:
            err = ApiError(failure["status"], _status_code(failure["status"]), "injected failure",
                           _storage_reason(failure["status"]))
            return failure["status"], _error_body(err, api), failure["headers"]
        try:
            if api == "oauth2":
                if method != "POST":
                    raise ApiError(405, "METHOD_NOT_ALLOWED", "POST only")
                return 200, self._token(rec["body"] or {}), {}
            principal = self._authenticate(rec["auth"])
            rec["principal"] = principal
            hook = self._take_hook(method, path)
            if hook is not None:
                hook(self)
            sub = path.strip("/").split("/", 1)[1] if "/" in path.strip("/") else ""
            handler = {"iam": self._iam, "cloudresourcemanager": self._crm, "apikeys": self._apikeys,
                       "oslogin": self._oslogin, "storage": self._storage, "logging": self._logging,
                       "pubsub": self._pubsub}.get(api)
            if handler is None:
                raise ApiError(404, "NOT_FOUND", f"no API at /{api}")
            with self._lock:
                status, payload = handler(method, sub, rec["query"], rec["body"] or {})
            return status, payload, {}
        except ApiError as err:
            if api == "oauth2":
                return err.status, {"error": err.code, "error_description": err.message}, {}
            return err.status, _error_body(err, api), {}

    # -- OAuth 2.0 ------------------------------------------------------------------------------
    def _token(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("grant_type") != JWT_BEARER:
            raise ApiError(400, "unsupported_grant_type", f"grant_type must be {JWT_BEARER}")
        try:
            head_b64, claims_b64, sig_b64 = form["assertion"].split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(claims_b64))
        except (KeyError, ValueError) as exc:
            raise ApiError(400, "invalid_grant", f"malformed assertion: {exc}") from exc
        iss = claims.get("iss")
        with self._lock:
            public_key = self.identities.get(iss)
        if public_key is None:
            raise ApiError(400, "invalid_grant", f"Invalid JWT: unknown issuer {iss!r}")
        if header.get("alg") != "RS256":
            raise ApiError(400, "invalid_grant", "Invalid JWT: alg must be RS256")
        try:
            public_key.verify(_b64url_decode(sig_b64), f"{head_b64}.{claims_b64}".encode(),
                              padding.PKCS1v15(), hashes.SHA256())
        except Exception as exc:  # noqa: BLE001 - cryptography's InvalidSignature
            raise ApiError(400, "invalid_grant", "Invalid JWT Signature.") from exc
        if int(claims.get("exp", 0)) < time.time() - 60:
            raise ApiError(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token")
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = iss
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}

    def _authenticate(self, auth: str | None) -> str:
        if auth and auth.startswith("Bearer "):
            with self._lock:
                who = self.tokens.get(auth[len("Bearer "):])
            if who:
                return who
        raise ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. "
                       "Expected OAuth 2 access token, login cookie or other valid authentication credential.")

    # -- IAM v1 ---------------------------------------------------------------------------------
    def _find_sa(self, project: str, ident: str) -> dict[str, Any]:
        sa = self.service_accounts.get(ident)
        if sa is None:
            sa = next((s for s in self.service_accounts.values() if s["uniqueId"] == ident), None)
        if sa is None or (project != "-" and sa["projectId"] != project):
            raise _not_found(f"Service account projects/{project}/serviceAccounts/{ident}")
        return sa

    def _iam(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        m = re.fullmatch(r"v1/projects/([^/:]+)/serviceAccounts(?:/([^/:]+)(?:/keys(?:/([^/:]+))?)?)?(?::(\w+))?",
                         sub)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"unknown IAM path {sub}")
        project, ident, key_id, verb = m.groups()
        keys_path = "/keys" in sub
        if ident is None:  # collection
            if method == "GET" and verb is None:
                accounts = [copy.deepcopy(s) for s in self.service_accounts.values()
                            if project == "-" or s["projectId"] == project]
                return 200, {"accounts": accounts} if accounts else {}
            if method == "POST" and verb is None:
                account_id = body.get("accountId") or ""
                email = f"{account_id}@{project}.iam.gserviceaccount.com"
                if email in self.service_accounts:
                    raise ApiError(409, "ALREADY_EXISTS",
                                   f"Service account {account_id} already exists within project.")
                sa = body.get("serviceAccount") or {}
                return 200, copy.deepcopy(self.ensure_service_account(
                    email, project, sa.get("displayName", ""), sa.get("description", "")))
            raise ApiError(405, "METHOD_NOT_ALLOWED", sub)
        sa = self._find_sa(project, ident)
        email = sa["email"]
        if not keys_path:
            if method == "GET" and verb is None:
                return 200, copy.deepcopy(sa)
            if method == "POST" and verb in ("disable", "enable"):
                sa["disabled"] = verb == "disable"
                return 200, {}
            if method == "POST" and verb == "getIamPolicy":
                return 200, _policy_view(self.sa_policies[email])
            if method == "POST" and verb == "setIamPolicy":
                self.sa_policies[email] = _set_policy(self.sa_policies[email], body)
                return 200, _policy_view(self.sa_policies[email])
            raise ApiError(405, "METHOD_NOT_ALLOWED", sub)
        keys = self.sa_keys.setdefault(email, {})
        if key_id is None:
            if method == "GET" and verb is None:
                types = query.get("keyTypes") or []
                types = [types] if isinstance(types, str) else types
                out = [copy.deepcopy(k) for k in keys.values() if not types or k["keyType"] in types]
                return 200, {"keys": out} if out else {}
            raise ApiError(405, "METHOD_NOT_ALLOWED", sub)
        key = keys.get(key_id)
        if key is None:
            raise _not_found(f"Service account key projects/{project}/serviceAccounts/{ident}/keys/{key_id}")
        if method == "GET" and verb is None:
            return 200, copy.deepcopy(key)
        if method == "DELETE" and verb is None:
            if key["keyType"] == "SYSTEM_MANAGED":
                raise ApiError(400, "FAILED_PRECONDITION", "System-managed keys cannot be deleted.")
            del keys[key_id]
            return 200, {}
        if method == "POST" and verb in ("disable", "enable"):
            if key["keyType"] == "SYSTEM_MANAGED":
                raise ApiError(400, "FAILED_PRECONDITION", "System-managed keys cannot be disabled.")
            key["disabled"] = verb == "disable"
            return 200, {}
        raise ApiError(405, "METHOD_NOT_ALLOWED", sub)

    # -- Cloud Resource Manager v1 --------------------------------------------------------------
    def _crm(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        h = re.fullmatch(r"v[123]/((?:folders|organizations)/[^/:]+):getIamPolicy", sub)
        if h and method == "POST":
            policy = self.hierarchy_policies.get(h.group(1))
            if policy is None:
                raise ApiError(403, "PERMISSION_DENIED", f"The caller does not have permission on {h.group(1)}")
            return 200, _policy_view(policy)
        a = re.fullmatch(r"v1/projects/([^/:]+):getAncestry", sub)
        if a and method == "POST":
            rec = self.projects.get(a.group(1))
            if rec is None:
                raise ApiError(403, "PERMISSION_DENIED", f"project {a.group(1)} not found or not visible")
            chain = [{"resourceId": {"type": "project", "id": a.group(1)}}]
            chain += [{"resourceId": {"type": r.split("/")[0].rstrip("s"), "id": r.split("/")[1]}}
                      for r in rec.get("ancestry", [])]
            return 200, {"ancestor": chain}
        m = re.fullmatch(r"v1/projects/([^/:]+):(getIamPolicy|setIamPolicy)", sub)
        if not m or method != "POST":
            raise ApiError(404, "NOT_FOUND", f"unknown Cloud Resource Manager path {sub}")
        project, verb = m.groups()
        if project not in self.projects:
            raise ApiError(403, "PERMISSION_DENIED",
                           f"The caller does not have permission (project {project} not found or not visible)")
        rec = self.projects[project]
        if verb == "setIamPolicy":
            rec["policy"] = _set_policy(rec["policy"], body)
        return 200, _policy_view(rec["policy"])

    # -- API Keys v2 ----------------------------------------------------------------------------
    def _apikeys(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        m = re.fullmatch(r"v2/(projects/[^/]+/locations/[^/]+/keys/[^/:]+)(?::(\w+))?", sub)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"unknown API Keys path {sub}")
        name, verb = m.groups()
        key = self.api_keys.get(name)
        if key is None:
            raise _not_found(f"Key {name}")
        if method == "GET" and verb is None:
            return 200, {k: v for k, v in copy.deepcopy(key).items() if k != "keyString"}
        if method == "DELETE" and verb is None:
            if key.get("deleteTime"):
                raise _not_found(f"Key {name}")
            if query.get("etag") and query["etag"] != key["etag"]:
                raise ApiError(409, "ABORTED", "The etag does not match the current key.")
            now = _rfc3339(_now())
            key.update(deleteTime=now, updateTime=now, etag=f'W/"{_new_etag()}"')
            return 200, _operation(key)
        if method == "POST" and verb == "undelete":
            if not key.get("deleteTime"):
                raise ApiError(400, "FAILED_PRECONDITION", f"Key {name} is not deleted.")
            key.pop("deleteTime", None)
            key.update(updateTime=_rfc3339(_now()), etag=f'W/"{_new_etag()}"')
            return 200, _operation(key)
        raise ApiError(405, "METHOD_NOT_ALLOWED", sub)

    # -- OS Login v1 ----------------------------------------------------------------------------
    def _oslogin(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        m = re.fullmatch(r"v1/users/([^/]+)/loginProfile", sub)
        if m and method == "GET":
            user = m.group(1)
            keys = self.ssh_keys.get(user, {})
            return 200, {"name": user, "sshPublicKeys": copy.deepcopy(keys)} if keys else {"name": user}
        m = re.fullmatch(r"v1/users/([^/]+)/sshPublicKeys/([^/]+)", sub)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"unknown OS Login path {sub}")
        user, fp = m.groups()
        key = self.ssh_keys.get(user, {}).get(fp)
        if key is None:
            raise _not_found(f"SSH public key users/{user}/sshPublicKeys/{fp}")
        if method == "GET":
            return 200, copy.deepcopy(key)
        if method == "DELETE":
            del self.ssh_keys[user][fp]
            return 200, {}
        raise ApiError(405, "METHOD_NOT_ALLOWED", sub)

    # -- Cloud Storage JSON API v1: HMAC keys ---------------------------------------------------
    def add_log_entries(self, *entries: dict[str, Any]) -> None:
        """Add Cloud Audit Log entries (``LogEntry`` JSON, with ``logName``, ``timestamp``,
        ``insertId``) for Logging's ``entries.list`` to serve."""
        with self._lock:
            self.log_entries.extend(copy.deepcopy(e) for e in entries)

    def _logging(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        """Logging v2 ``POST v2/entries:list`` (module docstring)."""
        if sub != "v2/entries:list" or method != "POST":
            raise ApiError(404, "NOT_FOUND", f"unknown Logging path {method} {sub}")
        names = body.get("resourceNames") or []
        if not names or not all(re.fullmatch(r"(projects|folders|organizations|billingAccounts)/[^/]+", n)
                                for n in names):
            raise ApiError(400, "INVALID_ARGUMENT", "resourceNames: one or more parent resources are required")
        order = (body.get("orderBy") or "timestamp asc").strip()
        if order not in ("timestamp asc", "timestamp desc"):
            raise ApiError(400, "INVALID_ARGUMENT", f"orderBy: {order!r} is not supported")
        keep = _log_filter(str(body.get("filter") or ""))
        found = [copy.deepcopy(e) for e in self.log_entries
                 if any(str(e.get("logName", "")).startswith(f"{n}/logs/") for n in names) and keep(e)]
        found.sort(key=lambda e: _parse_time(e["timestamp"]), reverse=order.endswith("desc"))
        size = max(1, min(int(body.get("pageSize") or 50), self.log_page_size))
        start = int(body.get("pageToken") or 0)
        out: dict[str, Any] = {"entries": found[start:start + size]} if found[start:start + size] else {}
        if start + size < len(found):
            out["nextPageToken"] = str(start + size)
        return 200, out

    def _pubsub(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        """Pub/Sub v1 topics and subscriptions (module docstring)."""
        m = re.fullmatch(r"v1/(projects/[^/]+/(topics|subscriptions)/[^/:]+)(?::(\w+))?", sub)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"unknown Pub/Sub path {sub}")
        name, kind, verb = m.groups()
        if kind == "topics":
            if method == "PUT" and verb is None:
                if name in self.topics:
                    raise ApiError(409, "ALREADY_EXISTS", "Resource already exists in the project")
                self.topics[name] = []
                return 200, {"name": name}
            if method == "POST" and verb == "publish":
                if name not in self.topics:
                    raise ApiError(404, "NOT_FOUND", f"Resource not found (resource={name}).")
                ids = []
                for msg in body.get("messages") or []:
                    mid = str(next(self._message_ids))
                    stored = {"data": msg.get("data", ""), "attributes": dict(msg.get("attributes") or {}),
                              "messageId": mid, "publishTime": _rfc3339(_now())}
                    for sname in self.topics[name]:
                        self.subscriptions[sname]["queue"].append(copy.deepcopy(stored))
                    ids.append(mid)
                return 200, {"messageIds": ids}
            raise ApiError(404, "NOT_FOUND", f"unknown Pub/Sub topic call {method} {sub}")
        if method == "PUT" and verb is None:
            topic = body.get("topic")
            if topic not in self.topics:
                raise ApiError(404, "NOT_FOUND", f"Resource not found (resource={topic}).")
            if name in self.subscriptions:
                raise ApiError(409, "ALREADY_EXISTS", "Resource already exists in the project")
            deadline = int(body.get("ackDeadlineSeconds") or 10)
            if not 10 <= deadline <= 600:
                raise ApiError(400, "INVALID_ARGUMENT", "ackDeadlineSeconds must be between 10 and 600")
            self.subscriptions[name] = {"topic": topic, "ackDeadlineSeconds": deadline, "queue": [],
                                        "outstanding": {}, "attempts": {}}
            self.topics[topic].append(name)
            return 200, {"name": name, "topic": topic, "ackDeadlineSeconds": deadline}
        state = self.subscriptions.get(name)
        if state is None:
            raise ApiError(404, "NOT_FOUND", f"Resource not found (resource={name}).")
        now = time.time()
        if verb == "pull" and method == "POST":
            for ack_id, (msg, due, _n) in list(state["outstanding"].items()):
                if due <= now:  # the ack deadline passed: delivered again
                    del state["outstanding"][ack_id]
                    state["queue"].insert(0, msg)
            most = max(1, int(body.get("maxMessages") or 1))
            out = []
            while state["queue"] and len(out) < most:
                msg = state["queue"].pop(0)
                attempt = state["attempts"].get(msg["messageId"], 0) + 1
                state["attempts"][msg["messageId"]] = attempt
                ack_id = f"{msg['messageId']}-{attempt}-{secrets.token_hex(4)}"
                state["outstanding"][ack_id] = (msg, now + state["ackDeadlineSeconds"], attempt)
                out.append({"ackId": ack_id, "message": copy.deepcopy(msg), "deliveryAttempt": attempt})
            return 200, ({"receivedMessages": out} if out else {})
        if verb == "acknowledge" and method == "POST":
            for ack_id in body.get("ackIds") or []:
                state["outstanding"].pop(ack_id, None)  # an expired or unknown ackId is ignored, as the API does
            return 200, {}
        if verb == "modifyAckDeadline" and method == "POST":
            seconds = int(body.get("ackDeadlineSeconds") or 0)
            if not 0 <= seconds <= 600:
                raise ApiError(400, "INVALID_ARGUMENT", "ackDeadlineSeconds must be between 0 and 600")
            for ack_id in body.get("ackIds") or []:
                if ack_id in state["outstanding"]:
                    msg, _due, n = state["outstanding"][ack_id]
                    state["outstanding"][ack_id] = (msg, now + seconds, n)
            return 200, {}
        raise ApiError(404, "NOT_FOUND", f"unknown Pub/Sub subscription call {method} {sub}")

    def expire_ack_deadlines(self, subscription: str) -> None:
        """Let every outstanding message of ``subscription`` reach its ack deadline now (delivered
        again by the next ``pull``), as time passing would."""
        with self._lock:
            state = self.subscriptions.get(subscription)
            for ack_id, (msg, _due, n) in list((state or {}).get("outstanding", {}).items()):
                state["outstanding"][ack_id] = (msg, 0.0, n)

    def pubsub_backlog(self, subscription: str) -> int:
        """Messages of ``subscription`` not yet acknowledged (due and outstanding)."""
        with self._lock:
            state = self.subscriptions.get(subscription) or {"queue": [], "outstanding": {}}
            return len(state["queue"]) + len(state["outstanding"])

    def _storage(self, method: str, sub: str, query: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        m = re.fullmatch(r"storage/v1/projects/([^/]+)/hmacKeys/([^/]+)", sub)
        if not m:
            raise ApiError(404, "NOT_FOUND", f"unknown Storage path {sub}", "notFound")
        project, access_id = m.groups()
        key = self.hmac_keys.get((project, access_id))
        if key is None:
            raise ApiError(404, "NOT_FOUND", "Access ID not found in project.", "notFound")
        if method == "GET":
            return 200, copy.deepcopy(key)
        if method in ("PUT", "PATCH"):
            state = body.get("state")
            if state not in ("ACTIVE", "INACTIVE"):
                raise ApiError(400, "INVALID_ARGUMENT", "state must be ACTIVE or INACTIVE", "invalid")
            if key["state"] == "DELETED":
                raise ApiError(400, "FAILED_PRECONDITION", "Cannot update a deleted key.", "invalid")
            if body.get("etag") and body["etag"] != key["etag"]:
                raise ApiError(412, "FAILED_PRECONDITION", "Precondition Failed", "conditionNotMet")
            if key["state"] != state:
                key.update(state=state, updated=_rfc3339(_now()), etag=_new_etag())
            return 200, copy.deepcopy(key)
        raise ApiError(405, "METHOD_NOT_ALLOWED", sub, "invalid")


# -- helpers ---------------------------------------------------------------------------------------
_STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "ABORTED", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _field(entry: dict[str, Any], path: str) -> Any:
    obj: Any = entry
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _log_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate on a ``LogEntry`` for the subset of the Logging query language the stand-in serves
    (module docstring); 400 ``INVALID_ARGUMENT`` for anything else."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for clause in [c.strip() for c in re.split(r"\s+AND\s+", text.strip())] if text.strip() else []:
        m = re.fullmatch(r'timestamp\s*(>=|>|<=|<)\s*"([^"]+)"', clause)
        if m:
            op, bound = m.group(1), _parse_time(m.group(2))
            cmp = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
                   "<": lambda a, b: a < b}[op]
            tests.append(lambda e, cmp=cmp, bound=bound: bool(e.get("timestamp"))
                         and cmp(_parse_time(e["timestamp"]), bound))
            continue
        m = re.fullmatch(r'([A-Za-z_][\w.]*)\s*(:|=)\s*"([^"]*)"', clause)
        if m:
            path, op, value = m.groups()
            if op == ":":
                tests.append(lambda e, p=path, v=value: v.lower() in str(_field(e, p) or "").lower())
            else:
                tests.append(lambda e, p=path, v=value: str(_field(e, p)) == v)
            continue
        raise ApiError(400, "INVALID_ARGUMENT", f"Unparseable filter: {clause}")
    return lambda e: all(t(e) for t in tests)


def _parse_time(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid timestamp: {value}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _status_code(status: int) -> str:
    return _STATUS_CODES.get(status, "UNKNOWN")


def _storage_reason(status: int) -> str:
    return {404: "notFound", 429: "rateLimitExceeded", 503: "backendError"}.get(status, "error")


def _error_body(err: ApiError, api: str) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.status, "message": err.message, "status": err.code}
    if api == "storage":
        body["errors"] = [{"domain": "global", "reason": err.reason or "error", "message": err.message}]
    return {"error": body}


def _is_mutating(rec: dict[str, Any]) -> bool:
    if rec["method"] == "GET":
        return False
    return not rec["path"].endswith((":getIamPolicy", ":getAncestry", "entries:list"))


def _policy_view(policy: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(policy)
    if any(b.get("condition") for b in out.get("bindings", [])):
        out["version"] = 3
    if not out.get("bindings"):
        out.pop("bindings", None)
    return out


def _set_policy(current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """``setIamPolicy`` semantics: etag check (409 ABORTED), condition/version check (400),
    empty bindings dropped, a new etag."""
    new = copy.deepcopy(body.get("policy") or {})
    if new.get("etag") and new["etag"] != current.get("etag"):
        raise ApiError(409, "ABORTED", "There were concurrent policy changes. Please retry the whole "
                       "read-modify-write with exponential backoff.")
    bindings = [b for b in new.get("bindings", []) if b.get("members")]
    for b in bindings:
        if not b.get("role"):
            raise ApiError(400, "INVALID_ARGUMENT", "Binding without role.")
    if any(b.get("condition") for b in bindings) and int(new.get("version") or 1) < 3:
        raise ApiError(400, "INVALID_ARGUMENT", "Conditional role bindings require policy version 3.")
    version = int(new.get("version") or current.get("version") or 1)
    return {"version": version, "bindings": bindings, "etag": _new_etag(),
            **({"auditConfigs": new["auditConfigs"]} if new.get("auditConfigs") else {})}


def _operation(key: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"operations/akmf.p7-{secrets.token_hex(8)}", "done": True,
            "response": {"@type": "type.googleapis.com/google.api.apikeys.v2.Key",
                         **{k: v for k, v in copy.deepcopy(key).items() if k != "keyString"}}}


# -- the sandbox -----------------------------------------------------------------------------------
class GcpSandbox:
    """Local GCP for rehearsals and tests: :class:`GcpStandIn` plus Cordon's own identity.

    ``GcpSandbox(project="cordon-sandbox").start()`` binds the stand-in to a free port on
    127.0.0.1, generates Cordon's service-account key (``cordon-responder@<project>.iam.gserviceaccount.com``,
    a fresh RSA key) and registers it with the token endpoint. ``clients(service, version)`` is
    the :class:`~cordon.action.ActionContext` client factory (real google-api-python-client).
    Use as a context manager or call :meth:`stop`.
    """

    def __init__(self, project: str = DEFAULT_PROJECT, host: str = "127.0.0.1", port: int = 0):
        self.default_account_id = project
        self.project = project
        self.standin = GcpStandIn(host, port)
        self.own_email = f"{CORDON_SA_NAME}@{project}.iam.gserviceaccount.com"
        self._info, self._public_key = generate_service_account_info(self.own_email, project, self.token_uri)
        self._clients: Any = None
        self._lock = threading.Lock()
        self._chronicle: Any = None  # the SecOps stand-in, started by chronicle()
        self._register_self()

    @property
    def url(self) -> str:
        """The stand-in's base URL."""
        return self.standin.url

    @property
    def token_uri(self) -> str:
        """``<url>/token``."""
        return f"{self.standin.url}/token"

    def start(self) -> GcpSandbox:
        """Start the stand-in; returns ``self``."""
        self.standin.start()
        return self

    def stop(self) -> None:
        """Stop the stand-in (and the SecOps one, when started)."""
        chronicle, self._chronicle = self._chronicle, None
        if chronicle is not None:
            chronicle.stop()
        self.standin.stop()

    def chronicle(self) -> Any:
        """The Google SecOps stand-in beside this sandbox
        (:class:`cordon.sandbox.chronicle.ChronicleStandIn`, its own port): started on first use,
        taking the bearer tokens this sandbox's ``/token`` issues, emptied by :meth:`reset`,
        stopped by :meth:`stop`."""
        from cordon.sandbox.chronicle import ChronicleStandIn

        with self._lock:
            if self._chronicle is None:
                self._chronicle = ChronicleStandIn(authenticate=self.token_valid).start()
            return self._chronicle

    def token_valid(self, token: str) -> bool:
        """Whether ``token`` is an access token this sandbox's ``/token`` endpoint issued (for
        companion stand-ins that take the sandbox's bearer tokens)."""
        with self.standin._lock:
            return token in self.standin.tokens

    def __enter__(self) -> GcpSandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset(self) -> None:
        """Empty the stand-in and re-create the default project with Cordon's own service
        account. Cordon's identity and the tokens already issued to it stay valid, so cached
        clients keep working without a new token exchange."""
        with self.standin._lock:
            mine = {t: who for t, who in self.standin.tokens.items() if who == self.own_email}
        self.standin.reset()
        with self.standin._lock:
            self.standin.tokens.update(mine)
        self.project = self.default_account_id
        if self._chronicle is not None:
            self._chronicle.reset()
        self._register_self()

    def _register_self(self) -> None:
        self.standin.add_identity(self.own_email, self._public_key)
        self.standin.ensure_service_account(self.own_email, self.default_account_id, "Cordon responder")

    def fail_next(self, match: str, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Inject failures (see :meth:`GcpStandIn.fail_next`)."""
        self.standin.fail_next(match, status, times=times, headers=headers)

    def cloud_params(self) -> dict[str, Any]:
        """JSON-serialisable parameters from which another process rebuilds the clients with
        :func:`cordon.providers.gcp.clients.gcp_clients`: ``{"sandbox": True, "endpoint": url,
        "token_uri": url + "/token", "credentials_info": {service-account JSON key of Cordon's
        identity}, "project": project}``."""
        return {"sandbox": True, "endpoint": self.url, "token_uri": self.token_uri,
                "credentials_info": dict(self._info), "project": self.project}

    def clients(self, service: str, version: str = "v1") -> Any:
        """A google-api-python-client ``Resource`` for ``service``/``version`` pointed at the
        stand-in (cached; see :func:`cordon.providers.gcp.clients.gcp_clients`)."""
        return self.client_factory()(service, version)

    def client_factory(self) -> Any:
        """The ``clients(service, version)`` factory (with ``own_identity``), built once."""
        from cordon.providers.gcp.clients import gcp_clients

        with self._lock:
            if self._clients is None:
                self._clients = gcp_clients(self.cloud_params())
            return self._clients

    # -- seeding ------------------------------------------------------------------------------
    def seed_from_detection(self, detection: Any) -> dict[str, Any]:
        """Create in the stand-in what ``detection`` (a GCP
        :class:`~cordon.detections.model.Detection`) says exists. Idempotent.

        Creates the project (``detection.account_uid``, else the one named by the credential),
        the target service account (credential owner / ``detection.target`` when it is a
        ``...gserviceaccount.com`` email) and, by credential kind: the service-account key with
        the exact key name (``gcp_sa_key``), the service account (``gcp_service_account``), the
        binding on the project or service-account policy with the condition in
        ``credential.attributes["condition"]`` if any (``gcp_iam_binding``), the API key
        (``gcp_api_key``), the OS Login SSH key with ``credential.attributes["key"]`` if given
        (``gcp_oslogin_ssh_key``), the HMAC key for ``credential.attributes["service_account_email"]``
        or the owner (``gcp_hmac_key``).

        Returns ``{"project", "service_accounts": [...], "sa_keys": [...], "bindings": [...],
        "api_keys": [...], "ssh_keys": [...], "hmac_keys": [...]}``.
        """
        cred = detection.credential
        attrs = dict(cred.attributes or {}) if cred else {}
        uid = (cred.uid or "") if cred else ""
        project = detection.account_uid
        if not project and uid.startswith("projects/"):
            project = uid.split("/")[1]
        project = project or self.default_account_id
        self.project = project
        report: dict[str, Any] = {"project": project, "service_accounts": [], "sa_keys": [], "bindings": [],
                                  "api_keys": [], "ssh_keys": [], "hmac_keys": []}
        self.standin.ensure_project(project)

        def sa(email: str | None) -> None:
            if email and email.endswith("gserviceaccount.com") and email not in report["service_accounts"]:
                self.standin.ensure_service_account(email, project_of_email(email) or project)
                report["service_accounts"].append(email)

        if cred is not None and cred.kind == "gcp_iam_binding" and uid.count("#") == 2:
            # a binding on a service account the record names under a project: the account lives
            # there (the project in its email may differ, as in gcp-security-analytics' fixtures)
            m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)", uid.split("#")[0])
            if m and m.group(1) != "-" and m.group(2).endswith("gserviceaccount.com"):
                self.standin.ensure_service_account(m.group(2), m.group(1))
                report["service_accounts"].append(m.group(2))
        owner = (cred.owner.uid or cred.owner.name) if cred else None
        sa(owner)
        sa(detection.target.uid or detection.target.name)
        if cred is None or not uid:
            return report
        if cred.kind == "gcp_sa_key":
            m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)/keys/([^/]+)", uid)
            if m:
                key_project, email, key_id = m.groups()
                if "@" not in email:  # named by uniqueId: use the owner's email
                    email = owner or email
                self.standin.ensure_service_account(email, None if key_project == "-" else key_project)
                if email not in report["service_accounts"]:
                    report["service_accounts"].append(email)
                self.standin.ensure_sa_key(email, key_id, key_type=str(attrs.get("keyType") or "USER_MANAGED"),
                                           disabled=bool(attrs.get("disabled", False)), valid_after=detection.time)
                report["sa_keys"].append(uid)
        elif cred.kind == "gcp_service_account":
            sa(uid)
        elif cred.kind == "gcp_iam_binding":
            parts = uid.split("#")
            if len(parts) == 3:
                resource, role, member = parts
                if "/serviceAccounts/" in resource:
                    sa(resource.rsplit("/", 1)[1])
                self.standin.add_binding(resource, role, member, attrs.get("condition"))
                if member.startswith("serviceAccount:"):
                    sa(member.split(":", 1)[1])
                report["bindings"].append(uid)
        elif cred.kind == "gcp_api_key":
            self.standin.ensure_api_key(uid, str(attrs.get("displayName") or ""))
            report["api_keys"].append(uid)
        elif cred.kind == "gcp_oslogin_ssh_key":
            m = re.fullmatch(r"users/([^/]+)/sshPublicKeys/([^/]+)", uid)
            if m:
                self.standin.ensure_ssh_key(m.group(1), m.group(2), attrs.get("key"),
                                            attrs.get("expirationTimeUsec"))
                report["ssh_keys"].append(uid)
        elif cred.kind == "gcp_hmac_key":
            m = re.fullmatch(r"projects/([^/]+)/hmacKeys/([^/]+)", uid)
            if m:
                email = str(attrs.get("service_account_email") or attrs.get("serviceAccountEmail") or owner or "")
                sa(email)
                self.standin.ensure_hmac_key(m.group(1), m.group(2), email, str(attrs.get("state") or "ACTIVE"))
                report["hmac_keys"].append(uid)
        return report
