"""Cloud clients for a case, whatever the cloud: :func:`clients_for` asks the provider registry
(:mod:`cordon.providers`) for the factory of a detection's provider, built from plain,
JSON-serialisable parameters (``cloud``) so a Prefect worker in another process makes the same
clients the caller had in mind. Each provider documents its own ``cloud`` keys (for example
:mod:`cordon.providers.aws.clients`); ``cloud["clients"]`` names a client factory installed by a
stand-in plug-in (:mod:`cordon.standins`) to use instead of the provider's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from cordon.providers import get_provider
from cordon.standins import plugin_clients


@runtime_checkable
class Clients(Protocol):
    """What an action's ``ctx.clients`` is: ``clients(service, ...)`` returns an SDK client (boto3
    client, msgraph ``GraphServiceClient``, googleapiclient ``Resource``); the rest tells the guard
    who Cordon itself is, so it never contains its own credential."""

    def __call__(self, service: str, *args: Any, **kwargs: Any) -> Any: ...

    def own_access_key(self) -> str | None: ...

    def own_identity(self) -> str | None: ...

    def own_identities(self) -> list[str]: ...

    def close(self) -> None: ...


class ClientFactory:
    """A :class:`Clients` made of a getter and optional answers.

    ``ClientFactory(get, own_access_key=fn, own_identity=fn, own_identities=fn, close=fn)``:
    ``get(service, *args, **kwargs)`` builds (and caches) the SDK client; each answer defaults to
    "none" (``None``, ``[]``, a no-op close). Providers subclass it to add what their actions need
    (:class:`cordon.providers.azure.clients.AzureClients`'s ``run``)."""

    def __init__(self, get: Callable[..., Any], *, own_access_key: Callable[[], str | None] | None = None,
                 own_identity: Callable[[], str | None] | None = None,
                 own_identities: Callable[[], list[str]] | None = None,
                 close: Callable[[], None] | None = None):
        self._get = get
        self._own_access_key = own_access_key
        self._own_identity = own_identity
        self._own_identities = own_identities
        self._close = close

    def __call__(self, service: str, *args: Any, **kwargs: Any) -> Any:
        return self._get(service, *args, **kwargs)

    def own_access_key(self) -> str | None:
        """The access key ID Cordon's clients sign with (AWS), else ``None``."""
        return self._own_access_key() if self._own_access_key else None

    def own_identity(self) -> str | None:
        """The identity Cordon acts as (GCP service-account email, Entra appId), else ``None``."""
        return self._own_identity() if self._own_identity else None

    def own_identities(self) -> list[str]:
        """Further identities Cordon acts as (the AWS member role assumed), possibly empty."""
        return list(self._own_identities()) if self._own_identities else []

    def close(self) -> None:
        """Release connections and loops (idempotent)."""
        if self._close:
            self._close()


def clients_for(provider: str, cloud: dict[str, Any] | None = None) -> Clients:
    """The client factory for ``provider`` (a registered provider's name) built from ``cloud``, or
    the stand-in plug-in's factory ``cloud["clients"]`` names (:func:`cordon.standins.plugin_clients`).

    Raises ``ValueError`` for a provider that is not registered and
    :class:`cordon.standins.StandInsMissing` for a named factory that is not installed.
    """
    plugged = plugin_clients(cloud or {})
    if plugged is not None:
        return plugged
    return get_provider(provider).clients(cloud or {})


def cloud_for_case(cloud: dict[str, Any] | None, detection: Any, case_id: str | None) -> dict[str, Any]:
    """``cloud`` for one case's clients: a copy with ``account_id`` set to the detection's account
    (for providers whose clients act per account, and every provider in the sandbox) and
    ``case_id`` (the session name). ``detection`` is a :class:`cordon.detections.model.Detection`
    (``provider``, ``account_uid``)."""
    out = dict(cloud or {})
    account = getattr(detection, "account_uid", None)
    provider = getattr(detection, "provider", None)
    per_account = bool(provider) and get_provider(provider).clients_per_account
    if account and (out.get("sandbox") or per_account):
        out["account_id"] = account
    if case_id:
        out["case_id"] = case_id
    return out
