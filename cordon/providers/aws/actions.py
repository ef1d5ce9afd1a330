"""AWS enrichment and containment actions.

Modelled on Cloud Custodian's ``c7n/resources/iam.py`` actions: one small class per action,
declaring its playbook ``name``, parameter ``schema``, the exact IAM ``permissions`` it needs, the
credential kinds it acts on and whether it can roll back. Every containment action acts on
exactly the credential its parameters name, reads the state before and after, and is idempotent
(see :mod:`cordon.action`). API errors (``botocore.exceptions.ClientError``) propagate to the
shared ``run()``, which records ``failed``; a credential that is not the one named (e.g. an
access key of another user) raises :class:`~cordon.action.GuardError` and is recorded as
``refused`` with nothing changed.

Clients come from ``ctx.clients(service, region=None)`` (boto3 clients; in the sandbox, pointed
at moto and Cordon's stand-in). API references: https://docs.aws.amazon.com/IAM/latest/APIReference/ ,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/ ,
https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html .
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from botocore import xform_name
from botocore.exceptions import ClientError
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from cordon.action import (
    ActionContext,
    ActionResult,
    ApiCall,
    ContainmentAction,
    EnrichmentAction,
    GuardError,
    Identifies,
    NoParams,
    Params,
    State,
    register,
)
from cordon.detections.model import Detection

#: Parameter types (pydantic), shared by the actions' ``Params`` models.
UserName = Annotated[str, Field(pattern=r"^[\w+=,.@-]{1,64}$", description="IAM user name")]
AccessKeyId = Annotated[str, Field(pattern=r"^AKIA[A-Z0-9]{12,124}$",
                                   description="long-term IAM access key ID (AKIA...)")]
PolicyArn = Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::(aws|[0-9]{12}):policy/.+$")]
PolicyName = Annotated[str, Field(pattern=r"^[\w+=,.@-]{1,128}$")]
Region = Annotated[str, Field(pattern=r"^[a-z0-9-]{4,32}$")]
IsoTime = Annotated[str, Field(description="ISO 8601 UTC time (2024-07-30T21:53:13Z)")]
#: ``statusType`` of IAM credentials (``Expired``: e.g. service-specific credentials with an expiry).
IamStatus = Literal["Active", "Inactive", "Expired"]

REVOKE_POLICY_NAME = "CordonRevokeOlderSessions"
QUARANTINE_POLICY_NAME = "CordonQuarantine"
CORDON_POLICY_NAMES = (REVOKE_POLICY_NAME, QUARANTINE_POLICY_NAME)
ADMIN_POLICY_SUFFIX = ":policy/AdministratorAccess"


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime:
    """ISO 8601 (``2024-07-30T21:53:13Z``, offsets allowed, naive = UTC) as aware UTC."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC)


def _error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _policy_doc(doc: Any) -> Any:
    """A policy document as a dict (boto3 decodes IAM documents; strings are parsed)."""
    if isinstance(doc, str):
        return json.loads(doc)
    return doc


def _user_arn(ctx: ActionContext, user_name: str) -> str:
    owner = ctx.detection.credential.owner if ctx.detection.credential else None
    for principal in (owner, ctx.detection.target):
        if principal and principal.uid and principal.uid.endswith(f":user/{user_name}"):
            return principal.uid
    account = ctx.detection.account_uid or "-"
    return f"arn:aws:iam::{account}:user/{user_name}"


def _deny_all_statement(sid: str) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Deny", "Action": "*", "Resource": "*"}


# -- containment --------------------------------------------------------------------------------
class AwsContainmentAction(ContainmentAction):
    """Base of AWS containment actions: :meth:`call` makes one boto3 call.

    ``ApiCall(service="iam", operation="UpdateAccessKey", params={...}, region=None)`` becomes
    ``ctx.clients("iam", region=None).update_access_key(**params)``; errors propagate.
    """

    provider = "aws"
    service: ClassVar[str] = "iam"

    def client(self, ctx: ActionContext, service: str | None = None, region: str | None = None) -> Any:
        return ctx.clients(service or self.service, region=region)

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        client = ctx.clients(api.service, region=api.region)
        return getattr(client, xform_name(api.operation))(**api.params)

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """No calls unless ``result`` changed something (``contained`` with rollback data)."""
        if result.status != "contained" or not result.rollback:
            return []
        return self.undo_calls(ctx, result.rollback.get("before"))

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        raise GuardError(f"action '{self.name}' cannot be rolled back")

    def _iam_user_exists(self, ctx: ActionContext, user_name: str) -> bool:
        try:
            self.client(ctx, "iam").get_user(UserName=user_name)
            return True
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return False
            raise


@register
class DeactivateAccessKey(AwsContainmentAction):
    """Deactivate one IAM access key (``iam:UpdateAccessKey Status=Inactive``); never deletes it.

    Guard: the key must be listed by ``ListAccessKeys`` for the named user. A key that belongs
    to another user (``GetAccessKeyLastUsed`` names its owner, or answers ``AccessDenied`` so
    ownership cannot be checked) raises ``GuardError`` (run:
    ``refused``) and nothing changes. A key that exists nowhere cannot authenticate: the run is
    ``already_contained`` with ``data={"missing": True}`` and ``before=None``.

    State: ``{user_name, access_key_id, status: "Active"|"Inactive", create_date (ISO)}``.
    Rollback: ``UpdateAccessKey Status=<status before>`` (Active).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAccessKey.html

    .. code-block:: yaml

        contain:
          - action: aws.deactivate-access-key
            with:
              user_name: "{{ credential.owner.name }}"
              access_key_id: "{{ credential.uid }}"
    """

    name = "aws.deactivate-access-key"
    does_not = ("end STS sessions already issued with the key (GetSessionToken, AssumeRole): they stay valid "
                "until they expire")

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name")]
        access_key_id: Annotated[AccessKeyId, Identifies("credential.uid")]

    class State(State):
        user_name: str
        access_key_id: str
        status: Literal["Active", "Inactive"]
        create_date: IsoTime

    permissions = ("iam:ListAccessKeys", "iam:GetAccessKeyLastUsed", "iam:UpdateAccessKey")
    credential_kinds = ("aws_access_key",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        p = ctx.params
        return f"{_user_arn(ctx, p['user_name'])} access-key {p['access_key_id']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        user, key_id = ctx.params["user_name"], ctx.params["access_key_id"]
        iam = self.client(ctx)
        try:
            pages = iam.get_paginator("list_access_keys").paginate(UserName=user)
            keys = [k for page in pages for k in page["AccessKeyMetadata"]]
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            keys = []
        for key in keys:
            if key["AccessKeyId"] == key_id:
                return {"user_name": user, "access_key_id": key_id, "status": key["Status"],
                        "create_date": _iso(key["CreateDate"])}
        try:
            owner = iam.get_access_key_last_used(AccessKeyId=key_id).get("UserName")
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return None
            if _error_code(err) == "AccessDenied":
                raise GuardError(f"access key {key_id} is not {user}'s and its owner cannot be read") from err
            raise
        raise GuardError(f"access key {key_id} belongs to user '{owner}', not '{user}'")

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["status"] == "Inactive"

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="UpdateAccessKey",
                        params={"UserName": ctx.params["user_name"],
                                "AccessKeyId": ctx.params["access_key_id"], "Status": "Inactive"})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("status") != "Active":
            return []
        return [ApiCall(service="iam", operation="UpdateAccessKey",
                        params={"UserName": before["user_name"], "AccessKeyId": before["access_key_id"],
                                "Status": "Active"})]


@register
class DeactivateSshPublicKey(AwsContainmentAction):
    """Deactivate one IAM user's SSH public key (``iam:UpdateSSHPublicKey Status=Inactive``), the key the
    user presents to AWS CodeCommit over SSH; never deletes it.

    ``GetSSHPublicKey`` is scoped to the named user: a key that is not that user's, or exists nowhere,
    cannot authenticate as the user, so the run is ``already_contained`` with ``before=None``.

    State: ``{user_name, ssh_public_key_id, status: "Active"|"Inactive", fingerprint, upload_date (ISO)}``.
    Rollback: ``UpdateSSHPublicKey Status=<status before>`` (Active).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateSSHPublicKey.html ,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetSSHPublicKey.html

    .. code-block:: yaml

        contain:
          - action: aws.deactivate-ssh-public-key
            with:
              user_name: "{{ credential.owner.name }}"
              ssh_public_key_id: "{{ credential.uid }}"
    """

    name = "aws.deactivate-ssh-public-key"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name")]
        ssh_public_key_id: Annotated[str, Identifies("credential.uid"),
                                     Field(pattern="^APKA[A-Z0-9]{16,124}$", description="SSHPublicKeyId (APKA...)")]

    class State(State):
        user_name: str
        ssh_public_key_id: str
        status: IamStatus
        fingerprint: str | None
        upload_date: IsoTime | None

    permissions = ("iam:GetSSHPublicKey", "iam:UpdateSSHPublicKey")
    credential_kinds = ("aws_ssh_public_key",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        p = ctx.params
        return f"{_user_arn(ctx, p['user_name'])} ssh-public-key {p['ssh_public_key_id']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        user, key_id = ctx.params["user_name"], ctx.params["ssh_public_key_id"]
        try:
            key = self.client(ctx).get_ssh_public_key(UserName=user, SSHPublicKeyId=key_id,
                                                      Encoding="SSH")["SSHPublicKey"]
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return None
            raise
        return {"user_name": user, "ssh_public_key_id": key_id, "status": key["Status"],
                "fingerprint": key.get("Fingerprint"), "upload_date": _iso(key["UploadDate"])
                if key.get("UploadDate") else None}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["status"] == "Inactive"

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="UpdateSSHPublicKey",
                        params={"UserName": ctx.params["user_name"],
                                "SSHPublicKeyId": ctx.params["ssh_public_key_id"], "Status": "Inactive"})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("status") != "Active":
            return []
        return [ApiCall(service="iam", operation="UpdateSSHPublicKey",
                        params={"UserName": before["user_name"], "SSHPublicKeyId": before["ssh_public_key_id"],
                                "Status": "Active"})]


@register
class DeleteLoginProfile(AwsContainmentAction):
    """Remove an IAM user's console password (``iam:DeleteLoginProfile``).

    State: ``{user_name, exists, create_date, password_reset_required}`` (``exists`` False when
    ``GetLoginProfile`` answers ``NoSuchEntity``: no password, or no such user). Contained when
    no login profile exists. Not reversible: the old password cannot be restored (AWS never
    returns it). Recovery for a legitimate user is ``iam:CreateLoginProfile`` with a **new**
    password and ``PasswordResetRequired=true``, done by a human.
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_DeleteLoginProfile.html

    .. code-block:: yaml

        contain:
          - action: aws.delete-login-profile
            with:
              user_name: "{{ credential.owner.name }}"
    """

    name = "aws.delete-login-profile"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name", "credential.uid", "target.name")]

    class State(State):
        user_name: str
        exists: bool
        create_date: IsoTime | None
        password_reset_required: bool | None

    permissions = ("iam:GetLoginProfile", "iam:DeleteLoginProfile")
    credential_kinds = ("aws_login_profile", "aws_iam_user")
    rollback_supported = False

    def target(self, ctx: ActionContext) -> str:
        return f"{_user_arn(ctx, ctx.params['user_name'])} login-profile"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        user = ctx.params["user_name"]
        try:
            profile = self.client(ctx).get_login_profile(UserName=user)["LoginProfile"]
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            return {"user_name": user, "exists": False, "create_date": None, "password_reset_required": None}
        return {"user_name": user, "exists": True, "create_date": _iso(profile["CreateDate"]),
                "password_reset_required": bool(profile.get("PasswordResetRequired", False))}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["exists"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="DeleteLoginProfile",
                        params={"UserName": ctx.params["user_name"]})]


def _fingerprint(value: Any) -> str:
    """A key fingerprint compared as EC2 prints it: trimmed, hex digits lower-cased (``1f:51:...``
    for RSA, base64 SHA-256 for ED25519, which is case-sensitive and kept as is)."""
    text = str(value or "").strip()
    return text.lower() if re.fullmatch(r"[0-9A-Fa-f:]+", text) else text


def _event_key_pair(detection: Detection, key_name: str) -> tuple[str | None, str | None]:
    """``(keyPairId, keyFingerprint)`` the detection names for key pair ``key_name``: the
    ``CreateKeyPair`` / ``ImportKeyPair`` record's ``responseElements.keyPairId`` and
    ``.keyFingerprint`` (kept by :mod:`cordon.providers.aws.cloudtrail` as the credential's
    attributes; a manual run's parameters set the same attributes). ``(None, None)`` when the
    detection's credential is not that key pair."""
    cred = detection.credential
    if cred is None or cred.kind != "aws_key_pair" or cred.uid != key_name:
        return None, None
    attrs = cred.attributes or {}
    return (str(attrs["keyPairId"]) if attrs.get("keyPairId") else None,
            str(attrs["keyFingerprint"]) if attrs.get("keyFingerprint") else None)


def key_pair_mismatch(key_name: str, live_id: str | None, live_fingerprint: str | None,
                      want_id: str | None, want_fingerprint: str | None, whose: str) -> str | None:
    """Why the key pair read under ``key_name`` (``live_id``, ``live_fingerprint``) is not the one
    ``whose`` names (``want_id``, ``want_fingerprint``), or ``None`` when it is.

    By ``KeyPairId`` when both sides have one (EC2 gives every key pair a new ID, never reused: a key
    pair deleted and re-created under the same name has another), else by fingerprint (the
    ``keyFingerprint`` of the create / import response is the one ``DescribeKeyPairs`` returns for that
    key pair). When nothing can be compared the answer is a refusal too: deleting by name alone could
    delete a key pair re-created under the name since the event."""
    if want_id and live_id:
        if live_id == want_id:
            return None
        return (f"key pair '{key_name}' is now {live_id}, not {want_id} ({whose}): re-created under the same "
                "name since; it is not the key pair named, so it is not deleted")
    if want_fingerprint and live_fingerprint:
        if _fingerprint(live_fingerprint) == _fingerprint(want_fingerprint):
            return None
        return (f"key pair '{key_name}' now has fingerprint {live_fingerprint}, not {want_fingerprint} ({whose}): "
                "re-created under the same name since; it is not the key pair named, so it is not deleted")
    return (f"{whose} names neither a KeyPairId nor a fingerprint that can be compared with key pair "
            f"'{key_name}' ({live_id or 'no id'}): it cannot be told from one re-created under the same name")


def _describe_key_pair(ec2: Any, key_name: str) -> dict[str, Any] | None:
    """``DescribeKeyPairs(KeyNames=[key_name], IncludePublicKey=True)``'s entry, ``None`` when EC2
    answers ``InvalidKeyPair.NotFound`` (or lists nothing)."""
    try:
        pairs = ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"]
    except ClientError as err:
        if _error_code(err) == "InvalidKeyPair.NotFound":
            return None
        raise
    return pairs[0] if pairs else None


def _key_pair_region(ctx: ActionContext) -> str | None:
    """``params.region``, else the credential's ``region`` attribute, else the detection's region."""
    cred = ctx.detection.credential
    return (ctx.params.get("region") or (cred.attributes.get("region") if cred else None)
            or ctx.detection.region)


KeyPairId = Annotated[str, Field(pattern=r"^key-[0-9a-f]{8,32}$", description="EC2 KeyPairId (key-...)")]
KeyName = Annotated[str, Field(min_length=1, max_length=255, description="EC2 key pair name")]


@register
class DeleteKeyPair(AwsContainmentAction):
    """Delete an EC2 key pair (``ec2:DeleteKeyPair``) in the detection's region: exactly the key pair
    the event created or imported, never another one that took its name since.

    Reads ``DescribeKeyPairs(KeyNames=[key_name], IncludePublicKey=True)`` and compares the key pair
    found with the one the detection names (the ``CreateKeyPair`` / ``ImportKeyPair`` record's
    ``responseElements.keyPairId``, else its ``keyFingerprint``; :func:`key_pair_mismatch`), and with
    ``key_pair_id`` / ``key_fingerprint`` when given (what ``aws.key-pair`` read when the plan was
    made). A key pair that is not the one named (deleted and re-created under the same name, by the
    attacker or its owner), or a detection that names neither an ID nor a fingerprint, is
    *refused* (``GuardError``: run ``refused``, nothing deleted, the key pair found recorded as
    ``before`` with ``same_key_pair: false`` and the reason in ``mismatch``). The guard refuses the
    same case before any plan (:meth:`check_identifies`) when the playbook renders ``key_pair_id`` /
    ``key_fingerprint`` from ``aws.key-pair``. The delete names the key pair by ``KeyPairId`` (by
    ``KeyName`` only when EC2 returned no ID).

    The before state records the public key, so rollback re-imports it with ``ec2:ImportKeyPair``
    (the holder of the private key can use it again; the new key pair gets a new ``KeyPairId``, so it
    is no longer the key pair the event named: running the containment again after a rollback is
    refused, deliberately, and left to a person).

    Params: ``key_name``; ``region`` (default: the credential's ``region`` attribute, else the
    detection's region); ``key_pair_id`` / ``key_fingerprint`` (optional: the identity the key pair
    must still have; ``null`` = nothing read, e.g. the key pair did not exist).
    State: ``{key_name, key_pair_id, key_type, key_fingerprint, create_time, public_key, region,
    event_key_pair_id, event_key_fingerprint, same_key_pair, mismatch}`` or ``None`` when no key pair
    has that name. Contained when ``None``: a key pair re-created under the name is not contained
    (verification says so rather than call the name clean).
    Errors: ``ClientError`` other than ``InvalidKeyPair.NotFound`` propagates (run ``failed``).
    API: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeKeyPairs.html ,
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteKeyPair.html ,
    https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-log-file-examples.html
    (the ``CreateKeyPair`` record).

    .. code-block:: yaml

        contain:
          - action: aws.delete-key-pair
            with:
              key_name: "{{ credential.uid }}"
              region: "{{ detection.region }}"
              key_pair_id: "{{ enrichment['aws.key-pair'].key_pair_id }}"
              key_fingerprint: "{{ enrichment['aws.key-pair'].key_fingerprint }}"
    """

    name = "aws.delete-key-pair"
    service = "ec2"

    class Params(Params):
        key_name: Annotated[KeyName, Identifies("credential.uid")]
        region: Region | SkipJsonSchema[None] = None
        key_pair_id: Annotated[KeyPairId | None, Identifies("credential.attributes.keyPairId")] = None
        key_fingerprint: Annotated[str | None, Identifies("credential.attributes.keyFingerprint"),
                                   Field(min_length=1, max_length=128)] = None

    class State(State):
        key_name: str
        key_pair_id: str | None
        key_type: str | None
        key_fingerprint: str | None
        create_time: IsoTime | None
        public_key: str | None
        region: str | None
        event_key_pair_id: str | None
        event_key_fingerprint: str | None
        same_key_pair: bool
        mismatch: str | None

    permissions = ("ec2:DescribeKeyPairs", "ec2:DeleteKeyPair", "ec2:ImportKeyPair")
    credential_kinds = ("aws_key_pair",)
    rollback_supported = True

    @classmethod
    def check_identifies(cls, params: dict[str, Any], detection: Detection) -> str | None:
        """The generic check for ``key_name``; then ``key_pair_id`` / ``key_fingerprint`` (what was
        read of the key pair now under that name) against the key pair the detection names, by
        :func:`key_pair_mismatch`: a re-created key pair is refused here, before any plan. Both
        ``None`` (nothing under the name when read, or not rendered): nothing to compare yet; the
        action compares when it reads."""
        rest = {k: v for k, v in params.items() if k not in ("key_pair_id", "key_fingerprint")}
        reason = super().check_identifies(rest, detection)
        if reason or (params.get("key_pair_id") is None and params.get("key_fingerprint") is None):
            return reason
        name = str(params.get("key_name"))
        mismatch = key_pair_mismatch(name, params.get("key_pair_id"), params.get("key_fingerprint"),
                                     *_event_key_pair(detection, name), "the detection's")
        return f"{cls.name}: {mismatch}" if mismatch else None

    def region(self, ctx: ActionContext) -> str | None:
        return _key_pair_region(ctx)

    def target(self, ctx: ActionContext) -> str:
        account = ctx.detection.account_uid or "-"
        return f"arn:aws:ec2:{self.region(ctx)}:{account}:key-pair/{ctx.params['key_name']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        region, name = self.region(ctx), ctx.params["key_name"]
        kp = _describe_key_pair(self.client(ctx, "ec2", region), name)
        if kp is None:
            return None
        live_id, live_fp = kp.get("KeyPairId"), kp.get("KeyFingerprint")
        event_id, event_fp = _event_key_pair(ctx.detection, name)
        mismatch = key_pair_mismatch(name, live_id, live_fp, event_id, event_fp, "the detection's")
        planned_id, planned_fp = ctx.params.get("key_pair_id"), ctx.params.get("key_fingerprint")
        if mismatch is None and (planned_id or planned_fp):
            mismatch = key_pair_mismatch(name, live_id, live_fp, planned_id, planned_fp, "the one planned")
        return {"key_name": kp["KeyName"], "key_pair_id": live_id, "key_type": kp.get("KeyType"),
                "key_fingerprint": live_fp,
                "create_time": _iso(kp["CreateTime"]) if kp.get("CreateTime") else None,
                "public_key": kp.get("PublicKey"), "region": region, "event_key_pair_id": event_id,
                "event_key_fingerprint": event_fp, "same_key_pair": mismatch is None, "mismatch": mismatch}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        if state is not None and not state["same_key_pair"]:
            raise GuardError(state["mismatch"])
        key_pair_id = (state or {}).get("key_pair_id")
        params = {"KeyPairId": key_pair_id} if key_pair_id else {"KeyName": ctx.params["key_name"]}
        return [ApiCall(service="ec2", operation="DeleteKeyPair", params=params, region=self.region(ctx))]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("public_key"):
            raise GuardError(f"key pair '{ctx.params['key_name']}': no public key recorded, cannot re-import")
        if self.read_state(ctx) is not None:
            return []
        return [ApiCall(service="ec2", operation="ImportKeyPair",
                        params={"KeyName": before["key_name"], "PublicKeyMaterial": before["public_key"]},
                        region=before.get("region"))]


@register
class DeactivateServiceSpecificCredential(AwsContainmentAction):
    """Deactivate a service-specific credential (CodeCommit / Keyspaces / Bedrock password)
    with ``iam:UpdateServiceSpecificCredential Status=Inactive``.

    Guard: the ID must be listed for the named user; if ``ListServiceSpecificCredentials
    AllUsers=true`` shows it under another user, ``GuardError``; if it exists nowhere, it is
    ``already_contained`` with ``data={"missing": True}``.
    State: ``{user_name, service_specific_credential_id, service_name, service_user_name, status,
    create_date}``. Rollback: ``Status=Active``. (moto 5.2 has no service-specific credentials;
    the sandbox serves these operations from its stand-in.)
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateServiceSpecificCredential.html

    .. code-block:: yaml

        contain:
          - action: aws.deactivate-service-specific-credential
            with:
              user_name: "{{ credential.owner.name }}"
              service_specific_credential_id: "{{ credential.uid }}"
    """

    name = "aws.deactivate-service-specific-credential"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name")]
        service_specific_credential_id: Annotated[str, Identifies("credential.uid"),
                                                  Field(pattern=r"^[\w]{20,128}$")]

    class State(State):
        user_name: str
        service_specific_credential_id: str
        service_name: str | None
        service_user_name: str | None
        status: IamStatus
        create_date: IsoTime

    permissions = ("iam:ListServiceSpecificCredentials", "iam:UpdateServiceSpecificCredential")
    credential_kinds = ("aws_service_specific_credential",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        p = ctx.params
        return (f"{_user_arn(ctx, p['user_name'])} service-specific-credential "
                f"{p['service_specific_credential_id']}")

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        user, cid = ctx.params["user_name"], ctx.params["service_specific_credential_id"]
        iam = self.client(ctx)
        try:
            creds = iam.list_service_specific_credentials(UserName=user)["ServiceSpecificCredentials"]
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            creds = []
        for c in creds:
            if c["ServiceSpecificCredentialId"] == cid:
                return {"user_name": user, "service_specific_credential_id": cid,
                        "service_name": c.get("ServiceName"), "service_user_name": c.get("ServiceUserName"),
                        "status": c["Status"], "create_date": _iso(c["CreateDate"])}
        everyone = iam.list_service_specific_credentials(AllUsers=True)["ServiceSpecificCredentials"]
        for c in everyone:
            if c["ServiceSpecificCredentialId"] == cid:
                raise GuardError(f"service-specific credential {cid} belongs to user '{c.get('UserName')}', "
                                 f"not '{user}'")
        return None

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or state["status"] == "Inactive"

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="UpdateServiceSpecificCredential",
                        params={"UserName": ctx.params["user_name"],
                                "ServiceSpecificCredentialId": ctx.params["service_specific_credential_id"],
                                "Status": "Inactive"})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or before.get("status") != "Active":
            return []
        return [ApiCall(service="iam", operation="UpdateServiceSpecificCredential",
                        params={"UserName": before["user_name"],
                                "ServiceSpecificCredentialId": before["service_specific_credential_id"],
                                "Status": "Active"})]


class InlinePolicyState(State):
    """One named inline user policy as :meth:`_InlinePolicyAction._read_inline` reads it."""

    user_name: str
    policy_name: str
    exists: bool
    document: dict[str, Any] | None


class _InlinePolicyAction(AwsContainmentAction):
    """Shared reading of one named inline user policy (``iam:GetUserPolicy``)."""

    def _read_inline(self, ctx: ActionContext, user: str, policy_name: str) -> dict[str, Any] | None:
        iam = self.client(ctx)
        try:
            doc = iam.get_user_policy(UserName=user, PolicyName=policy_name)["PolicyDocument"]
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            if not self._iam_user_exists(ctx, user):
                return None
            return {"user_name": user, "policy_name": policy_name, "exists": False, "document": None}
        return {"user_name": user, "policy_name": policy_name, "exists": True, "document": _policy_doc(doc)}

    def _restore_calls(self, before: dict[str, Any] | None) -> list[ApiCall]:
        """Put back the inline policy as it was before (or delete it if there was none)."""
        if not before:
            return []
        if before.get("exists"):
            return [ApiCall(service="iam", operation="PutUserPolicy",
                            params={"UserName": before["user_name"], "PolicyName": before["policy_name"],
                                    "PolicyDocument": json.dumps(before["document"])})]
        return [ApiCall(service="iam", operation="DeleteUserPolicy",
                        params={"UserName": before["user_name"], "PolicyName": before["policy_name"]})]


def revoke_policy_document(issued_before: datetime) -> dict[str, Any]:
    """The ``CordonRevokeOlderSessions`` document: deny everything to any session whose
    ``aws:TokenIssueTime`` is before ``issued_before`` (as the IAM console's *Revoke active
    sessions* does for roles)."""
    stmt = _deny_all_statement(REVOKE_POLICY_NAME)
    stmt["Condition"] = {"DateLessThan": {"aws:TokenIssueTime": _iso(issued_before)}}
    return {"Version": "2012-10-17", "Statement": [stmt]}


def _revoke_time(doc: Any) -> datetime | None:
    try:
        stmt = doc["Statement"][0]
        everything = ("*", ["*"])
        if stmt["Effect"] != "Deny" or stmt["Action"] not in everything or stmt["Resource"] not in everything:
            return None
        return _parse_iso(stmt["Condition"]["DateLessThan"]["aws:TokenIssueTime"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class _RevokeOlderSessions(AwsContainmentAction):
    """What both session revocations share: the cut-off time (``issued_before``, default now to the
    second) and whether the ``CordonRevokeOlderSessions`` document read covers it."""

    def issued_before(self, ctx: ActionContext) -> datetime:
        value = ctx.params.get("issued_before")
        if value:
            return _parse_iso(str(value))
        return datetime.now(UTC).replace(microsecond=0)

    def _covers(self, ctx: ActionContext, document: Any) -> dict[str, Any]:
        """``{issued_before, covers_requested}`` for the revocation ``document`` (``None``: none)."""
        current = _revoke_time(document) if document else None
        return {"issued_before": _iso(current) if current else None,
                "covers_requested": bool(current and current >= self.issued_before(ctx))}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or bool(state["covers_requested"])


@register
class RevokeSessions(_RevokeOlderSessions, _InlinePolicyAction):
    """Revoke an IAM user's temporary sessions issued before a time: inline policy
    ``CordonRevokeOlderSessions`` = Deny ``*`` on ``*`` when ``aws:TokenIssueTime`` <
    ``issued_before`` (``iam:PutUserPolicy``).

    This is how ``sts:GetFederationToken`` sessions are revoked: a federated user's permissions
    are the intersection of the calling IAM user's policies and the session policy, so a deny
    on the IAM user applies to every federation token (and ``GetSessionToken`` session) it
    issued before that time. Long-term access keys are not affected.

    Params: ``user_name``; ``issued_before`` (ISO 8601; default: now, truncated to the second;
    pass it explicitly for a plan that does not change between dry run and run).
    State: ``{user_name, policy_name, exists, document, issued_before, covers_requested}``
    (``None`` if the user does not exist). Contained when the policy exists with an
    ``issued_before`` equal to or later than the requested one. Rollback: put back the previous
    document if there was one, else ``DeleteUserPolicy`` of exactly that policy name.
    API: https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_temp_control-access_disable-perms.html

    .. code-block:: yaml

        contain:
          - action: aws.revoke-sessions
            with:
              user_name: "{{ actor.user.name }}"
              issued_before: "{{ now }}"
    """

    name = "aws.revoke-sessions"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name", "actor.user.name", "target.name")]
        issued_before: Annotated[str, Field(min_length=10)] | SkipJsonSchema[None] = None

    class State(InlinePolicyState):
        issued_before: IsoTime | None
        covers_requested: bool

    permissions = ("iam:GetUser", "iam:GetUserPolicy", "iam:PutUserPolicy", "iam:DeleteUserPolicy")
    credential_kinds = ("aws_federation_token", "aws_access_key", "aws_login_profile", "aws_iam_user")
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        when = _iso(self.issued_before(ctx))
        return f"{_user_arn(ctx, ctx.params['user_name'])} sessions issued before {when}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        state = self._read_inline(ctx, ctx.params["user_name"], REVOKE_POLICY_NAME)
        if state is None:
            return None
        return {**state, **self._covers(ctx, state["document"] if state["exists"] else None)}

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        doc = revoke_policy_document(self.issued_before(ctx))
        return [ApiCall(service="iam", operation="PutUserPolicy",
                        params={"UserName": ctx.params["user_name"], "PolicyName": REVOKE_POLICY_NAME,
                                "PolicyDocument": json.dumps(doc, sort_keys=True)})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        return self._restore_calls(before)


QUARANTINE_DOCUMENT = {"Version": "2012-10-17", "Statement": [_deny_all_statement(QUARANTINE_POLICY_NAME)]}


RoleName = Annotated[str, Field(pattern=r"^[\w+=,.@-]{1,64}$", description="IAM role name")]


class RoleSessionsState(State):
    """The role's ``CordonRevokeOlderSessions`` inline policy as :class:`RevokeRoleSessions` reads it."""

    role_name: str
    role_arn: str
    policy_name: str
    exists: bool
    document: dict[str, Any] | None
    issued_before: IsoTime | None
    covers_requested: bool


@register
class RevokeRoleSessions(_RevokeOlderSessions):
    """Revoke every session of an IAM role issued before a time: the role's inline policy
    ``CordonRevokeOlderSessions`` = Deny ``*`` on ``*`` when ``aws:TokenIssueTime`` <
    ``issued_before`` (``iam:PutRolePolicy``), what the IAM console's *Revoke active sessions*
    does. The answer to an attacker holding a role's temporary credentials (an EC2 instance role's
    stolen from the metadata service, a hijacked CI role session): those credentials stop working,
    new sessions (the instance, the pipeline assuming the role again) are not affected.

    Params: ``role_name``; ``issued_before`` (ISO 8601; default: now, truncated to the second; pass
    it explicitly, e.g. ``{{ now }}``, so the plan does not change between dry run and run).
    State: ``{role_name, role_arn, policy_name, exists, document, issued_before, covers_requested}``
    (``None`` if the role does not exist). Contained when the policy exists with an
    ``issued_before`` equal to or later than the requested one. A service-linked role (path
    ``/aws-service-role/``) is refused: AWS owns it and it takes no inline policy. Rollback: put
    back the previous document if there was one, else ``DeleteRolePolicy`` of exactly that policy.
    API: https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_use_revoke-sessions.html

    .. code-block:: yaml

        contain:
          - action: aws.revoke-role-sessions
            with:
              role_name: "{{ credential.owner.name }}"
              issued_before: "{{ now }}"
    """

    name = "aws.revoke-role-sessions"

    class Params(Params):
        role_name: Annotated[RoleName, Identifies("credential.owner.name", "target.name")]
        issued_before: Annotated[str, Field(min_length=10)] | SkipJsonSchema[None] = None

    State = RoleSessionsState

    permissions = ("iam:GetRole", "iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy")
    credential_kinds = ("aws_role_sessions", "aws_role_trust")
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        role = ctx.params["role_name"]
        account = ctx.detection.account_uid or "-"
        return f"arn:aws:iam::{account}:role/{role} sessions issued before {_iso(self.issued_before(ctx))}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        iam = self.client(ctx)
        role = ctx.params["role_name"]
        try:
            got = iam.get_role(RoleName=role)["Role"]
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return None
            raise
        if str(got.get("Path", "")).startswith("/aws-service-role/"):
            raise GuardError(f"role {got['Arn']} is service-linked: AWS owns it; revoke its sessions by hand")
        try:
            doc = _policy_doc(iam.get_role_policy(RoleName=role, PolicyName=REVOKE_POLICY_NAME)["PolicyDocument"])
            exists = True
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            doc, exists = None, False
        return {"role_name": role, "role_arn": got["Arn"], "policy_name": REVOKE_POLICY_NAME, "exists": exists,
                "document": doc, **self._covers(ctx, doc)}

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        doc = revoke_policy_document(self.issued_before(ctx))
        return [ApiCall(service="iam", operation="PutRolePolicy",
                        params={"RoleName": ctx.params["role_name"], "PolicyName": REVOKE_POLICY_NAME,
                                "PolicyDocument": json.dumps(doc, sort_keys=True)})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        if before.get("exists"):
            return [ApiCall(service="iam", operation="PutRolePolicy",
                            params={"RoleName": before["role_name"], "PolicyName": before["policy_name"],
                                    "PolicyDocument": json.dumps(before["document"])})]
        return [ApiCall(service="iam", operation="DeleteRolePolicy",
                        params={"RoleName": before["role_name"], "PolicyName": before["policy_name"]})]


@register
class QuarantineUser(_InlinePolicyAction):
    """Quarantine an IAM user (e.g. a backdoor user created for persistence, T1136.003): inline
    policy ``CordonQuarantine`` = Deny ``*`` on ``*``, unconditionally (``iam:PutUserPolicy``).

    An explicit deny beats every allow, so the user's keys, password and sessions can do
    nothing while the user, its keys and its history stay for investigation. Cordon does not
    attach AWS's managed ``AWSCompromisedKeyQuarantineV3`` (moto does not ship it, and it denies
    only selected actions).
    State: ``{user_name, policy_name, exists, document, matches}`` (``None`` if the user does
    not exist). Contained when the policy exists with exactly Cordon's document.
    Rollback: ``DeleteUserPolicy CordonQuarantine`` (or put back a different document that was
    there before).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_PutUserPolicy.html

    .. code-block:: yaml

        contain:
          - action: aws.quarantine-user
            with:
              user_name: "{{ target.name }}"
    """

    name = "aws.quarantine-user"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name", "credential.uid", "target.name")]

    class State(InlinePolicyState):
        matches: bool

    permissions = ("iam:GetUser", "iam:GetUserPolicy", "iam:PutUserPolicy", "iam:DeleteUserPolicy")
    credential_kinds = ("aws_iam_user", "aws_access_key", "aws_login_profile", "aws_policy_grant")
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return f"{_user_arn(ctx, ctx.params['user_name'])} quarantine"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        state = self._read_inline(ctx, ctx.params["user_name"], QUARANTINE_POLICY_NAME)
        if state is not None:
            state["matches"] = bool(state["exists"] and state["document"] == QUARANTINE_DOCUMENT)
        return state

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or bool(state["matches"])

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="PutUserPolicy",
                        params={"UserName": ctx.params["user_name"], "PolicyName": QUARANTINE_POLICY_NAME,
                                "PolicyDocument": json.dumps(QUARANTINE_DOCUMENT, sort_keys=True)})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        return self._restore_calls(before)


@register
class DetachUserPolicy(AwsContainmentAction):
    """Detach exactly one managed policy from an IAM user (``iam:DetachUserPolicy``), e.g.
    ``AdministratorAccess`` attached by a suspicious actor. Other attachments are untouched.

    State: ``{user_name, policy_arn, attached, attached_policy_arns}`` (``None`` if the user does
    not exist). Contained when the ARN is not attached. Rollback: ``iam:AttachUserPolicy``.
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_DetachUserPolicy.html

    .. code-block:: yaml

        contain:
          - action: aws.detach-user-policy
            with:
              user_name: "{{ target.name }}"
              policy_arn: "{{ credential.uid }}"
    """

    name = "aws.detach-user-policy"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name", "target.name")]
        policy_arn: Annotated[PolicyArn, Identifies("credential.uid", "credential.attributes.policy_arn")]

    class State(State):
        user_name: str
        policy_arn: str
        attached: bool
        attached_policy_arns: list[str]

    permissions = ("iam:ListAttachedUserPolicies", "iam:DetachUserPolicy", "iam:AttachUserPolicy")
    credential_kinds = ("aws_policy_grant",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return f"{_user_arn(ctx, ctx.params['user_name'])} attached-policy {ctx.params['policy_arn']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        user = ctx.params["user_name"]
        try:
            pages = self.client(ctx).get_paginator("list_attached_user_policies").paginate(UserName=user)
            arns = [p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]]
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return None
            raise
        return {"user_name": user, "policy_arn": ctx.params["policy_arn"],
                "attached": ctx.params["policy_arn"] in arns, "attached_policy_arns": sorted(arns)}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["attached"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="DetachUserPolicy",
                        params={"UserName": ctx.params["user_name"], "PolicyArn": ctx.params["policy_arn"]})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("attached"):
            return []
        return [ApiCall(service="iam", operation="AttachUserPolicy",
                        params={"UserName": before["user_name"], "PolicyArn": before["policy_arn"]})]


@register
class DeleteUserPolicy(_InlinePolicyAction):
    """Delete exactly one inline user policy (``iam:DeleteUserPolicy``), e.g. an inline admin
    grant put by a suspicious actor. The document is recorded in the before state, so rollback
    puts it back with ``iam:PutUserPolicy``. Refuses (``GuardError``) Cordon's own policies
    (``CordonQuarantine``, ``CordonRevokeOlderSessions``): those are undone by rolling back the
    action that put them.

    State: ``{user_name, policy_name, exists, document}`` (``None`` if the user does not exist).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_DeleteUserPolicy.html

    .. code-block:: yaml

        contain:
          - action: aws.delete-user-policy
            with:
              user_name: "{{ target.name }}"
              policy_name: "{{ credential.uid }}"
    """

    name = "aws.delete-user-policy"

    class Params(Params):
        user_name: Annotated[UserName, Identifies("credential.owner.name", "target.name")]
        policy_name: Annotated[PolicyName, Identifies("credential.uid", "credential.attributes.policy_name")]

    class State(InlinePolicyState):
        pass

    permissions = ("iam:GetUser", "iam:GetUserPolicy", "iam:DeleteUserPolicy", "iam:PutUserPolicy")
    credential_kinds = ("aws_policy_grant",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        return f"{_user_arn(ctx, ctx.params['user_name'])} inline-policy {ctx.params['policy_name']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        if ctx.params["policy_name"] in CORDON_POLICY_NAMES:
            raise GuardError(f"'{ctx.params['policy_name']}' is Cordon's own policy; "
                             "roll back the action that put it instead")
        return self._read_inline(ctx, ctx.params["user_name"], ctx.params["policy_name"])

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["exists"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="DeleteUserPolicy",
                        params={"UserName": ctx.params["user_name"],
                                "PolicyName": ctx.params["policy_name"]})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("exists"):
            return []
        return self._restore_calls(before)


# -- enrichment ---------------------------------------------------------------------------------
def _is_admin_document(doc: Any) -> bool:
    """Whether a policy document allows ``*`` (or ``*:*``: every action)."""
    doc = _policy_doc(doc)
    stmts = doc.get("Statement", []) if isinstance(doc, dict) else []
    if isinstance(stmts, dict):
        stmts = [stmts]
    for stmt in stmts:
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
            continue
        actions = stmt.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if "*" in actions or "*:*" in actions:
            return True
    return False


@register
class IamUser(EnrichmentAction):
    """Everything IAM says about one user.

    Returns ``{"exists": False, "user_name"}`` for a user that does not exist, else
    ``{exists, user_name, arn, user_id, path, create_date, tags: {key: value}, groups: [names],
    attached_policies: [{name, arn}], inline_policies: [{name, document}],
    access_keys: [{access_key_id, status, create_date, last_used: {date, service, region}}],
    login_profile: {exists, create_date, password_reset_required},
    mfa_devices: [{serial_number, enable_date}], is_admin, key_count, active_key_count}``.
    ``is_admin``: ``AdministratorAccess`` attached, or an inline policy allowing ``Action: "*"``
    (attached customer policies and group policies are not expanded).
    API: GetUser, ListGroupsForUser, ListAttachedUserPolicies, ListUserPolicies, GetUserPolicy,
    ListAccessKeys, GetAccessKeyLastUsed, GetLoginProfile, ListMFADevices
    (https://docs.aws.amazon.com/IAM/latest/APIReference/).

    .. code-block:: yaml

        enrich:
          - action: aws.iam-user
            with:
              user_name: "{{ credential.owner.name }}"
    """

    name = "aws.iam-user"
    provider = "aws"

    class Params(Params):
        user_name: UserName

    permissions = ("iam:GetUser", "iam:ListGroupsForUser", "iam:ListAttachedUserPolicies",
                   "iam:ListUserPolicies", "iam:GetUserPolicy", "iam:ListAccessKeys",
                   "iam:GetAccessKeyLastUsed", "iam:GetLoginProfile", "iam:ListMFADevices")
    credential_kinds = ("aws_access_key", "aws_login_profile", "aws_iam_user", "aws_policy_grant",
                        "aws_service_specific_credential", "aws_federation_token")

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        user = ctx.params["user_name"]
        iam = ctx.clients("iam", region=None)
        try:
            u = iam.get_user(UserName=user)["User"]
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return {"exists": False, "user_name": user}
            raise

        def pages(op: str, key: str, **kw: Any) -> list[Any]:
            return [item for page in iam.get_paginator(op).paginate(**kw) for item in page[key]]

        groups = [g["GroupName"] for g in pages("list_groups_for_user", "Groups", UserName=user)]
        attached = [{"name": p["PolicyName"], "arn": p["PolicyArn"]}
                    for p in pages("list_attached_user_policies", "AttachedPolicies", UserName=user)]
        inline = []
        for pname in pages("list_user_policies", "PolicyNames", UserName=user):
            doc = iam.get_user_policy(UserName=user, PolicyName=pname)["PolicyDocument"]
            inline.append({"name": pname, "document": _policy_doc(doc)})
        keys = []
        for k in pages("list_access_keys", "AccessKeyMetadata", UserName=user):
            used = iam.get_access_key_last_used(AccessKeyId=k["AccessKeyId"]).get("AccessKeyLastUsed", {})
            keys.append({"access_key_id": k["AccessKeyId"], "status": k["Status"],
                         "create_date": _iso(k["CreateDate"]),
                         "last_used": {
                             "date": _iso(used["LastUsedDate"]) if used.get("LastUsedDate") else None,
                             "service": used.get("ServiceName"), "region": used.get("Region")}})
        try:
            lp = iam.get_login_profile(UserName=user)["LoginProfile"]
            login = {"exists": True, "create_date": _iso(lp["CreateDate"]),
                     "password_reset_required": bool(lp.get("PasswordResetRequired", False))}
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            login = {"exists": False, "create_date": None, "password_reset_required": None}
        mfa = [{"serial_number": d["SerialNumber"],
                "enable_date": _iso(d["EnableDate"]) if d.get("EnableDate") else None}
               for d in pages("list_mfa_devices", "MFADevices", UserName=user)]
        is_admin = (any(p["arn"].endswith(ADMIN_POLICY_SUFFIX) for p in attached)
                    or any(_is_admin_document(p["document"]) for p in inline))
        return {
            "exists": True, "user_name": u["UserName"], "arn": u["Arn"], "user_id": u["UserId"],
            "path": u.get("Path", "/"), "create_date": _iso(u["CreateDate"]),
            "tags": {t["Key"]: t["Value"] for t in u.get("Tags", [])},
            "groups": groups, "attached_policies": attached, "inline_policies": inline,
            "access_keys": keys, "login_profile": login, "mfa_devices": mfa,
            "is_admin": is_admin, "key_count": len(keys),
            "active_key_count": sum(1 for k in keys if k["status"] == "Active"),
        }


@register
class ActorFacts(EnrichmentAction):
    """Who acted, from the detection alone (no API call).

    Returns ``{principal_arn, principal_name, principal_type, account_uid, access_key_id,
    temporary_credentials (ASIA key), access_path (console|api|service|unknown), src_ip,
    user_agent, invoked_by, mfa, session_issuer, session_created, is_root, is_assumed_role,
    is_federated_user, is_aws_service, target_arn, target_name, actor_is_target}``.
    ``actor_is_target`` compares ARNs when both are known, else names (``None`` when the
    target is unknown). Cordon's own identity (``sts:GetCallerIdentity``) is the guard's
    business, not this action's.

    .. code-block:: yaml

        enrich:
          - action: aws.actor
    """

    name = "aws.actor"
    provider = "aws"
    Params = NoParams  # explicit, so ``schema`` is generated (the inherited default differs: no description)
    permissions = ()
    credential_kinds = ("aws_access_key", "aws_login_profile", "aws_iam_user", "aws_policy_grant",
                        "aws_service_specific_credential", "aws_federation_token", "aws_key_pair",
                        "aws_rolesanywhere_trust_anchor", "aws_rolesanywhere_profile", "aws_role_trust",
                        "aws_root_access_key", "aws_eks_access_entry", "aws_eks_access_policy")

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        det = ctx.detection
        actor = det.actor
        who = actor.user
        target = det.target if (det.target.uid or det.target.name) else (
            det.credential.owner if det.credential else det.target)
        ptype = who.type or ""
        if who.uid and target.uid:
            same: bool | None = who.uid == target.uid
        elif who.name and target.name:
            same = who.name == target.name and (who.account_uid or det.account_uid) == (
                target.account_uid or det.account_uid)
        else:
            same = None
        key = actor.session_uid
        return {
            "principal_arn": who.uid, "principal_name": who.name, "principal_type": who.type,
            "account_uid": who.account_uid or det.account_uid,
            "access_key_id": key, "temporary_credentials": bool(key and key.startswith("ASIA")),
            "access_path": actor.access_path, "src_ip": actor.src_ip, "user_agent": actor.user_agent,
            "invoked_by": actor.invoked_by, "mfa": actor.mfa, "session_issuer": actor.session_issuer,
            "session_created": actor.session_created,
            "is_root": ptype == "Root" or bool(who.uid and who.uid.endswith(":root")),
            "is_assumed_role": ptype == "AssumedRole" or bool(who.uid and ":assumed-role/" in who.uid),
            "is_federated_user": ptype == "FederatedUser" or bool(who.uid and ":federated-user/" in who.uid),
            "is_aws_service": ptype == "AWSService" or actor.access_path == "service",
            "target_arn": target.uid, "target_name": target.name, "actor_is_target": same,
        }


@register
class KeyPairFacts(EnrichmentAction):
    """The EC2 key pair now under the detection's key pair name, and whether it is the one the event
    created or imported (``DescribeKeyPairs(KeyNames=[key_name])`` in the key pair's region, compared
    by :func:`key_pair_mismatch`: ``KeyPairId``, else fingerprint).

    Returns ``{exists, key_name, region, key_pair_id, key_fingerprint, key_type, create_time (ISO),
    tags: {key: value}, event_key_pair_id, event_key_fingerprint, same_key_pair, mismatch}``;
    for a name no key pair has, ``exists: false`` with ``key_pair_id`` / ``key_fingerprint`` /
    ``same_key_pair`` ``None``. ``aws-key-pair`` renders ``aws.delete-key-pair``'s ``key_pair_id``
    and ``key_fingerprint`` from it, so the guard refuses a re-created key pair before any plan.
    Errors: ``ClientError`` other than ``InvalidKeyPair.NotFound`` propagates (recorded as the
    enrichment's ``error``).
    API: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeKeyPairs.html

    .. code-block:: yaml

        enrich:
          - action: aws.key-pair
            with:
              key_name: "{{ credential.uid }}"
              region: "{{ detection.region }}"
    """

    name = "aws.key-pair"
    provider = "aws"

    class Params(Params):
        key_name: KeyName
        region: Region | SkipJsonSchema[None] = None

    permissions = ("ec2:DescribeKeyPairs",)
    credential_kinds = ("aws_key_pair",)

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        region, name = _key_pair_region(ctx), ctx.params["key_name"]
        event_id, event_fp = _event_key_pair(ctx.detection, name)
        kp = _describe_key_pair(ctx.clients("ec2", region=region), name)
        out: dict[str, Any] = {"exists": kp is not None, "key_name": name, "region": region,
                               "event_key_pair_id": event_id, "event_key_fingerprint": event_fp}
        if kp is None:
            return {**out, "key_pair_id": None, "key_fingerprint": None, "key_type": None, "create_time": None,
                    "tags": {}, "same_key_pair": None, "mismatch": None}
        mismatch = key_pair_mismatch(name, kp.get("KeyPairId"), kp.get("KeyFingerprint"), event_id, event_fp,
                                     "the detection's")
        return {**out, "key_pair_id": kp.get("KeyPairId"), "key_fingerprint": kp.get("KeyFingerprint"),
                "key_type": kp.get("KeyType"), "create_time": _iso(kp["CreateTime"]) if kp.get("CreateTime") else None,
                "tags": {t["Key"]: t["Value"] for t in kp.get("Tags") or []}, "same_key_pair": mismatch is None,
                "mismatch": mismatch}


@register
class CloudTrailSession(EnrichmentAction):
    """What else the actor's access key did around the detection: CloudTrail ``LookupEvents``
    with ``LookupAttributes=[{AttributeKey: AccessKeyId, AttributeValue: actor.session_uid}]``,
    ``StartTime`` / ``EndTime`` = detection time -/+ ``window_minutes`` (default 60), in the
    detection's region, all pages (boto3 paginator, at most ``max_events``, default 500).

    Returns ``{access_key_id, region, start, end, events: [{event_id, event_name, event_time (ISO),
    event_source, source_ip, user_agent, read_only, resources: [{type, name}]}] (newest first),
    count, event_names: {name: n}, truncated}``; with no access key on the detection,
    ``{"events": [], "count": 0, "event_names": {}, "skipped": "no access key id"}``.
    Throttling and 5xx are retried by botocore; other errors propagate.
    API: https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html

    .. code-block:: yaml

        enrich:
          - action: aws.cloudtrail-session
            with:
              window_minutes: 120
    """

    name = "aws.cloudtrail-session"
    provider = "aws"

    class Params(Params):
        window_minutes: Annotated[int, Field(ge=1, le=10080)] = 60
        max_events: Annotated[int, Field(ge=1, le=10000)] = 500

    permissions = ("cloudtrail:LookupEvents",)
    credential_kinds = ("aws_access_key", "aws_login_profile", "aws_iam_user", "aws_policy_grant",
                        "aws_service_specific_credential", "aws_federation_token", "aws_key_pair",
                        "aws_rolesanywhere_trust_anchor", "aws_rolesanywhere_profile", "aws_role_trust",
                        "aws_root_access_key", "aws_eks_access_entry", "aws_eks_access_policy")

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        det = ctx.detection
        key = det.actor.session_uid
        if not key:
            return {"events": [], "count": 0, "event_names": {}, "skipped": "no access key id"}
        window = timedelta(minutes=int(ctx.params.get("window_minutes", 60)))
        limit = int(ctx.params.get("max_events", 500))
        when = det.time if det.time.tzinfo else det.time.replace(tzinfo=UTC)
        start, end = when - window, when + window
        client = ctx.clients("cloudtrail", region=det.region)
        pages = client.get_paginator("lookup_events").paginate(
            LookupAttributes=[{"AttributeKey": "AccessKeyId", "AttributeValue": key}],
            StartTime=start, EndTime=end)
        events: list[dict[str, Any]] = []
        truncated = False
        for page in pages:
            for ev in page.get("Events", []):
                if len(events) >= limit:
                    truncated = True
                    break
                raw = json.loads(ev["CloudTrailEvent"]) if ev.get("CloudTrailEvent") else {}
                events.append({
                    "event_id": ev.get("EventId"), "event_name": ev.get("EventName"),
                    "event_time": _iso(ev["EventTime"]) if ev.get("EventTime") else None,
                    "event_source": ev.get("EventSource") or raw.get("eventSource"),
                    "source_ip": raw.get("sourceIPAddress"), "user_agent": raw.get("userAgent"),
                    "read_only": ev.get("ReadOnly"),
                    "resources": [{"type": r.get("ResourceType"), "name": r.get("ResourceName")}
                                  for r in ev.get("Resources", [])],
                })
            if truncated:
                break
        names: dict[str, int] = {}
        for e in events:
            names[e["event_name"]] = names.get(e["event_name"], 0) + 1
        return {"access_key_id": key, "region": det.region, "start": _iso(start), "end": _iso(end),
                "events": events, "count": len(events), "event_names": names, "truncated": truncated}


# -- IAM Roles Anywhere ------------------------------------------------------------------------
RolesAnywhereId = Annotated[str, Field(pattern=r"^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$",
                                       description="Roles Anywhere ID (a UUID)")]


class RolesAnywhereState(State):
    """A Roles Anywhere trust anchor or profile as :class:`_RolesAnywhereSwitch` reads it."""

    id: str
    arn: str
    name: str | None
    enabled: bool
    region: str | None
    event_arn: str | None
    same_object: bool
    mismatch: str | None


class _RolesAnywhereSwitch(AwsContainmentAction):
    """Disable one IAM Roles Anywhere object (trust anchor or profile) by its ID, exactly the one the
    ``CreateTrustAnchor`` / ``CreateProfile`` record names; rollback enables it again.

    Reads ``Get<Noun>`` in the object's region (``region`` param, else the credential's ``region``
    attribute, else the detection's); ``ResourceNotFoundException`` is ``None`` (nothing to contain). The
    live object's ID and ARN are compared with the record's (``responseElements.<noun>.<noun>Arn``):
    another object (another account or region answering for that ID) is *refused* (``GuardError``),
    never disabled. Contained when ``enabled`` is false. Subclasses name the noun."""

    service = "rolesanywhere"
    rollback_supported = True
    credential_kind: ClassVar[str]
    member: ClassVar[str]  # the response member: trustAnchor / profile
    noun: ClassVar[str]  # the API noun: TrustAnchor / Profile
    arn_noun: ClassVar[str]  # in ARNs: trust-anchor / profile
    param: ClassVar[str]  # the parameter naming the ID

    State = RolesAnywhereState

    def region(self, ctx: ActionContext) -> str | None:
        cred = ctx.detection.credential
        return (ctx.params.get("region") or (cred.attributes.get("region") if cred else None)
                or ctx.detection.region)

    def _event_arn(self, ctx: ActionContext) -> str | None:
        cred = ctx.detection.credential
        if cred is None or cred.kind != self.credential_kind or cred.uid != ctx.params[self.param]:
            return None
        return str(cred.attributes["arn"]) if cred.attributes.get("arn") else None

    def target(self, ctx: ActionContext) -> str:
        account = ctx.detection.account_uid or "-"
        return self._event_arn(ctx) or (
            f"arn:aws:rolesanywhere:{self.region(ctx)}:{account}:{self.arn_noun}/{ctx.params[self.param]}")

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        object_id, region = ctx.params[self.param], self.region(ctx)
        client = self.client(ctx, region=region)
        try:
            got = getattr(client, xform_name(f"Get{self.noun}"))(**{f"{self.member}Id": object_id})[self.member]
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return None
            raise
        live_id, live_arn = got.get(f"{self.member}Id"), got.get(f"{self.member}Arn")
        event_arn = self._event_arn(ctx)
        mismatch = None
        if live_id != object_id:
            mismatch = f"{self.arn_noun} {object_id} answered as {live_id}: not the one named"
        elif event_arn and live_arn != event_arn:
            mismatch = (f"{self.arn_noun} {object_id} is {live_arn}, not {event_arn} (the record's): another "
                        "account or region; it is not the one named, so it is not disabled")
        return {"id": object_id, "arn": live_arn, "name": got.get("name"), "enabled": bool(got.get("enabled")),
                "region": region, "event_arn": event_arn, "same_object": mismatch is None, "mismatch": mismatch,
                **self.extra(got)}

    def extra(self, got: dict[str, Any]) -> dict[str, Any]:
        return {}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or (state["same_object"] and not state["enabled"])

    def _switch(self, verb: str, object_id: str, region: str | None) -> ApiCall:
        return ApiCall(service="rolesanywhere", operation=f"{verb}{self.noun}",
                       params={f"{self.member}Id": object_id}, region=region)

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        if state is not None and not state["same_object"]:
            raise GuardError(state["mismatch"])
        return [self._switch("Disable", ctx.params[self.param], self.region(ctx))]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before or not before.get("enabled"):
            return []
        return [self._switch("Enable", before["id"], before.get("region"))]


@register
class DisableTrustAnchor(_RolesAnywhereSwitch):
    """Disable an IAM Roles Anywhere trust anchor (``rolesanywhere:DisableTrustAnchor``): the X.509
    CA it holds no longer signs certificates that ``CreateSession`` turns into role credentials
    (T1098.001). Never deleted: the CA bundle stays for investigation, and rollback is
    ``EnableTrustAnchor``.

    Params: ``trust_anchor_id`` (the record's ``responseElements.trustAnchor.trustAnchorId``);
    ``region`` (default: the record's ``awsRegion``).
    State: ``{id, arn, name, enabled, region, source_type, event_arn, same_object, mismatch}``
    (``None``: no such trust anchor). Contained when ``enabled`` is false. A trust anchor whose ARN
    is not the record's is refused. Errors: ``ClientError`` other than ``ResourceNotFoundException``
    propagates (run ``failed``).
    API: https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_DisableTrustAnchor.html ,
    https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_GetTrustAnchor.html ,
    https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_EnableTrustAnchor.html

    .. code-block:: yaml

        contain:
          - action: aws.disable-trust-anchor
            with:
              trust_anchor_id: "{{ credential.uid }}"
              region: "{{ detection.region }}"
    """

    name = "aws.disable-trust-anchor"
    credential_kind = "aws_rolesanywhere_trust_anchor"
    member, noun, arn_noun, param = "trustAnchor", "TrustAnchor", "trust-anchor", "trust_anchor_id"

    class Params(Params):
        trust_anchor_id: Annotated[RolesAnywhereId, Identifies("credential.uid")]
        region: Region | SkipJsonSchema[None] = None

    permissions = ("rolesanywhere:GetTrustAnchor", "rolesanywhere:DisableTrustAnchor",
                   "rolesanywhere:EnableTrustAnchor")
    credential_kinds = ("aws_rolesanywhere_trust_anchor",)

    def extra(self, got: dict[str, Any]) -> dict[str, Any]:
        return {"source_type": (got.get("source") or {}).get("sourceType")}


@register
class DisableRolesAnywhereProfile(_RolesAnywhereSwitch):
    """Disable an IAM Roles Anywhere profile (``rolesanywhere:DisableProfile``): no certificate from
    any trust anchor gets sessions of the profile's roles through it any more. Rollback:
    ``EnableProfile``.

    Params: ``profile_id`` (the record's ``responseElements.profile.profileId``); ``region``.
    State: ``{id, arn, name, enabled, region, role_arns, event_arn, same_object, mismatch}``
    (``None``: no such profile). Contained when ``enabled`` is false; a profile whose ARN is not the
    record's is refused.
    API: https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_DisableProfile.html ,
    https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_GetProfile.html ,
    https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_EnableProfile.html

    .. code-block:: yaml

        contain:
          - action: aws.disable-rolesanywhere-profile
            with:
              profile_id: "{{ credential.uid }}"
              region: "{{ detection.region }}"
    """

    name = "aws.disable-rolesanywhere-profile"
    credential_kind = "aws_rolesanywhere_profile"
    member, noun, arn_noun, param = "profile", "Profile", "profile", "profile_id"

    class Params(Params):
        profile_id: Annotated[RolesAnywhereId, Identifies("credential.uid")]
        region: Region | SkipJsonSchema[None] = None

    permissions = ("rolesanywhere:GetProfile", "rolesanywhere:DisableProfile", "rolesanywhere:EnableProfile")
    credential_kinds = ("aws_rolesanywhere_profile",)

    def extra(self, got: dict[str, Any]) -> dict[str, Any]:
        return {"role_arns": list(got.get("roleArns") or [])}


# -- a role trusted from outside the Organization -----------------------------------------------
def principal_account(principal: str) -> str | None:
    """The account a trust-policy ``AWS`` principal belongs to: an ARN's account field, a bare
    12-digit account ID, ``None`` for ``*`` (anyone) or an unreadable value."""
    if re.fullmatch(r"\d{12}", principal):
        return principal
    parts = principal.split(":")
    return parts[4] if len(parts) > 5 and parts[0] == "arn" and re.fullmatch(r"\d{12}", parts[4]) else None


def _principal_key(principal: str) -> str:
    """A principal as IAM stores it: an account ID is its root ARN (``arn:aws:iam::<id>:root``)."""
    return f"arn:aws:iam::{principal}:root" if re.fullmatch(r"\d{12}", principal) else principal


def outside_principals(principals: list[str], known: set[str]) -> list[str]:
    """The principals of ``principals`` whose account is not in ``known`` (``*`` is always outside)."""
    return [p for p in principals if principal_account(p) not in known]


def without_principals(doc: dict[str, Any], remove: list[str]) -> dict[str, Any]:
    """Trust policy ``doc`` with the ``AWS`` principals in ``remove`` taken out of its ``Allow``
    statements (compared as IAM stores them, :func:`_principal_key`); a statement left with no
    principal is dropped, everything else is kept as it is."""
    gone = {_principal_key(p) for p in remove}
    stmts = doc.get("Statement", [])
    stmts = [stmts] if isinstance(stmts, dict) else list(stmts)
    kept: list[Any] = []
    for stmt in stmts:
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
            kept.append(stmt)
            continue
        principal = stmt.get("Principal")
        if principal == "*":
            if "*" not in gone:
                kept.append(stmt)
            continue
        if not isinstance(principal, dict) or "AWS" not in principal:
            kept.append(stmt)
            continue
        values = [principal["AWS"]] if isinstance(principal["AWS"], str) else list(principal["AWS"])
        left = [v for v in values if _principal_key(v) not in gone]
        rest = {k: v for k, v in principal.items() if k != "AWS"}
        if left:
            rest["AWS"] = left[0] if len(left) == 1 else left
        if rest:
            kept.append({**stmt, "Principal": rest})
    return {**doc, "Statement": kept}


def _role_trust_doc(role: dict[str, Any]) -> dict[str, Any]:
    from cordon.providers.aws.cloudtrail import trust_document

    doc = role.get("AssumeRolePolicyDocument")
    if isinstance(doc, str):
        doc = trust_document(doc)
    return doc if isinstance(doc, dict) else {}


class RoleTrustState(State):
    """The role's live trust policy and which of the named principals it still trusts."""

    role_name: str
    role_arn: str
    document: dict[str, Any]
    present: list[str]


@register
class RemoveOutsideTrust(AwsContainmentAction):
    """Take exactly the named principals (accounts outside the Organization) out of a role's trust
    policy (``iam:UpdateAssumeRolePolicy``); every other statement and principal is kept.

    Guard: each of ``principals`` must be one the ``UpdateAssumeRolePolicy`` record trusted
    (``credential.attributes.trusted_aws_principals``), so only what the event added can be removed.
    State: ``{role_name, role_arn, document (the live trust policy), present (those of principals it
    still trusts)}``; ``None`` when the role does not exist. Contained when none is present: run again,
    or on a policy already changed back, it is ``already_contained``. A policy that would be left with
    no statement is refused (``GuardError``: a person decides). Rollback puts the exact document read
    before back (``UpdateAssumeRolePolicy``).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAssumeRolePolicy.html ,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetRole.html

    .. code-block:: yaml

        contain:
          - action: aws.remove-outside-trust
            with:
              role_name: "{{ credential.uid }}"
              principals: "{{ enrichment['aws.role-trust'].outside_principals }}"
    """

    name = "aws.remove-outside-trust"

    class Params(Params):
        role_name: Annotated[RoleName, Identifies("credential.uid", "target.name")]
        principals: Annotated[list[Annotated[str, Field(min_length=1, max_length=2048)]], Field(min_length=1)]

    State = RoleTrustState

    permissions = ("iam:GetRole", "iam:UpdateAssumeRolePolicy")
    credential_kinds = ("aws_role_trust",)
    rollback_supported = True

    @classmethod
    def check_identifies(cls, params: dict[str, Any], detection: Detection) -> str | None:
        """The generic check for ``role_name``; then every principal must be one the record trusted."""
        reason = super().check_identifies(params, detection)
        if reason:
            return reason
        cred = detection.credential
        trusted = {_principal_key(p) for p in ((cred.attributes if cred else {}).get("trusted_aws_principals") or [])}
        stray = [p for p in params.get("principals") or [] if _principal_key(p) not in trusted]
        if stray:
            return f"{cls.name}: principals {stray} are not ones the record's trust policy named"
        return None

    def target(self, ctx: ActionContext) -> str:
        account = ctx.detection.account_uid or "-"
        return f"arn:aws:iam::{account}:role/{ctx.params['role_name']} trust of {', '.join(ctx.params['principals'])}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        from cordon.providers.aws.cloudtrail import aws_principals

        try:
            role = self.client(ctx).get_role(RoleName=ctx.params["role_name"])["Role"]
        except ClientError as err:
            if _error_code(err) == "NoSuchEntity":
                return None
            raise
        doc = _role_trust_doc(role)
        live = {_principal_key(p) for p in aws_principals(doc)}
        return {"role_name": role["RoleName"], "role_arn": role["Arn"], "document": doc,
                "present": [p for p in ctx.params["principals"] if _principal_key(p) in live]}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["present"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        new = without_principals((state or {}).get("document") or {}, ctx.params["principals"])
        if not new["Statement"]:
            raise GuardError(f"removing {ctx.params['principals']} would leave role {ctx.params['role_name']} "
                             "with no trust statement: decide by hand")
        return [ApiCall(service="iam", operation="UpdateAssumeRolePolicy",
                        params={"RoleName": ctx.params["role_name"],
                                "PolicyDocument": json.dumps(new, sort_keys=True)})]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        return [ApiCall(service="iam", operation="UpdateAssumeRolePolicy",
                        params={"RoleName": before["role_name"], "PolicyDocument": json.dumps(before["document"],
                                                                                            sort_keys=True)})]


# -- the root user's own access key (centralized root access) -----------------------------------
IAM_DELETE_ROOT_CREDENTIALS = "arn:aws:iam::aws:policy/root-task/IAMDeleteRootUserCredentials"
AccountId = Annotated[str, Field(pattern=r"^[0-9]{12}$", description="12-digit AWS account ID")]
ROOT_DOCS = ("https://docs.aws.amazon.com/IAM/latest/UserGuide/id_root-user.html",
             "https://docs.aws.amazon.com/IAM/latest/UserGuide/id_root-user-privileged-task.html",
             "https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoot.html")


def root_manual_steps(account: str, access_key_id: str, since: str, management_account: str | None) -> list[str]:
    """The steps a person takes to remove the root user's access key ``access_key_id`` of ``account``
    (what Cordon cannot do: centralized root access not configured, or ``account`` is the management
    account itself), each a sentence with the AWS documentation it follows."""
    console = ("sign in to the AWS console as the root user of account {a} (the root e-mail, password and "
               "MFA), open Security credentials" if not management_account or management_account == account else
               "from the management account {m}, open IAM > Root access management, select account {a} and "
               "Take privileged action > Delete root user credentials")
    return [
        "1. " + console.format(a=account, m=management_account) + f" ({ROOT_DOCS[0]}, {ROOT_DOCS[1]}).",
        f"2. Under Access keys, deactivate then delete access key {access_key_id}; the root user should have "
        "no access key at all.",
        f"3. Look up what the key did since {since}: CloudTrail LookupEvents with AccessKeyId={access_key_id} "
        "(https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html).",
        "4. Whoever created the key signed in as root: change the root password, check its MFA devices and "
        "the account's alternate contacts.",
        "5. So Cordon can do this next time: enable centralized root access in AWS Organizations and set "
        "aws.root_access.management_account in cordon.yaml (" + ROOT_DOCS[1] + ").",
    ]


def root_access_of(account: str | None) -> tuple[str | None, str | None]:
    """``(management_account, why_not)`` for containing a root access key in ``account``: the
    ``aws.root_access.management_account`` of ``cordon.yaml`` (:mod:`cordon.providers.aws.accounts`;
    ``None`` when not set) and ``None`` when Cordon can act, else the reason a person must (not
    configured; ``account`` is the management account itself, which ``AssumeRoot`` cannot target).
    Raises ``AwsAccountsError`` for an unusable ``aws:`` section."""
    from cordon.config import load_config
    from cordon.providers.aws.accounts import aws_accounts

    accounts = aws_accounts(load_config())
    management = accounts.root_access_account if accounts else None
    if not management:
        return None, "centralized root access is not configured (aws.root_access in cordon.yaml)"
    if account == management:
        return management, (f"account {account} is the management account: sts:AssumeRoot acts only on "
                            "member accounts")
    return management, None


@register
class RootAccessKeyFacts(EnrichmentAction):
    """Whether Cordon can remove the root user's new access key, and the exact steps when a person must.

    Reads ``cordon.yaml`` only (no API call). Returns ``{account, access_key_id, centralized (bool),
    management_account, task_policy_arn, why_not, manual_steps: [sentences], docs: [urls]}``:
    ``centralized`` when ``aws.root_access.management_account`` is set and is not the detection's
    account; otherwise ``why_not`` says why and ``manual_steps`` is what to do (also given when
    centralized, should the containment fail). Raises ``AwsAccountsError`` for an unusable ``aws:``
    section (recorded as the enrichment's ``error``).
    API: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoot.html

    .. code-block:: yaml

        enrich:
          - action: aws.root-access-key
            with:
              access_key_id: "{{ credential.uid }}"
    """

    name = "aws.root-access-key"
    provider = "aws"

    class Params(Params):
        access_key_id: AccessKeyId

    permissions = ()
    credential_kinds = ("aws_root_access_key",)

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        det = ctx.detection
        account = det.account_uid or "-"
        management, why_not = root_access_of(det.account_uid)
        return {"account": account, "access_key_id": ctx.params["access_key_id"], "centralized": why_not is None,
                "management_account": management if why_not is None else None,
                "task_policy_arn": IAM_DELETE_ROOT_CREDENTIALS, "why_not": why_not, "docs": list(ROOT_DOCS),
                "manual_steps": root_manual_steps(account, ctx.params["access_key_id"], _iso(det.time), management)}


class RootKeyState(State):
    """The root user's access key as a root session lists it."""

    account_id: str
    access_key_id: str
    status: Literal["Active", "Inactive"]
    create_date: IsoTime | None
    root_access_key_ids: list[str]


@register
class DeleteRootAccessKey(AwsContainmentAction):
    """Delete the root user's access key through centralized root access: ``sts:AssumeRoot``
    (``TargetPrincipal`` = the member account, ``TaskPolicyArn`` =
    ``arn:aws:iam::aws:policy/root-task/IAMDeleteRootUserCredentials``) called in the management
    account (``management_account``: ``clients("sts", account_id=...)``), then, signing with the root
    session it returns, ``iam:DeleteAccessKey`` of exactly ``access_key_id`` (no ``UserName``: the root
    user's own key). The task policy is what limits the session to deleting root credentials; Cordon's
    own principal needs only ``sts:AssumeRoot``.

    Not reversible: a deleted key's secret is gone, and the task policy allows no ``CreateAccessKey``
    (a new key would be a new credential anyway). Without ``management_account`` (centralized root
    access not configured) or when the account is the management account itself, nothing is called:
    ``GuardError`` with the reason, and ``aws.root-access-key``'s ``manual_steps`` say what a person does.

    Params: ``account_id`` (the detection's account), ``access_key_id`` (the record's
    ``responseElements.accessKey.accessKeyId``), ``management_account`` (``null``: not configured).
    State: ``{account_id, access_key_id, status, create_date, root_access_key_ids}`` from the root
    session's ``ListAccessKeys``; ``None`` when the root user has no such key (contained).
    Errors: STS / IAM ``ClientError`` propagate (run ``failed``; e.g. ``AccessDenied`` when root access
    is not centralized in the Organization).
    API: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoot.html ,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_DeleteAccessKey.html ,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/id_root-user-privileged-task.html

    .. code-block:: yaml

        contain:
          - action: aws.delete-root-access-key
            with:
              account_id: "{{ detection.account_uid }}"
              access_key_id: "{{ credential.uid }}"
              management_account: "{{ enrichment['aws.root-access-key'].management_account }}"
    """

    name = "aws.delete-root-access-key"
    service = "sts"

    class Params(Params):
        account_id: Annotated[AccountId, Identifies("account_uid")]
        access_key_id: Annotated[AccessKeyId, Identifies("credential.uid")]
        management_account: AccountId | None = None

    State = RootKeyState

    permissions = ("sts:AssumeRoot",)
    credential_kinds = ("aws_root_access_key",)
    rollback_supported = False
    #: The protected principal this action is built to act on (through AWS's own root task policy).
    acts_on_protected = ("arn:aws:iam::*:root",)

    def __init__(self) -> None:
        self._session: dict[str, Any] | None = None

    def target(self, ctx: ActionContext) -> str:
        return f"arn:aws:iam::{ctx.params['account_id']}:root access-key {ctx.params['access_key_id']}"

    def _assume_root_params(self, ctx: ActionContext) -> dict[str, Any]:
        management, account = ctx.params.get("management_account"), ctx.params["account_id"]
        if not management:
            raise GuardError("centralized root access is not configured (aws.root_access in cordon.yaml): "
                             "a person deletes the key; see aws.root-access-key's manual_steps")
        if management == account:
            raise GuardError(f"account {account} is the management account: sts:AssumeRoot acts only on member "
                             "accounts; a person deletes the key (aws.root-access-key's manual_steps)")
        return {"TargetPrincipal": account, "TaskPolicyArn": {"arn": IAM_DELETE_ROOT_CREDENTIALS}}

    def _assume_root(self, ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
        sts = ctx.clients("sts", account_id=ctx.params["management_account"])
        self._session = sts.assume_root(**params, DurationSeconds=900)["Credentials"]
        return self._session

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        creds = self._assume_root(ctx, self._assume_root_params(ctx))
        iam = ctx.clients("iam", credentials=creds)
        keys = [k for page in iam.get_paginator("list_access_keys").paginate() for k in page["AccessKeyMetadata"]]
        key_id = ctx.params["access_key_id"]
        for key in keys:
            if key["AccessKeyId"] == key_id:
                return {"account_id": ctx.params["account_id"], "access_key_id": key_id, "status": key["Status"],
                        "create_date": _iso(key["CreateDate"]) if key.get("CreateDate") else None,
                        "root_access_key_ids": sorted(k["AccessKeyId"] for k in keys)}
        return None

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="sts", operation="AssumeRoot", params=self._assume_root_params(ctx)),
                ApiCall(service="iam", operation="DeleteAccessKey",
                        params={"AccessKeyId": ctx.params["access_key_id"]})]

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:
        """``AssumeRoot`` in the management account; the root session's calls signed with what it returned."""
        if api.operation == "AssumeRoot":
            return self._assume_root(ctx, api.params)
        if self._session is None:
            raise GuardError("no root session: AssumeRoot must come first")
        client = ctx.clients(api.service, credentials=self._session)
        return getattr(client, xform_name(api.operation))(**api.params)


@register
class RoleTrust(EnrichmentAction):
    """Whom a role's new trust policy lets in from outside the Organization, and whether the role is
    worth taking over (administrator permissions): what decides if ``aws-role-trust-outside`` contains.

    The Organization's accounts are those ``cordon.yaml`` knows (``aws.hub_account``, ``aws.accounts``,
    ``aws.organization_accounts``, ``aws.root_access.management_account``;
    :meth:`cordon.providers.aws.accounts.AwsAccounts.known_accounts`) and the role's own account.
    ``outside_principals``: the ``AWS`` principals of the ``UpdateAssumeRolePolicy`` record's document in
    none of them (``*`` always); ``live_outside_principals`` the same of the live trust policy (``GetRole``).
    ``is_admin``: ``AdministratorAccess`` attached (``ListAttachedRolePolicies``) or an inline policy
    allowing ``*`` / ``*:*`` (``ListRolePolicies``, ``GetRolePolicy``); ``admin_because`` names it.
    ``contain`` is true only with outside principals *and* admin permissions; ``reason`` says why not.

    Returns ``{exists, role_name, role_arn, known_accounts: [ids], outside_principals, live_outside_principals,
    is_admin, admin_because, contain, reason}`` (``exists: false`` and no role facts for a missing role).
    Errors: ``ClientError`` other than ``NoSuchEntity`` and ``AwsAccountsError`` propagate (the
    enrichment's ``error``; the provider's guard then refuses: triage only).
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetRole.html ,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_ListAttachedRolePolicies.html ,
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_GetRolePolicy.html

    .. code-block:: yaml

        enrich:
          - action: aws.role-trust
            with:
              role_name: "{{ credential.uid }}"
    """

    name = "aws.role-trust"
    provider = "aws"

    class Params(Params):
        role_name: RoleName

    permissions = ("iam:GetRole", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies", "iam:GetRolePolicy")
    credential_kinds = ("aws_role_trust",)

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        from cordon.config import load_config
        from cordon.providers.aws.accounts import aws_accounts
        from cordon.providers.aws.cloudtrail import aws_principals

        det, role_name = ctx.detection, ctx.params["role_name"]
        accounts = aws_accounts(load_config())
        known = (accounts.known_accounts() if accounts else set()) | ({det.account_uid} if det.account_uid else set())
        cred = det.credential
        named = list((cred.attributes if cred and cred.kind == "aws_role_trust" else {}).get(
            "trusted_aws_principals") or [])
        outside = outside_principals(named, known)
        out: dict[str, Any] = {"role_name": role_name, "known_accounts": sorted(known), "outside_principals": outside}
        iam = ctx.clients("iam", region=None)
        try:
            role = iam.get_role(RoleName=role_name)["Role"]
        except ClientError as err:
            if _error_code(err) != "NoSuchEntity":
                raise
            return {**out, "exists": False, "contain": False, "reason": f"role {role_name} does not exist"}
        attached = [p["PolicyArn"] for page in iam.get_paginator("list_attached_role_policies").paginate(
            RoleName=role_name) for p in page["AttachedPolicies"]]
        because = [a for a in attached if a.endswith(ADMIN_POLICY_SUFFIX)]
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=role_name):
            for pname in page["PolicyNames"]:
                if _is_admin_document(iam.get_role_policy(RoleName=role_name, PolicyName=pname)["PolicyDocument"]):
                    because.append(f"inline policy {pname} allows *")
        live_outside = outside_principals(aws_principals(_role_trust_doc(role)), known)
        if not outside:
            reason = f"no principal outside the Organization's accounts ({', '.join(sorted(known))})"
        elif not because:
            reason = (f"role {role_name} has no administrator permissions: triage only, nothing contained "
                      f"(trusted from outside: {', '.join(outside)})")
        else:
            reason = None
        return {**out, "exists": True, "role_arn": role["Arn"], "live_outside_principals": live_outside,
                "is_admin": bool(because), "admin_because": because, "contain": reason is None, "reason": reason}


class StaleKeyView(State):
    """One active access key past the limit, as :class:`DeactivateStaleKeys`' state lists it."""

    user_name: str
    access_key_id: str
    created: IsoTime
    last_used: IsoTime | None
    age_days: int


@register
class DeactivateStaleKeys(AwsContainmentAction):
    """Credential hygiene for one account (AWS Config ``access-keys-rotated`` /
    ``iam-user-unused-credentials-check``, Security Hub IAM.3 / IAM.8 / IAM.22): deactivate every
    active access key past the limit, in one plan under one approval, as AWS's Automated Security
    Response does for IAM.3 / IAM.8; never deletes a key.

    ``scope`` is the detection's credential uid, ``<account>:rotation`` (keys created more than the
    limit ago) or ``<account>:unused`` (keys not used, or never used and created, more than the limit
    ago; :func:`cordon.providers.aws.config_rules.is_stale`). The limit is the named Config rule's own
    parameter (``DescribeConfigRules``: ``maxAccessKeyAge`` / ``maxCredentialUsageAge``, else the
    managed rule's default; a rule whose ``Source.SourceIdentifier`` is not the criterion's is refused),
    or without a rule ``max_age_days`` (the Security Hub control's). Keys are read with ``ListUsers``,
    ``ListAccessKeys`` and ``GetAccessKeyLastUsed``. Users matching ``protected_principals`` and the key
    Cordon signs with are never touched (listed in the state as skipped). Console passwords past the
    limit are listed (``stale_passwords``) and left alone: IAM can only delete a login profile, and this
    playbook never deletes.

    State: ``{account, criterion, max_age_days, limit_from, config_rule, stale: [{user_name,
    access_key_id, created, last_used, age_days}], skipped: [reasons], stale_passwords: [user names]}``.
    Contained when nothing is stale. The plan: ``UpdateAccessKey Status=Inactive`` for each stale key,
    then, with a Config rule, ``StartConfigRulesEvaluation`` (Config re-evaluates the rule: the
    verification AWS sees); the verification reads every key back. Rollback: each key ``Active`` again.
    API: https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAccessKey.html ,
    https://docs.aws.amazon.com/config/latest/APIReference/API_DescribeConfigRules.html ,
    https://docs.aws.amazon.com/config/latest/APIReference/API_StartConfigRulesEvaluation.html

    .. code-block:: yaml

        contain:
          - action: aws.deactivate-stale-keys
            with:
              scope: "{{ credential.uid }}"
              max_age_days: "{{ credential.attributes.max_age_days }}"
              config_rule: "{{ credential.attributes.config_rule }}"
    """

    name = "aws.deactivate-stale-keys"

    class Params(Params):
        scope: Annotated[str, Field(pattern=r"^\d{12}:(rotation|unused)$",
                                    description="<account>:rotation or <account>:unused"),
                         Identifies("credential.uid")]
        max_age_days: Annotated[int, Field(ge=1, le=3650, description="the limit without a Config rule")] = 90
        config_rule: Annotated[str | None, Field(description="the Config rule whose parameter is the limit")] = None

    class State(State):
        account: str
        criterion: Literal["rotation", "unused"]
        max_age_days: int
        limit_from: str
        config_rule: str | None
        stale: list[StaleKeyView]
        skipped: list[str]
        stale_passwords: list[str]

    permissions = ("iam:ListUsers", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed", "iam:UpdateAccessKey",
                   "config:DescribeConfigRules", "config:StartConfigRulesEvaluation")
    credential_kinds = ("aws_stale_credentials",)
    rollback_supported = True

    def target(self, ctx: ActionContext) -> str:
        account, _, criterion = ctx.params["scope"].partition(":")
        return f"account {account}: access keys past the {criterion} limit"

    def _limit(self, ctx: ActionContext, criterion: str) -> tuple[int, str]:
        from cordon.providers.aws.config_rules import CRITERIA, RULES, rule_limit

        name = ctx.params.get("config_rule")
        if not name:
            return int(ctx.params.get("max_age_days") or 90), "the detection's control"
        rules = self.client(ctx, "config", ctx.detection.region).describe_config_rules(
            ConfigRuleNames=[name]).get("ConfigRules") or []
        rule = rules[0] if rules else None
        identifier = ((rule or {}).get("Source") or {}).get("SourceIdentifier")
        if RULES.get(str(identifier)) is not CRITERIA[criterion]:
            raise GuardError(f"Config rule {name} is {identifier or 'unknown'}, not a {criterion} rule")
        return rule_limit(rule, CRITERIA[criterion])

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        from cordon.config import load_config
        from cordon.providers.aws.config_rules import is_stale

        account, _, criterion = ctx.params["scope"].partition(":")
        if ctx.detection.account_uid and ctx.detection.account_uid != account:
            raise GuardError(f"scope {ctx.params['scope']} is not the detection's account {ctx.detection.account_uid}")
        days, limit_from = self._limit(ctx, criterion)
        config = load_config()
        own_key = getattr(ctx.clients, "own_access_key", lambda: None)()
        iam = self.client(ctx)
        now = datetime.now(UTC)
        stale: list[dict[str, Any]] = []
        skipped: list[str] = []
        passwords: list[str] = []
        for page in iam.get_paginator("list_users").paginate():
            for user in page["Users"]:
                name, arn = user["UserName"], user["Arn"]
                keys = [k for p in iam.get_paginator("list_access_keys").paginate(UserName=name)
                        for k in p["AccessKeyMetadata"] if k["Status"] == "Active"]
                pattern = config.is_protected(arn)
                if pattern and keys:
                    skipped.append(f"{arn}: protected ({pattern})")
                    continue
                used = user.get("PasswordLastUsed")
                if criterion == "unused" and used and is_stale("unused", days, now, used, used):
                    passwords.append(name)
                for key in keys:
                    if key["AccessKeyId"] == own_key:
                        skipped.append(f"{key['AccessKeyId']}: the key Cordon signs with")
                        continue
                    last = (iam.get_access_key_last_used(AccessKeyId=key["AccessKeyId"]).get("AccessKeyLastUsed")
                            or {}).get("LastUsedDate")
                    if is_stale(criterion, days, now, key["CreateDate"], last):
                        since = key["CreateDate"] if criterion == "rotation" else (last or key["CreateDate"])
                        stale.append({"user_name": name, "access_key_id": key["AccessKeyId"],
                                      "created": _iso(key["CreateDate"]), "last_used": _iso(last) if last else None,
                                      "age_days": int((now - since).total_seconds() // 86400)})
        return {"account": account, "criterion": criterion, "max_age_days": days, "limit_from": limit_from,
                "config_rule": ctx.params.get("config_rule"), "stale": stale, "skipped": skipped,
                "stale_passwords": passwords}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None or not state["stale"]

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        calls = [ApiCall(service="iam", operation="UpdateAccessKey",
                         params={"UserName": k["user_name"], "AccessKeyId": k["access_key_id"], "Status": "Inactive"})
                 for k in (state or {}).get("stale") or []]
        if calls and (state or {}).get("config_rule"):
            calls.append(ApiCall(service="config", operation="StartConfigRulesEvaluation",
                                 params={"ConfigRuleNames": [state["config_rule"]]}, region=ctx.detection.region))
        return calls

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="iam", operation="UpdateAccessKey",
                        params={"UserName": k["user_name"], "AccessKeyId": k["access_key_id"], "Status": "Active"})
                for k in (before or {}).get("stale") or []]


#: An EKS cluster name (https://docs.aws.amazon.com/eks/latest/APIReference/API_CreateCluster.html)
ClusterName = Annotated[str, Field(pattern=r"^[0-9A-Za-z][A-Za-z0-9\-_]{0,99}$", description="EKS cluster name")]
PrincipalArn = Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:[A-Za-z0-9+=,.@_/-]+$",
                                    description="IAM principal ARN of the access entry")]
AccessPolicyArn = Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:eks::aws:cluster-access-policy/[A-Za-z0-9]+$",
                                       description="EKS access policy ARN")]


class _EksAccessAction(AwsContainmentAction):
    """Base of the EKS access-entry actions: ``eks`` clients in the cluster's region (``region``
    param, else the credential's ``region`` attribute, else the detection's)."""

    service = "eks"
    rollback_supported = True

    def region(self, ctx: ActionContext) -> str | None:
        cred = ctx.detection.credential
        return (ctx.params.get("region") or (cred.attributes.get("region") if cred else None)
                or ctx.detection.region)

    def _key(self, ctx: ActionContext) -> dict[str, str]:
        return {"clusterName": ctx.params["cluster_name"], "principalArn": ctx.params["principal_arn"]}

    def _policies(self, ctx: ActionContext) -> list[dict[str, Any]]:
        client = self.client(ctx, region=self.region(ctx))
        out: list[dict[str, Any]] = []
        kwargs = self._key(ctx)
        while True:
            page = client.list_associated_access_policies(**kwargs)
            out.extend({"policyArn": p["policyArn"], "accessScope": p.get("accessScope") or {"type": "cluster"}}
                       for p in page.get("associatedAccessPolicies") or [])
            if not page.get("nextToken"):
                return sorted(out, key=lambda p: p["policyArn"])
            kwargs["nextToken"] = page["nextToken"]


@register
class DeleteEksAccessEntry(_EksAccessAction):
    """Delete one EKS access entry (``eks:DeleteAccessEntry``): the IAM principal it names can no
    longer authenticate to the cluster's Kubernetes API through it (T1098.006).

    Exactly the entry the ``CreateAccessEntry`` record made: ``DescribeAccessEntry`` is compared with
    the record's ``accessEntryArn`` (an entry deleted and created again has another ARN) and a
    different one is refused. The entry and its associated access policies are stored first.
    Removing the entry does not revoke the principal's IAM credentials, and an ``aws-auth`` ConfigMap
    mapping of the same principal is not touched.

    Params: ``cluster_name``, ``principal_arn`` (the record's ``requestParameters``), ``region``.
    State: ``{cluster, principal_arn, access_entry_arn, type, username, kubernetes_groups, policies,
    same_entry, mismatch}`` (``None``: no such entry). Contained when ``None``. Rollback:
    ``CreateAccessEntry`` with the stored groups, username and type, then ``AssociateAccessPolicy``
    for each stored policy (a new ARN). Errors: ``ClientError`` other than
    ``ResourceNotFoundException`` propagates.
    API: https://docs.aws.amazon.com/eks/latest/APIReference/API_DeleteAccessEntry.html ,
    https://docs.aws.amazon.com/eks/latest/APIReference/API_DescribeAccessEntry.html

    .. code-block:: yaml

        contain:
          - action: aws.delete-eks-access-entry
            with:
              cluster_name: "{{ credential.attributes.cluster }}"
              principal_arn: "{{ credential.attributes.principalArn }}"
              region: "{{ detection.region }}"
    """

    name = "aws.delete-eks-access-entry"
    does_not = "revoke the principal's IAM credentials; an aws-auth ConfigMap mapping of it stays"

    class Params(Params):
        cluster_name: Annotated[ClusterName, Identifies("credential.attributes.cluster")]
        principal_arn: Annotated[PrincipalArn, Identifies("credential.attributes.principalArn")]
        region: Region | SkipJsonSchema[None] = None

    class State(State):
        cluster: str
        principal_arn: str
        access_entry_arn: str | None
        type: str | None
        username: str | None
        kubernetes_groups: list[str]
        policies: list[dict[str, Any]]
        same_entry: bool
        mismatch: str | None

    permissions = ("eks:DescribeAccessEntry", "eks:ListAssociatedAccessPolicies", "eks:DeleteAccessEntry",
                   "eks:CreateAccessEntry", "eks:AssociateAccessPolicy")
    credential_kinds = ("aws_eks_access_entry",)

    def target(self, ctx: ActionContext) -> str:
        return f"{ctx.params['cluster_name']}/{ctx.params['principal_arn']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        client = self.client(ctx, region=self.region(ctx))
        try:
            entry = client.describe_access_entry(**self._key(ctx))["accessEntry"]
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return None
            raise
        cred = ctx.detection.credential
        recorded = (cred.attributes.get("accessEntryArn") if cred and cred.kind == "aws_eks_access_entry" else None)
        live = entry.get("accessEntryArn")
        mismatch = None if not recorded or recorded == live else (
            f"the access entry of {ctx.params['principal_arn']} on {ctx.params['cluster_name']} is now {live}, not "
            f"{recorded} (the record's): it was deleted and made again, so it is not the one named")
        return {"cluster": ctx.params["cluster_name"], "principal_arn": ctx.params["principal_arn"],
                "access_entry_arn": live, "type": entry.get("type"), "username": entry.get("username"),
                "kubernetes_groups": list(entry.get("kubernetesGroups") or []), "policies": self._policies(ctx),
                "same_entry": mismatch is None, "mismatch": mismatch}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        if state is not None and not state["same_entry"]:
            raise GuardError(state["mismatch"])
        return [ApiCall(service="eks", operation="DeleteAccessEntry", params=self._key(ctx), region=self.region(ctx))]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        key = {"clusterName": before["cluster"], "principalArn": before["principal_arn"]}
        create = {**key, **({"type": before["type"]} if before.get("type") else {}),
                  **({"username": before["username"]} if before.get("username") else {}),
                  **({"kubernetesGroups": before["kubernetes_groups"]} if before.get("kubernetes_groups") else {})}
        region = self.region(ctx)
        return [ApiCall(service="eks", operation="CreateAccessEntry", params=create, region=region)] + [
            ApiCall(service="eks", operation="AssociateAccessPolicy", params={**key, **p}, region=region)
            for p in before.get("policies") or []]


@register
class DisassociateEksAccessPolicy(_EksAccessAction):
    """Disassociate one EKS access policy from one principal's access entry
    (``eks:DisassociateAccessPolicy``): exactly the policy the ``AssociateAccessPolicy`` record
    named (``AmazonEKSClusterAdminPolicy`` ...); the entry and its other policies stay.

    Params: ``cluster_name``, ``principal_arn``, ``policy_arn`` (the record's
    ``requestParameters``), ``region``. State: ``{cluster, principal_arn, policy_arn, access_scope}``
    (``None``: not associated, or no entry). Contained when ``None``. Rollback:
    ``AssociateAccessPolicy`` with the stored access scope.
    API: https://docs.aws.amazon.com/eks/latest/APIReference/API_DisassociateAccessPolicy.html ,
    https://docs.aws.amazon.com/eks/latest/APIReference/API_ListAssociatedAccessPolicies.html

    .. code-block:: yaml

        contain:
          - action: aws.disassociate-eks-access-policy
            with:
              cluster_name: "{{ credential.attributes.cluster }}"
              principal_arn: "{{ credential.attributes.principalArn }}"
              policy_arn: "{{ credential.attributes.policyArn }}"
              region: "{{ detection.region }}"
    """

    name = "aws.disassociate-eks-access-policy"
    does_not = "remove the access entry or its other policies, nor revoke the principal's IAM credentials"

    class Params(Params):
        cluster_name: Annotated[ClusterName, Identifies("credential.attributes.cluster")]
        principal_arn: Annotated[PrincipalArn, Identifies("credential.attributes.principalArn")]
        policy_arn: Annotated[AccessPolicyArn, Identifies("credential.attributes.policyArn")]
        region: Region | SkipJsonSchema[None] = None

    class State(State):
        cluster: str
        principal_arn: str
        policy_arn: str
        access_scope: dict[str, Any]

    permissions = ("eks:ListAssociatedAccessPolicies", "eks:DisassociateAccessPolicy", "eks:AssociateAccessPolicy")
    credential_kinds = ("aws_eks_access_policy",)

    def target(self, ctx: ActionContext) -> str:
        return f"{ctx.params['cluster_name']}/{ctx.params['principal_arn']}/{ctx.params['policy_arn']}"

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        try:
            policies = self._policies(ctx)
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return None
            raise
        found = next((p for p in policies if p["policyArn"] == ctx.params["policy_arn"]), None)
        if found is None:
            return None
        return {"cluster": ctx.params["cluster_name"], "principal_arn": ctx.params["principal_arn"],
                "policy_arn": found["policyArn"], "access_scope": found["accessScope"]}

    def is_contained(self, state: dict[str, Any] | None) -> bool:
        return state is None

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:
        return [ApiCall(service="eks", operation="DisassociateAccessPolicy",
                        params={**self._key(ctx), "policyArn": ctx.params["policy_arn"]}, region=self.region(ctx))]

    def undo_calls(self, ctx: ActionContext, before: dict[str, Any] | None) -> list[ApiCall]:
        if not before:
            return []
        return [ApiCall(service="eks", operation="AssociateAccessPolicy", region=self.region(ctx), params={
            "clusterName": before["cluster"], "principalArn": before["principal_arn"],
            "policyArn": before["policy_arn"], "accessScope": before["access_scope"]})]
