"""Managers' read-only audit pages, served by Cordon's server under ``/audit``.

Pages (all ``GET``, HTML rendered with Jinja2 templates in ``cordon/server/templates/``; there
is no write route and no JavaScript):

``/audit/cases``
    Cases, newest first, with filters as query parameters (``since``, ``until`` — ISO 8601, on
    the case's ``opened_at`` — ``provider``, ``account``, ``principal``, ``playbook``,
    ``decision``, ``outcome``; ``page``), each with its decision, approver, time to approve and
    time to contain (definitions in :mod:`cordon.audit.query`). ``/audit`` redirects here.
``/audit/cases/{case_id}``
    The case's figures, each approval (approver, Slack workspace, plan hash, time to decide) and
    its timeline: every ledger record in order, with the record's payload and hash.
    ``?format=print`` is the per-case report to attach to a ticket: the same content as a
    self-contained page with print CSS (use the browser's *Print* / *Save as PDF*).
``/audit/incidents``
    Incidents (the cases of one actor's burst), newest first (``page``), each with its actor key,
    opening time, lead case and how many of its cases are in each status.
``/audit/incidents/{incident_id}``
    One incident: its actor, actor key, lead case and every case (linked to its page) with its
    status, playbook, event, credential and target. A case's page names its incident and links
    to the incident and to its other cases.
``/audit/approvals``
    Every decision (approved, refused, expired, not required) with the approver and the time to
    decide; the same filters as the cases list.
``/audit/metrics``
    Time to approve and time to contain per month and per playbook (count, median, p95).
``/audit/static/cordon.css``
    The stylesheet (pages send a ``Content-Security-Policy`` that allows only it).

Bad filter input answers **400** with the field named.

Authentication (every page above, including the stylesheet and the redirect)
---------------------------------------------------------------------------------
Two ways, either or both, configured from the environment (:meth:`PageAuth.from_env`):

1. **HTTP Basic** against ``CORDON_AUDIT_USERS``: whitespace-separated ``name:hash`` entries,
   where ``hash`` is an Argon2id hash made with ``cordon audit hash-password`` (argon2-cffi's
   ``PasswordHasher``). A request without valid credentials answers **401** with
   ``WWW-Authenticate: Basic realm="Cordon audit"``; the browser shows its login prompt. Use it
   behind TLS (Basic sends the password with every request). Unknown user names cost the same
   Argon2 verification as wrong passwords. Guessing is limited (:mod:`cordon.server.login_limits`):
   a bounded number of Argon2 verifications at once, and exponential back-off per client address
   and then per user name, answered **429** with ``Retry-After`` before any hashing; the
   lockout expires, and an address that signed in as a user recently is not locked out by
   guesses at that user from elsewhere. The limits are per process.
2. **A trusted reverse proxy** (an SSO proxy such as oauth2-proxy) that authenticates the user
   and forwards the name in ``X-Cordon-User`` together with ``X-Cordon-Proxy-Secret`` equal to
   ``CORDON_AUDIT_PROXY_SECRET`` (compared with :func:`hmac.compare_digest`). The proxy must
   strip both headers from the client's request. A request with the secret header but a wrong
   secret answers **403**.

With neither configured every page answers **403** ("audit pages disabled"): they are never
open by default. Refused sign-ins (wrong password, throttled, busy, untrusted proxy secret) are
counted as ``audit`` refusals per window and summarised in the chain as ``audit.refusals``
(:mod:`cordon.audit.refusals`); the sample names the client address, and the user name only when
it is a configured one (a password typed into the name field is never kept). The signed-in name
is shown on each page. Pages are ``Cache-Control: no-store`` and framed by no one
(``frame-ancestors 'none'``).

Escaping: Jinja2 autoescaping is on for every template, so ledger content (user agents, user
names, rule titles, which an attacker can choose) is shown as text, never as markup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape

from cordon.audit.ledger import Ledger
from cordon.audit.query import (
    DECISIONS,
    CaseFilter,
    QueryError,
    format_seconds,
    incident,
    iter_cases,
    list_cases,
    list_incidents,
    metrics,
    timeline,
)
from cordon.audit.refusals import RefusalCounter
from cordon.server.login_limits import LoginLimits, LoginThrottle, TooManyAttempts

TEMPLATES = Path(__file__).with_name("templates")
USER_HEADER = "X-Cordon-User"
SECRET_HEADER = "X-Cordon-Proxy-Secret"
PAGE_SIZE = 100
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (argon2-cffi defaults, RFC 9106 low-memory profile) for
    ``CORDON_AUDIT_USERS``. Raises ``ValueError`` for an empty password."""
    if not password:
        raise ValueError("password: must not be empty")
    return PasswordHasher().hash(password)


def parse_users(text: str) -> dict[str, str]:
    """``{"alice": "$argon2id$...", ...}`` from ``CORDON_AUDIT_USERS`` text (whitespace-
    separated ``name:hash``). Raises ``ValueError`` naming the entry that has no ``:``, an empty
    name or a hash that is not Argon2."""
    users: dict[str, str] = {}
    for i, item in enumerate(text.split(), 1):
        name, sep, digest = item.partition(":")
        if not sep or not name or not digest.startswith("$argon2"):
            raise ValueError(f"CORDON_AUDIT_USERS entry {i} ({name or item[:20]!r}): expected name:$argon2id$... "
                             "(make the hash with `cordon audit hash-password`)")
        users[name] = digest
    return users


@dataclass
class PageAuth:
    """Who may read the audit pages (see the module docstring).

    ``users``: name -> Argon2 hash (HTTP Basic); ``proxy_secret``: the shared secret a trusted
    reverse proxy sends in ``X-Cordon-Proxy-Secret`` with the user in ``X-Cordon-User``;
    ``limits``: the guessing limits (default :class:`~cordon.server.login_limits.LoginLimits`
    sized for the configured hashes), enforced by :attr:`throttle`; ``refusals``: where refused
    sign-ins are counted (:func:`audit_pages` sets the ledger's when ``None``; none: not counted).
    """

    users: dict[str, str] = field(default_factory=dict)
    proxy_secret: str | None = None
    limits: LoginLimits | None = None
    refusals: RefusalCounter | None = None
    _hasher: PasswordHasher = field(default_factory=PasswordHasher, repr=False)
    _cache_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    _verified: dict[bytes, float] = field(default_factory=dict, repr=False)
    cache_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.proxy_secret is not None and len(self.proxy_secret) < 16:
            raise ValueError("CORDON_AUDIT_PROXY_SECRET: must be at least 16 characters")
        # a hash to verify against for unknown users, so timing does not reveal user names
        self._dummy = self._hasher.hash(secrets.token_hex(16))
        if self.limits is None:
            self.limits = LoginLimits.from_env(self.users.values())
        self.throttle = LoginThrottle(self.limits)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PageAuth:
        """From ``CORDON_AUDIT_USERS``, ``CORDON_AUDIT_PROXY_SECRET`` and the login limits'
        variables (:meth:`LoginLimits.from_env`); ``ValueError`` on a malformed value, naming the
        variable."""
        env = os.environ if env is None else env
        users = parse_users(env.get("CORDON_AUDIT_USERS", ""))
        return cls(users=users, proxy_secret=env.get("CORDON_AUDIT_PROXY_SECRET") or None,
                   limits=LoginLimits.from_env(users.values(), env))

    @property
    def enabled(self) -> bool:
        return bool(self.users) or self.proxy_secret is not None

    def _cached(self, name: str, password: str) -> tuple[bytes, bool]:
        key = hmac.new(self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        return key, self._verified.get(key, 0) > time.monotonic()

    def check_password(self, name: str, password: str) -> bool:
        """Whether ``password`` matches ``name``'s hash (successes cached ``cache_seconds``
        under a keyed digest, so repeated page loads do not each pay for Argon2). Not limited:
        :meth:`sign_in` is what the pages call."""
        key, hit = self._cached(name, password)
        now = time.monotonic()
        if hit:
            return True
        digest = self.users.get(name)
        try:
            ok = self._hasher.verify(digest or self._dummy, password) and digest is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if ok:
            if len(self._verified) > 1000:
                self._verified.clear()
            self._verified[key] = now + self.cache_seconds
        return ok

    def viewer(self, request: Request, credentials: HTTPBasicCredentials | None) -> str:
        """The signed-in name, or raise ``HTTPException`` 401 / 403 (see the module docstring)."""
        if not self.enabled:
            raise HTTPException(403, "audit pages disabled: set CORDON_AUDIT_USERS or CORDON_AUDIT_PROXY_SECRET")
        presented = request.headers.get(SECRET_HEADER)
        if presented is not None:
            if self.proxy_secret is None or not hmac.compare_digest(presented.encode(), self.proxy_secret.encode()):
                self._refused("untrusted_proxy", _address(request), None)
                raise HTTPException(403, "untrusted proxy")
            user = (request.headers.get(USER_HEADER) or "").strip()
            if not user:
                raise HTTPException(403, f"the proxy sent no {USER_HEADER}")
            return f"{user} (via proxy)"
        if self.users and credentials is not None:
            return self.sign_in(credentials.username, credentials.password, _address(request))
        if self.users:
            raise HTTPException(401, "sign in to read the audit pages",
                                headers={"WWW-Authenticate": 'Basic realm="Cordon audit", charset="UTF-8"'})
        raise HTTPException(403, "sign in through the reverse proxy")


    def sign_in(self, name: str, password: str, address: str | None) -> str:
        """HTTP Basic sign-in of ``name`` from client ``address``, within :attr:`throttle`'s
        limits; returns ``name``. Raises ``HTTPException`` **429** with ``Retry-After`` when the
        address or user must wait or no verification slot is free (nothing is hashed), **401**
        for a wrong password. Cached correct credentials pass without the limits."""
        if self._cached(name, password)[1]:
            return name
        try:
            self.throttle.check(name, address)
            with self.throttle.slot(address):
                self.throttle.check(name, address)  # failures may have been counted while this waited
                ok = self.check_password(name, password)
        except TooManyAttempts as exc:
            self._refused(exc.reason, address, name)
            raise HTTPException(429, exc.detail, headers={"Retry-After": str(exc.retry_after)}) from None
        if ok:
            self.throttle.succeeded(name, address)
            return name
        self.throttle.failed(name, address)
        self._refused("wrong_password", address, name)
        raise HTTPException(401, "sign in to read the audit pages",
                            headers={"WWW-Authenticate": 'Basic realm="Cordon audit", charset="UTF-8"'})

    def _refused(self, reason: str, address: str | None, name: str | None) -> None:
        if self.refusals is None:
            return
        user = name if name is not None and name in self.users else (None if name is None else "(not a user)")
        try:
            self.refusals.record("audit", reason, {"remote": address, "user": user})
        except Exception:  # noqa: BLE001 - counting must not turn a refusal into a 500
            logging.getLogger("cordon.refusals").exception("could not count an audit sign-in refusal")


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["dur"] = format_seconds
    env.filters["short"] = lambda v, n=12: (str(v)[:n] if v else "-")
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    env.filters["dash"] = lambda v: "-" if v in (None, "") else v
    env.filters["breakable"] = breakable
    return env


def breakable(value: object) -> Markup:
    """``value`` escaped, with a ``<wbr>`` after each ``/``, ``:``, ``#`` and ``@``: an ARN, an
    Azure resource ID or a key resource name wraps at its separators instead of one character per
    line in a narrow table cell. ``-`` for ``None`` or empty."""
    if value in (None, ""):
        return Markup("-")
    text = str(escape(value))
    for sep in ("/", ":", "#", "@"):
        text = text.replace(sep, sep + "<wbr>")
    return Markup(text)


FILTER_FIELDS = ("since", "until", "provider", "account", "principal", "playbook", "decision", "outcome")


def audit_pages(ledger: Ledger, auth: PageAuth | None = None) -> APIRouter:
    """The read-only audit pages as a router to include in Cordon's FastAPI app
    (``app.include_router(audit_pages(ledger))``). ``auth`` defaults to
    :meth:`PageAuth.from_env`; its refused sign-ins are counted in ``ledger`` unless it has its
    own ``refusals``."""
    auth = auth if auth is not None else PageAuth.from_env()
    if auth.refusals is None:
        auth.refusals = RefusalCounter(ledger)
    templates = Jinja2Templates(env=_environment())
    basic = HTTPBasic(auto_error=False, realm="Cordon audit")

    def viewer(request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)) -> str:
        return auth.viewer(request, credentials)

    router = APIRouter(prefix="/audit", dependencies=[Depends(viewer)])

    def render(request: Request, name: str, user: str, status: int = 200, **ctx: Any) -> Response:
        resp = templates.TemplateResponse(request, name, {"user": user, "decisions": DECISIONS, **ctx},
                                          status_code=status)
        resp.headers.update(SECURITY_HEADERS)
        return resp

    def filters_from(request: Request) -> tuple[CaseFilter, dict[str, str]]:
        raw = {k: request.query_params.get(k, "") for k in FILTER_FIELDS}
        return CaseFilter.parse(**raw), raw

    def bad_request(request: Request, user: str, exc: QueryError) -> Response:
        return render(request, "error.html", user, status=400, title="Bad request",
                      message=f"{request.url.path}: {exc}")

    @router.get("", include_in_schema=False)
    def index(user: str = Depends(viewer)) -> Response:
        return RedirectResponse("/audit/cases", status_code=307, headers=SECURITY_HEADERS)

    @router.get("/cases")
    def cases_page(request: Request, page: int = 1, user: str = Depends(viewer)) -> Response:
        try:
            filt, raw = filters_from(request)
            if page < 1:
                raise QueryError("page", "must be >= 1")
        except QueryError as exc:
            return bad_request(request, user, exc)
        rows = list_cases(ledger, filt, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        query = {k: v for k, v in raw.items() if v}
        return render(request, "cases.html", user, title="Cases", cases=rows[:PAGE_SIZE], raw=raw, page=page,
                      more=len(rows) > PAGE_SIZE, next_query=urlencode({**query, "page": page + 1}),
                      prev_query=urlencode({**query, "page": page - 1}))

    @router.get("/cases/{case_id}")
    def case_page(request: Request, case_id: str, format: str = "html", user: str = Depends(viewer)) -> Response:
        if format not in ("html", "print"):
            return bad_request(request, user, QueryError("format", f"{format!r} is not one of html, print"))
        tl = timeline(ledger, case_id)
        if tl is None:
            return render(request, "error.html", user, status=404, title="Not found",
                          message=f"no case {case_id} in the ledger")
        detection = json.loads(tl.case["detection"]) if tl.case.get("detection") else {}
        return render(request, "report.html" if format == "print" else "case.html", user,
                      title=f"Case {case_id}", tl=tl, s=tl.summary, detection=detection,
                      generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @router.get("/incidents")
    def incidents_page(request: Request, page: int = 1, user: str = Depends(viewer)) -> Response:
        if page < 1:
            return bad_request(request, user, QueryError("page", "must be >= 1"))
        rows = list_incidents(ledger, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        return render(request, "incidents.html", user, title="Incidents", incidents=rows[:PAGE_SIZE], page=page,
                      more=len(rows) > PAGE_SIZE, next_query=urlencode({"page": page + 1}),
                      prev_query=urlencode({"page": page - 1}))

    @router.get("/incidents/{incident_id}")
    def incident_page(request: Request, incident_id: str, user: str = Depends(viewer)) -> Response:
        inc = incident(ledger, incident_id)
        if inc is None:
            return render(request, "error.html", user, status=404, title="Not found",
                          message=f"no incident {incident_id} in the ledger")
        return render(request, "incident.html", user, title=f"Incident {incident_id}", inc=inc)

    @router.get("/approvals")
    def approvals_page(request: Request, user: str = Depends(viewer)) -> Response:
        try:
            filt, raw = filters_from(request)
        except QueryError as exc:
            return bad_request(request, user, exc)
        rows = []
        for s in iter_cases(ledger, filt):
            for a in s.approvals:
                rows.append((s, a))
            if len(rows) >= 1000:
                break
        return render(request, "approvals.html", user, title="Approvals", rows=rows, raw=raw)

    @router.get("/metrics")
    def metrics_page(request: Request, user: str = Depends(viewer)) -> Response:
        try:
            filt, raw = filters_from(request)
        except QueryError as exc:
            return bad_request(request, user, exc)
        from cordon.server.charts import month_chart

        m = metrics(ledger, filt)
        return render(request, "metrics.html", user, title="Time to approve and to contain",
                      m=m, chart=month_chart(m.by_month), raw=raw)

    @router.get("/static/cordon.css", include_in_schema=False)
    def stylesheet(user: str = Depends(viewer)) -> Response:
        return Response((TEMPLATES / "cordon.css").read_text(encoding="utf-8"), media_type="text/css",
                        headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=300"})

    return router
