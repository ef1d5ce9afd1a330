"""The normalised ``Detection``: one shape for every source Cordon reads.

Field names follow the OCSF *Detection Finding* class (class_uid 2004) where OCSF has one:
``finding_info`` becomes :class:`RuleRef` + ``technique_ids``, ``actor.user`` / ``actor.session``
become :class:`Actor`, ``src_endpoint.ip`` is ``Actor.src_ip``, ``cloud.account.uid`` is
``account_uid``, ``cloud.region`` is ``region``, ``severity`` / ``severity_id`` as in OCSF 1.8.0.

Every parser in :mod:`cordon.detections` is a pure function from a raw record to a
``Detection`` (or a :class:`~cordon.detections.errors.RecordError` naming the field at fault).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def registered_provider(value: str) -> str:
    """``value`` if a provider of that name is registered (:mod:`cordon.providers`); ``ValueError``
    naming the registered ones otherwise (pydantic reports it as the field's error)."""
    from cordon.providers import provider_names

    if value not in provider_names():
        raise ValueError(f"unknown provider {value!r} (registered: {', '.join(provider_names())})")
    return value


#: A registered provider's name (``detection.provider``, a playbook's ``when.provider``).
Provider = Annotated[str, AfterValidator(registered_provider)]


def registered_source(value: str) -> str:
    """``value`` if it is ``manual`` or a registered provider's detection source
    (:attr:`cordon.providers.Provider.detection_sources`); ``ValueError`` otherwise."""
    from cordon.providers import detection_sources

    if value != "manual" and value not in detection_sources():
        raise ValueError(f"unknown detection source {value!r}")
    return value


#: Where a detection came from: a provider's log or finding source, or ``manual`` (run by hand).
Source = Annotated[str, AfterValidator(registered_source)]
AccessPath = Literal["console", "api", "service", "unknown"]

#: OCSF severity_id values (OCSF 1.8.0 ``severity_id`` enum).
SEVERITY_IDS: dict[str, int] = {
    "unknown": 0,
    "informational": 1,
    "low": 2,
    "medium": 3,
    "high": 4,
    "critical": 5,
}

def registered_credential_kind(value: str) -> str:
    """``value`` if a registered provider declares that credential kind
    (:attr:`cordon.providers.Provider.credential_kinds`); ``ValueError`` otherwise."""
    from cordon.providers import credential_kind_names

    if value not in credential_kind_names():
        raise ValueError(f"unknown credential kind {value!r}")
    return value


#: A credential kind some provider can name precisely (and, for most, contain), e.g. an access key.
CredentialKind = Annotated[str, AfterValidator(registered_credential_kind)]


class Principal(BaseModel):
    """A cloud identity (OCSF ``user`` object).

    ``uid`` is the provider's unique name: an IAM ARN, an Entra object ID or UPN, a GCP email.
    ``name`` is the short name (IAM ``userName``). ``type`` is the provider's own label
    (CloudTrail ``userIdentity.type``: ``IAMUser``, ``AssumedRole``, ``Root``, ``FederatedUser``,
    ``AWSService``, ...).
    """

    model_config = ConfigDict(extra="forbid")

    uid: str | None = None
    name: str | None = None
    type: str | None = None
    account_uid: str | None = None


class Location(BaseModel):
    """Where a source IP is, as the record itself says (OCSF ``location``: ``city``, ``region``,
    ``country`` as ISO 3166-1 alpha-2, ``isp``; ``desc`` the country's name). Filled from GuardDuty's
    ``remoteIpDetails`` and Security Command Center's ``access.callerIpGeo``; Cordon does no GeoIP
    lookup of its own."""

    model_config = ConfigDict(extra="forbid")

    city: str | None = None
    region: str | None = None
    country: str | None = None
    isp: str | None = None
    desc: str | None = None


class Actor(BaseModel):
    """Who performed the action (OCSF ``actor`` plus ``src_endpoint`` and ``http_request``).

    ``session_uid`` is the access key the call was signed with (CloudTrail
    ``userIdentity.accessKeyId``); ``session_issuer`` the role ARN behind an assumed-role session;
    ``mfa`` from ``sessionContext.attributes.mfaAuthenticated``; ``access_path`` is ``console``
    when the call came through the AWS Management Console, ``service`` when an AWS service made
    it on the principal's behalf (``userIdentity.invokedBy``), else ``api``.
    """

    model_config = ConfigDict(extra="forbid")

    user: Principal = Field(default_factory=Principal)
    session_uid: str | None = None
    session_issuer: str | None = None
    session_created: str | None = None
    mfa: bool | None = None
    src_ip: str | None = None
    src_location: Location | None = None
    user_agent: str | None = None
    invoked_by: str | None = None
    access_path: AccessPath = "unknown"


class Credential(BaseModel):
    """The exact credential a detection is about: containment acts on this and nothing else.

    ``uid`` is the identifier the provider's API takes (an ``AccessKeyId``, a key pair name, a
    ``ServiceSpecificCredentialId``, an Entra ``keyId``, a GCP key resource name). ``owner`` is
    the principal the credential belongs to. ``attributes`` holds kind-specific facts taken from
    the record (``status``, ``createDate``, ``region`` for key pairs, ``policy_arn`` for grants).
    """

    model_config = ConfigDict(extra="forbid")

    kind: CredentialKind
    uid: str | None = None
    owner: Principal = Field(default_factory=Principal)
    attributes: dict[str, Any] = Field(default_factory=dict)


def _rule_type(value: str) -> str:
    from cordon.providers import rule_types

    if value not in ("sigma", "manual") and value not in rule_types():
        raise ValueError(f"unknown rule type {value!r}")
    return value


class RuleRef(BaseModel):
    """What flagged the record (OCSF ``finding_info`` / ``analytic``).

    ``type`` is ``sigma`` (a shipped Sigma rule matched a raw log event), a provider's finding
    type (:attr:`cordon.providers.Provider.rule_types`), or ``manual`` (an on-call responder ran the playbook by
    hand: ``uid`` is the playbook name, see :mod:`cordon.manual`); ``uid`` the Sigma rule id,
    finding ID or control ID; ``name`` the rule title or finding type.
    """

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, AfterValidator(_rule_type)]
    uid: str | None = None
    name: str | None = None
    path: str | None = None


class RawRef(BaseModel):
    """Where the raw record came from: the input's name, the record's position in it
    (0-based index after unwrapping envelopes), and the SHA-256 of its canonical JSON."""

    model_config = ConfigDict(extra="forbid")

    origin: str
    position: int
    sha256: str


class Detection(BaseModel):
    """One normalised detection.

    Shape (OCSF Detection Finding names where they exist):
    ``provider``, ``source`` (which log or finding feed), ``event_name`` (CloudTrail
    ``eventName``) or ``finding_type`` (GuardDuty ``type``, Security Hub control ID),
    ``technique_ids`` (ATT&CK, e.g. ``["T1098.001"]``), ``rule``, ``severity`` (OCSF label, lower
    case), ``time`` (UTC), ``account_uid``, ``region``, ``actor``, ``target`` (the principal that
    received the credential), ``credential``, ``raw_ref`` and ``raw`` (the record as read).

    ``suppressed`` carries the reason a detection must never be contained even though it was
    recognised (a GuardDuty *sample* or archived finding, a Security Hub finding already
    resolved); suppressed detections are recorded in the ledger and answered with no playbook.
    """

    model_config = ConfigDict(extra="forbid")

    uid: str
    provider: Provider
    source: Source
    event_name: str | None = None
    finding_type: str | None = None
    technique_ids: list[str] = Field(default_factory=list)
    rule: RuleRef
    severity: Literal["unknown", "informational", "low", "medium", "high", "critical"] = "medium"
    time: datetime
    account_uid: str | None = None
    region: str | None = None
    actor: Actor = Field(default_factory=Actor)
    target: Principal = Field(default_factory=Principal)
    credential: Credential | None = None
    suppressed: str | None = None
    raw_ref: RawRef
    raw: dict[str, Any]

    @property
    def severity_id(self) -> int:
        """OCSF ``severity_id`` (0-5) for :attr:`severity`."""
        return SEVERITY_IDS[self.severity]

    def case_key(self) -> str:
        """The dedup key of the case this detection belongs to.

        ``provider|account|credential kind|credential uid`` when the credential is named, so a
        Sigma match, a GuardDuty finding and a Security Hub finding on the same access key are
        one case; otherwise ``provider|account|principal|<uid of the principal>``.
        """
        account = self.account_uid or "-"
        if self.credential is not None and self.credential.uid:
            kind = self.credential.kind
            # A key reported by a finding and by the CloudTrail event that created it is the same
            # access key; federation tokens are keyed on their own temporary key ID.
            return f"{self.provider}|{account}|{kind}|{self.credential.uid}"
        who = self.target.uid or self.target.name or self.actor.user.uid or "-"
        return f"{self.provider}|{account}|principal|{who}"

    def summary(self) -> dict[str, Any]:
        """The compact view printed by ``cordon respond --output json`` under ``detection``."""
        return {
            "uid": self.uid,
            "provider": self.provider,
            "source": self.source,
            "event_name": self.event_name,
            "finding_type": self.finding_type,
            "technique_ids": self.technique_ids,
            "rule": self.rule.model_dump(exclude_none=True),
            "severity": self.severity,
            "time": self.time.isoformat(),
            "account_uid": self.account_uid,
            "region": self.region,
            "actor": self.actor.model_dump(exclude_none=True),
            "target": self.target.model_dump(exclude_none=True),
            "credential": self.credential.model_dump(exclude_none=True) if self.credential else None,
            "suppressed": self.suppressed,
        }


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every Cordon hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def record_sha256(record: Any) -> str:
    """SHA-256 hex digest (64 lower-case hex characters) of :func:`canonical_json` of ``record``,
    encoded as UTF-8.

    A string holding a lone UTF-16 surrogate (JSON ``"\\ud800"`` decodes to one; it is not a Unicode
    character, RFC 8259 section 8.2) is encoded with Python's ``surrogatepass`` handler (the
    surrogate's three-byte WTF-8 form), so hashing never raises; text without surrogates hashes
    exactly as plain UTF-8. Intake dead-letters such records before they reach a parser
    (:data:`cordon.detections.intake.MAX_DEPTH` and its siblings); this is the guard for any other
    caller.
    """
    return hashlib.sha256(canonical_json(record).encode("utf-8", "surrogatepass")).hexdigest()
