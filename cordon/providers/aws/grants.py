"""AWS grants, generated from what the AWS actions declare (``Action.permissions``): the IAM policy of
Cordon's own principal (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_grammar.html),
one ``Allow`` statement per action (``Sid`` from its name), ``sts:GetCallerIdentity`` for the guard's
own-identity check, and a ``Deny`` on IAM writes to the protected principals (defence in depth behind
the guard). With several accounts (:mod:`cordon.providers.aws.accounts`) the hub principal's policy also
allows ``sts:AssumeRole`` on the member roles, and ``aws-member`` is the member role: its trust policy
(the hub principal, an ``sts:ExternalId`` condition, session names ``cordon-*``;
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_common-scenarios_third-party.html) and the same
action grants as its permissions policy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from cordon.action import Action
from cordon.config import Config
from cordon.permissions import GrantDocument, actions_in_use

#: What the core asks AWS whatever the playbooks: the guard asks who Cordon is.
BASE_PERMISSIONS: tuple[str, ...] = ("sts:GetCallerIdentity",)

#: IAM write operations denied on protected principals (the guard refuses them first).
_IAM_WRITES = ("iam:UpdateAccessKey", "iam:DeleteLoginProfile", "iam:PutUserPolicy", "iam:DeleteUserPolicy",
                   "iam:DetachUserPolicy", "iam:AttachUserPolicy", "iam:UpdateServiceSpecificCredential")

def _sid(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def _iam_resource(pattern: str) -> bool:
    """Whether ``pattern`` is an IAM resource ARN a policy may name (``arn:aws:iam::ACCOUNT:user/...``,
    ``role/``, ``group/``); ``arn:aws:iam::*:root`` is not one: no IAM action acts on the root user."""
    parts = pattern.split(":", 5)
    return (len(parts) == 6 and parts[0] == "arn" and parts[1].startswith("aws") and parts[2] == "iam"
            and parts[5].startswith(("user/", "role/", "group/")))


def aws_policy(actions: Iterable[type[Action]], protected: Iterable[str] = (),
               assume_roles: Iterable[str] = ()) -> dict[str, Any]:
    """An IAM identity policy granting exactly the permissions of ``actions`` (AWS ones only).

    Shape: ``{"Version": "2012-10-17", "Statement": [...]}``; ``Resource`` is ``"*"`` because the
    credential to contain is only known at detection time. ``protected`` ARN patterns (IAM wildcard
    syntax, as in ``protected_principals``) become one ``Deny`` statement on IAM writes.
    ``assume_roles`` (member role ARNs, wildcards allowed) add the hub's ``sts:AssumeRole`` grant
    (:func:`aws_hub_statement`).
    """
    statements: list[dict[str, Any]] = [
        {"Sid": "CordonIdentity", "Effect": "Allow", "Action": list(BASE_PERMISSIONS), "Resource": "*"}]
    hub = aws_hub_statement(assume_roles)
    if hub:
        statements.append(hub)
    for cls in actions:
        if cls.provider != "aws" or not cls.permissions:
            continue
        statements.append({"Sid": _sid(cls.name), "Effect": "Allow", "Action": sorted(set(cls.permissions)),
                           "Resource": "*"})
    arns = sorted({p for p in protected if _iam_resource(p)})
    if arns:
        statements.append({"Sid": "CordonNeverTouchesProtectedPrincipals", "Effect": "Deny",
                           "Action": list(_IAM_WRITES), "Resource": arns})
    return {"Version": "2012-10-17", "Statement": statements}


def aws_hub_statement(role_arns: Iterable[str]) -> dict[str, Any] | None:
    """The statement letting Cordon's hub principal assume the member roles ``role_arns``
    (``Sid`` ``CordonAssumeMemberRoles``); ``None`` when there are none."""
    arns = sorted(set(role_arns))
    if not arns:
        return None
    return {"Sid": "CordonAssumeMemberRoles", "Effect": "Allow", "Action": ["sts:AssumeRole"], "Resource": arns}


#: The member role's name when the configuration names none (documentation and placeholders).
DEFAULT_MEMBER_ROLE = "CordonResponder"


def aws_member_role(config: Config, *, every: bool = False, account_id: str | None = None,
                    external_id: str | None = None) -> dict[str, Any]:
    """The member-account role Cordon assumes (``cordon.yaml`` ``aws:``; :mod:`cordon.providers.aws.accounts`).

    Returns ``{"RoleName", "Path", "AssumeRolePolicyDocument", "PermissionsPolicy",
    "HubPolicyStatement"}`` (the first three as ``iam:CreateRole`` takes them, the permissions
    policy for ``iam:PutRolePolicy``; the hub statement goes into the hub principal's policy).
    The trust policy allows ``sts:AssumeRole`` to ``aws.hub_principal`` (else the hub account's
    root, i.e. any principal the hub account's own policies allow; else a placeholder), on
    condition that ``sts:ExternalId`` equals ``external_id`` (else a ``<value of VAR>``
    placeholder; no condition when ``aws.external_id_env`` is null) and the session name starts
    with ``cordon-``. ``account_id`` picks that account's own entry (its ``role_arn`` and
    external-ID variable); else the Organization-wide ``role_name`` (default
    ``CordonResponder``). The permissions policy is :func:`aws_policy` of the actions in use (or
    every action) and the protected principals, without ``sts:AssumeRole`` (no role chaining).
    Raises :class:`cordon.providers.aws.accounts.AwsAccountsError` for an unusable ``aws:`` section.
    """
    from cordon.providers.aws.accounts import AwsAccounts, aws_accounts

    accounts = aws_accounts(config) or AwsAccounts()
    role = accounts.accounts.get(account_id) if account_id else None
    if role is not None:
        path_name = role.role_arn.split(":role/", 1)[1]
        ext_env = role.external_id_env
    else:
        path_name = accounts.role_name or DEFAULT_MEMBER_ROLE
        ext_env = accounts.external_id_env
    path, _, name = path_name.rpartition("/")
    p = accounts.partition
    principal = (accounts.hub_principal
                 or (f"arn:{p}:iam::{accounts.hub_account}:root" if accounts.hub_account else None)
                 or f"arn:{p}:iam::<hub account>:role/<Cordon's hub role>")
    condition: dict[str, Any] = {"StringLike": {"sts:RoleSessionName": "cordon-*"}}
    if ext_env:
        condition["StringEquals"] = {"sts:ExternalId": external_id or f"<value of {ext_env}>"}
    trust = {"Version": "2012-10-17",
             "Statement": [{"Sid": "CordonHubAssumesThisRole", "Effect": "Allow", "Principal": {"AWS": principal},
                            "Action": "sts:AssumeRole", "Condition": condition}]}
    return {"RoleName": name, "Path": f"/{path}/" if path else "/", "AssumeRolePolicyDocument": trust,
            "PermissionsPolicy": aws_policy(actions_in_use(config, every=every), config.protected_principals),
            "HubPolicyStatement": aws_hub_statement(accounts.assumable_role_arns()
                                                    or [f"arn:{p}:iam::*:role/{path_name}"])}


def _own_policy(config: Config, actions: list[type[Action]]) -> dict[str, Any]:
    from cordon.providers.aws.accounts import aws_accounts

    accounts = aws_accounts(config)
    return aws_policy(actions, config.protected_principals, accounts.assumable_role_arns() if accounts else ())


def _member_role(config: Config, actions: list[type[Action]], every: bool) -> dict[str, Any]:
    from cordon.providers.aws.accounts import aws_accounts

    accounts = aws_accounts(config)
    env = accounts.external_id_env if accounts else None
    return aws_member_role(config, every=every, external_id=os.environ.get(env) if env else None)


def _member_role_for_docs(config: Config) -> dict[str, Any]:
    doc = aws_member_role(config, every=True)
    del doc["PermissionsPolicy"]
    return doc


def _queue_arn(queue_url: str | None) -> str:
    """``https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`` -> ``arn:aws:sqs:REGION:ACCOUNT:NAME``
    (any other URL, or none: every queue, ``arn:aws:sqs:*:*:*``)."""
    parts = (queue_url or "").split("/")
    host = parts[2].split(".") if len(parts) > 4 else []
    if len(host) > 3 and host[0] == "sqs" and parts[3] and parts[4]:
        return f"arn:aws:sqs:{host[1]}:{parts[3]}:{parts[4]}"
    return "arn:aws:sqs:*:*:*"


def sensors_policy(config: Config, *, placeholders: bool = False) -> dict[str, Any]:
    """The IAM policy of the identity the AWS sensors run as, from what each declares
    (:attr:`cordon.sensors.Sensor.permissions`): the SQS actions on its queue (the ARN of
    ``sensors.<name>.queue_url``; every queue when none is configured), ``s3:GetObject`` on
    ``AWSLogs/`` objects of any bucket (the trail bucket is named by the notifications)."""
    from cordon.sensors import sensors

    raw = (config.raw or {}).get("sensors") or {}
    statements = []
    for name, cls in sensors().items():
        if cls.provider != "aws":
            continue
        url = (raw.get(name) or {}).get("queue_url")
        queue = "arn:aws:sqs:REGION:ACCOUNT:QUEUE" if placeholders else _queue_arn(url)
        sqs_actions = sorted(p for p in cls.permissions if p.startswith("sqs:"))
        sid = "".join(w.capitalize() for w in name.split("-"))
        statements.append({"Sid": f"{sid}Queue", "Effect": "Allow", "Action": sqs_actions, "Resource": queue})
        s3_actions = sorted(p for p in cls.permissions if p.startswith("s3:"))
        if s3_actions:
            statements.append({"Sid": f"{sid}Objects", "Effect": "Allow", "Action": s3_actions,
                               "Resource": "arn:aws:s3:::*/AWSLogs/*"})
    return {"Version": "2012-10-17", "Statement": statements}


#: The AWS grant documents: Cordon's own policy (``aws``) and the member-account role (``aws-member``;
#: the documentation shows it with the external ID as a placeholder and without the permissions
#: policy, which is the ``aws`` block's document).
DOCUMENTS = (
    GrantDocument("aws", lambda config, actions, every: _own_policy(config, actions)),
    GrantDocument("aws-member", _member_role, for_docs=_member_role_for_docs),
    GrantDocument("aws-sensors", lambda config, actions, every: sensors_policy(config),
                  for_docs=lambda config: sensors_policy(config, placeholders=True)),
)
