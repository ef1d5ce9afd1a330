"""Security Hub findings (AWS Security Finding Format, ASFF) normalised to :class:`Detection`.

Field meanings follow the ASFF reference
(https://docs.aws.amazon.com/securityhub/latest/userguide/securityhub-findings-format.html,
``Severity``, ``Workflow``, ``RecordState``, ``Compliance``, ``Resources``; resource details per
https://docs.aws.amazon.com/securityhub/latest/userguide/asff-resourcedetails-awsiam.html). The
correspondence between standard-specific control IDs (CIS, PCI DSS) and Security Hub's
consolidated control IDs follows the "Related requirements" of each control in the Security Hub
controls reference (https://docs.aws.amazon.com/securityhub/latest/userguide/iam-controls.html).
"""

from __future__ import annotations

import re
from typing import Any

from cordon.detections.fields import RecordFields, detection_uid
from cordon.detections.model import Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.providers.aws.config_rules import CONTROLS, hygiene_credential
from cordon.providers.aws.guardduty import techniques_for_type

#: ATT&CK techniques by consolidated Security Hub control ID (Cordon's mapping of what each
#: control reports): an access key that should have been rotated (IAM.3) or should not exist at
#: all (IAM.4, root) is an additional cloud credential (T1098.001); credentials left unused for
#: 90 / 45 days (IAM.8 / IAM.22) are valid cloud accounts waiting to be abused (T1078.004).
TECHNIQUES_BY_CONTROL: dict[str, list[str]] = {
    "IAM.3": ["T1098.001"],
    "IAM.4": ["T1098.001"],
    "IAM.8": ["T1078.004"],
    "IAM.22": ["T1078.004"],
}

#: Standard-specific control -> consolidated control ID (Security Hub controls reference,
#: "Related requirements"). CIS numbering changed between benchmark versions.
CIS_CONTROLS: dict[str, dict[str, str]] = {
    "1.2.0": {"1.3": "IAM.8", "1.4": "IAM.3", "1.12": "IAM.4"},
    "1.4.0": {"1.4": "IAM.4", "1.12": "IAM.22", "1.14": "IAM.3"},
    "3.0.0": {"1.4": "IAM.4", "1.12": "IAM.22", "1.14": "IAM.3"},
}
PCI_CONTROLS: dict[str, str] = {"PCI.IAM.1": "IAM.4", "PCI.IAM.7": "IAM.8"}

_CIS_VERSION = re.compile(r"cis-aws-foundations-benchmark/v/(\d+\.\d+\.\d+)")
_SEVERITY_LABELS = {"INFORMATIONAL", "LOW", "MEDIUM", "HIGH", "CRITICAL"}
_SUPPRESSING_WORKFLOW = {"RESOLVED", "SUPPRESSED"}
_ACCESS_KEY_ID_PREFIX = "AWS::IAM::AccessKey:"


def consolidated_control(control_id: str, standard_hint: str) -> str:
    """The consolidated control ID (``IAM.3``) for ``control_id`` as a standard names it
    (``1.4`` under CIS v1.2.0, ``PCI.IAM.7``); ``standard_hint`` is any text naming the
    standard (``GeneratorId``, ``StandardsGuideArn``). Unknown controls come back unchanged."""
    if control_id in PCI_CONTROLS:
        return PCI_CONTROLS[control_id]
    m = _CIS_VERSION.search(standard_hint)
    if m and m.group(1) in CIS_CONTROLS:
        return CIS_CONTROLS[m.group(1)].get(control_id, control_id)
    return control_id


def severity_from_asff(label: str | None, normalized: float | None) -> str:
    """OCSF label from ``Severity.Label``, else from ``Severity.Normalized`` (ASFF: 0
    informational, 1-39 low, 40-69 medium, 70-89 high, 90-100 critical), else ``unknown``."""
    if label is not None:
        return label.lower()
    if normalized is None:
        return "unknown"
    if normalized == 0:
        return "informational"
    if normalized < 40:
        return "low"
    if normalized < 70:
        return "medium"
    if normalized < 90:
        return "high"
    return "critical"


def _guardduty_type(asff_type: str) -> str:
    """GuardDuty type from an ASFF ``Types`` entry (``TTPs/Persistence/Persistence:IAMUser-
    AnomalousBehavior``): the last path segment, with the first ``-`` after ``:`` turned back
    into the ``/`` GuardDuty writes (approximation: ASFF namespaces cannot hold ``/``)."""
    tail = asff_type.rsplit("/", 1)[-1]
    if ":" in tail:
        head, rest = tail.split(":", 1)
        if "/" not in rest and "-" in rest:
            rest = rest.replace("-", "/", 1)
        tail = f"{head}:{rest}"
    return tail


def detection_from_asff(finding: dict[str, Any], origin: str, position: int) -> Detection:
    """Normalise one ASFF finding (an item of ``Findings`` or of an EventBridge
    ``detail.findings``).

    ``finding_type`` is the control ID (``Compliance.SecurityControlId``,
    ``ProductFields.ControlId``, ``ProductFields.RuleId``, else the tail of ``GeneratorId``), or
    for a GuardDuty finding forwarded to Security Hub (``ProductArn`` ending ``/guardduty``) the
    GuardDuty type read back from ``Types[0]``. ``technique_ids`` from
    :data:`TECHNIQUES_BY_CONTROL` after :func:`consolidated_control` (GuardDuty types use the
    GuardDuty table). ``rule`` = ``RuleRef(type="securityhub", uid=control ID, name=Title)``.
    ``credential``: the first ``AwsIamAccessKey`` resource (uid ``AccessKeyId`` or the resource
    ``Id``; owner ``PrincipalName`` / ``PrincipalId`` / ``PrincipalType``); otherwise ``target``
    is the first ``AwsIamUser`` resource (``Id`` is its ARN; the name is
    ``Details.AwsIamUser.UserName`` or the ARN's last segment, kept as is even when it is a user
    ID such as ``AIDA...``); for IAM.3 / IAM.8 / IAM.22 (and their CIS / PCI twins) with no key
    resource, the account's ``aws_stale_credentials`` under the control's limit
    (:func:`cordon.providers.aws.config_rules.hygiene_credential`). ``suppressed`` when
    ``Workflow.Status`` is RESOLVED / SUPPRESSED, ``RecordState`` is ARCHIVED, ``Compliance.Status`` is
    PASSED, or a GuardDuty sample.
    ``time`` = ``UpdatedAt`` (else ``CreatedAt``).

    Raises :class:`RecordError` naming the dotted field for a missing ``Id`` / timestamps, an
    unknown ``Severity.Label`` or a field of the wrong type.
    """
    f = RecordFields(finding, origin, position)
    finding_id = f.get("Id", str, required=True)
    product_arn = f.get("ProductArn", str, required=True)
    account = f.get("AwsAccountId", str)
    region = f.get("Region", str)
    title = f.get("Title", str)
    generator = f.get("GeneratorId", str) or ""
    time = f.time("UpdatedAt", required=False) or f.time("CreatedAt")
    f.get("ProductFields", dict)
    types = f.get("Types", list) or []
    for i, t in enumerate(types):
        if not isinstance(t, str):
            raise f.error(f"Types.{i}", f"expected a string, got {type(t).__name__}")

    label = f.get("Severity.Label", str)
    if label is not None and label.upper() not in _SEVERITY_LABELS:
        raise f.error("Severity.Label", f"expected one of {sorted(_SEVERITY_LABELS)}, got {label!r}")
    severity = severity_from_asff(label, f.get("Severity.Normalized", float))

    product_fields = finding.get("ProductFields") or {}
    is_guardduty = product_arn.rstrip("/").endswith("/guardduty")
    control = None
    if is_guardduty and types:
        finding_type = _guardduty_type(types[0])
        techniques = techniques_for_type(finding_type)
    else:
        finding_type = (
            f.get("Compliance.SecurityControlId", str)
            or f.get("ProductFields.ControlId", str)
            or f.get("ProductFields.RuleId", str)
            or (generator.rstrip("/").rsplit("/", 1)[-1] if generator else None)
        )
        hint = " ".join(
            str(v)
            for v in (
                generator,
                product_fields.get("StandardsGuideArn"),
                product_fields.get("StandardsArn"),
                product_fields.get("StandardsControlArn"),
            )
            if v
        )
        control = consolidated_control(finding_type, hint) if finding_type else None
        techniques = list(TECHNIQUES_BY_CONTROL.get(control or "", []))

    resources = f.get("Resources", list) or []
    credential = None
    target = Principal()
    for i, res in enumerate(resources):
        prefix = f"Resources.{i}"
        if not isinstance(res, dict):
            raise f.error(prefix, f"expected an object, got {type(res).__name__}")
        rtype = f.get("Type", str, base=res, prefix=prefix)
        rid = f.get("Id", str, base=res, prefix=prefix)
        if rtype == "AwsIamAccessKey" and credential is None:
            det = f"Details.{rtype}"
            key_id = f.get(f"{det}.AccessKeyId", str, base=res, prefix=prefix)
            if not key_id and rid:
                key_id = rid.removeprefix(_ACCESS_KEY_ID_PREFIX)
            owner_type = f.get(f"{det}.PrincipalType", str, base=res, prefix=prefix)
            owner_name = f.get(f"{det}.PrincipalName", str, base=res, prefix=prefix) or f.get(
                f"{det}.UserName", str, base=res, prefix=prefix
            )
            owner_uid = None
            if owner_type == "IAMUser" and owner_name and account:
                owner_uid = f"arn:aws:iam::{account}:user/{owner_name}"  # path unknown: "/" assumed
            owner = Principal(
                uid=owner_uid,
                name=owner_name or f.get(f"{det}.PrincipalId", str, base=res, prefix=prefix),
                type=owner_type,
                account_uid=account,
            )
            attrs = {}
            for key in ("Status", "CreatedAt"):
                value = f.get(f"{det}.{key}", str, base=res, prefix=prefix)
                if value is not None:
                    attrs[key[0].lower() + key[1:]] = value
            credential = Credential(kind="aws_access_key", uid=key_id or None, owner=owner, attributes=attrs)
            target = owner
        elif rtype == "AwsIamUser" and target.uid is None and target.name is None:
            name = f.get("Details.AwsIamUser.UserName", str, base=res, prefix=prefix)
            if not name and rid and ":user/" in rid:
                name = rid.rsplit("/", 1)[-1]
            target = Principal(uid=rid, name=name, type="IAMUser", account_uid=account)

    hygiene = CONTROLS.get(control or "") if not is_guardduty else None
    if hygiene and credential is None and account:
        # IAM.3 / IAM.8 / IAM.22 name a user, not a key: the account's stale keys under that control's
        # limit, one case per account (cordon.providers.aws.config_rules)
        criterion, days = hygiene
        credential = hygiene_credential(account, criterion, days, source_rule=str(control), config_rule=None,
                                        users=[target.name] if target.name else [])
    suppressed = None
    workflow = f.get("Workflow.Status", str)
    if workflow and workflow.upper() in _SUPPRESSING_WORKFLOW:
        suppressed = f"Security Hub finding workflow status is {workflow}"
    elif (f.get("RecordState", str) or "").upper() == "ARCHIVED":
        suppressed = "archived Security Hub finding (RecordState ARCHIVED)"
    elif (f.get("Compliance.Status", str) or "").upper() == "PASSED":
        suppressed = "Security Hub control passed (Compliance.Status PASSED)"
    elif is_guardduty and any(
        k.endswith("additionalInfo/sample") and str(v).lower() == "true" for k, v in product_fields.items()
    ):
        suppressed = "GuardDuty sample finding (forwarded to Security Hub)"

    return Detection(
        uid=detection_uid(finding, f"securityhub:{finding_id}"),
        provider="aws",
        source="securityhub",
        finding_type=finding_type,
        technique_ids=techniques,
        rule=RuleRef(type="securityhub", uid=finding_type, name=title),
        severity=severity,
        time=time,
        account_uid=account,
        region=region,
        target=target,
        credential=credential,
        suppressed=suppressed,
        raw_ref=RawRef(origin=origin, position=position, sha256=record_sha256(finding)),
        raw=finding,
    )


__all__ = [
    "CIS_CONTROLS",
    "PCI_CONTROLS",
    "TECHNIQUES_BY_CONTROL",
    "consolidated_control",
    "detection_from_asff",
    "severity_from_asff",
]
