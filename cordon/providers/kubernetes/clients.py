"""Kubernetes client factory over the official ``kubernetes`` Python client, rebuilt from plain
parameters so a Prefect worker in another process makes the same clients.

``cloud`` (JSON-serialisable):

* ``{"host": "https://...", "token": "...", "verify_ssl": bool, "ca_cert": path}``: an API server
  and a bearer token (the sandbox's stand-in, or an explicit configuration);
* ``{"kubeconfig": path, "context": name}``: ``kubernetes.config.load_kube_config`` (both optional);
* ``{"in_cluster": true}``: ``kubernetes.config.load_incluster_config`` (a Pod's ServiceAccount);
* ``{"host": ..., "ca_cert": path, "eks_cluster": name, "region": r}``: a token minted from the AWS
  credential chain (:func:`cordon.providers.kubernetes.tokens.eks_token`), renewed before it expires;
* ``{"host": ..., "ca_cert": path, "gke": true}``: a Google access token from ADC
  (:func:`cordon.providers.kubernetes.tokens.gke_token`), renewed before it expires.

``service_account`` (optional): Cordon's own principal as the API server names it
(``system:serviceaccount:<ns>:<name>``), which the guard never lets it contain.

``clients(service)``: ``"rbac"`` -> ``RbacAuthorizationV1Api``, ``"core"`` -> ``CoreV1Api``,
``"certificates"`` -> ``CertificatesV1Api``, ``"api"`` -> the ``ApiClient`` itself. Raises
``ValueError`` for another service; ``kubernetes.config.ConfigException`` when no configuration loads.
"""

from __future__ import annotations

from typing import Any

from cordon.clouds import ClientFactory

_APIS = {"rbac": "RbacAuthorizationV1Api", "core": "CoreV1Api", "certificates": "CertificatesV1Api"}


def kubernetes_clients(cloud: dict[str, Any] | None = None) -> ClientFactory:
    """A :class:`cordon.clouds.ClientFactory` for ``cloud`` (see the module docstring)."""
    from kubernetes import client, config

    cloud = dict(cloud or {})
    configuration = client.Configuration()
    if cloud.get("host"):
        configuration.host = str(cloud["host"]).rstrip("/")
        if cloud.get("token"):
            configuration.api_key = {"authorization": f"Bearer {cloud['token']}"}
        elif cloud.get("eks_cluster"):
            from cordon.providers.kubernetes.tokens import EKS_TOKEN_TTL_S, eks_token, refreshing

            cluster, region = str(cloud["eks_cluster"]), cloud.get("region")
            configuration.refresh_api_key_hook = refreshing(lambda: eks_token(cluster, region), EKS_TOKEN_TTL_S)
        elif cloud.get("gke"):
            from cordon.providers.kubernetes.tokens import GKE_TOKEN_TTL_S, gke_token, refreshing

            configuration.refresh_api_key_hook = refreshing(gke_token, GKE_TOKEN_TTL_S)
        configuration.verify_ssl = bool(cloud.get("verify_ssl", True))
        if cloud.get("ca_cert"):
            configuration.ssl_ca_cert = cloud["ca_cert"]
    elif cloud.get("in_cluster"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=cloud.get("kubeconfig"), context=cloud.get("context"),
                                client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    cache: dict[str, Any] = {}

    def get(service: str, *_: Any, **__: Any) -> Any:
        if service == "api":
            return api_client
        if service not in _APIS:
            raise ValueError(f"no Kubernetes API {service!r} (known: api, {', '.join(_APIS)})")
        if service not in cache:
            cache[service] = getattr(client, _APIS[service])(api_client)
        return cache[service]

    own = cloud.get("service_account")
    return ClientFactory(get, own_identity=lambda: own, close=api_client.close)
