"""AWS clients (boto3), rebuilt from plain parameters so a Prefect worker in another process makes the
same clients the caller had in mind.

``cloud`` is a JSON-serialisable dict:

* ``{}``: real AWS; boto3's default credential chain and endpoint resolution (which honours
  ``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_<SERVICE>``).
* ``{"aws_endpoint_url": "http://127.0.0.1:PORT", "<service>_endpoint_url": "...", "region": ...}``:
  every service (or one) at another endpoint, e.g. an AWS-compatible local service.

Several AWS accounts (:mod:`cordon.providers.aws.accounts`): ``cloud["account_id"]`` is the account the
clients must act in (the detection's, :func:`cordon.clouds.cloud_for_case`) and ``cloud["case_id"]`` names
the STS session (``cordon-<case id>``). When the ``aws:`` section of
``cordon.yaml`` (or ``cloud["aws"]``, the same shape) gives that account a role and it is not the
hub account, the clients sign with that role assumed from the default credential chain; with no
``aws:`` section they use the chain as they always did. ``sts_endpoint_url`` (else
``aws_endpoint_url``) is where ``AssumeRole`` goes.

Stand-ins that need more than an endpoint bring their own factory (:mod:`cordon.standins`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from cordon.clouds import ClientFactory

#: botocore's standard retry mode: exponential back-off with jitter on throttling and 5xx
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html).
RETRIES = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)


class AwsClients(ClientFactory):
    """:class:`cordon.clouds.Clients` for AWS: ``clients(service, region=None) -> boto3 client``.

    ``role_arn`` / ``session_name``: the member role assumed and the STS session name (``None``
    until the first client when the hub account must be asked for, and when no role is assumed)."""

    role_arn: str | None = None
    session_name: str | None = None


def aws_clients(cloud: dict[str, Any] | None = None) -> AwsClients:
    """A factory ``clients(service, region=None) -> boto3 client`` for ``cloud`` (see module doc).

    ``clients(service, account_id=...)`` is a client acting in another account than the case's (the
    hub's own credentials for the hub account, else the role ``aws:`` gives that account: centralized
    root access calls ``sts:AssumeRoot`` from the management account); ``clients(service,
    credentials={AccessKeyId, SecretAccessKey, SessionToken})`` a client signing with temporary
    credentials (what ``AssumeRoot`` answered). Neither is cached.

    Clients are cached per (service, region), thread-safe; with the process's own credentials (no
    role assumed) the boto3 Session and its clients are shared by every factory of the process
    (keyed by the ``AWS_*`` environment, region and endpoint), so a task does not pay for a new
    Session (about 170 ms) and a case's tasks reuse connections. Region defaults to ``cloud["region"]``
    or ``us-east-1``; IAM and STS are global and always use the partition's default region.

    The factory also answers, for the guard (:func:`cordon.respond.guard`):
    ``own_identity()`` (the ARN ``sts:GetCallerIdentity`` answers),
    ``own_access_key()`` (the key ID its clients sign with; a temporary ``ASIA`` key when a role
    is assumed), ``own_identities()`` (the ARN of the member role assumed, known without a call;
    empty otherwise) and ``role_arn`` / ``session_name`` (``None`` until the first client when the
    hub account must be asked for). Raises :class:`cordon.providers.aws.accounts.AwsAccountsError` (a
    ``ConfigError``) for an unusable ``aws:`` section; from the first client when the role's
    external-ID variable is unset.
    """
    cloud = dict(cloud or {})
    from cordon.providers.aws.accounts import aws_accounts, aws_accounts_from_raw, session_name

    base = _base_session(cloud.get("region"))
    account = cloud.get("account_id")
    if "aws" in cloud:
        accounts = aws_accounts_from_raw({"aws": cloud["aws"]})
    elif account:
        from cordon.config import load_config

        accounts = aws_accounts(load_config())
    else:
        accounts = None
    sts_endpoint = cloud.get("sts_endpoint_url") or cloud.get("aws_endpoint_url")
    lock = threading.Lock()
    chosen: dict[str, Any] = {}
    cache: dict[tuple[str, str], Any] = {}

    def session() -> Any:
        with lock:
            if "session" not in chosen:
                with _SHARED_LOCK:  # clients are made from the shared base Session one thread at a time
                    chosen["session"], chosen["role"] = _session_for(base, accounts, account, cloud, sts_endpoint)
                factory.role_arn = chosen["role"].role_arn if chosen["role"] else None
                factory.session_name = session_name(cloud.get("case_id")) if chosen["role"] else None
            return chosen["session"]

    def clients(service: str, region: str | None = None, account_id: str | None = None,
                credentials: dict[str, Any] | None = None) -> Any:
        if credentials is not None or (account_id and account_id != account):
            return _other_client(service, region, account_id, credentials)
        sess = session()
        if service in ("iam", "sts"):
            region = None
        region = region or sess.region_name or "us-east-1"
        endpoint = cloud.get(f"{service}_endpoint_url") or cloud.get("aws_endpoint_url")
        kwargs: dict[str, Any] = {"config": RETRIES, **({"endpoint_url": endpoint} if endpoint else {})}
        if sess is base:  # the process's own credentials: one client per process for each key
            key = (_environment_key(), cloud.get("region"), service, region, endpoint)
            with _SHARED_LOCK:
                if key not in _SHARED_CLIENTS:
                    _SHARED_CLIENTS[key] = sess.client(service, region_name=region, **kwargs)
                return _SHARED_CLIENTS[key]
        with lock:  # an assumed role: this case's session (its name is the case's), its own clients
            if (service, region) not in cache:
                cache[(service, region)] = sess.client(service, region_name=region, **kwargs)
            return cache[(service, region)]

    def _other_client(service: str, region: str | None, account_id: str | None,
                      credentials: dict[str, Any] | None) -> Any:
        """A client in another account than the case's (the hub's credentials there, or the role
        ``aws:`` gives that account), or signing with ``credentials`` (a root session's): not cached."""
        endpoint = cloud.get(f"{service}_endpoint_url") or cloud.get("aws_endpoint_url")
        kwargs: dict[str, Any] = {"config": RETRIES, **({"endpoint_url": endpoint} if endpoint else {})}
        region = None if service in ("iam", "sts") else region
        if credentials is not None:
            sess = boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                         aws_secret_access_key=credentials["SecretAccessKey"],
                                         aws_session_token=credentials.get("SessionToken"))
        else:
            with _SHARED_LOCK:
                sess, _ = _session_for(base, accounts, account_id, cloud, sts_endpoint)
        return sess.client(service, region_name=region or sess.region_name or "us-east-1", **kwargs)

    def own_access_key() -> str | None:
        creds = session().get_credentials()
        return creds.access_key if creds else None

    def own_identities() -> list[str]:
        session()
        return [chosen["role"].role_arn] if chosen["role"] else []

    def own_identity() -> str | None:
        return str(clients("sts").get_caller_identity()["Arn"])

    factory = AwsClients(clients, own_access_key=own_access_key, own_identity=own_identity,
                         own_identities=own_identities)
    return factory


_SHARED_LOCK = threading.Lock()
_SHARED_SESSIONS: dict[tuple[Any, ...], Any] = {}
_SHARED_CLIENTS: dict[tuple[Any, ...], Any] = {}


def _environment_key() -> tuple[tuple[str, str], ...]:
    """What of the environment decides the default credential chain and endpoints (``AWS_*``):
    a change (another profile, other keys) gets new sessions and clients."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def _base_session(region: str | None) -> Any:
    """The process's boto3 Session for the default credential chain in ``region``: made once
    (a Session takes ~170 ms to build; its refreshable credentials renew themselves), under a
    lock (Sessions are not thread-safe to build; the clients made from them are safe to share)."""
    key = (_environment_key(), region)
    with _SHARED_LOCK:
        if key not in _SHARED_SESSIONS:
            _SHARED_SESSIONS[key] = boto3.session.Session(region_name=region)
        return _SHARED_SESSIONS[key]


def _session_for(base: Any, accounts: Any, account: str | None, cloud: dict[str, Any],
                 sts_endpoint: str | None) -> tuple[Any, Any]:
    """(boto3 Session, MemberRole or None) for clients acting in ``account``."""
    from cordon.providers.aws.accounts import assumed_session, hub_account_of, session_name

    if accounts is None or not account:
        return base, None
    hub = accounts.hub_account
    if hub is None and account not in accounts.accounts and accounts.role_name:
        hub = hub_account_of(base, sts_endpoint)  # never assume the Organization role in the hub itself
    role = accounts.role_for(account, hub)
    if role is None:
        return base, None
    return assumed_session(base, role, session_name(cloud.get("case_id")), region=cloud.get("region"),
                           sts_endpoint_url=sts_endpoint, duration_seconds=accounts.duration_seconds), role
