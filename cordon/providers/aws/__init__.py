"""Amazon Web Services: CloudTrail events (Sigma logsource ``product: aws, service: cloudtrail``),
GuardDuty and Security Hub (ASFF) findings, IAM / EC2 / STS actions over boto3, several accounts
through ``sts:AssumeRole``.

Modules: :mod:`.cloudtrail`, :mod:`.guardduty`, :mod:`.securityhub` (record parsers),
:mod:`.actions` (enrichment and containment), :mod:`.clients` (the boto3 client factory),
:mod:`.accounts` (the ``aws:`` section of ``cordon.yaml``: member accounts and roles).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordon.providers import Provider, Source


class AwsProvider(Provider):
    """The AWS provider (see the package docstring)."""

    name = "aws"
    title = "AWS"
    actions_module = "cordon.providers.aws.actions"
    grants_module = "cordon.providers.aws.grants"
    clients_per_account = True
    ocsf_account = (10, "AWS Account")

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
        from cordon.providers.aws.guardduty import detection_from_guardduty
        from cordon.providers.aws.securityhub import detection_from_asff

        return (Source("cloudtrail", detection_from_cloudtrail, sigma=("aws", "cloudtrail")),
                Source("guardduty", detection_from_guardduty),
                Source("securityhub", detection_from_asff))

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        from cordon.providers.aws.clients import aws_clients

        return aws_clients(cloud)
