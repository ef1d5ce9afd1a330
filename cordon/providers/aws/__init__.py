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

from cordon.providers import EventEnvelope, Provider, Source


class AwsProvider(Provider):
    """The AWS provider (see the package docstring)."""

    name = "aws"
    title = "AWS"
    actions_module = "cordon.providers.aws.actions"
    sensors_module = "cordon.providers.aws.sensors"
    grants_module = "cordon.providers.aws.grants"
    shapes_module = "cordon.providers.aws.shapes"
    renderers_module = "cordon.providers.aws.render"
    #: EventBridge: findings and CloudTrail events delivered as events
    #: (https://docs.aws.amazon.com/guardduty/latest/ug/monitor-with-eventbridge.html ,
    #: https://docs.aws.amazon.com/securityhub/latest/userguide/securityhub-cwe-event-formats.html)
    event_envelopes = (EventEnvelope("Security Hub Findings - Imported", "securityhub", records="findings"),
                       EventEnvelope("Security Hub Findings - Custom Action", "securityhub", records="findings"),
                       EventEnvelope("GuardDuty Finding", "guardduty"),
                       EventEnvelope("Config Rules Compliance Change", "aws_config"),
                       EventEnvelope("*via CloudTrail", "cloudtrail"))
    config_section = True  # aws: accounts and member roles (cordon.providers.aws.accounts)
    classify_order = 10
    clients_per_account = True
    thread_safe_clients = True  # boto3 clients are thread-safe (one shared Session, built under a lock)
    ocsf_account = (10, "AWS Account")

    detection_sources = ("cloudtrail", "guardduty", "securityhub", "aws_config")
    rule_types = ("guardduty", "securityhub", "aws_config")
    #: credential kind -> what its ``uid`` holds
    credential_kinds = {
        "aws_access_key": "IAM access key, uid = AccessKeyId (AKIA...)",
        "aws_login_profile": "console password of an IAM user, uid = user name",
        "aws_key_pair": "EC2 key pair, uid = key name, region required",
        "aws_service_specific_credential": "uid = ServiceSpecificCredentialId",
        "aws_federation_token": "sts:GetFederationToken session, uid = temporary AccessKeyId (ASIA...)",
        "aws_iam_user": "a created cloud account (T1136.003), uid = user name",
        "aws_policy_grant": "an admin policy attached / put on a user, uid = policy ARN or inline name",
        "aws_ssh_public_key": "an IAM user's SSH public key (CodeCommit), uid = SSHPublicKeyId (APKA...)",
        "aws_role_sessions": "the sessions of an assumed role an actor signed with, uid = role ARN",
        "aws_rolesanywhere_trust_anchor": "IAM Roles Anywhere trust anchor (an X.509 CA), uid = trustAnchorId",
        "aws_rolesanywhere_profile": "IAM Roles Anywhere profile (roles a certificate may assume), uid = profileId",
        "aws_role_trust": "a role's trust policy rewritten (UpdateAssumeRolePolicy), uid = role name",
        "aws_root_access_key": "the root user's own access key, uid = AccessKeyId (AKIA...)",
        "aws_eks_access_entry": "an IAM principal let into an EKS cluster (CreateAccessEntry), "
                                "uid = '<cluster>/<principalArn>'",
        "aws_eks_access_policy": "an EKS access policy associated with a principal (AssociateAccessPolicy), "
                                 "uid = '<cluster>/<principalArn>/<policy name>'",
        "aws_stale_credentials": "an account's keys past a Config rule's or Security Hub control's age limit, "
                                 "uid = '<account>:rotation' or '<account>:unused'",
    }

    #: what a new credential of each kind is called in Slack, and the word joining it to its owner
    credential_phrases = {
    "aws_access_key": ("New access key", "for"),
    "aws_login_profile": ("New console password", "for"),
    "aws_key_pair": ("New EC2 key pair", "in"),
    "aws_service_specific_credential": ("New service-specific credential", "for"),
    "aws_federation_token": ("Federation token issued", "to"),
    "aws_iam_user": ("New IAM user", ""),
    "aws_policy_grant": ("Admin policy granted", "to"),
    "aws_ssh_public_key": ("New SSH public key", "for"),
    "aws_role_sessions": ("Sessions of the role that did it", "of"),
    "aws_rolesanywhere_trust_anchor": ("New Roles Anywhere trust anchor", "by"),
    "aws_rolesanywhere_profile": ("New Roles Anywhere profile", "by"),
    "aws_role_trust": ("Role trust policy changed", "on"),
    "aws_root_access_key": ("New root user access key", "of"),
    "aws_stale_credentials": ("Stale access keys", "in"),
    "aws_eks_access_entry": ("New EKS access entry", "for"),
    "aws_eks_access_policy": ("EKS access policy associated", "with"),
    }

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.aws.cloudtrail import detection_from_cloudtrail
        from cordon.providers.aws.config_rules import detection_from_config
        from cordon.providers.aws.guardduty import detection_from_guardduty
        from cordon.providers.aws.securityhub import detection_from_asff

        return (Source("cloudtrail", detection_from_cloudtrail, sigma=("aws", "cloudtrail")),
                Source("guardduty", detection_from_guardduty),
                Source("securityhub", detection_from_asff),
                Source("aws_config", detection_from_config))

    def guard(self, detection: Any, clients: Callable[..., Any], me: str | None,
              enrichment: dict[str, Any] | None = None) -> str | None:
        """Refuse when Cordon's clients act in another account than the detection's (an account
        without a configured role, :mod:`cordon.providers.aws.accounts`), or when the credential is the
        access key Cordon itself signs with. A role's rewritten trust policy (``aws_role_trust``) is
        contained only when ``enrichment["aws.role-trust"]`` says ``contain`` (a principal outside the
        Organization on a role with administrator permissions); otherwise the refusal is its
        ``reason``: triage only."""
        if detection.credential and detection.credential.kind == "aws_role_trust":
            facts = (enrichment or {}).get("aws.role-trust")
            if not isinstance(facts, dict) or "error" in facts:
                return "triage only: the role's trust and permissions could not be read (aws.role-trust)"
            if not facts.get("contain"):
                return f"triage only: {facts.get('reason')}"
        acting = arn_account(me)
        if acting and detection.account_uid and acting != detection.account_uid:
            return (f"Cordon's clients act in account {acting}, the detection is in account "
                    f"{detection.account_uid}: no role to assume there (aws.accounts or aws.role_name in cordon.yaml)")
        if me and detection.credential and detection.credential.kind == "aws_access_key":
            own_key = getattr(clients, "own_access_key", lambda: None)()
            if own_key and own_key == detection.credential.uid:
                return "the credential is the access key Cordon signs with"
        return None

    def actor_access(self, detection: Any) -> Any:
        """The access key or role sessions the actor signed the call with
        (:func:`cordon.providers.aws.actor.actor_access`)."""
        from cordon.providers.aws.actor import actor_access

        return actor_access(detection)

    def credential_usage(self, detection: Any, since: Any, clients: Any) -> Any:
        """CloudTrail ``LookupEvents`` for the credential since it was contained
        (:func:`cordon.providers.aws.watch.credential_usage`)."""
        from cordon.providers.aws.watch import credential_usage

        return credential_usage(detection, since, clients)

    def same_principal(self, a: str, b: str) -> bool:
        """An assumed-role session ARN (``arn:aws:sts::1:assumed-role/R/session``) names its role
        (``arn:aws:iam::1:role/R``)."""
        if not a.startswith("arn:") or not b.startswith("arn:"):
            return False
        return _role_of(a) == _role_of(b)

    def check_config(self, config: Any) -> str | None:
        """The ``aws:`` section (:func:`cordon.providers.aws.accounts.aws_accounts`: member accounts and
        roles); raises its ``AwsAccountsError`` naming ``aws.<field>``."""
        from cordon.providers.aws.accounts import aws_accounts

        return "one AWS account" if aws_accounts(config) is None else "AWS member roles"

    def manual_fields(self, kind: str, fields: dict[str, Any]) -> None:
        """An IAM user named with an account gets its ARN as ``uid``."""
        account = fields.get("account_uid")
        for who in ("target", "credential.owner"):
            if account and fields.get(f"{who}.name") and not fields.get(f"{who}.uid"):
                fields[f"{who}.uid"] = f"arn:aws:iam::{account}:user/{fields[f'{who}.name']}"

    def manual_principals(self, kind: str, fields: dict[str, Any]) -> None:
        """A target known only by ARN gets the user name from it; named principals are IAM users of
        the run's account."""
        if fields.get("target.uid") and not fields.get("target.name"):
            fields["target.name"] = str(fields["target.uid"]).rsplit("/", 1)[-1]
        for who in ("credential.owner", "target"):
            if fields.get(f"{who}.name"):
                fields[f"{who}.type"] = "IAMUser"
                fields[f"{who}.account_uid"] = fields.get("account_uid")

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        from cordon.providers.aws.clients import aws_clients

        return aws_clients(cloud)


def _role_of(arn: str) -> str:
    """An assumed-role session ARN as its role's ARN; any other ARN as it is."""
    if ":assumed-role/" in arn:
        account = arn.split(":")[4]
        role = arn.split(":assumed-role/")[1].split("/")[0]
        return f"arn:aws:iam::{account}:role/{role}"
    return arn


def arn_account(arn: str | None) -> str | None:
    """The account field of an AWS ARN (``arn:aws:sts::123456789012:assumed-role/...``), else ``None``."""
    parts = arn.split(":") if arn else []
    return parts[4] if len(parts) > 5 and parts[0] == "arn" and parts[2] in ("iam", "sts") and parts[4] else None
