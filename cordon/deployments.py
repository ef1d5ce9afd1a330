"""Start flow runs of a Prefect deployment from a long-lived process, without paying for a new
client and a deployment lookup on every case.

``prefect.deployments.run_deployment`` opens a new ``SyncPrefectClient`` (a new ``httpx`` client
and connection) and reads the deployment by name on every call, then creates the run: on
``cordon serve``'s webhook that was a third of the CPU of a storm (issue 13). Here one client per
Prefect API URL is kept for the process (``httpx.Client`` is thread-safe), and the deployment's ID
per name, so a submission is the one ``POST /deployments/{id}/create_flow_run`` it has to be
(Prefect REST API reference: *Create Flow Run From Deployment*).

What a cache could get wrong is handled where it shows: a deployment deleted and created again
(a new ID) answers ``404``, and a server restarted on the same URL drops the connection; either
way the entry is dropped and the call made once more (safe: the run's ``idempotency_key`` makes
a second create return the first run).
"""

from __future__ import annotations

import atexit
import os
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

_lock = threading.Lock()
_clients: dict[str, SyncPrefectClient] = {}
_ids: dict[tuple[str, str], UUID] = {}


def create_deployment_run(name: str, *, parameters: dict[str, Any], idempotency_key: str,
                          tags: list[str] | None = None) -> FlowRun:
    """Create a scheduled flow run of the deployment ``name`` (``"flow/deployment"``) now, with
    ``parameters`` (JSON-able), ``idempotency_key`` (Prefect returns the existing run for a key it
    has seen) and ``tags``; return Prefect's ``FlowRun`` (its ``id`` is the run's UUID). Does not
    wait for the run.

    Without ``PREFECT_API_URL`` (Prefect's ephemeral mode) this is ``run_deployment(...,
    timeout=0, as_subflow=False)``. Raises what the Prefect client raises:
    ``prefect.exceptions.ObjectNotFound`` when no deployment has that name,
    ``httpx.HTTPError`` when the API cannot be reached (after one retry on a fresh connection).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.deployments import run_deployment

        return run_deployment(name, parameters=parameters, idempotency_key=idempotency_key, timeout=0,
                              as_subflow=False, tags=tags)
    try:
        return _create(url, name, parameters, idempotency_key, tags)
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is raised as it was
        if not _stale(exc):
            raise
        forget(url)
        return _create(url, name, parameters, idempotency_key, tags)


def forget(url: str | None = None) -> None:
    """Drop the cached client and deployment IDs of ``url`` (every URL when ``None``), closing
    the clients. The next :func:`create_deployment_run` connects and looks the deployment up again."""
    with _lock:
        urls = [u for u in _clients if url is None or u == url]
        for u in urls:
            client = _clients.pop(u)
            try:
                client.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is dropped anyway
                pass
        for key in [k for k in _ids if url is None or k[0] == url]:
            del _ids[key]


def _create(url: str, name: str, parameters: dict[str, Any], idempotency_key: str,
            tags: list[str] | None) -> FlowRun:
    from prefect.states import Scheduled

    client, deployment_id = _client_and_id(url, name)
    return client.create_flow_run_from_deployment(deployment_id, parameters=parameters,
                                                  state=Scheduled(scheduled_time=datetime.now(UTC)), tags=tags,
                                                  idempotency_key=idempotency_key)


def _client_and_id(url: str, name: str) -> tuple[SyncPrefectClient, UUID]:
    with _lock:
        client = _clients.get(url)
        if client is None:
            from prefect.client.orchestration import get_client

            client = get_client(sync_client=True)
            client.__enter__()
            _clients[url] = client
        deployment_id = _ids.get((url, name))
    if deployment_id is None:
        deployment_id = client.read_deployment_by_name(name).id
        with _lock:
            _ids[(url, name)] = deployment_id
    return client, deployment_id


def _stale(exc: BaseException) -> bool:
    """Whether ``exc`` is what a stale cache entry gives: the deployment's ID no longer exists
    (``404 Deployment not found`` from ``create_flow_run``, a ``PrefectHTTPStatusError``), or the
    kept connection is dead (``httpx.TransportError``) or closed."""
    import httpx
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code == 404
    return isinstance(exc, (ObjectNotFound, httpx.TransportError)) or (
        isinstance(exc, RuntimeError) and "closed" in str(exc).lower())


def _forget_in_child() -> None:
    """After ``fork``: the parent's connections (and its lock, perhaps held) are not the child's
    to use; start afresh."""
    global _lock
    _lock = threading.Lock()
    _clients.clear()
    _ids.clear()


atexit.register(forget)
os.register_at_fork(after_in_child=_forget_in_child)
