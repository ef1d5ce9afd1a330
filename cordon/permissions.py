"""Least-privilege grants, generated from what the actions declare.

Every action declares the exact cloud permissions it needs (``Action.permissions``, the Cloud
Custodian convention). This module turns those declarations into the documents an administrator
applies, for the actions the playbooks in use actually reference (or every registered action):

* AWS: an IAM policy document (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_grammar.html),
  one ``Allow`` statement per action (``Sid`` from its name), ``sts:GetCallerIdentity`` for the
  guard's own-identity check, and a ``Deny`` on IAM writes to the protected principals of
  ``cordon/defaults/cordon.yaml`` (defence in depth behind the guard). With several accounts
  (:mod:`cordon.providers.aws.accounts`) the hub principal's policy also allows ``sts:AssumeRole`` on the
  member roles, and ``aws-member`` is the member role: its trust policy (the hub principal, an
  ``sts:ExternalId`` condition, session names ``cordon-*``;
  https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_common-scenarios_third-party.html)
  and the same action grants as its permissions policy.
* Azure: the Microsoft Graph *application* permissions to grant Cordon's app registration, and an
  Azure RBAC custom role definition for the ``Microsoft.*`` operations
  (https://learn.microsoft.com/azure/role-based-access-control/custom-roles).
* Google Cloud: a custom role (``gcloud iam roles create --file``;
  https://cloud.google.com/iam/docs/creating-custom-roles) with the ``includedPermissions``.
* Slack: the app manifest (https://api.slack.com/reference/manifests) with the scopes Cordon uses
  and the request URLs of ``cordon serve``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from cordon.action import Action, all_actions, load_builtin_actions
from cordon.config import Config
from cordon.playbooks.schema import load_playbooks

#: Permissions the core needs whatever the playbooks: the guard asks the cloud who Cordon is.
BASE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "aws": ("sts:GetCallerIdentity",),
    "azure": (),
    "gcp": (),
}

#: IAM write operations denied on protected principals (the guard refuses them first).
_AWS_IAM_WRITES = ("iam:UpdateAccessKey", "iam:DeleteLoginProfile", "iam:PutUserPolicy", "iam:DeleteUserPolicy",
                   "iam:DetachUserPolicy", "iam:AttachUserPolicy", "iam:UpdateServiceSpecificCredential")

#: Slack bot scopes and why Cordon needs each (https://api.slack.com/scopes).
SLACK_SCOPES: dict[str, str] = {
    "chat:write": "post and update approval messages, reply in their threads",
    "commands": "the /cordon slash command",
    "users:read": "resolve the clicking user (users.info)",
    "users:read.email": "map a Slack user to a cloud identity by profile e-mail (no self-approval)",
    "usergroups:read": "resolve approver user groups (usergroups.users.list)",
}


def actions_in_use(config: Config, *, every: bool = False) -> list[type[Action]]:
    """The action classes the playbooks in ``config.playbooks_dir`` reference (enrich and contain),
    sorted by name; with ``every``, all registered actions. Raises
    :class:`cordon.playbooks.schema.PlaybookError` when a playbook does not load."""
    load_builtin_actions()
    registry = all_actions()
    if every:
        return [registry[n] for n in sorted(registry)]
    names: set[str] = set()
    for pb in load_playbooks(config.playbooks_dir):
        names.update(s.action for s in pb.enrich)
        names.update(s.action for s in pb.contain)
    return [registry[n] for n in sorted(names)]


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
        {"Sid": "CordonIdentity", "Effect": "Allow", "Action": list(BASE_PERMISSIONS["aws"]), "Resource": "*"}]
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
                           "Action": list(_AWS_IAM_WRITES), "Resource": arns})
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


def azure_grants(actions: Iterable[type[Action]], *, scope: str = "/subscriptions/{subscriptionId}") -> dict[str, Any]:
    """Microsoft's side: ``{"graph_application_permissions": [...], "role_definition": {...}}``.

    Permissions that start with ``Microsoft.`` are Azure Resource Manager operations and go into a
    custom role assignable at ``scope``; the others are Graph application permissions (admin
    consent required). ``role_definition`` is ``None`` when no ARM operation is needed.
    """
    graph: set[str] = set()
    arm: set[str] = set()
    for cls in actions:
        if cls.provider != "azure":
            continue
        for perm in cls.permissions:
            (arm if perm.startswith("Microsoft.") else graph).add(perm)
    role = None
    if arm:
        role = {"Name": "Cordon responder", "IsCustom": True,
                "Description": "Role assignments named by a detection (generated by cordon permissions)",
                "Actions": sorted(arm), "NotActions": [], "DataActions": [], "NotDataActions": [],
                "AssignableScopes": [scope]}
    return {"graph_application_permissions": sorted(graph), "role_definition": role}


def gcp_role(actions: Iterable[type[Action]]) -> dict[str, Any]:
    """A GCP custom role definition (the YAML ``gcloud iam roles create ROLE_ID --file`` reads).

    Grant it at the organisation (the enrichment reads folder and organisation IAM policies) or,
    for one project, at that project.
    """
    perms: set[str] = set(BASE_PERMISSIONS["gcp"])
    for cls in actions:
        if cls.provider == "gcp":
            perms.update(cls.permissions)
    return {"title": "Cordon responder", "description": "Generated by cordon permissions from the actions' "
            "declared permissions", "stage": "GA", "includedPermissions": sorted(perms)}


def slack_manifest(base_url: str, *, name: str = "Cordon") -> dict[str, Any]:
    """The Slack app manifest for ``cordon serve`` reachable at ``base_url`` (https, no trailing slash).

    Raises ``ValueError`` when ``base_url`` is not an https URL (Slack refuses http request URLs).
    """
    base = base_url.rstrip("/")
    if not base.startswith("https://"):
        raise ValueError(f"base_url {base_url!r}: Slack requires an https:// request URL")
    return {
        "display_information": {"name": name,
                                "description": "Approve containment of cloud credential persistence"},
        "features": {
            "bot_user": {"display_name": name.lower(), "always_online": True},
            "slash_commands": [{"command": "/cordon", "url": f"{base}/slack/commands",
                                "description": "Run a playbook, or see a case's status",
                                "usage_hint": "run PLAYBOOK key=value... | status CASE | list | help",
                                "should_escape": False}],
        },
        "oauth_config": {"scopes": {"bot": sorted(SLACK_SCOPES)}},
        "settings": {"interactivity": {"is_enabled": True, "request_url": f"{base}/slack/interactions"},
                     "org_deploy_enabled": False, "socket_mode_enabled": False, "token_rotation_enabled": False},
    }


def generate(config: Config, provider: str, *, every: bool = False) -> dict[str, Any]:
    """The grant document for ``provider`` (``aws``, ``aws-member``, ``azure`` or ``gcp``) from the
    playbooks of ``config`` (or every action). ``aws`` is the policy of Cordon's own principal
    (with the ``sts:AssumeRole`` grant when ``aws:`` configures member roles); ``aws-member`` is
    :func:`aws_member_role` with the external ID read from its environment variable when set.
    Raises ``ValueError`` for another provider."""
    if provider == "aws-member":
        import os

        from cordon.providers.aws.accounts import aws_accounts

        accounts = aws_accounts(config)
        env = accounts.external_id_env if accounts else None
        return aws_member_role(config, every=every, external_id=os.environ.get(env) if env else None)
    acts = actions_in_use(config, every=every)
    if provider == "aws":
        from cordon.providers.aws.accounts import aws_accounts

        accounts = aws_accounts(config)
        return aws_policy(acts, config.protected_principals, accounts.assumable_role_arns() if accounts else ())
    if provider == "azure":
        return azure_grants(acts)
    if provider == "gcp":
        return gcp_role(acts)
    raise ValueError(f"provider {provider!r}: expected aws, aws-member, azure or gcp")


def render(config: Config, provider: str) -> str:
    """The text ``cordon permissions PROVIDER --all`` prints (JSON, YAML for gcp), as
    ``docs/deploy.md`` embeds it. For ``aws-member`` the documentation's form: the role, its trust
    policy with the external ID as a placeholder (never a value from this environment) and the
    hub's statement, without the permissions policy (the ``aws`` block's document)."""
    import json

    import yaml

    if provider == "aws-member":
        doc = aws_member_role(config, every=True)
        del doc["PermissionsPolicy"]
        return json.dumps(doc, indent=2) + "\n"
    doc = generate(config, provider, every=True)
    return yaml.safe_dump(doc, sort_keys=False) if provider == "gcp" else json.dumps(doc, indent=2) + "\n"


def update_doc(path: str, config: Config) -> bool:
    """Rewrite the ``<!-- generated:PROVIDER -->`` blocks of the Markdown file at ``path`` with
    :func:`render`; returns whether anything changed. Raises ``ValueError`` naming the file when a
    block is missing."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    new = text
    for provider in ("aws", "aws-member", "azure", "gcp"):
        pattern = re.compile(rf"(<!-- generated:{provider} -->\n```\w+\n).*?(```\n<!-- /generated:{provider} -->)",
                             re.S)
        if not pattern.search(new):
            raise ValueError(f"{path}: no <!-- generated:{provider} --> block")
        body = render(config, provider)
        new = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), new)
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m cordon.permissions docs/deploy.md
    import sys

    from cordon.config import load_config

    print("updated" if update_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/deploy.md", load_config())
          else "up to date")
