"""Verifying a Microsoft Teams ``adaptiveCard/action`` invoke before anything else reads it.

Order of checks (:meth:`InvokeVerifier.verify`), each failure an :class:`InvokeRefused` with a
short ``reason``:

1. The Bot Framework token (``Authorization: Bearer <JWT>``), through the Teams SDK's own
   validator, ``microsoft_teams.apps.auth.token_validator.TokenValidator`` (PyJWT's
   ``PyJWKClient`` underneath): RS256 signature against the keys published at the ``jwks_uri``
   of the OpenID metadata, issuer (``https://api.botframework.com`` in the public cloud), audience
   exactly Cordon's bot app id, expiry and not-before (the SDK's 300 s clock tolerance), and the
   ``serviceurl`` claim equal to the activity's ``serviceUrl``. The metadata URL is configuration
   (``teams.openid_metadata_url``; the sandbox's stand-in in tests): there is no switch that
   disables authentication. Reasons (none ending in "token": the ledger redacts such keys in the
   refusal summaries' ``by_reason``): ``no_bearer``, ``bad_jwt`` (signature, audience,
   issuer, expiry, service URL; ``detail`` says which), ``malformed_body`` (not a JSON object, no
   ``serviceUrl`` to check the token against).
2. What the SDK does not check (Teams API reference, "Bot activity" and "Universal Actions"):
   ``type`` ``invoke`` with ``name`` ``adaptiveCard/action`` (``not_card_action``); ``channelId``
   ``msteams`` (``wrong_channel``); the tenant (``conversation.tenantId`` and
   ``channelData.tenant.id``, each when present, at least one present) equal to the configured one
   (``wrong_tenant``); the clicker has an Entra object id (``from.aadObjectId``) and is not a guest
   or anonymous (``from.userRole``; ``guest``); an ``id`` on the activity (``missing_activity_id``).
3. The Cordon data on the card action (``value.action.verb`` ``cordon_approve`` / ``cordon_deny`` /
   ``cordon_rollback`` / ``cordon_manual_done``,
   ``value.action.data`` ``{case_id, plan_hash, run_id}``): ``malformed``. A Deny's ``reason`` is
   the card's text input, which Teams merges into ``data`` (at most 500 characters kept).

Replay (the activity id seen before) needs the ledger and is checked by the server
(:func:`find_replay`), after the token: only verified activities are recorded.

Sources: Bot Framework REST authentication,
https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication;
Universal Actions invoke, https://learn.microsoft.com/microsoftteams/platform/task-modules-and-cards/cards/universal-actions-for-adaptive-cards/work-with-universal-actions-for-adaptive-cards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from microsoft_teams.apps.auth.token_validator import JwtValidationOptions, TokenValidator

from cordon.audit.ledger import Ledger, LedgerRecord
from cordon.config import Config, ConfigError
from cordon.slack.verify import Interaction

#: Bot Framework's public-cloud OpenID metadata and token issuer (the SDK's ``PUBLIC`` environment).
PUBLIC_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
PUBLIC_ISSUER = "https://api.botframework.com"
APPROVE_VERB = "cordon_approve"
DENY_VERB = "cordon_deny"
#: *Roll back* on the card of a contained case (the decider's ``rollback``, under the same policy)
ROLLBACK_VERB = "cordon_rollback"
#: *Mark done* on the card of a case awaiting a person's step (:mod:`cordon.manual_steps`)
MANUAL_DONE_VERB = "cordon_manual_done"
_VERBS = {APPROVE_VERB: "approve", DENY_VERB: "deny", ROLLBACK_VERB: "rollback", MANUAL_DONE_VERB: "manual_done"}
#: Ledger kind of a verified invoke (its activity id is the replay fingerprint).
RECEIVED_KIND = "teams.invoke_received"
REFUSED_KIND = "teams.invoke_refused"


class InvokeRefused(Exception):
    """An invoke Cordon does not act on. ``reason``: one of the short codes in the module
    docstring (``bad_jwt``, ``wrong_tenant``, ``guest``, ``replayed``...), ``detail`` one line."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class TeamsSettings:
    """The ``teams`` section of ``cordon.yaml``: ``app_id`` (the bot's Entra app / Microsoft App
    ID: the token's audience), ``tenant_id`` (the only tenant whose users may click),
    ``openid_metadata_url`` and ``issuer`` (Bot Framework's, public cloud by default),
    ``app_password_env`` (the name of the environment variable holding the bot's client secret;
    the secret is never in the file), ``service_url`` and ``conversation_id`` (where the card is
    posted), ``graph_url`` (Microsoft Graph's base URL, without ``/v1.0``, where Teams clickers
    are looked up in Entra ID: :mod:`cordon.teams.directory`; ``None`` is the public Graph)."""

    app_id: str
    tenant_id: str
    openid_metadata_url: str = PUBLIC_OPENID_METADATA_URL
    issuer: str = PUBLIC_ISSUER
    app_password_env: str = "CORDON_TEAMS_APP_PASSWORD"
    service_url: str | None = None
    conversation_id: str | None = None
    graph_url: str | None = None


def load_teams_settings(config: Config) -> TeamsSettings:
    """Read ``teams`` from ``config``; raises :class:`cordon.config.ConfigError` naming the field
    when ``app_id`` / ``tenant_id`` are missing or a value is not a string."""
    path = str(config.directory / "cordon.yaml")
    section = config.raw.get("teams") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: field 'teams': expected a mapping")
    for key in ("app_id", "tenant_id"):
        if not isinstance(section.get(key), str) or not section[key]:
            raise ConfigError(f"{path}: field 'teams.{key}': required (a non-empty string)")
    known = set(TeamsSettings.__dataclass_fields__)
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{path}: field 'teams.{sorted(unknown)[0]}': unknown (known: {', '.join(sorted(known))})")
    for key, value in section.items():
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: field 'teams.{key}': expected a string")
    return TeamsSettings(**section)


def jwks_uri(openid_metadata_url: str, *, timeout: float = 10.0) -> str:
    """The ``jwks_uri`` of the OpenID metadata document at ``openid_metadata_url`` (Bot Framework
    authentication, step "Retrieve the OpenID metadata document"). Raises ``httpx.HTTPError`` or
    ``ValueError`` (no ``jwks_uri`` string)."""
    doc = httpx.get(openid_metadata_url, timeout=timeout).raise_for_status().json()
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"{openid_metadata_url}: no jwks_uri in the OpenID metadata")
    return uri


def _str(obj: Any, *keys: str) -> str | None:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, str) and obj else None


class InvokeVerifier:
    """Verifies invokes for one bot (``settings``). The JWKS URI is read from the OpenID metadata
    once, at construction (raises what :func:`jwks_uri` raises); the keys themselves are cached by
    the SDK's ``PyJWKClient`` and refetched for an unknown ``kid``."""

    def __init__(self, settings: TeamsSettings):
        self.settings = settings
        self._validator = TokenValidator(JwtValidationOptions(
            valid_issuers=[settings.issuer], valid_audiences=[settings.app_id],
            jwks_uri=jwks_uri(settings.openid_metadata_url)))

    async def verify(self, authorization: str | None, activity: Any) -> Interaction:
        """Check the token in ``authorization`` (the header's value) and the ``activity`` (the
        decoded JSON body) as the module docstring says; returns the click as an
        :class:`~cordon.slack.verify.Interaction` (``user_id`` ``teams:<aadObjectId>``, ``team_id``
        the tenant, ``channel`` the conversation id, ``message_ts`` the card's activity id
        (``replyToId``), ``trigger_id`` the invoke's activity id). Raises :class:`InvokeRefused`."""
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise InvokeRefused("no_bearer", "no Authorization: Bearer token")
        if not isinstance(activity, Mapping):
            raise InvokeRefused("malformed_body", "the body is not a JSON object")
        service_url = _str(activity, "serviceUrl")
        if service_url is None:
            raise InvokeRefused("malformed_body", "no serviceUrl on the activity")
        try:
            await self._validator.validate_token(authorization[7:].strip(), service_url=service_url)
        except jwt.PyJWKClientError as exc:
            raise InvokeRefused("bad_jwt", f"signing key: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise InvokeRefused("bad_jwt", f"{type(exc).__name__}: {exc}") from None
        return self._check_activity(activity)

    def _check_activity(self, activity: Mapping[str, Any]) -> Interaction:
        if activity.get("type") != "invoke" or activity.get("name") != "adaptiveCard/action":
            raise InvokeRefused("not_card_action", f"type {activity.get('type')!r} name {activity.get('name')!r}")
        if activity.get("channelId") != "msteams":
            raise InvokeRefused("wrong_channel", f"channelId {activity.get('channelId')!r} (expected msteams)")
        said = (_str(activity, "conversation", "tenantId"), _str(activity, "channelData", "tenant", "id"))
        tenants = [t for t in said if t is not None]
        if not tenants or any(t != self.settings.tenant_id for t in tenants):
            raise InvokeRefused("wrong_tenant", f"tenant {tenants or 'missing'} is not the configured one")
        sender = activity.get("from") if isinstance(activity.get("from"), Mapping) else {}
        oid = _str(sender, "aadObjectId")
        role = (_str(sender, "userRole") or "user").lower()
        if oid is None or role in ("guest", "anonymous"):
            raise InvokeRefused("guest", f"the clicker is {role if oid else 'anonymous (no aadObjectId)'}")
        activity_id = _str(activity, "id")
        if activity_id is None:
            raise InvokeRefused("missing_activity_id", "the invoke has no id")
        action = activity.get("value", {}).get("action") if isinstance(activity.get("value"), Mapping) else None
        verb = _str(action, "verb")
        decision = _VERBS.get(verb or "")
        data = action.get("data") if isinstance(action, Mapping) else None
        if decision is None or not isinstance(data, Mapping):
            raise InvokeRefused("malformed", f"verb {verb!r} is not a Cordon decision, or no data")
        fields = {k: _str(data, k) for k in ("case_id", "plan_hash", "run_id")}
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            raise InvokeRefused("malformed", f"value.action.data.{missing[0]} missing")
        reason = None
        if decision == "deny":  # the card's text input, merged into data by Teams (Action.Execute)
            typed = _str(data, "reason")
            reason = typed.strip()[:500] if typed and typed.strip() else None
        return Interaction(decision=decision, user_id=f"teams:{oid}", user_name=_str(sender, "name") or oid,
                           team_id=self.settings.tenant_id, run_id=fields["run_id"], case_id=fields["case_id"],
                           plan_hash=fields["plan_hash"], channel=_str(activity, "conversation", "id") or "",
                           message_ts=_str(activity, "replyToId") or "", response_url=None,
                           action_ts=_str(activity, "timestamp"), trigger_id=activity_id, reason=reason)


def find_replay(ledger: Ledger, activity_id: str, seq: int, case_id: str | None = None) -> LedgerRecord | None:
    """The earlier ``teams.invoke_received`` record (before ``seq``, in the ledger's single chain,
    so replicas agree) with the same ``activity_id``, or ``None``. Teams gives each invoke its own
    id; only a replayed request carries one twice. A replay is the same body, so it names the same
    case: with ``case_id`` only that case's records are read (the ledger's case index), not every
    invoke ever received."""
    for r in ledger.records(case_id=case_id, kind_prefix=RECEIVED_KIND):
        if r.seq >= seq:
            break
        if r.payload.get("activity_id") == activity_id:
            return r
    return None
