"""Which AWS record shape a bare record has (called by :func:`cordon.detections.intake.classify`).

CloudTrail (record contents reference,
https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html):
``eventName``, ``eventSource`` and ``eventTime`` present. GuardDuty (finding format,
https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_finding-format.html):
``schemaVersion``, ``type`` and a ``service`` object whose ``serviceName`` is ``guardduty`` or
which has a ``detectorId``. ASFF
(https://docs.aws.amazon.com/securityhub/latest/userguide/securityhub-findings-format.html):
``SchemaVersion``, ``ProductArn`` and ``Types`` or ``AwsAccountId``.

Only presence is checked here; field types are validated by the parsers.
"""

from __future__ import annotations

from typing import Any

#: How the dead-letter reason describes the shapes recognised here.
SHAPES = ("a CloudTrail event (eventName, eventSource, eventTime), a GuardDuty finding "
          "(schemaVersion, type, service.serviceName 'guardduty' or service.detectorId), a Security Hub "
          "ASFF finding (SchemaVersion, ProductArn, Types or AwsAccountId), an AWS Config evaluation "
          "(configRuleName with newEvaluationResult, or EvaluationResultIdentifier with ComplianceType)")


def classify(record: dict[str, Any]) -> str | None:
    """``cloudtrail``, ``guardduty``, ``securityhub``, ``aws_config`` or ``None`` (see the module
    docstring)."""
    if "eventName" in record and "eventSource" in record and "eventTime" in record:
        return "cloudtrail"
    service = record.get("service")
    if (
        "schemaVersion" in record
        and "type" in record
        and isinstance(service, dict)
        and (service.get("serviceName") == "guardduty" or "detectorId" in service)
    ):
        return "guardduty"
    if "SchemaVersion" in record and "ProductArn" in record and ("Types" in record or "AwsAccountId" in record):
        return "securityhub"
    if ("configRuleName" in record and "newEvaluationResult" in record) or (
            "EvaluationResultIdentifier" in record and "ComplianceType" in record):
        return "aws_config"
    return None
