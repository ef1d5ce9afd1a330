"""Azure client factory, rebuilt from plain parameters (like :mod:`cordon.providers.gcp.clients`) so a Prefect
worker in another process makes the same clients the caller had in mind.

``cloud`` is a JSON-serialisable dict:

* ``{}`` (or without ``client_secret_env``): real Azure. Credentials from the environment
  (``azure.identity.DefaultAzureCredential``: ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` /
  ``AZURE_CLIENT_SECRET`` or a certificate, workload identity, managed identity, Azure CLI);
  ``subscription_id`` from ``cloud["subscription_id"]`` or ``AZURE_SUBSCRIPTION_ID``; Graph at
  ``https://graph.microsoft.com/v1.0`` and ARM at ``https://management.azure.com``.
* ``{"tenant_id", "subscription_id", "client_id", "client_secret_env", "authority",
  "graph_url", "arm_url", "ca_pem", "own_object_id"}`` (what a local stand-in hands over):
  ``ClientSecretCredential`` with
  the secret read from the environment variable ``client_secret_env`` names (``AZURE_CLIENT_SECRET``
  or a ``CORDON_SANDBOX_AZURE_SECRET_*`` name; a ``client_secret`` value in the parameters is refused:
  parameters land in Prefect's database), ``authority`` pointed at another token endpoint
  (``disable_instance_discovery=True``;
  azure-identity insists the authority is https, so it shares the ARM stand-in's TLS server),
  ``connection_verify`` = the stand-in's CA for every https connection.

Clients:

* ``clients("graph")``: ``msgraph.GraphServiceClient`` (async SDK) built on a
  ``GraphRequestAdapter`` whose ``base_url`` is ``<graph_url>/v1.0`` and whose
  ``AzureIdentityAuthenticationProvider`` allows the stand-in's host (kiota sends a token only to
  allowed hosts and only over https, loopback excepted). Run its coroutines with
  ``clients.run(coro)``. Retries of 429 / 503 / 504 are kiota's ``RetryHandler`` (honours
  ``Retry-After``; up to 3 retries).
* ``clients("authorization")``: ``azure.mgmt.authorization.AuthorizationManagementClient``
  (sync; ``base_url`` = ARM, ``connection_verify`` = the CA path when ``ca_pem`` is given). Retries of 408 /
  429 / 500 / 502 / 503 / 504 are azure-core's ``RetryPolicy`` (honours ``Retry-After``).

API references: https://learn.microsoft.com/graph/sdks/sdks-overview ,
https://learn.microsoft.com/python/api/azure-mgmt-authorization/ ,
https://learn.microsoft.com/python/api/azure-identity/azure.identity.clientsecretcredential .
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from cordon.clouds import ClientFactory

GRAPH_URL = "https://graph.microsoft.com"
ARM_URL = "https://management.azure.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
ARM_SCOPE = "https://management.azure.com/.default"
#: Seconds :meth:`LoopThread.run` waits for one coroutine.
RUN_TIMEOUT_S = 120


class LoopThread:
    """A private asyncio event loop running forever in a daemon thread.

    ``run(coro)`` submits ``coro`` to that loop and blocks until it finishes, returning its result
    or raising its exception (``TimeoutError`` after ``timeout`` seconds). It is safe from sync code
    that is itself inside a running loop elsewhere (the caller's loop is never touched), and from
    many threads at once. Everything async the Graph client owns (httpx client, aiohttp session
    of the async credential) lives on this one loop. Calling ``run`` from the loop's own thread
    raises ``RuntimeError`` (it would deadlock).
    """

    def __init__(self, name: str = "cordon-azure-loop"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = RUN_TIMEOUT_S) -> Any:
        """Run ``coro`` on the private loop and return its result (see class doc)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop thread")
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("LoopThread is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """Stop the loop and join the thread (idempotent); first run ``last`` on it (what closes the
        clients living on the loop; its errors are ignored, up to 10 s)."""
        if self.loop.is_closed():
            if last is not None:
                last.close()
            return
        if last is not None:
            try:
                self.run(last, timeout=10)
            except Exception:  # noqa: BLE001, S110 - closing on the way out
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


#: Environment variable names a local stand-in may hand over in ``client_secret_env`` (beside Azure's own
#: ``AZURE_CLIENT_SECRET``). Restricted so cloud parameters cannot name any other secret of the process
#: (a Slack token, a database password) to be sent to a token endpoint they also name.
SECRET_ENV_PREFIX = "CORDON_SANDBOX_AZURE_SECRET_"


def client_secret_from_env(cloud: dict[str, Any]) -> str:
    """The client secret for ``cloud`` read from the environment: the variable ``cloud["client_secret_env"]``
    names (``AZURE_CLIENT_SECRET`` when absent). Secrets never travel as flow-run parameters, which
    Prefect stores (issue 11), so a ``client_secret`` key is refused.

    Raises ``ValueError`` for a ``client_secret`` parameter, a variable name outside ``AZURE_CLIENT_SECRET``
    / ``CORDON_SANDBOX_AZURE_SECRET_*``, or a variable that is not set (the message says which, so a
    worker's missing environment reads as such).
    """
    if "client_secret" in cloud:
        raise ValueError("a client secret is not accepted as a parameter (Prefect stores parameters): "
                         "put it in the worker's environment and name the variable in 'client_secret_env'")
    name = str(cloud.get("client_secret_env") or "AZURE_CLIENT_SECRET")
    suffix = name[len(SECRET_ENV_PREFIX):]
    if name != "AZURE_CLIENT_SECRET" and not (name.startswith(SECRET_ENV_PREFIX) and suffix.isalnum()):
        raise ValueError(f"client_secret_env must be AZURE_CLIENT_SECRET or {SECRET_ENV_PREFIX}<id>, not {name!r}")
    secret = os.environ.get(name)
    if not secret:
        raise ValueError(f"the Azure client secret is not in this process's environment ({name} is not set)")
    return secret


class AzureClients(ClientFactory):
    """:class:`cordon.clouds.Clients` for Azure: ``clients("graph" | "authorization")``; ``run(coro,
    timeout=None)`` runs a Graph coroutine on the factory's private loop; ``own_object_id()`` is
    Cordon's service principal object id when known; ``subscription_id``, ``tenant_id`` and the sync
    ``credential`` as configured."""

    def __init__(self, get: Any, *, run: Callable[..., Any], own_identity: Callable[[], str | None],
                 own_object_id: Callable[[], str | None], subscription_id: str | None, tenant_id: str | None,
                 credential: Any, close: Callable[[], None]):
        super().__init__(get, own_identity=own_identity, close=close)
        self.run = run
        self._own_object_id = own_object_id
        self.subscription_id = subscription_id
        self.tenant_id = tenant_id
        self.credential = credential

    def own_object_id(self) -> str | None:
        """Cordon's service principal object id, when the parameters give it."""
        return self._own_object_id()


def azure_clients(cloud: dict[str, Any] | None = None) -> AzureClients:
    """A factory ``clients(service) -> SDK client`` for ``cloud`` (see module doc).

    ``service`` is ``"graph"`` (``msgraph.GraphServiceClient``), ``"authorization"``
    (``AuthorizationManagementClient``) or ``"monitor"`` (``MonitorManagementClient``: the Activity
    Log); anything else raises ``ValueError``. Clients are built
    once per factory (the Graph client is bound to the factory's private loop; the ARM client's
    requests session is used from one thread at a time by the actions).

    The factory carries ``run(coro)`` (:meth:`LoopThread.run`), ``own_identity() -> str | None``
    (Cordon's client id / appId: the guard refuses to contain it), ``own_object_id() -> str |
    None`` (Cordon's service principal object id, when known), ``own_access_key() -> None`` (no
    AWS-style key to compare), ``subscription_id``, ``tenant_id`` and ``close()`` (idempotent: closes the
    Graph client's httpx client, the async credential's aiohttp session, the ARM client, the loop; also
    run when the factory is garbage-collected or at interpreter exit, via ``weakref.finalize``).
    Raises ``ValueError`` for client-secret params without a client id, a secret in the parameters or not in the
    environment (:func:`client_secret_from_env`), and for
    ``"authorization"`` / ``"monitor"`` with no subscription id.
    """
    from azure.identity import ClientSecretCredential, DefaultAzureCredential
    from azure.identity.aio import ClientSecretCredential as AioClientSecretCredential
    from azure.identity.aio import DefaultAzureCredential as AioDefaultAzureCredential

    cloud = dict(cloud or {})
    explicit = "client_secret_env" in cloud or "client_secret" in cloud  # a service principal's secret
    tenant = cloud.get("tenant_id") or os.environ.get("AZURE_TENANT_ID")
    subscription = cloud.get("subscription_id") or os.environ.get("AZURE_SUBSCRIPTION_ID")
    graph_url = str(cloud.get("graph_url") or GRAPH_URL).rstrip("/")
    arm_url = str(cloud.get("arm_url") or ARM_URL).rstrip("/")
    tls: dict[str, Any] = {}
    ca_path: str | None = None
    if cloud.get("ca_pem"):
        fd, ca_path = tempfile.mkstemp(prefix="cordon-azure-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as fh:
            fh.write(cloud["ca_pem"])
        tls = {"connection_verify": ca_path}
    if explicit:
        secret = client_secret_from_env(cloud)
        if not (cloud.get("client_id") and tenant):
            raise ValueError("client-secret cloud params need 'tenant_id' and 'client_id'")
        common = {"authority": cloud.get("authority"), "disable_instance_discovery": True, **tls}
        sync_cred: Any = ClientSecretCredential(tenant, cloud["client_id"], secret, **common)
        async_cred: Any = AioClientSecretCredential(tenant, cloud["client_id"], secret, **common)
        client_id: str | None = cloud["client_id"]
    else:
        sync_cred = DefaultAzureCredential(**tls)
        async_cred = AioDefaultAzureCredential(**tls)
        client_id = cloud.get("client_id") or os.environ.get("AZURE_CLIENT_ID")
    loop = LoopThread()
    lock = threading.Lock()
    cache: dict[str, Any] = {}

    def build_graph() -> Any:
        from msgraph import GraphRequestAdapter, GraphServiceClient
        from msgraph_core.authentication import AzureIdentityAuthenticationProvider

        host = urlsplit(graph_url).hostname or "graph.microsoft.com"
        auth = AzureIdentityAuthenticationProvider(async_cred, scopes=[GRAPH_SCOPE], allowed_hosts=[host])
        adapter = GraphRequestAdapter(auth)
        # kiota's HttpxRequestAdapter keeps its httpx.AsyncClient as ``_http_client``: kept so close() closes it
        cache["graph-http"] = getattr(adapter, "_http_client", None)
        adapter.base_url = f"{graph_url}/v1.0"
        return GraphServiceClient(request_adapter=adapter)

    def clients(service: str) -> Any:
        with lock:
            if service not in cache:
                if service == "graph":
                    cache[service] = build_graph()
                elif service in ("authorization", "monitor"):
                    if not subscription:
                        raise ValueError("no subscription id (cloud['subscription_id'] or AZURE_SUBSCRIPTION_ID)")
                    if service == "authorization":
                        from azure.mgmt.authorization import AuthorizationManagementClient as Arm
                    else:
                        from azure.mgmt.monitor import MonitorManagementClient as Arm
                    cache[service] = Arm(sync_cred, subscription, base_url=arm_url, credential_scopes=[ARM_SCOPE],
                                         **tls)
                else:
                    raise ValueError(f"unknown Azure service {service!r} (known: graph, authorization, monitor)")
            return cache[service]

    state = {"closed": False}

    async def aclose() -> None:
        http = cache.get("graph-http")
        if http is not None:
            await http.aclose()
        await async_cred.close()  # the aiohttp session of azure-identity's async pipeline

    def close() -> None:
        # Idempotent. Closes, on the loop that owns them, the Graph client's httpx client and the async
        # credential's aiohttp session (without this, aiohttp logs "Unclosed client session / connector"
        # when the factory is dropped), then the sync clients, the loop and the CA file.
        if state["closed"]:
            return
        state["closed"] = True
        loop.close(aclose())
        for obj in (cache.get("authorization"), cache.get("monitor"), sync_cred):
            try:
                if obj is not None:
                    obj.close()
            except Exception:  # noqa: BLE001, S110
                pass
        if ca_path and os.path.exists(ca_path):
            os.unlink(ca_path)
    factory = AzureClients(clients, run=loop.run, own_identity=lambda: client_id,
                           own_object_id=lambda: cloud.get("own_object_id"), subscription_id=subscription,
                           tenant_id=tenant, credential=sync_cred, close=close)
    weakref.finalize(factory, close)
    return factory
