"""Cloud clients for a case, whatever the cloud: :func:`clients_for` asks the provider registry
(:mod:`cordon.providers`) for the factory of a detection's provider, built from plain,
JSON-serialisable parameters (``cloud``) so a Prefect worker in another process makes the same
clients the caller had in mind. Each provider documents its own ``cloud`` keys (for example
:mod:`cordon.providers.aws.clients`); ``sandbox: true`` points them at the local stand-ins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordon.providers import get_provider


def clients_for(provider: str, cloud: dict[str, Any] | None = None) -> Callable[..., Any]:
    """The client factory for ``provider`` (a registered provider's name) built from ``cloud``.

    Raises ``ValueError`` for a provider that is not registered.
    """
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
