"""GCP client factory, rebuilt from plain parameters (like :mod:`cordon.clouds` for AWS) so a
Prefect worker in another process makes the same clients the caller had in mind.

``cloud`` is a JSON-serialisable dict:

* ``{}``: real GCP, Application Default Credentials (``google.auth.default``); the APIs' own
  endpoints.
* ``{"credentials_info": {...}, "token_uri": ".../token", "endpoint": "http://HOST:PORT",
  "project": "p"}``: service-account credentials from the JSON key ``credentials_info`` (its token
  endpoint replaced by ``token_uri`` when given), and, with ``endpoint``, each API at
  ``<endpoint>/<api>/<servicePath>`` (a local stand-in's layout).

Clients are google-api-python-client ``Resource`` objects built from the discovery documents
shipped inside ``googleapiclient`` (``static_discovery=True``: no network for discovery).
Retries of 429 / 5xx are google-api-python-client's own (``execute(num_retries=N)``,
exponential back-off with jitter; it does not read ``Retry-After``).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import google.auth
import google_auth_httplib2
import httplib2
from google.oauth2 import service_account
from googleapiclient import discovery
from googleapiclient.discovery_cache import get_static_doc

from cordon.clouds import ClientFactory

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Retries Cordon asks of ``HttpRequest.execute`` for 429 / 5xx (googleapiclient/http.py
#: ``_should_retry_response``): sleeps ``random() * 2**n`` seconds before retry ``n``.
NUM_RETRIES = 3
HTTP_TIMEOUT_S = 30


def service_path(service: str, version: str) -> str:
    """The discovery document's ``servicePath`` (``"storage/v1/"`` for storage v1, ``""`` for
    most APIs). Raises ``ValueError`` when no static document ships for ``service``/``version``."""
    doc = get_static_doc(service, version)
    if doc is None:
        raise ValueError(f"no static discovery document for {service} {version}")
    return json.loads(doc).get("servicePath", "")


class GcpClients(ClientFactory):
    """:class:`cordon.clouds.Clients` for GCP: ``clients(service, version="v1") -> Resource``;
    ``credentials`` are the ``google.auth`` credentials its requests are authorised with."""

    def __init__(self, get: Any, *, credentials: Any, own_identity: Any):
        super().__init__(get, own_identity=own_identity)
        self.credentials = credentials


def gcp_clients(cloud: dict[str, Any] | None = None) -> GcpClients:
    """A factory ``clients(service, version="v1") -> googleapiclient Resource`` for ``cloud``.

    Each ``Resource`` is built once per (service, version, thread) (httplib2 connections are not
    thread-safe) with ``static_discovery=True, cache_discovery=False`` and an
    ``AuthorizedHttp`` whose timeout is :data:`HTTP_TIMEOUT_S` seconds. The factory carries
    ``own_identity() -> str | None`` (the email Cordon acts as: the guard refuses to contain
    it) and ``own_access_key() -> None`` (GCP has no AWS-style key ID to compare).
    Raises ``google.auth.exceptions.DefaultCredentialsError`` for real GCP without credentials.
    """
    cloud = dict(cloud or {})
    scopes = [CLOUD_PLATFORM_SCOPE]
    if cloud.get("credentials_info"):
        info = dict(cloud["credentials_info"])
        if cloud.get("token_uri"):
            info["token_uri"] = cloud["token_uri"]
        credentials: Any = service_account.Credentials.from_service_account_info(info, scopes=scopes)
    else:
        credentials, _ = google.auth.default(scopes=scopes)
    endpoint = str(cloud.get("endpoint") or "").rstrip("/")
    local = threading.local()

    def clients(service: str, version: str = "v1") -> Any:
        cache = local.__dict__.setdefault("cache", {})
        key = (service, version)
        if key not in cache:
            options = None
            if endpoint:
                options = {"api_endpoint": f"{endpoint}/{service}/{service_path(service, version)}"}
            http = google_auth_httplib2.AuthorizedHttp(credentials, http=httplib2.Http(timeout=HTTP_TIMEOUT_S))
            cache[key] = discovery.build(service, version, http=http, client_options=options,
                                         static_discovery=True, cache_discovery=False)
        return cache[key]

    def own_identity() -> str | None:
        email = getattr(credentials, "service_account_email", None)
        return email if email and email != "default" else None

    return GcpClients(clients, credentials=credentials, own_identity=own_identity)
