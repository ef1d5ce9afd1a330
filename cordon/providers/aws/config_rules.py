"""AWS Config credential rules, and Security Hub's IAM.3 / IAM.8 / IAM.22, as credential hygiene.

Config evaluates IAM users against managed rules and, when a user turns ``NON_COMPLIANT``, EventBridge
carries a "Config Rules Compliance Change" event (``source: aws.config``; ``detail``: ``awsAccountId``,
``awsRegion``, ``configRuleName``, ``resourceType`` ``AWS::IAM::User``, ``resourceId`` the user's
``UserId`` (``AIDA...``), ``newEvaluationResult.complianceType``, ``resultRecordedTime``,
``annotation``; https://docs.aws.amazon.com/config/latest/developerguide/monitor-config-with-cloudwatchevents.html).
A sweep reads the same from ``GetComplianceDetailsByConfigRule`` (``EvaluationResults[]``, PascalCase,
no account: the sensor adds ``awsAccountId`` / ``awsRegion``). Both become one
:class:`~cordon.detections.model.Detection` (:func:`detection_from_config`).

Config names the *user*, never the key. So the credential is the account's hygiene under one
criterion (:data:`CRITERIA`): ``aws_stale_credentials``, uid ``<account>:<criterion>`` (``rotation``:
access keys older than ``maxAccessKeyAge`` days, rule ``access-keys-rotated`` / IAM.3; ``unused``:
active keys not used for ``maxCredentialUsageAge`` days, rule ``iam-user-unused-credentials-check`` /
IAM.8 / IAM.22). Every user of an account under one criterion joins one case (one approval, not a
page per key); :class:`cordon.providers.aws.actions.DeactivateStaleKeys` resolves the exact keys from
IAM with the rule's own parameters when it plans.

Which rule is which: :data:`RULES` by the managed rule's identifier (``Source.SourceIdentifier``)
and :func:`criterion_for_rule` by the rule's name, as Config and Security Hub name them
(``access-keys-rotated``, ``securityhub-access-keys-rotated-<suffix>``, ...). A rule about the root
user's key (``iam-root-access-key-check``) names no key Cordon may touch: the detection keeps the
rule and no credential (triage). Any other rule, or an evaluation that is not ``NON_COMPLIANT``, is
suppressed with the rule's name and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cordon.detections.fields import RecordFields, detection_uid
from cordon.detections.model import Credential, Detection, Principal, RawRef, RuleRef, record_sha256


@dataclass(frozen=True)
class Criterion:
    """What makes a key stale: ``name`` (``rotation`` | ``unused``), the Config rule parameter
    holding the limit (``parameter``) and its default in days (``default_days``), the ATT&CK
    technique a stale key serves."""

    name: str
    parameter: str
    default_days: int
    technique: str


#: Config's managed-rule identifier -> criterion (https://docs.aws.amazon.com/config/latest/developerguide/
#: access-keys-rotated.html, .../iam-user-unused-credentials-check.html).
RULES: dict[str, Criterion] = {
    "ACCESS_KEYS_ROTATED": Criterion("rotation", "maxAccessKeyAge", 90, "T1098.001"),
    "IAM_USER_UNUSED_CREDENTIALS_CHECK": Criterion("unused", "maxCredentialUsageAge", 90, "T1078.004"),
}
CRITERIA: dict[str, Criterion] = {c.name: c for c in RULES.values()}

#: A managed rule's name as Config and Security Hub write it (default name, or Security Hub's
#: ``securityhub-<name>-<suffix>``) -> its identifier.
RULE_NAMES: dict[str, str] = {"access-keys-rotated": "ACCESS_KEYS_ROTATED",
                              "iam-user-unused-credentials-check": "IAM_USER_UNUSED_CREDENTIALS_CHECK"}
#: Rules about the root user's key: triage, never containment (root is a protected principal).
ROOT_RULES = ("iam-root-access-key-check",)

#: Security Hub controls -> (criterion, days) (https://docs.aws.amazon.com/securityhub/latest/userguide/
#: iam-controls.html: IAM.3 keys rotated every 90 days; IAM.8 unused credentials 90 days; IAM.22 45 days).
CONTROLS: dict[str, tuple[str, int]] = {"IAM.3": ("rotation", 90), "IAM.8": ("unused", 90), "IAM.22": ("unused", 45)}


def criterion_for_rule(name: str) -> Criterion | None:
    """The criterion of Config rule ``name`` (its default name, or with Security Hub's prefix and
    suffix), or ``None`` for a rule that is not about stale credentials."""
    low = name.lower()
    for rule_name, identifier in RULE_NAMES.items():
        if low == rule_name or low.startswith((f"securityhub-{rule_name}", f"{rule_name}-")):
            return RULES[identifier]
    return None


def hygiene_credential(account: str, criterion: str, days: int, *, source_rule: str, config_rule: str | None,
                       users: list[str] | None = None, user_ids: list[str] | None = None) -> Credential:
    """The ``aws_stale_credentials`` credential of ``account`` under ``criterion`` (module docstring):
    attributes ``criterion``, ``max_age_days`` (the limit the detection implies; the action reads the
    Config rule's own parameter when ``config_rule`` is named), ``source_rule`` (the Config rule or
    Security Hub control), ``config_rule``, and the users the detection named (``users`` by name,
    ``user_ids`` by ``UserId``). No owner: the account's users are resolved when the plan is made."""
    return Credential(kind="aws_stale_credentials", uid=f"{account}:{criterion}",
                      attributes={"criterion": criterion, "max_age_days": days, "source_rule": source_rule,
                                  "config_rule": config_rule, "users": list(users or []),
                                  "user_ids": list(user_ids or [])})


def _camel(record: dict[str, Any]) -> dict[str, Any]:
    """The sweep's PascalCase ``EvaluationResult`` as the event's camelCase ``detail``."""
    if "configRuleName" in record or "EvaluationResultIdentifier" not in record:
        return record
    qual = (record.get("EvaluationResultIdentifier") or {}).get("EvaluationResultQualifier") or {}
    return {"awsAccountId": record.get("awsAccountId"), "awsRegion": record.get("awsRegion"),
            "configRuleName": qual.get("ConfigRuleName"), "resourceType": qual.get("ResourceType"),
            "resourceId": qual.get("ResourceId"),
            "newEvaluationResult": {"complianceType": record.get("ComplianceType"),
                                    "resultRecordedTime": record.get("ResultRecordedTime"),
                                    "annotation": record.get("Annotation")}}


def detection_from_config(record: dict[str, Any], origin: str, position: int) -> Detection:
    """Normalise one Config evaluation of an IAM user: the ``detail`` of a "Config Rules Compliance
    Change" event, or an ``EvaluationResult`` with ``awsAccountId`` added (module docstring).

    Returns a Detection with ``provider="aws"``, ``source="aws_config"``, ``finding_type`` and
    ``rule`` the Config rule's name, ``target`` the user (``uid`` = its ``UserId``: Config does not
    give the name), ``severity`` ``low`` (hygiene, not an incident); ``credential`` per the module
    docstring, or ``None`` for a root-key rule; ``suppressed`` for a rule not about credentials or
    an evaluation that is not ``NON_COMPLIANT``.

    Raises :class:`cordon.detections.errors.RecordError` naming the field for a missing
    ``configRuleName``, ``awsAccountId`` or ``resourceId``, or a field of the wrong type."""
    view = _camel(record)
    f = RecordFields(view, origin, position)
    rule_name = f.get("configRuleName", str, required=True)
    account = f.get("awsAccountId", str, required=True)
    region = f.get("awsRegion", str)
    resource_id = f.get("resourceId", str, required=True)
    resource_type = f.get("resourceType", str)
    compliance = (f.get("newEvaluationResult.complianceType", str) or "").upper()
    when = f.time("newEvaluationResult.resultRecordedTime", required=False) or f.time(
        "notificationCreationTime", required=False)
    if when is None:
        raise f.error("newEvaluationResult.resultRecordedTime", "required field missing (no notificationCreationTime)")
    annotation = f.get("newEvaluationResult.annotation", str)
    user = Principal(uid=resource_id, type="IAMUser", account_uid=account)
    criterion = criterion_for_rule(rule_name)
    suppressed = None
    credential = None
    techniques: list[str] = []
    if resource_type not in (None, "AWS::IAM::User"):
        suppressed = f"Config rule {rule_name}: a {resource_type} is not an IAM user's credential"
    elif compliance != "NON_COMPLIANT":
        suppressed = f"Config rule {rule_name}: {compliance or 'no'} evaluation, not NON_COMPLIANT"
    elif rule_name.lower().startswith(ROOT_RULES) or rule_name.lower().startswith(
            tuple(f"securityhub-{r}" for r in ROOT_RULES)):
        techniques = ["T1098.001"]  # the root user's key: triage (root is never contained by a rule)
    elif criterion is None:
        suppressed = f"Config rule {rule_name} is not a credential rule Cordon answers"
    else:
        techniques = [criterion.technique]
        credential = hygiene_credential(account, criterion.name, criterion.default_days, source_rule=rule_name,
                                        config_rule=rule_name, user_ids=[resource_id])
    return Detection(
        uid=detection_uid(record, f"aws_config:{rule_name}:{resource_id}:{when.isoformat()}"),
        provider="aws", source="aws_config", finding_type=rule_name, technique_ids=techniques,
        rule=RuleRef(type="aws_config", uid=rule_name, name=annotation or rule_name), severity="low",
        time=when, account_uid=account, region=region, target=user, credential=credential,
        suppressed=suppressed, raw_ref=RawRef(origin=origin, position=position, sha256=record_sha256(record)),
        raw=record)


def rule_limit(rule: dict[str, Any] | None, criterion: Criterion) -> tuple[int, str]:
    """``(days, where from)`` the limit of ``rule`` (a ``DescribeConfigRules`` item) for
    ``criterion``: its ``InputParameters`` value, else the managed rule's default."""
    if rule:
        try:
            params = json.loads(rule.get("InputParameters") or "{}")
        except ValueError:
            params = {}
        value = params.get(criterion.parameter)
        if value not in (None, ""):
            return int(value), f"{rule.get('ConfigRuleName')}.{criterion.parameter}"
    return criterion.default_days, f"default {criterion.parameter}"


def is_stale(criterion: str, days: int, now: datetime, created: datetime, last_used: datetime | None) -> bool:
    """Whether an *active* key breaks ``criterion`` at ``days``: ``rotation``, created more than
    ``days`` days before ``now``; ``unused``, last used (never used: created) more than ``days`` days
    before ``now``."""
    since = created if criterion == "rotation" else (last_used or created)
    return (now - since).total_seconds() > days * 86400
