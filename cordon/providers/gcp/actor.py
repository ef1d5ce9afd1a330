"""The actor's own access behind a GCP detection (issue 14: "the actor is never answered").

A Cloud Audit Log entry that added a credential also says what the call was signed with
(``protoPayload.authenticationInfo``, AuditLog ``AuthenticationInfo``,
https://cloud.google.com/logging/docs/reference/audit/auditlog/rest/Shared.Types/AuditLog#authenticationinfo):
``principalEmail`` and, when a service-account key signed the credentials, ``serviceAccountKeyName``
(``//iam.googleapis.com/projects/P/serviceAccounts/SA/keys/KEY_ID``). A service account calling with
a user-managed key is the classic stolen JSON key file: the key that did it is disabled like any
added key (``gcp-sa-key-created``: ``gcp.disable-sa-key``, rollback enables it; the same playbook
and case key as the key's own creation, so one case per key).

Nothing for: a human user (``principalEmail`` not a service account: a user's Google session is not
Cordon's to end), a call without ``serviceAccountKeyName`` (an attached service account's token from
the metadata server, an impersonation), Google's service agents (``service-N@gcp-sa-*``,
``@cloudservices``, ``@cloudbuild`` ...: ``access_path`` ``service``), a suppressed detection, or a
detection already about that very key. A key the record names that is Google-managed
(``keyType: SYSTEM_MANAGED``) is refused by ``gcp.disable-sa-key`` when it reads the key; the core
guard refuses protected principals and Cordon's own service account.
"""

from __future__ import annotations

from typing import Any

from cordon.detections.model import Credential, Detection, Principal
from cordon.providers import VALID_CLOUD_ACCOUNTS, ActorAccess, actor_detection
from cordon.providers.gcp.detections import _GOOGLE_AGENT, _KEY_NAME, _sa_project


def actor_access(detection: Detection) -> ActorAccess | None:
    """The derived detection of the service-account key ``detection``'s actor signed its call with,
    and the playbook that contains it (``gcp-sa-key-created``); ``None`` when there is none to answer
    (see the module docstring).

    The derived detection keeps the record (``raw``, ``raw_ref``, ``rule``, ``time``, ``event_name``)
    and gets ``uid`` ``<uid>#actor``, credential kind ``gcp_sa_key`` with uid
    ``projects/P/serviceAccounts/EMAIL/keys/KEY_ID`` (P: the key name's project, else the service
    account's, else the detection's), owner and ``target`` the service account, technique
    ``T1078.004``, attributes ``revealed_by`` ``{detection_uid, event_name, credential_uid}`` and
    ``serviceAccountKeyName`` (as logged). Raises nothing."""
    cred = detection.credential
    if detection.source != "gcp_audit" or detection.suppressed or cred is None or not cred.uid:
        return None
    actor, user = detection.actor, detection.actor.user
    email = user.uid
    if user.type != "ServiceAccount" or not email or actor.access_path == "service" or _GOOGLE_AGENT.search(email):
        return None
    m = _KEY_NAME.match(actor.session_uid or "")
    if not m:
        return None  # no key signed the call (metadata-server token, impersonation): nothing to disable
    key_project, _account, key_id = m.groups()
    project = key_project if key_project != "-" else (_sa_project(email) or detection.account_uid)
    if not project:
        return None
    uid = f"projects/{project}/serviceAccounts/{email}/keys/{key_id}"
    if cred.kind == "gcp_sa_key" and cred.uid.rsplit("/", 1)[-1] == key_id:
        return None  # the detection is already about the key that signed it
    owner = Principal(uid=email, name=email, type="ServiceAccount", account_uid=_sa_project(email) or project)
    attributes: dict[str, Any] = {
        "revealed_by": {"detection_uid": detection.uid, "event_name": detection.event_name, "credential_uid": cred.uid},
        "serviceAccountKeyName": actor.session_uid}
    credential = Credential(kind="gcp_sa_key", uid=uid, owner=owner, attributes=attributes)
    return actor_detection(detection, credential, "gcp-sa-key-created")


__all__ = ["VALID_CLOUD_ACCOUNTS", "actor_access"]
