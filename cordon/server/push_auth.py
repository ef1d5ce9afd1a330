"""Who may push detections to ``POST /webhook/detections/{source}``: one credential per source,
each revocable on its own (issue 15, "signed push").

A source is declared in ``cordon.yaml`` under ``webhook.sources``; its secret is never in the file,
only the name of the environment variable that holds it::

    webhook:
      sources:
        guardduty-eventbridge:          # an EventBridge API destination, API-key authorization
          kind: api_key
          header: x-cordon-key
          secret_env: CORDON_PUSH_GUARDDUTY_KEY
        securityhub-eventbridge:        # an EventBridge API destination, Basic authorization
          kind: basic
          username: eventbridge
          secret_env: CORDON_PUSH_SECURITYHUB_PASSWORD
        gcp-audit-pubsub:               # a Pub/Sub authenticated push subscription
          kind: pubsub_oidc
          audience: https://cordon.example.com/webhook/detections/gcp-audit-pubsub
          service_account: pubsub-push@my-project.iam.gserviceaccount.com
        old-sender:
          kind: bearer
          secret_env: CORDON_PUSH_OLD_TOKEN
          revoked: true                 # refused (401, reason ``revoked``) without removing it

Kinds, as the senders present them:

- ``bearer``: ``Authorization: Bearer <secret>``.
- ``api_key``: ``<header>: <secret>`` (EventBridge connection ``API_KEY`` authorization: the key
  name and value are sent as a header; AWS EventBridge API reference, *CreateConnection*,
  ``ApiKeyAuthParameters``).
- ``basic``: ``Authorization: Basic base64(username:secret)`` (EventBridge ``BASIC``
  authorization, RFC 7617).
- ``pubsub_oidc``: ``Authorization: Bearer <Google-signed OIDC ID token>`` (Pub/Sub push
  authentication, https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions): the
  token's signature is checked against Google's published keys (``certs_url``, default
  ``https://www.googleapis.com/oauth2/v1/certs``, cached for their ``Cache-Control: max-age``),
  with ``iss`` one of Google's issuers, ``aud`` the configured ``audience``, ``exp``/``iat``
  current (``google.auth.jwt.decode``), and ``email`` the configured ``service_account`` with
  ``email_verified`` true.

Secrets are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hmac
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cordon.config import ConfigError

KINDS = ("bearer", "api_key", "basic", "pubsub_oidc")
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class PushSource:
    """One sender's credential. ``secret`` is resolved from ``secret_env`` at load (``None`` for
    ``pubsub_oidc``, which has no shared secret)."""

    name: str
    kind: Literal["bearer", "api_key", "basic", "pubsub_oidc"]
    secret: str | None = None
    header: str | None = None
    username: str | None = None
    audience: str | None = None
    service_account: str | None = None
    certs_url: str = GOOGLE_CERTS_URL
    revoked: bool = False


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found. ``ok``; when not, ``reason`` (a short code for the refusal
    counter: ``revoked``, ``missing_credential``, ``wrong_credential``, ``invalid_token``,
    ``wrong_audience``, ``wrong_issuer``, ``wrong_sender``, ``keys_unavailable``) and ``detail``
    (said to nobody but the ledger: it never includes the presented secret); ``who`` names the
    verified sender (``source:<name>``, plus the token's ``email`` for Pub/Sub)."""

    ok: bool
    reason: str | None = None
    detail: str | None = None
    who: str | None = None


def load_push_sources(declared: Mapping[str, Any] | None, environ: Mapping[str, str]) -> dict[str, PushSource]:
    """The ``webhook.sources`` mapping of ``cordon.yaml`` as :class:`PushSource` by name, secrets read
    from ``environ``. Raises :class:`cordon.config.ConfigError` naming the field for an unknown
    kind, a bad name, a missing ``secret_env`` / ``header`` / ``username`` / ``audience`` /
    ``service_account``, or a ``secret_env`` not set (a revoked source needs no secret)."""
    out: dict[str, PushSource] = {}
    for name, spec in (declared or {}).items():
        where = f"webhook.sources.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"field '{where}': a source name is lowercase letters, digits and '-'")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"field '{where}': expected a mapping")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"field '{where}.kind': {kind!r} is not one of {', '.join(KINDS)}")
        revoked = bool(spec.get("revoked", False))

        def need(key: str, spec: Mapping[str, Any] = spec, where: str = where) -> str:
            value = spec.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"field '{where}.{key}': required for this kind")
            return value.strip()

        secret = None
        if kind != "pubsub_oidc":
            env = need("secret_env")
            secret = environ.get(env) or None
            if secret is None and not revoked:
                raise ConfigError(f"field '{where}.secret_env': environment variable {env} is not set")
        out[name] = PushSource(
            name=name, kind=kind, secret=secret, revoked=revoked,
            header=need("header").lower() if kind == "api_key" else None,
            username=need("username") if kind == "basic" else None,
            audience=need("audience") if kind == "pubsub_oidc" else None,
            service_account=need("service_account") if kind == "pubsub_oidc" else None,
            certs_url=str(spec.get("certs_url") or GOOGLE_CERTS_URL))
    return out


def _same(presented: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def verify(source: PushSource, headers: Mapping[str, str], keys: GoogleKeys | None = None) -> Verdict:
    """Check the request ``headers`` (case-insensitive mapping, e.g. Starlette's) against
    ``source``'s credential; ``keys`` (default the process's :data:`GOOGLE_KEYS`) verifies Pub/Sub
    tokens. Never raises for a bad credential: the :class:`Verdict` says why."""
    if source.revoked:
        return Verdict(False, "revoked", f"source {source.name} is revoked")
    who = f"source:{source.name}"
    if source.kind == "api_key":
        presented = headers.get(source.header or "")
        if not presented:
            return Verdict(False, "missing_credential", f"no {source.header} header")
        ok = _same(presented.strip(), source.secret)
        return Verdict(True, who=who) if ok else Verdict(False, "wrong_credential", f"wrong {source.header}")
    auth = headers.get("authorization") or ""
    scheme, _, value = auth.partition(" ")
    value = value.strip()
    if not auth:
        return Verdict(False, "missing_credential", "missing Authorization header")
    if source.kind == "basic":
        if scheme.lower() != "basic":
            return Verdict(False, "wrong_credential", "not Basic authorization")
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return Verdict(False, "wrong_credential", "malformed Basic credentials")
        ok = _same(user, source.username) & _same(password, source.secret)
        return Verdict(True, who=who) if ok else Verdict(False, "wrong_credential", "wrong user name or password")
    if scheme.lower() != "bearer":
        return Verdict(False, "wrong_credential", "not Bearer authorization")
    if source.kind == "bearer":
        return Verdict(True, who=who) if _same(value, source.secret) else \
            Verdict(False, "wrong_credential", "wrong bearer token")
    return _verify_oidc(source, value, keys or GOOGLE_KEYS)


def _verify_oidc(source: PushSource, token: str, keys: GoogleKeys) -> Verdict:
    from google.auth import exceptions, jwt

    try:
        certs = keys.for_token(source.certs_url, token)
    except KeyFetchError as exc:
        return Verdict(False, "keys_unavailable", str(exc))
    try:
        claims = jwt.decode(token, certs=certs, audience=source.audience, clock_skew_in_seconds=10)
    except exceptions.MalformedError as exc:
        return Verdict(False, "invalid_token", str(exc))
    except ValueError as exc:  # google-auth raises ValueError for a bad signature, exp or aud
        text = str(exc)
        reason = "wrong_audience" if "audience" in text.lower() else "invalid_token"
        return Verdict(False, reason, text)
    if claims.get("iss") not in GOOGLE_ISSUERS:
        return Verdict(False, "wrong_issuer", f"issuer {claims.get('iss')!r} is not Google's")
    if claims.get("email") != source.service_account or claims.get("email_verified") is not True:
        return Verdict(False, "wrong_sender", f"token of {claims.get('email')!r}, not {source.service_account}")
    return Verdict(True, who=f"source:{source.name} {claims['email']}")


class KeyFetchError(Exception):
    """Google's signing keys could not be read (network, status, body)."""


class GoogleKeys:
    """Google's OAuth2 signing certificates (``{kid: PEM certificate}``, the v1 certs endpoint),
    fetched with ``fetch(url) -> (certs, max_age_s)`` and kept per URL for ``max-age`` seconds.
    A token whose ``kid`` is not among the kept keys makes one early refetch (Google rotated its
    keys), at most once a ``min_refetch_s`` per URL, so forged ``kid`` values cannot drive
    requests. Thread-safe."""

    def __init__(self, fetch: Callable[[str], tuple[dict[str, str], float]] | None = None,
                 min_refetch_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch or fetch_certs
        self._min = min_refetch_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[dict[str, str], float, float]] = {}  # url -> certs, expires, fetched

    def for_token(self, url: str, token: str) -> dict[str, str]:
        """The certificates to verify ``token`` with. Raises :class:`KeyFetchError`."""
        kid = _kid(token)
        with self._lock:
            now = self._clock()
            kept = self._kept.get(url)
            stale = kept is None or now >= kept[1] or (kid is not None and kid not in kept[0]
                                                       and now - kept[2] >= self._min)
            if stale:
                try:
                    certs, max_age = self._fetch(url)
                except KeyFetchError:
                    if kept is None:
                        raise
                    return kept[0]  # Google unreachable: the keys we have are better than none
                kept = (certs, now + max(0.0, max_age), now)
                self._kept[url] = kept
            return kept[0]


def _kid(token: str) -> str | None:
    """The ``kid`` of a JWT's header (RFC 7515 §4.1.4), unverified: only which key to look for;
    ``None`` when the header cannot be read (``jwt.decode`` then says what is wrong)."""
    import json

    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


def fetch_certs(url: str) -> tuple[dict[str, str], float]:
    """GET ``url`` (Google's v1 certs endpoint shape: a JSON object of PEM certificates by key ID)
    and its ``Cache-Control: max-age`` in seconds (300 when absent). Raises :class:`KeyFetchError`."""
    import httpx

    try:
        r = httpx.get(url, timeout=10)
        r.raise_for_status()
        certs = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise KeyFetchError(f"cannot read signing keys from {url}: {type(exc).__name__}: {exc}") from None
    if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
        raise KeyFetchError(f"{url} did not answer a JSON object of certificates")
    m = re.search(r"max-age=(\d+)", r.headers.get("cache-control", ""))
    return certs, float(m.group(1)) if m else 300.0


#: The process's key cache (what ``cordon serve`` uses).
GOOGLE_KEYS = GoogleKeys()
