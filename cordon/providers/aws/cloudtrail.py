"""CloudTrail events matched by a Sigma rule, normalised to :class:`Detection`.

Field meanings follow the CloudTrail record contents reference
(https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-record-contents.html)
and the ``userIdentity`` element reference
(https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html).
What each credential-creating call puts in ``requestParameters`` / ``responseElements`` follows the
IAM, STS and EC2 API references for that action (``CreateAccessKey``, ``CreateLoginProfile``,
``UpdateLoginProfile``, ``CreateUser``, ``ImportKeyPair``, ``CreateKeyPair``,
``CreateServiceSpecificCredential``, ``GetFederationToken``, ``AttachUserPolicy``,
``PutUserPolicy``, ``UploadSSHPublicKey``, ``UpdateAssumeRolePolicy``; IAM Roles Anywhere's
``CreateTrustAnchor`` and ``CreateProfile``) and the shapes seen in Stratus Red Team detonation logs.

The helpers every parser shares live in :mod:`cordon.detections.fields`.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from cordon.detections.fields import RecordFields, SigmaMatchLike, detection_uid, parse_time, severity_label
from cordon.detections.model import (
    Actor,
    Credential,
    Detection,
    Principal,
    RawRef,
    RuleRef,
    record_sha256,
)

#: eventName -> credential kind (what the call creates or grants).
CREDENTIAL_EVENTS: dict[str, str] = {
    "CreateAccessKey": "aws_access_key",
    # re-enabled (requestParameters.status Active): the same key live again, after containment
    "UpdateAccessKey": "aws_access_key",
    "CreateLoginProfile": "aws_login_profile",
    "UpdateLoginProfile": "aws_login_profile",
    "CreateUser": "aws_iam_user",
    "ImportKeyPair": "aws_key_pair",
    "CreateKeyPair": "aws_key_pair",
    "CreateServiceSpecificCredential": "aws_service_specific_credential",
    "GetFederationToken": "aws_federation_token",
    "AttachUserPolicy": "aws_policy_grant",
    "PutUserPolicy": "aws_policy_grant",
    "UploadSSHPublicKey": "aws_ssh_public_key",
    # IAM Roles Anywhere: an X.509 CA trusted to sign certificates that become role sessions
    "CreateTrustAnchor": "aws_rolesanywhere_trust_anchor",
    "CreateProfile": "aws_rolesanywhere_profile",
    # a role's trust policy rewritten: whom it names may now assume the role
    "UpdateAssumeRolePolicy": "aws_role_trust",
    # EKS access entries: an IAM principal let into a cluster's Kubernetes API, and an access policy
    # (AmazonEKSClusterAdminPolicy ...) associated with one
    "CreateAccessEntry": "aws_eks_access_entry",
    "AssociateAccessPolicy": "aws_eks_access_policy",
}

#: Roles Anywhere kinds: the response member naming the object, and facts kept beyond its ID and ARN.
_ROLESANYWHERE: dict[str, tuple[str, dict[str, tuple[str, type]]]] = {
    "aws_rolesanywhere_trust_anchor": ("trustAnchor", {"source.sourceType": ("sourceType", str)}),
    "aws_rolesanywhere_profile": ("profile", {"roleArns": ("roleArns", list)}),
}

#: The root user's own access key (``CreateAccessKey`` signed by the root user, naming no user).
ROOT_ACCESS_KEY = "aws_root_access_key"

#: ATT&CK techniques used when the matching rule carries none: T1136.003 Create Account: Cloud
#: Account for CreateUser; T1098.003 Account Manipulation: Additional Cloud Roles for policy
#: grants; T1098.001 Additional Cloud Credentials for every other credential-creating call.
FALLBACK_TECHNIQUES: dict[str, list[str]] = {
    "CreateUser": ["T1136.003"],
    "AttachUserPolicy": ["T1098.003"],
    "PutUserPolicy": ["T1098.003"],
    "UpdateAssumeRolePolicy": ["T1098.003"],
    "CreateAccessEntry": ["T1098.006"],
    "AssociateAccessPolicy": ["T1098.006"],
}

_CONSOLE_HOSTS = {"console.amazonaws.com", "signin.amazonaws.com"}
_CONSOLE_UA = re.compile(r"^console(\.[a-z0-9-]+)*\.amazonaws\.com$")


def _partition(arn: str | None) -> str:
    if arn and arn.startswith("arn:"):
        parts = arn.split(":")
        if len(parts) > 1 and parts[1]:
            return parts[1]
    return "aws"


def _user_arn(partition: str, account: str | None, name: str, path: str | None) -> str | None:
    if not account:
        return None
    path = path or "/"
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    return f"arn:{partition}:iam::{account}:user{path}{name}"


def _actor(f: RecordFields) -> Actor:
    f.get("userIdentity", dict, required=True)
    ui_type = f.get("userIdentity.type", str)
    arn = f.get("userIdentity.arn", str)
    name = f.get("userIdentity.userName", str)
    if ui_type == "Root":
        name = "root"
    elif name is None and arn and "/" in arn:
        name = arn.rsplit("/", 1)[1]  # the session name of an assumed role / federated user
    invoked_by = f.get("userIdentity.invokedBy", str)
    user_agent = f.get("userAgent", str)
    src_ip = f.get("sourceIPAddress", str)
    from_console = f.flag("sessionCredentialFromConsole")
    f.get("userIdentity.sessionContext", dict)
    if invoked_by and invoked_by not in _CONSOLE_HOSTS:
        access_path = "service"
    elif (
        invoked_by in _CONSOLE_HOSTS
        or from_console
        or (user_agent is not None and (user_agent in _CONSOLE_HOSTS or _CONSOLE_UA.match(user_agent)))
        or src_ip in _CONSOLE_HOSTS
    ):
        access_path = "console"
    else:
        access_path = "api"
    return Actor(
        user=Principal(uid=arn, name=name, type=ui_type, account_uid=f.get("userIdentity.accountId", str)),
        session_uid=f.get("userIdentity.accessKeyId", str),
        session_issuer=f.get("userIdentity.sessionContext.sessionIssuer.arn", str),
        session_created=f.get("userIdentity.sessionContext.attributes.creationDate", str),
        mfa=f.flag("userIdentity.sessionContext.attributes.mfaAuthenticated"),
        src_ip=src_ip,
        user_agent=user_agent,
        invoked_by=invoked_by,
        access_path=access_path,
    )


def _target(f: RecordFields, actor: Actor, account: str | None) -> Principal:
    partition = _partition(actor.user.uid)
    user_name = f.get("requestParameters.userName", str)
    if user_name:
        path = f.get("responseElements.user.path", str)
        return Principal(
            uid=_user_arn(partition, account, user_name, path),
            name=user_name,
            type="IAMUser",
            account_uid=account,
        )
    principal_arn = f.get("requestParameters.principalArn", str)  # EKS access entries
    parts = principal_arn.split(":", 5) if principal_arn else []
    if len(parts) == 6 and parts[0] == "arn":
        noun, _, rest = parts[5].partition("/")
        return Principal(uid=principal_arn, name=rest.rsplit("/", 1)[-1] or principal_arn,
                         type={"role": "Role", "user": "IAMUser"}.get(noun, noun), account_uid=parts[4] or account)
    role_name = f.get("requestParameters.roleName", str)
    if role_name:
        uid = f"arn:{partition}:iam::{account}:role/{role_name}" if account else None
        return Principal(uid=uid, name=role_name, type="Role", account_uid=account)
    if actor.user.type == "Root":
        uid = f"arn:{partition}:iam::{account}:root" if account else actor.user.uid
        return Principal(uid=uid, name="root", type="Root", account_uid=account)
    return actor.user.model_copy()


def _pick(f: RecordFields, base: str, keys: dict[str, str], kind: type | tuple[type, ...] = str) -> dict:
    """Attributes copied from ``base.<key>`` for each ``key -> attribute name`` (absent skipped)."""
    out = {}
    for key, attr in keys.items():
        value = f.get(f"{base}.{key}", kind)
        if value is not None:
            out[attr] = value
    return out


def _credential(
    f: RecordFields, event_name: str, actor: Actor, target: Principal, region: str | None, failed: bool
) -> Credential | None:
    kind = CREDENTIAL_EVENTS.get(event_name)
    if kind is None:
        return None
    req = "requestParameters"
    resp = "responseElements"
    if failed:
        code = f.get("errorCode", str)
        message = f.get("errorMessage", str)
        attrs = {k: v for k, v in (("errorCode", code), ("errorMessage", message)) if v is not None}
        owner = actor.user if kind in ("aws_federation_token", "aws_key_pair") else target
        return Credential(kind=kind, uid=None, owner=owner, attributes=attrs)

    if kind == "aws_access_key" and event_name == "UpdateAccessKey":
        # https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAccessKey.html: only a key
        # made Active is a credential coming (back) to life; made Inactive it is a containment
        if f.get(f"{req}.status", str) != "Active":
            return None
        uid = f.get(f"{req}.accessKeyId", str, required=True)
        return Credential(kind=kind, uid=uid, owner=target, attributes={"status": "Active", "reactivated": True})
    if kind == "aws_access_key":
        uid = f.get(f"{resp}.accessKey.accessKeyId", str, required=True)
        attrs = _pick(f, f"{resp}.accessKey", {"status": "status", "createDate": "createDate"})
        if target.type == "Root":  # the root user's own key: no user named, signed by root
            kind = ROOT_ACCESS_KEY
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if kind in _ROLESANYWHERE:
        # https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_CreateTrustAnchor.html ,
        # API_CreateProfile.html: the object created, by ID and ARN (never the CA bundle)
        member, extras = _ROLESANYWHERE[kind]
        base = f"{resp}.{member}"
        uid = f.get(f"{base}.{member}Id", str, required=True)
        attrs = _pick(f, base, {f"{member}Arn": "arn", "name": "name", "createdAt": "createdAt"})
        for path, (attr, typ) in extras.items():
            attrs.update(_pick(f, base, {path: attr}, typ))
        attrs.update(_pick(f, base, {"enabled": "enabled"}, bool))
        if region:
            attrs["region"] = region
        return Credential(kind=kind, uid=uid, owner=actor.user, attributes=attrs)
    if kind in ("aws_eks_access_entry", "aws_eks_access_policy"):
        # https://docs.aws.amazon.com/eks/latest/APIReference/API_CreateAccessEntry.html ,
        # API_AssociateAccessPolicy.html: the cluster is the path's {name}
        cluster = f.get(f"{req}.clusterName", str) or f.get(f"{req}.name", str, required=True)
        principal = f.get(f"{req}.principalArn", str, required=True)
        attrs = {"cluster": cluster, "principalArn": principal, **({"region": region} if region else {})}
        if kind == "aws_eks_access_entry":
            attrs.update(_pick(f, f"{resp}.accessEntry", {"accessEntryArn": "accessEntryArn", "type": "type",
                                                           "username": "username"}))
            groups = f.get(f"{req}.kubernetesGroups", list)
            if groups:
                attrs["kubernetesGroups"] = groups
            return Credential(kind=kind, uid=f"{cluster}/{principal}", owner=target, attributes=attrs)
        attrs["policyArn"] = f.get(f"{req}.policyArn", str, required=True)
        scope = f.get(f"{req}.accessScope", dict)
        if scope:
            attrs["accessScope"] = scope
        return Credential(kind=kind, uid=f"{cluster}/{principal}/{attrs['policyArn'].rsplit('/', 1)[-1]}",
                          owner=target, attributes=attrs)
    if kind == "aws_role_trust":
        # https://docs.aws.amazon.com/IAM/latest/APIReference/API_UpdateAssumeRolePolicy.html
        uid = f.get(f"{req}.roleName", str, required=True)
        raw_doc = f.get(f"{req}.policyDocument", str, required=True)
        doc = trust_document(raw_doc)
        if doc is None:
            raise f.error(f"{req}.policyDocument", "not a JSON policy document (nor URL-encoded JSON)")
        attrs = {"policy_document": json.dumps(doc, sort_keys=True),
                 "trusted_aws_principals": aws_principals(doc)}
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if kind == "aws_login_profile":
        attrs: dict[str, Any] = {}
        reset = f.flag(f"{req}.passwordResetRequired")
        if reset is None:
            reset = f.flag(f"{resp}.loginProfile.passwordResetRequired")
        if reset is not None:
            attrs["passwordResetRequired"] = reset
        attrs.update(_pick(f, f"{resp}.loginProfile", {"createDate": "createDate"}))
        uid = target.name
        if not uid:
            raise f.error(f"{req}.userName", "required field missing: cannot name the login profile's user")
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if kind == "aws_iam_user":
        uid = f.get(f"{req}.userName", str, required=True)
        attrs = _pick(
            f, f"{resp}.user", {"arn": "arn", "userId": "userId", "path": "path", "createDate": "createDate"}
        )
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if kind == "aws_key_pair":
        uid = f.get(f"{req}.keyName", str, required=True)
        attrs = _pick(f, resp, {"keyPairId": "keyPairId", "keyFingerprint": "keyFingerprint"})
        if region:
            attrs["region"] = region
        return Credential(kind=kind, uid=uid, owner=actor.user, attributes=attrs)
    if kind == "aws_service_specific_credential":
        base = f"{resp}.serviceSpecificCredential"
        uid = f.get(f"{base}.serviceSpecificCredentialId", str, required=True)
        attrs = _pick(
            f,
            base,
            {
                "serviceName": "serviceName",
                "serviceUserName": "serviceUserName",
                "status": "status",
                "createDate": "createDate",
            },
        )
        if "serviceName" not in attrs:
            attrs.update(_pick(f, req, {"serviceName": "serviceName"}))
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if kind == "aws_federation_token":
        # The token carries the calling IAM user's permissions (intersected with the session
        # policy): its owner is the caller, whatever name the federated user was given.
        uid = f.get(f"{resp}.credentials.accessKeyId", str, required=True)
        attrs = _pick(f, f"{resp}.credentials", {"expiration": "expiration"})
        attrs.update(
            _pick(
                f, f"{resp}.federatedUser", {"arn": "federatedUserArn", "federatedUserId": "federatedUserId"}
            )
        )
        attrs.update(_pick(f, req, {"name": "name"}))
        return Credential(kind=kind, uid=uid, owner=actor.user, attributes=attrs)
    if kind == "aws_ssh_public_key":
        # CloudTrail writes the response member SSHPublicKey as sSHPublicKey (first letter lowered).
        base = f"{resp}.sSHPublicKey"
        uid = f.get(f"{base}.sSHPublicKeyId", str, required=True)
        attrs = _pick(f, base, {"fingerprint": "fingerprint", "status": "status", "uploadDate": "uploadDate"})
        return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)
    if event_name == "AttachUserPolicy":
        uid = f.get(f"{req}.policyArn", str, required=True)
        return Credential(kind=kind, uid=uid, owner=target, attributes={"policy_arn": uid})
    # PutUserPolicy: an inline policy, named by policyName on the user.
    uid = f.get(f"{req}.policyName", str, required=True)
    attrs = {"policy_name": uid}
    doc = f.get(f"{req}.policyDocument", str)
    if doc is not None:
        attrs["policy_document"] = doc
    return Credential(kind=kind, uid=uid, owner=target, attributes=attrs)


def trust_document(text: str) -> dict[str, Any] | None:
    """A policy document as CloudTrail writes it in ``requestParameters.policyDocument``: a JSON
    string, sometimes URL-encoded (``%7B%22Version%22...``, as IAM stores and returns documents).
    Returns the parsed object, or ``None`` when neither form is a JSON object."""
    for candidate in (text, unquote(text)):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def aws_principals(doc: dict[str, Any]) -> list[str]:
    """Every ``Principal.AWS`` value (an ARN, an account ID or ``*``; and ``Principal: "*"``) of the
    ``Allow`` statements of trust policy ``doc``, in order of appearance, each once.
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html"""
    stmts = doc.get("Statement", [])
    stmts = [stmts] if isinstance(stmts, dict) else stmts if isinstance(stmts, list) else []
    out: list[str] = []
    for stmt in stmts:
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
            continue
        principal = stmt.get("Principal")
        values: Any = "*" if principal == "*" else principal.get("AWS", []) if isinstance(principal, dict) else []
        for value in [values] if isinstance(values, str) else values if isinstance(values, list) else []:
            if isinstance(value, str) and value not in out:
                out.append(value)
    return out


def detection_from_cloudtrail(
    event: dict[str, Any], match: SigmaMatchLike, origin: str, position: int
) -> Detection:
    """Normalise one CloudTrail event that ``match`` (a Sigma rule) flagged.

    ``event`` is a CloudTrail record (as in ``Records[]`` of an S3 delivery file, or an
    EventBridge ``detail``); ``match`` any object with ``id``, ``title``, ``path``, ``level`` and
    ``technique_ids``; ``origin`` / ``position`` say where the record was read.

    Returns a :class:`Detection` with ``source="cloudtrail"``; ``actor`` from ``userIdentity``
    (``session_uid`` = the signing access key, ``session_issuer`` / ``session_created`` / ``mfa``
    from ``sessionContext``, ``access_path`` ``service`` / ``console`` / ``api``); ``target`` the
    user named by ``requestParameters.userName`` (or the role in ``roleName``), else the caller;
    ``credential`` for the calls in :data:`CREDENTIAL_EVENTS`. A call that failed (``errorCode``
    set) created nothing: its credential has no ``uid`` and the detection is ``suppressed``.
    Secrets in the record (``secretAccessKey``, ``sessionToken``, passwords, key material) are
    never copied into the credential.

    Raises :class:`RecordError` naming the dotted field when a field read has the wrong type
    (``userIdentity`` not an object, ``eventTime`` not a timestamp, ``requestParameters`` /
    ``responseElements`` neither an object nor null, ...) or when a successful call lacks what
    names its credential (``responseElements.accessKey.accessKeyId`` for ``CreateAccessKey``).
    """
    f = RecordFields(event, origin, position)
    event_name = f.get("eventName", str, required=True)
    f.get("eventSource", str, required=True)
    time = f.time("eventTime")
    f.get("requestParameters", dict)
    f.get("responseElements", dict)
    region = f.get("awsRegion", str)
    actor = _actor(f)
    account = f.get("recipientAccountId", str) or actor.user.account_uid
    error_code = f.get("errorCode", str)
    failed = bool(error_code)
    target = _target(f, actor, account)
    credential = _credential(f, event_name, actor, target, region, failed)
    suppressed = None
    if failed:
        suppressed = f"the {event_name} call failed ({error_code}): nothing was created or granted"

    match_techniques = list(getattr(match, "technique_ids", None) or [])
    if not match_techniques and event_name in CREDENTIAL_EVENTS:
        match_techniques = list(FALLBACK_TECHNIQUES.get(event_name, ["T1098.001"]))
    rule_uid = getattr(match, "id", None)
    return Detection(
        uid=detection_uid(event, rule_uid),
        provider="aws",
        source="cloudtrail",
        event_name=event_name,
        technique_ids=match_techniques,
        rule=RuleRef(
            type="sigma",
            uid=rule_uid,
            name=getattr(match, "title", None),
            path=str(match.path) if getattr(match, "path", None) is not None else None,
        ),
        severity=severity_label(getattr(match, "level", None)),
        time=time,
        account_uid=account,
        region=region,
        actor=actor,
        target=target,
        credential=credential,
        suppressed=suppressed,
        raw_ref=RawRef(origin=origin, position=position, sha256=record_sha256(event)),
        raw=event,
    )


__all__ = [
    "CREDENTIAL_EVENTS",
    "FALLBACK_TECHNIQUES",
    "ROOT_ACCESS_KEY",
    "aws_principals",
    "detection_from_cloudtrail",
    "parse_aws_time",
    "trust_document",
]

#: CloudTrail, GuardDuty and ASFF timestamps are ISO 8601 (:func:`cordon.detections.fields.parse_time`).
parse_aws_time = parse_time
