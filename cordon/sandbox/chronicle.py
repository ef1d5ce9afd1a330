"""A local stand-in for Google SecOps (Chronicle) ``legacySearchDetections``.

:class:`ChronicleStandIn` serves on 127.0.0.1, in a thread, the v1alpha call
(https://cloud.google.com/chronicle/docs/reference/rest/v1alpha/projects.locations.instances.legacy/legacySearchDetections)::

    GET /v1alpha/projects/{project}/locations/{region}/instances/{instance}/legacy:legacySearchDetections

over the detection objects a test or rehearsal adds (:meth:`ChronicleStandIn.add_detections`; the
shape of chronicle/api-samples-python ``detect/v2/stream_detection_alerts.py``), for any project,
region and instance. Query parameters, camelCase or snake_case as Google's JSON transcoding takes
them:

* ``ruleId`` (required): ``-`` every rule, ``ru_X`` / ``ru_X@-`` that rule's detections,
  ``ru_X@v_S_N`` that rule version's;
* ``startTime`` (inclusive) / ``endTime`` (exclusive), RFC 3339, on the ``listBasis``:
  ``CREATED_TIME`` filters and orders on ``createdTime`` (else ``detectionTime``),
  ``DETECTION_TIME`` or none on ``detectionTime``; ascending;
* ``alertState`` (``ALERTING`` / ``NOT_ALERTING``: ``detection[0].alertState``);
* ``pageSize`` (default 100, at most 1000) and ``pageToken``: the answer is
  ``{"detections": [...], "nextPageToken": T}`` with ``nextPageToken`` only when more follow; a
  token is opaque and bound to the other parameters (another query with it is 400); no
  ``detections`` key when there are none (proto3 JSON leaves empty lists out).

Every request must carry ``Authorization: Bearer <token>``: a token ``authenticate(token)``
accepts (the GCP sandbox's :meth:`~cordon.sandbox.gcp.GcpSandbox.token_valid`: tokens its ``/token``
endpoint issued) or, without it, the fixed :attr:`ChronicleStandIn.token`; else 401
``UNAUTHENTICATED``. Errors are Google's ``{"error": {"code", "message", "status"}}``.
:meth:`ChronicleStandIn.fail_next` makes the next requests answer a given status and raw body (an
HTTP 500, a 200 that is not JSON). Every request is recorded in :attr:`ChronicleStandIn.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATH = re.compile(r"/v1alpha/projects/[^/]+/locations/[^/]+/instances/[^/]+/legacy:legacySearchDetections")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _time(text: str, name: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise _Refused(400, "INVALID_ARGUMENT", f"invalid {name}: {text!r}") from None
    if dt.tzinfo is None:
        raise _Refused(400, "INVALID_ARGUMENT", f"invalid {name}: {text!r} (no offset)")
    return dt


class ChronicleStandIn:
    """The stand-in (module docstring). ``ChronicleStandIn(authenticate=None, token="...").start()``
    binds a free port on ``host``; :attr:`url` is its base URL (a sensor's ``base_url``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, token: str = "chronicle-standin-token",
                 authenticate: Callable[[str], bool] | None = None):
        self.token = token
        self.authenticate = authenticate
        self.detections: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._failures: list[tuple[int, bytes] | None] = []  # None: answer that request normally
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChronicleStandIn:
        """Serve in a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="chronicle-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def reset(self) -> None:
        """Forget the detections, recorded requests and pending failures."""
        with self._lock:
            self.detections.clear()
            self.requests.clear()
            self._failures.clear()

    def add_detections(self, *detections: dict[str, Any]) -> None:
        """Add detection objects (dicts with ``id``, ``detectionTime``, ``detection[0]``...), kept
        as given. Raises ``ValueError`` for one without ``id`` or ``detectionTime``."""
        for d in detections:
            if not isinstance(d, dict) or not d.get("id") or not d.get("detectionTime"):
                raise ValueError(f"a detection object needs id and detectionTime: {str(d)[:200]}")
        with self._lock:
            self.detections.extend(json.loads(json.dumps(d)) for d in detections)

    def fail_next(self, status: int, body: bytes | None = None, times: int = 1, after: int = 0) -> None:
        """After ``after`` more authenticated requests answered normally, the next ``times`` answer
        ``status`` with ``body`` (raw bytes; default Google's error JSON for ``status``): ``after=1``
        fails a search's second page."""
        if body is None:
            body = json.dumps({"error": {"code": status, "message": "injected failure",
                                         "status": "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"}}).encode()
        with self._lock:
            self._failures.extend([None] * after + [(status, body)] * times)

    # -- the API ----------------------------------------------------------------------------------
    def search(self, query: dict[str, str]) -> dict[str, Any]:
        """Answer one ``legacySearchDetections`` query (module docstring). Raises ``_Refused``."""
        q = {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): v for k, v in query.items()}
        rule = q.get("ruleId")
        if not rule:
            raise _Refused(400, "INVALID_ARGUMENT", "ruleId is required")
        basis = q.get("listBasis") or "LIST_BASIS_UNSPECIFIED"
        if basis not in ("LIST_BASIS_UNSPECIFIED", "CREATED_TIME", "DETECTION_TIME"):
            raise _Refused(400, "INVALID_ARGUMENT", f"invalid listBasis: {basis!r}")
        state = q.get("alertState")
        if state not in (None, "", "UNSPECIFIED", "ALERTING", "NOT_ALERTING"):
            raise _Refused(400, "INVALID_ARGUMENT", f"invalid alertState: {state!r}")
        try:
            size = int(q.get("pageSize") or DEFAULT_PAGE_SIZE)
        except ValueError:
            raise _Refused(400, "INVALID_ARGUMENT", f"invalid pageSize: {q.get('pageSize')!r}") from None
        if size < 0:
            raise _Refused(400, "INVALID_ARGUMENT", "pageSize must not be negative")
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        start = _time(q["startTime"], "startTime") if q.get("startTime") else None
        end = _time(q["endTime"], "endTime") if q.get("endTime") else None
        bound = hashlib.sha256(json.dumps({k: v for k, v in sorted(q.items()) if k not in ("pageToken", "pageSize")}
                                          ).encode()).hexdigest()[:16]
        offset = 0
        if q.get("pageToken"):
            try:
                tok = json.loads(base64.urlsafe_b64decode(q["pageToken"].encode()))
                offset, tok_bound = int(tok["o"]), tok["q"]
            except (ValueError, KeyError, TypeError):
                raise _Refused(400, "INVALID_ARGUMENT", "invalid pageToken") from None
            if tok_bound != bound:
                raise _Refused(400, "INVALID_ARGUMENT", "pageToken does not match the other parameters")

        def when(d: dict[str, Any]) -> datetime:
            text = (d.get("createdTime") if basis == "CREATED_TIME" else None) or d["detectionTime"]
            return _time(text, "detection time")

        def rule_matches(d: dict[str, Any]) -> bool:
            if rule == "-":
                return True
            meta = (d.get("detection") or [{}])[0]
            if "@" in rule and not rule.endswith("@-"):
                return meta.get("ruleVersion") == rule
            return meta.get("ruleId") == rule.removesuffix("@-")

        with self._lock:
            every = list(self.detections)
        hits = [d for d in every if rule_matches(d)
                and (not state or state == "UNSPECIFIED" or (d.get("detection") or [{}])[0].get("alertState") == state)
                and (start is None or when(d) >= start) and (end is None or when(d) < end)]
        hits.sort(key=lambda d: (when(d), d["id"]))
        page = hits[offset:offset + size]
        out: dict[str, Any] = {"detections": page} if page else {}  # proto3 JSON omits an empty list
        if offset + size < len(hits):
            out["nextPageToken"] = base64.urlsafe_b64encode(
                json.dumps({"o": offset + size, "q": bound}).encode()).decode()
        return out

    def _answer(self, auth: str | None, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        def error(status: int, code: str, message: str) -> tuple[int, bytes]:
            return status, json.dumps({"error": {"code": status, "message": message, "status": code}}).encode()

        if not PATH.fullmatch(path):
            return error(404, "NOT_FOUND", f"no method at {path}")
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else None
        ok = token is not None and (self.authenticate(token) if self.authenticate else token == self.token)
        if not ok:
            return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return failure
        try:
            return 200, json.dumps(self.search(query)).encode()
        except _Refused as exc:
            return error(exc.status, exc.code, exc.message)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                split = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(split.query).items()}
                status, data = standin._answer(self.headers.get("Authorization"), split.path, query)
                with standin._lock:
                    standin.requests.append({"path": split.path, "query": query, "status": status})
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
