"""Several AWS accounts: which IAM role Cordon assumes in a detection's account, and the
assumed-role sessions (``sts:AssumeRole``) its clients sign with.

Cordon runs as one principal in a *hub* account (the default credential chain: an instance or
task role, SSO, environment keys). For a detection in another account of the Organization it
assumes a *member role* there (https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html):

* ``RoleArn``: the account's own ``role_arn`` from ``aws.accounts``, else the Organization-wide
  ``arn:<partition>:iam::<account>:role/<role_name>``; no role for the hub account itself (its
  clients use the hub credentials);
* ``RoleSessionName``: ``cordon-<case id>`` (:func:`session_name`), so the member account's
  CloudTrail names the case behind every call (``userIdentity.arn`` =
  ``arn:aws:sts::<account>:assumed-role/<role>/cordon-<case id>``);
* ``ExternalId``: read from the environment variable the configuration names (default
  ``CORDON_AWS_EXTERNAL_ID``), never from the file, a Prefect parameter or the ledger; the member
  role's trust policy requires it (``sts:ExternalId`` condition, see ``docs/deploy.md``).

Sessions are :class:`botocore.credentials.DeferredRefreshableCredentials`: the first call
assumes the role, and botocore assumes it again before the credentials expire (advisory refresh
15 minutes, mandatory 10 minutes before ``Expiration``), so a run that waits hours for approval
still signs with valid credentials. They are cached per process by (source credentials, role,
session name, external ID, STS endpoint, region), behind a lock, so the tasks of one case share
one session (one ``AssumeRole`` per case and hour, not per task).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import CredentialProvider, CredentialResolver, DeferredRefreshableCredentials

from cordon.config import Config, ConfigError

#: Environment variable holding the external ID when the configuration names none.
DEFAULT_EXTERNAL_ID_ENV = "CORDON_AWS_EXTERNAL_ID"
#: Session duration asked of STS (seconds; the role's ``MaxSessionDuration`` caps it, 900-43200).
DEFAULT_DURATION = 3600
#: ``RoleSessionName`` when the case is not known (a manual rollback from the CLI, say).
FALLBACK_SESSION_NAME = "cordon-responder"

_ACCOUNT = re.compile(r"\d{12}")
_PATH_NAME = r"(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}"
_ROLE_ARN = re.compile(rf"arn:(aws|aws-cn|aws-us-gov|aws-iso[a-z-]*):iam::(\d{{12}}):role/{_PATH_NAME}")
_ROLE_NAME = re.compile(_PATH_NAME)
_RETRIES = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)


class AwsAccountsError(ConfigError):
    """The ``aws:`` configuration cannot be used, or a role cannot be assumed as configured
    (e.g. its external ID variable is unset). The message names the field or variable."""


@dataclass(frozen=True)
class MemberRole:
    """The role Cordon assumes in ``account_id``: ``role_arn`` and the name of the environment
    variable holding its external ID (``None``: AssumeRole without ``ExternalId``)."""

    account_id: str
    role_arn: str
    external_id_env: str | None

    def external_id(self) -> str | None:
        """The external ID from the environment. Raises :class:`AwsAccountsError` naming the
        variable when it is configured but unset or empty (the trust policy would refuse us)."""
        if not self.external_id_env:
            return None
        value = os.environ.get(self.external_id_env)
        if not value:
            raise AwsAccountsError(f"{self.external_id_env} is not set: it holds the external ID for "
                                   f"assuming {self.role_arn} (aws.external_id_env)")
        return value


@dataclass(frozen=True)
class AwsAccounts:
    """The parsed ``aws:`` section (see :func:`aws_accounts_from_raw` for the YAML shape).

    ``accounts`` maps a 12-digit account ID to its :class:`MemberRole` where the file gives one
    (``role_arn`` or its own ``external_id_env``); other accounts get ``role_name`` when set.
    """

    hub_account: str | None = None
    hub_principal: str | None = None
    role_name: str | None = None
    external_id_env: str | None = DEFAULT_EXTERNAL_ID_ENV
    duration_seconds: int = DEFAULT_DURATION
    partition: str = "aws"
    accounts: dict[str, MemberRole] = field(default_factory=dict)
    #: Further accounts of the Organization (no role of Cordon's there): trusted, not "outside".
    organization_accounts: tuple[str, ...] = ()
    #: Centralized root access: the Organization's management account (or the delegated
    #: administrator for root access) from which ``sts:AssumeRoot`` is called; ``None``: not set up.
    root_access_account: str | None = None

    def known_accounts(self) -> set[str]:
        """The accounts of the Organization Cordon knows: the hub, every ``aws.accounts`` entry,
        ``aws.organization_accounts`` and the root-access account."""
        return ({a for a in (self.hub_account, self.root_access_account) if a} | set(self.accounts)
                | set(self.organization_accounts))

    def role_for(self, account_id: str | None, hub_account: str | None = None) -> MemberRole | None:
        """The role to assume for clients acting in ``account_id``; ``None`` for the hub account
        (``hub_account`` or :attr:`hub_account`), an unknown account, or an account with neither
        its own entry nor an Organization-wide ``role_name`` (the hub credentials are then used, and
        the guard refuses containment when they act in another account than the detection's)."""
        if not account_id or account_id in (self.hub_account, hub_account):
            return None
        if account_id in self.accounts:
            return self.accounts[account_id]
        if self.role_name:
            return MemberRole(account_id, f"arn:{self.partition}:iam::{account_id}:role/{self.role_name}",
                              self.external_id_env)
        return None

    def assumable_role_arns(self) -> list[str]:
        """The ``Resource`` of the hub's ``sts:AssumeRole`` grant: every configured ``role_arn``
        and, with ``role_name``, ``arn:<partition>:iam::*:role/<role_name>``. Sorted."""
        arns = {r.role_arn for r in self.accounts.values()}
        if self.role_name:
            arns.add(f"arn:{self.partition}:iam::*:role/{self.role_name}")
        return sorted(arns)


def _account(value: Any, where: str) -> str:
    text = str(value).zfill(12) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _ACCOUNT.fullmatch(text):
        raise AwsAccountsError(f"field '{where}': expected a 12-digit AWS account ID (quote it), got {value!r}")
    return text


def _env_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise AwsAccountsError(f"field '{where}': expected the name of an environment variable, got {value!r}")
    return value


def aws_accounts_from_raw(raw: Mapping[str, Any] | None) -> AwsAccounts | None:
    """Parse the ``aws:`` section of ``cordon.yaml`` (``Config.raw``); ``None`` when it is absent
    (one account: the default credential chain, no role assumed, today's behaviour).

    Shape (every key optional)::

        aws:
          hub_account: "111122223333"      # where Cordon's own principal is; no role assumed there
                                           # (default: the account sts:GetCallerIdentity reports)
          hub_principal: "arn:aws:iam::111122223333:role/cordon-hub"   # trusted by member roles
          role_name: CordonResponder       # Organization-wide: this role in every other account
          external_id_env: CORDON_AWS_EXTERNAL_ID   # env var holding the ExternalId; null: none
          duration_seconds: 3600           # 900..43200
          partition: aws                   # aws, aws-cn, aws-us-gov
          accounts:                        # per-account overrides (12-digit IDs, quoted)
            "444455556666": {role_arn: "arn:aws:iam::444455556666:role/ir/Responder",
                             external_id_env: CORDON_AWS_EXTERNAL_ID_444455556666}
            "777788889999": {}             # role_name, with the section's external_id_env
          organization_accounts: ["222233334444"]   # more accounts of the Organization (trusted)
          root_access:                     # centralized root access is enabled in the Organization
            management_account: "111122223333"  # where sts:AssumeRoot is called (management or
                                                # delegated administrator account)

    A ``role_arn`` must name a role in its own account. Raises :class:`AwsAccountsError` naming
    the field (``aws.accounts.<id>.role_arn``, ...) for any other shape.
    """
    if raw is None:
        return None
    section = raw.get("aws") if "aws" in raw else None
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise AwsAccountsError("field 'aws': expected a mapping")
    known = {"hub_account", "hub_principal", "role_name", "external_id_env", "duration_seconds", "partition",
             "accounts", "organization_accounts", "root_access"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise AwsAccountsError(f"field 'aws.{unknown[0]}': unknown key (expected one of {', '.join(sorted(known))})")
    partition = section.get("partition", "aws")
    if partition not in ("aws", "aws-cn", "aws-us-gov") and not str(partition).startswith("aws-iso"):
        raise AwsAccountsError(f"field 'aws.partition': unknown partition {partition!r}")
    hub = _account(section["hub_account"], "aws.hub_account") if section.get("hub_account") is not None else None
    principal = section.get("hub_principal")
    principal_arn = rf"arn:{re.escape(partition)}:iam::\d{{12}}:(role|user)/{_PATH_NAME}"
    if principal is not None and (not isinstance(principal, str) or not re.fullmatch(principal_arn, principal)):
        raise AwsAccountsError(f"field 'aws.hub_principal': expected an IAM role or user ARN, got {principal!r}")
    role_name = section.get("role_name")
    if role_name is not None and (not isinstance(role_name, str) or not _ROLE_NAME.fullmatch(role_name)):
        raise AwsAccountsError(f"field 'aws.role_name': expected an IAM role name (optionally path/name), "
                               f"got {role_name!r}")
    ext_env = (_env_name(section["external_id_env"], "aws.external_id_env") if "external_id_env" in section
               else DEFAULT_EXTERNAL_ID_ENV)
    duration = section.get("duration_seconds", DEFAULT_DURATION)
    if not isinstance(duration, int) or isinstance(duration, bool) or not 900 <= duration <= 43200:
        raise AwsAccountsError(f"field 'aws.duration_seconds': expected seconds between 900 and 43200, "
                               f"got {duration!r}")
    entries = section.get("accounts") or {}
    if not isinstance(entries, Mapping):
        raise AwsAccountsError("field 'aws.accounts': expected a mapping of account ID to {role_arn, external_id_env}")
    accounts: dict[str, MemberRole] = {}
    for key, entry in entries.items():
        acct = _account(key, f"aws.accounts.{key}")
        where = f"aws.accounts.{acct}"
        entry = entry or {}
        if not isinstance(entry, Mapping) or set(entry) - {"role_arn", "external_id_env"}:
            raise AwsAccountsError(f"field '{where}': expected a mapping with role_arn and/or external_id_env")
        arn = entry.get("role_arn")
        if arn is None:
            if not role_name:
                raise AwsAccountsError(f"field '{where}.role_arn': required when aws.role_name is not set")
            arn = f"arn:{partition}:iam::{acct}:role/{role_name}"
        m = _ROLE_ARN.fullmatch(arn) if isinstance(arn, str) else None
        if not m:
            raise AwsAccountsError(f"field '{where}.role_arn': expected arn:{partition}:iam::{acct}:role/NAME, "
                                   f"got {arn!r}")
        if m.group(2) != acct:
            raise AwsAccountsError(f"field '{where}.role_arn': names account {m.group(2)}, not {acct}")
        env = _env_name(entry["external_id_env"], f"{where}.external_id_env") if "external_id_env" in entry else ext_env
        accounts[acct] = MemberRole(acct, arn, env)
    org = section.get("organization_accounts") or []
    if not isinstance(org, list):
        raise AwsAccountsError("field 'aws.organization_accounts': expected a list of 12-digit account IDs")
    organization = tuple(_account(a, f"aws.organization_accounts.{i}") for i, a in enumerate(org))
    root = section.get("root_access")
    root_account = None
    if root is not None:
        if not isinstance(root, Mapping) or set(root) != {"management_account"}:
            raise AwsAccountsError("field 'aws.root_access': expected a mapping with management_account "
                                   "(the account sts:AssumeRoot is called from)")
        root_account = _account(root["management_account"], "aws.root_access.management_account")
    return AwsAccounts(hub_account=hub, hub_principal=principal, role_name=role_name, external_id_env=ext_env,
                       duration_seconds=duration, partition=partition, accounts=accounts,
                       organization_accounts=organization, root_access_account=root_account)


def aws_accounts(config: Config) -> AwsAccounts | None:
    """:func:`aws_accounts_from_raw` over ``config.raw``; errors name ``cordon.yaml``'s path too.
    (One function on purpose: the section moves into the configuration schema as it stands.)"""
    try:
        return aws_accounts_from_raw(config.raw)
    except AwsAccountsError as exc:
        raise AwsAccountsError(f"{config.directory / 'cordon.yaml'}: {exc}") from None


_HUB: dict[tuple[str, str], str] = {}
_HUB_LOCK = threading.Lock()


def hub_account_of(source: boto3.Session, sts_endpoint_url: str | None = None) -> str:
    """The account ``source``'s credentials belong to (``sts:GetCallerIdentity`` ``Account``),
    cached per process by access key ID and endpoint. Raises botocore's errors when STS cannot
    be reached or the credentials are invalid."""
    creds = source.get_credentials()
    key = (creds.access_key if creds is not None else "", sts_endpoint_url or "")
    with _HUB_LOCK:
        if key not in _HUB:
            sts = source.client("sts", region_name=source.region_name or "us-east-1",
                                endpoint_url=sts_endpoint_url, config=_RETRIES)
            _HUB[key] = sts.get_caller_identity()["Account"]
        return _HUB[key]


def session_name(case_id: str | None) -> str:
    """``cordon-<case id>`` as an STS ``RoleSessionName`` (2-64 characters of ``[\\w+=,.@-]``;
    others become ``-``), or :data:`FALLBACK_SESSION_NAME` without a case."""
    if not case_id:
        return FALLBACK_SESSION_NAME
    return re.sub(r"[^\w+=,.@-]", "-", f"cordon-{case_id}")[:64]


class _Fixed(CredentialProvider):
    """A botocore credential provider that hands out one (refreshable) credentials object."""

    METHOD = CANONICAL_NAME = "cordon-assume-role"

    def __init__(self, credentials: Any):
        super().__init__()
        self._credentials = credentials

    def load(self) -> Any:
        return self._credentials


_SESSIONS: OrderedDict[tuple[str, ...], boto3.Session] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()
_MAX_SESSIONS = 256


def assumed_session(source: boto3.Session, role: MemberRole, name: str, *, region: str | None = None,
                    sts_endpoint_url: str | None = None, duration_seconds: int = DEFAULT_DURATION,
                    clock: Callable[[], datetime] | None = None) -> boto3.Session:
    """A boto3 Session signing as ``role`` (assumed from ``source``'s credentials) with session
    name ``name``, cached per process (see the module doc; not when ``clock`` is given); thread-safe.

    No call is made until a client first needs credentials. ``clock`` (a tz-aware ``now``) is
    botocore's ``time_fetcher`` for refresh decisions (tests move it past the expiry). Raises
    :class:`AwsAccountsError` when the external ID variable is configured but unset; STS errors
    (``AccessDenied`` from a trust policy) surface as ``botocore.exceptions.ClientError`` from the
    first call that needs credentials.
    """
    external_id = role.external_id()
    creds = source.get_credentials()
    source_key = creds.access_key if creds is not None else ""
    key = (source_key, role.role_arn, name, hashlib.sha256((external_id or "").encode()).hexdigest(),
           sts_endpoint_url or "", region or "", str(duration_seconds))
    with _SESSIONS_LOCK:
        cached = _SESSIONS.get(key) if clock is None else None
        if cached is not None:
            _SESSIONS.move_to_end(key)
            return cached
        sts = source.client("sts", region_name=region or source.region_name or "us-east-1",
                            endpoint_url=sts_endpoint_url, config=_RETRIES)
        args: dict[str, Any] = {"RoleArn": role.role_arn, "RoleSessionName": name, "DurationSeconds": duration_seconds}
        if external_id:
            args["ExternalId"] = external_id

        def fetch() -> dict[str, Any]:
            answer = sts.assume_role(**args)["Credentials"]
            return {"access_key": answer["AccessKeyId"], "secret_key": answer["SecretAccessKey"],
                    "token": answer["SessionToken"], "expiry_time": answer["Expiration"].isoformat()}

        kwargs: dict[str, Any] = {"refresh_using": fetch, "method": "assume-role"}
        if clock is not None:
            kwargs["time_fetcher"] = clock
        refreshable = DeferredRefreshableCredentials(**kwargs)
        core = botocore.session.Session()
        core.register_component("credential_provider", CredentialResolver([_Fixed(refreshable)]))
        session = boto3.Session(botocore_session=core, region_name=region or source.region_name)
        if clock is not None:
            return session  # a test's clock: not shared
        _SESSIONS[key] = session
        while len(_SESSIONS) > _MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
        return session


def forget_sessions() -> None:
    """Drop every cached assumed-role session and learned hub account (the next client assumes
    its role again)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()
    with _HUB_LOCK:
        _HUB.clear()
