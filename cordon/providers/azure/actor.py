"""The actor's own access behind an Entra detection (issue 14: "the actor is never answered").

An Entra ``directoryAudit`` record that added a credential also names who did it
(``initiatedBy``, Microsoft Graph directoryAudit resource,
https://learn.microsoft.com/graph/api/resources/directoryaudit?view=graph-rest-1.0):

* ``initiatedBy.user`` (``id``, ``userPrincipalName``): a user's sign-in, possibly a stolen
  session. Answered by revoking the user's sign-in sessions (``azure-actor-user-sessions``:
  ``azure.revoke-user-sessions``, Graph ``POST /users/{id}/revokeSignInSessions``): every refresh
  token and session cookie issued before now stops working; the user signs in again.
* ``initiatedBy.app`` (``appId``, ``servicePrincipalId``): an application signing in with its own
  credential (client secret, certificate, federated token). Answered by disabling its service
  principal (``azure-actor-service-principal``: ``azure.disable-service-principal``, rollback
  enables it): no token is issued for it any more, whichever credential is presented.

Nothing is derived for: a suppressed detection (Azure rotating a managed identity's certificate,
:func:`cordon.providers.azure.detections._managed_identity_rotation`, a failed operation); an app
the record does not name by both ``appId`` and ``servicePrincipalId`` (Microsoft's own services log
``appId`` null, as the Managed Service Identity record does); a Microsoft first-party app
(:data:`FIRST_PARTY_APP_IDS`); an actor that *is* the detection's credential (a detection of the
user's own sessions or of the service principal itself); a user the record names without its object
id. The provider's guard (:mod:`cordon.providers.azure.guard`) still refuses at run time a service
principal that is a managed identity or belongs to a Microsoft tenant, and the core guard refuses
protected principals and Cordon's own identity.
"""

from __future__ import annotations

import re
from typing import Any

from cordon.detections.model import Credential, Detection, Principal
from cordon.providers import VALID_CLOUD_ACCOUNTS, ActorAccess, actor_detection
from cordon.providers.azure.detections import GRAPH_APP_ID, MANAGED_SERVICE_IDENTITY_APP_ID

#: Microsoft first-party applications (one appId in every tenant) whose service principal a tenant
#: never disables: Managed Service Identity (rotates managed identities' certificates) and Microsoft
#: Graph. Any other Microsoft app is refused by the guard from its ``appOwnerOrganizationId``.
FIRST_PARTY_APP_IDS = frozenset({MANAGED_SERVICE_IDENTITY_APP_ID, GRAPH_APP_ID})

#: The credential kinds of the actor's own access: the user's sign-in sessions, the service
#: principal's sign-in (the uid is the object id in both).
USER_SESSIONS = "azure_user_sessions"
SP_SIGN_IN = "azure_sp_sign_in"

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def actor_access(detection: Detection) -> ActorAccess | None:
    """The derived detection of the access ``detection``'s actor used (an Entra detection that
    named a credential), and the playbook that contains it; ``None`` when there is none to answer
    (see the module docstring).

    The derived detection keeps the record (``raw``, ``raw_ref``, ``rule``, ``time``,
    ``event_name``) and gets ``uid`` ``<uid>#actor``, the actor as ``target`` and credential owner,
    technique ``T1078.004`` and ``credential.attributes.revealed_by`` ``{detection_uid,
    event_name, credential_uid}``:

    * a user: kind ``azure_user_sessions``, uid the user's object id (``initiatedBy.user.id``),
      attributes ``userPrincipalName``, ``ipAddress``; playbook ``azure-actor-user-sessions``;
    * an app: kind ``azure_sp_sign_in``, uid ``initiatedBy.app.servicePrincipalId``, attribute
      ``appId``; playbook ``azure-actor-service-principal``.

    Its case key is the user's or service principal's, so every detection of the same actor joins
    one case. Raises nothing."""
    cred = detection.credential
    if detection.source != "entra" or detection.suppressed or cred is None or not cred.uid:
        return None
    actor, user = detection.actor, detection.actor.user
    tenant = user.account_uid or detection.account_uid
    if not user.uid or not _GUID.match(user.uid):
        return None
    oid = user.uid.lower()
    attributes: dict[str, Any] = {"revealed_by": {"detection_uid": detection.uid, "event_name": detection.event_name,
                                                  "credential_uid": cred.uid}}
    if user.type == "User":
        if cred.kind in ("azure_user", USER_SESSIONS) and cred.uid.lower() == oid:
            return None  # the detection is already about this user
        owner = Principal(uid=oid, name=user.name, type="User", account_uid=tenant)
        extra = {"userPrincipalName": user.name, "ipAddress": actor.src_ip}
        credential = Credential(kind=USER_SESSIONS, uid=oid, owner=owner,
                                attributes={**attributes, **{k: v for k, v in extra.items() if v}})
        playbook = "azure-actor-user-sessions"
    elif user.type == "ServicePrincipal":
        app_id = (actor.session_issuer or "").lower()
        # _entra_actor: uid = servicePrincipalId, else appId; session_issuer = appId. Both present and
        # different: the record names the app by both (Microsoft's own services log appId null).
        if not _GUID.match(app_id) or app_id == oid or app_id in FIRST_PARTY_APP_IDS:
            return None
        if cred.kind in ("azure_service_principal", SP_SIGN_IN) and cred.uid.lower() == oid:
            return None  # the detection is already about this service principal
        owner = Principal(uid=oid, name=user.name, type="ServicePrincipal", account_uid=tenant)
        credential = Credential(kind=SP_SIGN_IN, uid=oid, owner=owner, attributes={**attributes, "appId": app_id})
        playbook = "azure-actor-service-principal"
    else:
        return None
    return actor_detection(detection, credential, playbook)


__all__ = ["FIRST_PARTY_APP_IDS", "SP_SIGN_IN", "USER_SESSIONS", "VALID_CLOUD_ACCOUNTS", "actor_access"]
