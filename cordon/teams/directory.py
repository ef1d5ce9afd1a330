"""Microsoft Teams clickers looked up in Entra ID through Microsoft Graph (msgraph-sdk).

A Teams click reaches the decider as ``user_id`` ``teams:<Entra object id>``
(:mod:`cordon.teams.verify`). :class:`EntraDirectory` answers for such users what
:class:`cordon.approvals.policy.SlackDirectory` answers for Slack users, with the same duck
interface, so :func:`cordon.approvals.policy.check_clicker` uses either:

* ``email(user_id)``: the user's ``mail``, else their ``userPrincipalName``
  (``GET /v1.0/users/{oid}?$select=mail,userPrincipalName``,
  https://learn.microsoft.com/graph/api/user-get?view=graph-rest-1.0): the identity matched against
  the detection's principals and the requester to refuse self-approval;
* ``is_member(user_id, groups)``: of the approver groups written ``entra:<group object id>`` (other
  entries, Slack's ``S...`` user groups, are not Entra's and are skipped), the first in sorted order
  the user belongs to, directly or through nested groups, or ``None``
  (``POST /v1.0/users/{oid}/checkMemberGroups`` with ``{"groupIds": [...]}``, at most 20 ids a
  request, https://learn.microsoft.com/graph/api/directoryobject-checkmembergroups?view=graph-rest-1.0).

Answers are kept for ``ttl`` seconds (``approval.group_cache``); failures are not kept. Graph errors
raise (msgraph's ``ODataError``, ``httpx`` transport errors, azure-identity's
``ClientAuthenticationError`` for a refused token, ``TimeoutError``); ``check_clicker`` turns them
into a refusal naming Entra ID / Microsoft Graph, never an approval.

:func:`entra_directory` builds one from the ``teams`` section (:class:`cordon.teams.verify.TeamsSettings`):
the bot's own Entra app (``app_id``, ``tenant_id``, the client secret in the environment variable
``app_password_env`` names) through azure-identity's ``ClientSecretCredential``
(https://learn.microsoft.com/python/api/azure-identity/azure.identity.aio.clientsecretcredential),
scope ``https://graph.microsoft.com/.default``; the app needs the Graph application permissions
``User.Read.All`` and ``GroupMember.Read.All``. Graph is at ``teams.graph_url`` (the public Graph
when unset). msgraph-sdk is async: calls run on a private event loop
(:class:`cordon.providers.azure.clients.LoopThread`), as the Azure provider's do.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from cordon.approvals.policy import DEFAULT_GROUP_CACHE_SECONDS, CachedDirectory
from cordon.providers.azure.clients import GRAPH_SCOPE, GRAPH_URL, LoopThread
from cordon.teams.verify import TeamsSettings

TEAMS_PREFIX = "teams:"
#: The prefix of an approver group kept in Entra ID (``entra:<group object id>``): a directory group
#: (:func:`cordon.approvals.policy.is_directory_group`) this directory resolves.
ENTRA_GROUP_PREFIX = "entra:"
#: Graph's limit of group ids in one ``checkMemberGroups`` request.
CHECK_MEMBER_GROUPS_MAX = 20


def object_id(user_id: str) -> str:
    """The Entra object id of a Teams clicker ``teams:<oid>``; ``ValueError`` for anything else."""
    if not user_id.startswith(TEAMS_PREFIX) or not user_id[len(TEAMS_PREFIX):]:
        raise ValueError(f"{user_id!r} is not a Teams user (teams:<Entra object id>)")
    return user_id[len(TEAMS_PREFIX):]


class EntraDirectory(CachedDirectory):
    """Teams clickers' e-mail and Entra group membership from Microsoft Graph (module docstring).

    ``graph`` is an ``msgraph.GraphServiceClient``; ``run(coroutine)`` runs one of its calls to the
    end from sync code and returns its result (:meth:`LoopThread.run`); ``close()`` (optional)
    releases what :func:`entra_directory` opened. ``ttl`` / ``clock`` as for
    :class:`cordon.approvals.policy.SlackDirectory`. Thread-safe."""

    #: what a refusal names when a look-up fails (:func:`cordon.approvals.policy.check_clicker`)
    source = "Entra ID (Microsoft Graph)"

    def __init__(self, graph: Any, *, run: Callable[[Any], Any], ttl: float = DEFAULT_GROUP_CACHE_SECONDS,
                 clock: Callable[[], float] | None = None, close: Callable[[], None] | None = None):
        super().__init__(ttl=ttl, **({"clock": clock} if clock is not None else {}))
        self.graph = graph
        self.run = run
        self._close = close

    def close(self) -> None:
        """Close the Graph client, the credential and the loop (idempotent; nothing when injected)."""
        if self._close is not None:
            self._close()

    def email(self, user_id: str) -> str | None:
        """``mail``, else ``userPrincipalName`` of the Teams user ``teams:<oid>`` (``None`` when
        Graph gives neither). Raises ``ValueError`` for a user that is not ``teams:``, and Graph's
        errors (an unknown user is ``ODataError`` 404)."""
        oid = object_id(user_id)

        def fetch() -> str | None:
            from kiota_abstractions.base_request_configuration import RequestConfiguration
            from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder

            query = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(
                select=["mail", "userPrincipalName"])
            user = self.run(self.graph.users.by_user_id(oid).get(
                request_configuration=RequestConfiguration(query_parameters=query)))
            return (user.mail or user.user_principal_name or None) if user is not None else None

        return self._cached(("email", oid), fetch)

    def member_groups(self, user_id: str, group_ids: Iterable[str]) -> frozenset[str]:
        """Which of ``group_ids`` (Entra object ids, without the ``entra:`` prefix) the Teams user
        ``teams:<oid>`` is a member of, transitively (``checkMemberGroups``, 20 ids a request)."""
        oid = object_id(user_id)
        wanted = sorted(set(group_ids))

        def fetch() -> frozenset[str]:
            from msgraph.generated.users.item.check_member_groups.check_member_groups_post_request_body import (
                CheckMemberGroupsPostRequestBody,
            )

            found: set[str] = set()
            for i in range(0, len(wanted), CHECK_MEMBER_GROUPS_MAX):
                body = CheckMemberGroupsPostRequestBody(group_ids=wanted[i:i + CHECK_MEMBER_GROUPS_MAX])
                resp = self.run(self.graph.users.by_user_id(oid).check_member_groups.post(body))
                found |= {str(v).lower() for v in (getattr(resp, "value", None) or [])}
            return frozenset(g for g in wanted if g.lower() in found)

        return self._cached(("member", f"{oid}|{','.join(wanted)}"), fetch) if wanted else frozenset()

    def is_member(self, user_id: str, groups: Iterable[str]) -> str | None:
        """The first of ``groups`` (sorted) written ``entra:<group object id>`` that the Teams user
        ``user_id`` belongs to, directly or nested, or ``None`` (also for a user that is not
        ``teams:``, and when no group is an Entra one: then Graph is not asked). Raises Graph's errors."""
        if not user_id.startswith(TEAMS_PREFIX):
            return None
        entra = sorted(g for g in groups if g.startswith(ENTRA_GROUP_PREFIX) and len(g) > len(ENTRA_GROUP_PREFIX))
        if not entra:
            return None
        member = self.member_groups(user_id, (g[len(ENTRA_GROUP_PREFIX):] for g in entra))
        return next((g for g in entra if g[len(ENTRA_GROUP_PREFIX):] in member), None)


def entra_directory(settings: TeamsSettings, *, credential: Any = None, login: str | None = None,
                    verify: str | None = None, ttl: float = DEFAULT_GROUP_CACHE_SECONDS,
                    clock: Callable[[], float] | None = None) -> EntraDirectory:
    """An :class:`EntraDirectory` for the bot of ``settings`` (module docstring), Graph at
    ``settings.graph_url``.

    ``credential``: an async azure-identity credential to use instead of the bot's
    ``ClientSecretCredential`` (a test's). Otherwise the secret is read from the variable
    ``settings.app_password_env`` (``KeyError`` naming it when unset) and the credential asks
    ``login`` for tokens (an ``https`` Entra authority; default Microsoft's public login, and with
    ``login`` instance discovery is off, as a stand-in needs), trusting the CA bundle ``verify``.
    Nothing is requested until the first look-up."""
    from azure.identity.aio import ClientSecretCredential
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph_core.authentication import AzureIdentityAuthenticationProvider

    owned = credential is None
    if owned:
        secret = os.environ[settings.app_password_env]
        kw: dict[str, Any] = {"connection_verify": verify} if verify else {}
        if login:
            kw |= {"authority": login, "disable_instance_discovery": True}
        credential = ClientSecretCredential(settings.tenant_id, settings.app_id, secret, **kw)
    graph_url = str(settings.graph_url or GRAPH_URL).rstrip("/")
    auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_SCOPE],
                                               allowed_hosts=[urlsplit(graph_url).hostname or "graph.microsoft.com"])
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = f"{graph_url}/v1.0"
    http = getattr(adapter, "_http_client", None)  # kiota's httpx.AsyncClient, closed by close()
    loop = LoopThread(name="cordon-entra-directory")

    async def aclose() -> None:
        if http is not None:
            await http.aclose()
        if owned:
            await credential.close()

    def close() -> None:  # idempotent: the loop, once closed, does not run aclose again
        loop.close(aclose())

    directory = EntraDirectory(GraphServiceClient(request_adapter=adapter), run=loop.run, ttl=ttl, clock=clock,
                               close=close)
    weakref.finalize(directory, close)
    return directory


def directory_for(config: Any) -> EntraDirectory | None:
    """The :class:`EntraDirectory` of a :class:`cordon.config.Config` with a ``teams`` section
    (:func:`cordon.teams.channel.teams_settings`, kept for ``approval.group_cache`` seconds), or
    ``None`` without one, or when the bot's secret (the variable ``teams.app_password_env`` names) is
    unset: a stand-in's fixed connector token needs none (:mod:`cordon.teams.channel`), and without
    a directory Teams clickers are resolved only through ``approval.approvers.users`` and
    ``approval.identities`` (``entra:`` groups then allow nobody). Raises
    :class:`cordon.config.ConfigError` for a bad section."""
    if not config.raw.get("teams"):
        return None
    from cordon.approvals.policy import load_settings
    from cordon.teams.channel import teams_settings

    settings = teams_settings(config)
    if not os.environ.get(settings.app_password_env):
        return None
    return entra_directory(settings, ttl=load_settings(config).group_cache_seconds)
