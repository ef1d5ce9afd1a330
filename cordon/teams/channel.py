"""Microsoft Teams as an approval channel: where the card goes and how Cordon reaches it.

:func:`teams_settings` reads ``teams`` from ``cordon.yaml`` (:func:`cordon.teams.verify.load_teams_settings`)
with the environment's overrides, which is how the sandbox and the tests point Cordon at the
Teams stand-in (:mod:`cordon.sandbox.teams_standin`):

* ``CORDON_TEAMS_SERVICE_URL``: the connector's base URL (``teams.service_url``: the
  ``serviceUrl`` Teams gave the bot's conversation, e.g. ``https://smba.trafficmanager.net/emea/``);
* ``CORDON_TEAMS_CONVERSATION_ID``: the channel or chat the card is posted to (``teams.conversation_id``);
* ``CORDON_TEAMS_OPENID_METADATA_URL``: Bot Framework's OpenID metadata (``teams.openid_metadata_url``);
* ``CORDON_TEAMS_CONNECTOR_TOKEN``: a fixed bearer token for the connector. Only a stand-in accepts
  one (the sandbox sets it); unset, Cordon acquires the bot's token from Entra with MSAL
  (:func:`cordon.teams.client.bot_token_provider`, the secret in the variable ``app_password_env`` names).

:func:`cards_for` gives the :class:`cordon.teams.client.TeamsCards` of a ledger (post, refresh,
show the outcome), or ``None`` when ``cordon.yaml`` has no ``teams`` section.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from cordon.audit.ledger import Ledger
from cordon.config import Config, ConfigError
from cordon.teams.client import Connector, TeamsCards, bot_token_provider
from cordon.teams.verify import TeamsSettings, load_teams_settings

_OVERRIDES = {"service_url": "CORDON_TEAMS_SERVICE_URL", "conversation_id": "CORDON_TEAMS_CONVERSATION_ID",
              "openid_metadata_url": "CORDON_TEAMS_OPENID_METADATA_URL"}


def teams_settings(config: Config) -> TeamsSettings:
    """The ``teams`` section with the environment's overrides (module docstring). Raises
    :class:`cordon.config.ConfigError` as :func:`cordon.teams.verify.load_teams_settings` does,
    and when the section is absent."""
    if not config.raw.get("teams"):
        raise ConfigError(f"{config.directory / 'cordon.yaml'}: field 'teams': required to approve in Microsoft "
                          "Teams (app_id, tenant_id, service_url, conversation_id; docs/deploy.md)")
    settings = load_teams_settings(config)
    changes = {field: os.environ[var] for field, var in _OVERRIDES.items() if os.environ.get(var)}
    return dataclasses.replace(settings, **changes) if changes else settings


def require_destination(config: Config) -> TeamsSettings:
    """:func:`teams_settings`, and where to post: raises :class:`cordon.config.ConfigError` naming
    ``teams.service_url`` / ``teams.conversation_id`` when either is missing."""
    settings = teams_settings(config)
    for field in ("service_url", "conversation_id"):
        if not getattr(settings, field):
            raise ConfigError(f"{config.directory / 'cordon.yaml'}: field 'teams.{field}': required to post the "
                              f"approval card (or set {_OVERRIDES[field]})")
    return settings


def connector_factory(settings: TeamsSettings) -> Callable[[str], Connector]:
    """``connector_for(service_url) -> Connector`` with the bot's token: the fixed
    ``CORDON_TEAMS_CONNECTOR_TOKEN`` when set, else MSAL's (its secret must then be set: raises
    ``KeyError`` naming the variable when it is not)."""
    fixed = os.environ.get("CORDON_TEAMS_CONNECTOR_TOKEN")
    token: Callable[[], str] = (lambda: fixed) if fixed else bot_token_provider(settings)  # type: ignore[assignment,return-value]
    return lambda url: Connector(url, token)


def cards_for(ledger: Ledger, config: Config) -> TeamsCards | None:
    """The Teams cards of ``ledger`` (:class:`cordon.teams.client.TeamsCards`), or ``None`` when
    ``cordon.yaml`` has no ``teams`` section or the bot has no way to get a token (no fixed token
    and no secret): then there is no card to update, and nothing fails for it."""
    if not config.raw.get("teams"):
        return None
    try:
        return TeamsCards(ledger, connector_factory(teams_settings(config)))
    except KeyError:
        return None


def teams_surface(config: Config) -> dict[str, Any]:
    """Where a run posts its card, as flow parameters carry it: ``{"service_url",
    "conversation_id"}`` (raises as :func:`require_destination`)."""
    s = require_destination(config)
    return {"service_url": s.service_url, "conversation_id": s.conversation_id}
