"""SDK client factories (:func:`clients_for`), rebuilt from plain parameters so a Prefect worker in another process can
make the same clients the caller had in mind.

``cloud`` is a JSON-serialisable dict:

* ``{}``: real AWS; boto3's default credential chain and endpoint resolution (which honours
  ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>``).
* ``{"aws_endpoint_url": "http://127.0.0.1:PORT", "cloudtrail_endpoint_url": "...",
  "region": "us-east-1", "sandbox": true}``: the sandbox's local stand-ins (moto's server and the
  CloudTrail ``LookupEvents`` stand-in), with dummy credentials.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

#: botocore's standard retry mode: exponential back-off with jitter on throttling and 5xx
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html).
RETRIES = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def clients_for(provider: str, cloud: dict[str, Any] | None = None) -> Callable[..., Any]:
    """The client factory for ``provider`` (``aws``, ``gcp`` or ``azure``) built from ``cloud``.

    Raises ``ValueError`` for a provider Cordon has no clients for yet.
    """
    if provider == "aws":
        return aws_clients(cloud)
    if provider == "gcp":
        from cordon.clouds_gcp import gcp_clients

        return gcp_clients(cloud or {})
    if provider == "azure":
        from cordon.clouds_azure import azure_clients

        return azure_clients(cloud or {})
    raise ValueError(f"no client factory for provider '{provider}'")


def aws_clients(cloud: dict[str, Any] | None = None) -> Callable[..., Any]:
    """A factory ``clients(service, region=None) -> boto3 client`` for ``cloud`` (see module doc).

    Clients are cached per (service, region). Region defaults to ``cloud["region"]`` or
    ``us-east-1``; IAM and STS are global and always use the partition's default region.
    """
    cloud = dict(cloud or {})
    if cloud.get("sandbox"):
        from cordon.sandbox.aws import SANDBOX_ACCESS_KEY, sandbox_clients

        factory = sandbox_clients(cloud)
        factory.own_access_key = lambda: SANDBOX_ACCESS_KEY  # type: ignore[attr-defined]
        return factory
    session = boto3.session.Session(region_name=cloud.get("region"))

    @functools.lru_cache(maxsize=64)
    def clients(service: str, region: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"config": RETRIES}
        endpoint = cloud.get(f"{service}_endpoint_url") or cloud.get("aws_endpoint_url")
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if service in ("iam", "sts"):
            region = None
        return session.client(service, region_name=region or session.region_name or "us-east-1", **kwargs)

    def own_access_key() -> str | None:
        creds = session.get_credentials()
        return creds.access_key if creds else None

    clients.own_access_key = own_access_key  # type: ignore[attr-defined]
    return clients
