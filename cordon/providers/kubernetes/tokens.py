"""Bearer tokens for managed clusters, minted by Cordon itself (no kubeconfig ``exec`` plugin):

* EKS: ``k8s-aws-v1.`` + the unpadded URL-safe base64 of an STS ``GetCallerIdentity`` URL presigned
  for 60 s with the signed header ``x-k8s-aws-id: <cluster name>``, which the cluster's
  aws-iam-authenticator checks (https://github.com/kubernetes-sigs/aws-iam-authenticator#api-authorization-from-outside-a-cluster;
  ``aws eks get-token`` makes the same). Valid 15 minutes.
* GKE: a Google OAuth 2.0 access token of the credentials ``google.auth.default()`` finds (ADC or a
  service account), scope ``cloud-platform``, as ``gke-gcloud-auth-plugin`` sends it.

:func:`refreshing` wraps either into a ``kubernetes.client.Configuration.refresh_api_key_hook`` that
mints a new token before the old one expires.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

#: The header aws-iam-authenticator reads the cluster name from (signed into the presigned URL)
EKS_CLUSTER_HEADER = "x-k8s-aws-id"
#: How long an EKS token is accepted (aws-iam-authenticator: 15 minutes) and a GKE one (1 hour)
EKS_TOKEN_TTL_S = 15 * 60
GKE_TOKEN_TTL_S = 60 * 60


def eks_token(cluster: str, region: str | None = None, session: Any = None) -> str:
    """The bearer token of EKS cluster ``cluster`` for the AWS principal of ``session`` (a
    ``boto3.Session``; default the default credential chain), STS in ``region`` (default the
    session's, else ``us-east-1``). Raises ``botocore.exceptions.NoCredentialsError`` without
    credentials. Nothing is sent to AWS: the URL is only signed."""
    import boto3

    session = session or boto3.Session()
    sts = session.client("sts", region_name=region or session.region_name or "us-east-1")

    def add_cluster(request: Any, **_: Any) -> None:  # botocore's AWSRequest, before SigV4 signs it
        request.headers[EKS_CLUSTER_HEADER] = cluster

    sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_cluster)
    url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=60, HttpMethod="GET")
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def gke_token(credentials: Any = None) -> str:
    """An OAuth 2.0 access token for GKE from ``credentials`` (``google.auth.credentials.Credentials``;
    default ``google.auth.default(scopes=[cloud-platform])``), refreshed over HTTP. Raises
    ``google.auth.exceptions.DefaultCredentialsError`` when no credentials are found."""
    import google.auth
    import google.auth.transport.requests

    if credentials is None:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())
    return str(credentials.token)


def refreshing(mint: Callable[[], str], ttl_s: float, margin_s: float = 60.0) -> Callable[[Any], None]:
    """A ``refresh_api_key_hook`` for ``kubernetes.client.Configuration``: sets
    ``api_key["authorization"]`` to ``Bearer <mint()>`` on first use and again ``margin_s`` seconds
    before ``ttl_s`` has passed since the last mint."""
    minted = {"at": -1e18}

    def hook(configuration: Any) -> None:
        now = time.monotonic()
        if now - minted["at"] >= ttl_s - margin_s:
            configuration.api_key["authorization"] = f"Bearer {mint()}"
            minted["at"] = now

    return hook
