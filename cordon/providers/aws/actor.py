"""The actor's own access behind an AWS detection (issue 14: "the actor is never answered").

A CloudTrail record that added a credential also says what the call was signed with
(``userIdentity``, https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-event-reference-user-identity.html):

* an IAM user's long-term access key (``type: IAMUser``, ``accessKeyId: AKIA...``): the key that did
  it, contained like any added key (``aws-access-key-created``: deactivate, roll back allowed);
* an assumed role's temporary credentials (``type: AssumedRole``, ``accessKeyId: ASIA...``,
  ``sessionContext.sessionIssuer.arn`` the role): stolen instance or pipeline credentials, answered
  by revoking the role's sessions issued before now (``aws-actor-role-sessions``:
  ``aws.revoke-role-sessions``); the instance or pipeline assumes the role again unharmed.

Nothing for the root user, AWS services, federated users (``aws-federation-token`` answers their
issuer) or a record that named no credential; the guard still refuses protected principals and
Cordon's own identity, so a protected role's sessions are never revoked.
"""

from __future__ import annotations

from typing import Any

from cordon.detections.model import Credential, Detection, Principal
from cordon.providers import VALID_CLOUD_ACCOUNTS, ActorAccess, actor_detection

__all__ = ["VALID_CLOUD_ACCOUNTS", "actor_access"]


def actor_access(detection: Detection) -> ActorAccess | None:
    """The derived detection of the access ``detection``'s actor signed its call with, and the
    playbook that contains it; ``None`` when there is none to answer (see the module docstring).
    The derived detection keeps the record (``raw``, ``raw_ref``, ``rule``, ``time``, ``event_name``)
    and gets ``uid`` ``<uid>#actor``, the actor as ``target`` and credential owner, technique
    ``T1078.004``; its case key is the key's (or the role's), so every detection of the same actor
    joins one case."""
    if detection.source != "cloudtrail" or detection.suppressed or not (detection.credential
                                                                       and detection.credential.uid):
        return None
    actor, user = detection.actor, detection.actor.user
    key = actor.session_uid
    account = user.account_uid or detection.account_uid
    attributes: dict[str, Any] = {"revealed_by": {"detection_uid": detection.uid, "event_name": detection.event_name,
                                                  "credential_uid": detection.credential.uid}}
    if user.type == "IAMUser" and key and key.startswith("AKIA") and user.uid and user.name:
        if key == detection.credential.uid:
            return None  # the detection is already about the actor's own key
        owner = Principal(uid=user.uid, name=user.name, type="IAMUser", account_uid=account)
        credential = Credential(kind="aws_access_key", uid=key, owner=owner, attributes=attributes)
        playbook = "aws-access-key-created"
    elif user.type == "AssumedRole" and actor.session_issuer and ":role/" in actor.session_issuer:
        role_arn = actor.session_issuer
        owner = Principal(uid=role_arn, name=role_arn.rsplit("/", 1)[-1], type="Role", account_uid=account)
        credential = Credential(kind="aws_role_sessions", uid=role_arn, owner=owner,
                                attributes={**attributes, "session": user.uid, "session_key": key})
        playbook = "aws-actor-role-sessions"
    else:
        return None
    return actor_detection(detection, credential, playbook)
