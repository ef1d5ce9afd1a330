"""GuardDuty findings normalised to :class:`Detection`.

Field meanings follow the GuardDuty finding format
(https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_finding-format.html) and the severity
levels of https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_findings-severity.html
(1.0-3.9 low, 4.0-6.9 medium, 7.0-8.9 high, 9.0-10.0 critical).
"""

from __future__ import annotations

from typing import Any

from cordon.detections.fields import RecordFields, detection_uid
from cordon.detections.model import (
    Actor,
    Credential,
    Detection,
    Location,
    Principal,
    RawRef,
    RuleRef,
    record_sha256,
)

#: ATT&CK technique per GuardDuty finding type, exact type first, then the longest matching
#: prefix. Source: the descriptions of each type in the GuardDuty finding type reference
#: (https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_finding-types-iam.html and
#: .../guardduty-attack-sequence-finding-types.html); GuardDuty publishes no per-type technique
#: IDs except inside attack-sequence descriptions, so these IDs are Cordon's reading of those
#: descriptions against MITRE ATT&CK Enterprise (cloud matrix).
TECHNIQUES_BY_TYPE: dict[str, list[str]] = {
    # Exact types
    "Persistence:IAMUser/AnomalousBehavior": ["T1098"],
    "CredentialAccess:IAMUser/AnomalousBehavior": ["T1552"],
    "PrivilegeEscalation:IAMUser/AnomalousBehavior": ["T1098.003"],
    "PrivilegeEscalation:IAMUser/AdministrativePermissions": ["T1098.003"],
    "DefenseEvasion:IAMUser/AnomalousBehavior": ["T1562"],
    "Discovery:IAMUser/AnomalousBehavior": ["T1087.004"],
    "InitialAccess:IAMUser/AnomalousBehavior": ["T1078.004"],
    "Exfiltration:IAMUser/AnomalousBehavior": ["T1537"],
    "Impact:IAMUser/AnomalousBehavior": ["T1485"],
    "Policy:IAMUser/RootCredentialUsage": ["T1078.004"],
    "UnauthorizedAccess:IAMUser/ConsoleLoginSuccess.B": ["T1078.004"],
    "AttackSequence:IAM/CompromisedCredentials": ["T1078.004"],
    "AttackSequence:S3/CompromisedData": ["T1530"],
    "Stealth:IAMUser/CloudTrailLoggingDisabled": ["T1562.008"],
    # Prefix families (the key ends with "*")
    "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration*": ["T1552.005"],
    "UnauthorizedAccess:IAMUser/TorIPCaller*": ["T1078.004"],
    "UnauthorizedAccess:IAMUser/MaliciousIPCaller*": ["T1078.004"],
    "PenTest:IAMUser/*": ["T1078.004"],
    "Stealth:IAMUser/*": ["T1562"],
    "Recon:IAMUser/*": ["T1087.004"],
}


def _location(f, base: str) -> Location | None:
    """``remoteIpDetails`` (GuardDuty finding format: ``city.cityName``, ``country.countryCode`` /
    ``countryName``, ``organization.asnOrg`` / ``isp``) as a :class:`Location`; ``None`` when the
    finding gives none."""
    loc = Location(city=f.get(f"{base}.city.cityName", str), country=f.get(f"{base}.country.countryCode", str),
                   desc=f.get(f"{base}.country.countryName", str),
                   isp=f.get(f"{base}.organization.asnOrg", str) or f.get(f"{base}.organization.isp", str))
    return loc if loc.model_dump(exclude_none=True) else None


def techniques_for_type(finding_type: str) -> list[str]:
    """ATT&CK technique IDs for a GuardDuty finding type (see :data:`TECHNIQUES_BY_TYPE`);
    ``[]`` when the type is not mapped."""
    if finding_type in TECHNIQUES_BY_TYPE:
        return list(TECHNIQUES_BY_TYPE[finding_type])
    best: str | None = None
    for key in TECHNIQUES_BY_TYPE:
        if key.endswith("*") and finding_type.startswith(key[:-1]) and (best is None or len(key) > len(best)):
            best = key
    return list(TECHNIQUES_BY_TYPE[best]) if best else []


def severity_from_score(score: float) -> str:
    """GuardDuty's numeric severity as an OCSF label: <4 low, <7 medium, <9 high, else critical."""
    if score < 4.0:
        return "low"
    if score < 7.0:
        return "medium"
    if score < 9.0:
        return "high"
    return "critical"


def _principal(
    user_type: str | None, user_name: str | None, principal_id: str | None, account: str | None
) -> Principal:
    uid = None
    if account and user_type == "Root":
        uid = f"arn:aws:iam::{account}:root"
        user_name = user_name or "root"
    elif account and user_type == "IAMUser" and user_name:
        # GuardDuty gives no IAM path; "/" is assumed.
        uid = f"arn:aws:iam::{account}:user/{user_name}"
    return Principal(uid=uid, name=user_name or principal_id, type=user_type, account_uid=account)


def detection_from_guardduty(finding: dict[str, Any], origin: str, position: int) -> Detection:
    """Normalise one GuardDuty finding (the ``detail`` of a "GuardDuty Finding" EventBridge event,
    or a finding as ``GetFindings`` returns it in camelCase).

    ``finding_type`` = ``type``; ``severity`` from the numeric ``severity``; ``technique_ids``
    from :func:`techniques_for_type`; ``rule`` = ``RuleRef(type="guardduty", uid=id, name=type)``;
    ``time`` = ``updatedAt`` (else ``createdAt``); ``credential`` the access key in
    ``resource.accessKeyDetails`` (owner: its ``userName`` / ``principalId`` / ``userType``), and
    ``actor`` that same principal plus ``service.action.awsApiCallAction`` (``remoteIpDetails``
    address, user agent, ``domainDetails.domain`` as ``invoked_by`` when an AWS service called).
    A finding without ``resource`` (Panther test findings, attack sequences) has no credential.
    ``suppressed`` is set for sample findings (``service.additionalInfo.sample`` true, as a
    boolean or ``"true"``) and archived ones (``service.archived``).

    Raises :class:`RecordError` naming the dotted field for a missing ``id`` / ``type`` /
    ``severity`` / timestamps or a field of the wrong type.
    """
    f = RecordFields(finding, origin, position)
    finding_id = f.get("id", str, required=True)
    finding_type = f.get("type", str, required=True)
    score = f.get("severity", float, required=True)
    if not 1.0 <= score <= 10.0:
        raise f.error("severity", f"expected a number from 1.0 to 10.0, got {score}")
    time = f.time("updatedAt", required=False) or f.time("createdAt")
    account = f.get("accountId", str)
    region = f.get("region", str)
    f.get("service", dict, required=True)
    f.get("resource", dict)

    key = "resource.accessKeyDetails"
    key_id = f.get(f"{key}.accessKeyId", str)
    owner = _principal(
        f.get(f"{key}.userType", str),
        f.get(f"{key}.userName", str),
        f.get(f"{key}.principalId", str),
        account,
    )
    has_owner = any(v is not None for v in (owner.name, owner.type, owner.uid))
    credential = None
    if key_id:
        credential = Credential(kind="aws_access_key", uid=key_id, owner=owner, attributes={})

    call = "service.action.awsApiCallAction"
    f.get(call, dict)
    domain = f.get(f"{call}.domainDetails.domain", str)
    caller_type = f.get(f"{call}.callerType", str)
    user_agent = f.get(f"{call}.userAgent", (dict, str))
    if isinstance(user_agent, dict):  # newer findings: {"fullUserAgent": ..., "userAgent": ...}
        user_agent = f.get(f"{call}.userAgent.fullUserAgent", str) or f.get(
            f"{call}.userAgent.userAgent", str
        )
    invoked_by = domain if caller_type == "Domain" or domain else None
    if invoked_by:
        access_path = "service"
    elif caller_type:
        access_path = "api"
    else:
        access_path = "unknown"
    actor = Actor(
        user=owner if has_owner else Principal(),
        session_uid=key_id,
        src_ip=f.get(f"{call}.remoteIpDetails.ipAddressV4", str),
        src_location=_location(f, f"{call}.remoteIpDetails"),
        user_agent=user_agent,
        invoked_by=invoked_by,
        access_path=access_path,
    )

    suppressed = None
    if f.flag("service.additionalInfo.sample"):
        suppressed = "GuardDuty sample finding (service.additionalInfo.sample)"
    elif f.flag("service.archived"):
        suppressed = "archived GuardDuty finding"

    return Detection(
        uid=detection_uid(finding, f"guardduty:{finding_id}"),
        provider="aws",
        source="guardduty",
        event_name=f.get(f"{call}.api", str),
        finding_type=finding_type,
        technique_ids=techniques_for_type(finding_type),
        rule=RuleRef(type="guardduty", uid=finding_id, name=finding_type),
        severity=severity_from_score(float(score)),
        time=time,
        account_uid=account,
        region=region,
        actor=actor,
        target=owner if has_owner else Principal(),
        credential=credential,
        suppressed=suppressed,
        raw_ref=RawRef(origin=origin, position=position, sha256=record_sha256(finding)),
        raw=finding,
    )


__all__ = ["TECHNIQUES_BY_TYPE", "detection_from_guardduty", "severity_from_score", "techniques_for_type"]
