"""A local stand-in for Microsoft Teams' side of a bot, for tests and the sandbox.

A real HTTP server (stdlib :class:`http.server.ThreadingHTTPServer`) on ``127.0.0.1`` at a free
port, in a background thread. It serves what Cordon's bot talks to or reads:

* the Bot Framework OpenID metadata (``GET /v1/.well-known/openidconfiguration``: ``issuer``,
  ``jwks_uri``, ``id_token_signing_alg_values_supported``) and its key set (``GET /v1/keys``: one
  RSA 2048 key generated at start, ``kid`` / ``use: sig`` / ``endorsements: ["msteams"]``), the shape
  of https://login.botframework.com/v1/.well-known/openidconfiguration;
* the connector (Bot Framework REST API, https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-api-reference):
  ``POST /v3/conversations/{conversationId}/activities`` (send; answers ``{"id"}``) and
  ``PUT /v3/conversations/{conversationId}/activities/{activityId}`` (update; answers ``{"id"}``,
  404 for an unknown activity), both requiring ``Authorization: Bearer`` (any token: the bot's own
  token acquisition is not simulated) and recorded (:attr:`TeamsStandIn.requests`,
  :meth:`TeamsStandIn.activity`). :meth:`TeamsStandIn.fail_next` answers the next call with 429 and
  ``Retry-After``.

:meth:`TeamsStandIn.invoke` builds an ``adaptiveCard/action`` invoke the way Teams sends it for a
click on a card's ``Action.Execute``, and :meth:`TeamsStandIn.token` signs its Bearer token with the
stand-in's key (claims ``iss``, ``aud``, ``serviceurl``, ``nbf``, ``exp``), with knobs to forge
each thing a verifier must refuse. Nothing here disables verification: the verifier is pointed at
:attr:`TeamsStandIn.openid_metadata_url`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://api.botframework.com"


class TeamsStandIn:
    """The stand-in (see the module docstring). ``app_id`` is the bot's id (the default audience),
    ``tenant_id`` the tenant clicks come from. Thread-safe; accessors return copies."""

    def __init__(self, *, app_id: str = "00000000-0000-0000-0000-00000000b07", tenant_id: str = "tenant-cordon"):
        self.app_id = app_id
        self.tenant_id = tenant_id
        self.kid = "standin-key-1"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests: list[dict[str, Any]] = []
        self._activities: dict[tuple[str, str], dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._faults: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on ``127.0.0.1`` at a free port; returns :attr:`service_url`."""
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.standin = self  # type: ignore[attr-defined]
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="teams-standin", daemon=True)
            self._thread.start()
        return self.service_url

    def stop(self) -> None:
        """Stop serving (state stays readable)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> TeamsStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def service_url(self) -> str:
        """The connector's base URL (an activity's ``serviceUrl``), ending in ``/``."""
        return f"{self.origin}/"

    @property
    def openid_metadata_url(self) -> str:
        """What ``teams.openid_metadata_url`` points at in tests and the sandbox."""
        return f"{self.origin}/v1/.well-known/openidconfiguration"

    def jwks(self) -> dict[str, Any]:
        """The published key set (``{"keys": [JWK]}``)."""
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256", endorsements=["msteams"])
        return {"keys": [jwk]}

    # -- what Teams sends ---------------------------------------------------------------------
    def token(self, *, audience: str | None = None, issuer: str = ISSUER, service_url: str | None = None,
              expires_in: float = 3600, key: Any = None, kid: str | None = None) -> str:
        """A Bot Framework token as Teams' connector signs it for ``audience`` (default
        :attr:`app_id`), ``serviceurl`` (default :attr:`service_url`), valid for ``expires_in``
        seconds (negative: already expired). ``key``: another RSA private key (a forgery)."""
        now = int(time.time())
        claims = {"iss": issuer, "aud": audience or self.app_id, "serviceurl": service_url or self.service_url,
                  "nbf": now - 5, "iat": now - 5, "exp": int(now + expires_in)}
        return jwt.encode(claims, key or self._key, algorithm="RS256", headers={"kid": kid or self.kid})

    def invoke(self, *, verb: str, data: Mapping[str, Any], aad_object_id: str, name: str = "someone",
               conversation_id: str = "19:approvals@thread.tacv2", reply_to_id: str | None = None,
               tenant_id: str | None = None, user_role: str | None = None, activity_id: str | None = None,
               service_url: str | None = None) -> dict[str, Any]:
        """The ``adaptiveCard/action`` invoke activity Teams sends for a click on an
        ``Action.Execute`` with ``verb`` and ``data`` (Universal Actions, "adaptiveCard/action
        invoke activity"); a fresh ``id`` unless ``activity_id`` is given."""
        tenant = tenant_id or self.tenant_id
        sender: dict[str, Any] = {"id": f"29:{aad_object_id}", "name": name, "aadObjectId": aad_object_id}
        if user_role:
            sender["userRole"] = user_role
        return {"type": "invoke", "name": "adaptiveCard/action", "id": activity_id or f"f:{uuid.uuid4()}",
                "channelId": "msteams", "serviceUrl": service_url or self.service_url,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "from": sender,
                "recipient": {"id": f"28:{self.app_id}", "name": "Cordon"},
                "conversation": {"id": conversation_id, "conversationType": "channel", "tenantId": tenant},
                "channelData": {"tenant": {"id": tenant}}, "replyToId": reply_to_id,
                "value": {"action": {"type": "Action.Execute", "verb": verb, "data": dict(data)},
                          "trigger": "manual"}}

    # -- what the bot posted ----------------------------------------------------------------
    def activity(self, conversation_id: str, activity_id: str) -> dict[str, Any] | None:
        """The activity as last posted or updated (with ``history``: earlier versions)."""
        with self._lock:
            found = self._activities.get((conversation_id, activity_id))
            return json.loads(json.dumps(found)) if found else None

    def fail_next(self, status: int = 429, retry_after: int = 1) -> None:
        """Answer the next connector call with ``status`` (and ``Retry-After`` for 429)."""
        with self._lock:
            self._faults.append((status, retry_after))  # type: ignore[arg-type]

    def _connector(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> tuple[int, dict, dict]:
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": dict(headers), "body": body})
            if self._faults:
                status, retry = self._faults.pop(0)  # type: ignore[misc]
                return status, {"error": {"code": "Throttled"}}, {"Retry-After": str(retry)} if status == 429 else {}
            if not headers.get("authorization", "").startswith("Bearer "):
                return 401, {"error": {"code": "Unauthorized"}}, {}
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) >= 4 and parts[:2] == ["v3", "conversations"] and parts[3] == "activities":
                cid = parts[2]
                if method == "POST" and len(parts) == 4:
                    aid = f"1:{next(self._ids)}"
                    self._activities[(cid, aid)] = {**body, "id": aid, "history": []}
                    return 201, {"id": aid}, {}
                if method == "PUT" and len(parts) == 5:
                    old = self._activities.get((cid, parts[4]))
                    if old is None:
                        return 404, {"error": {"code": "ActivityNotFound"}}, {}
                    history = old.pop("history") + [old]
                    self._activities[(cid, parts[4])] = {**body, "id": parts[4], "history": history}
                    return 200, {"id": parts[4]}, {}
            return 404, {"error": {"code": "NotFound"}}, {}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        s: TeamsStandIn = self.server.standin  # type: ignore[attr-defined]
        if self.path == "/v1/.well-known/openidconfiguration":
            self._answer(200, {"issuer": ISSUER, "jwks_uri": f"{s.origin}/v1/keys",
                               "id_token_signing_alg_values_supported": ["RS256"],
                               "token_endpoint_auth_methods_supported": ["private_key_jwt"]})
        elif self.path == "/v1/keys":
            self._answer(200, s.jwks())
        else:
            self._answer(404, {"error": "not found"})

    def _write(self, method: str) -> None:
        s: TeamsStandIn = self.server.standin  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._answer(400, {"error": {"code": "BadArgument"}})
            return
        status, answer, headers = s._connector(method, self.path, {k.lower(): v for k, v in self.headers.items()},
                                               body)
        self._answer(status, answer, headers)

    def do_POST(self) -> None:  # noqa: N802
        self._write("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._write("PUT")
