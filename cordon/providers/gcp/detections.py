"""Google Cloud: Cloud Audit Log entries matched by a Sigma rule, and Security Command Center
findings, normalised to :class:`Detection`.

Audit log fields follow the ``LogEntry`` reference
(https://cloud.google.com/logging/docs/reference/v2/rest/v2/LogEntry) and the ``AuditLog`` payload
(https://cloud.google.com/logging/docs/reference/audit/auditlog/rest/Shared.Types/AuditLog):
``protoPayload.methodName``, ``authenticationInfo`` (``principalEmail``, ``principalSubject``,
``serviceAccountKeyName``, ``serviceAccountDelegationInfo``), ``requestMetadata``
(``callerIp``, ``callerSuppliedUserAgent``), ``status`` (a ``google.rpc.Status``: ``code`` 0 or
absent is success), ``request`` / ``response`` (the API's own messages, written by IAM with the
proto field names in snake_case: ``key_algorithm``, ``valid_after_time``), ``serviceData`` /
``metadata`` (IAM ``AuditData``: ``policyDelta.bindingDeltas[]`` with ``action`` ADD / REMOVE,
``role``, ``member``). What each credential-creating method returns follows its API reference:
IAM ``projects.serviceAccounts.keys.create`` / ``.upload`` (``ServiceAccountKey``),
``projects.serviceAccounts.create`` (``ServiceAccount``), API Keys v2 ``CreateKey`` (a
long-running operation whose last log entry carries the ``Key``), OS Login
``ImportSshPublicKey`` (``LoginProfile.sshPublicKeys``, a map keyed by fingerprint) and
``CreateSshPublicKey`` (``SshPublicKey``), Cloud Storage ``projects.hmacKeys.create``
(``HmacKey.metadata``: ``accessId``, ``serviceAccountEmail``, ``projectId``). Shapes were checked
against the public corpus (GoogleCloudPlatform/security-analytics test fixtures, Panther's
``gcp_audit_rules`` test logs, which rename ``@type`` to ``at_sign_type`` and ``callerIp`` to
``callerIP``; both spellings are read).

SCC findings follow the ``Finding`` reference
(https://cloud.google.com/security-command-center/docs/reference/rest/v1/organizations.sources.findings)
and the notification shape ``{"notificationConfigName", "finding", "resource"}``
(https://cloud.google.com/security-command-center/docs/how-to-api-filter-notifications).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from cordon.detections.fields import RecordFields, SigmaMatchLike, detection_uid, severity_label, type_name
from cordon.detections.model import (
    Actor,
    Credential,
    Detection,
    Location,
    Principal,
    RawRef,
    RuleRef,
    record_sha256,
)

# -- method families ---------------------------------------------------------------------------

#: Roles whose grant Cordon treats as a persistence / escalation path (``SetIamPolicy`` adding one
#: of them is a ``gcp_iam_binding`` detection). Key admin, token creator and SA user let the member
#: mint credentials for or act as a service account; owner / editor / securityAdmin /
#: projectIamAdmin / organizationAdmin / serviceAccountAdmin let it grant itself those.
SENSITIVE_ROLES: frozenset[str] = frozenset(
    {
        "roles/iam.serviceAccountKeyAdmin",
        "roles/iam.serviceAccountTokenCreator",
        "roles/iam.serviceAccountUser",
        "roles/iam.serviceAccountAdmin",
        "roles/iam.workloadIdentityUser",
        "roles/iam.securityAdmin",
        "roles/owner",
        "roles/editor",
        "roles/resourcemanager.projectIamAdmin",
        "roles/resourcemanager.organizationAdmin",
    }
)

_SA_KEY_METHODS = {"google.iam.admin.v1.CreateServiceAccountKey", "google.iam.admin.v1.UploadServiceAccountKey"}
_SA_CREATE_METHODS = {"google.iam.admin.v1.CreateServiceAccount"}
_API_KEY_METHODS = {"google.api.apikeys.v2.ApiKeys.CreateKey"}
_HMAC_METHODS = {"storage.hmacKeys.create"}
_OSLOGIN_IMPORT = re.compile(r"^google\.cloud\.oslogin\.v1\w*\.OsLoginService\.ImportSshPublicKey$")
_OSLOGIN_CREATE = re.compile(r"^google\.cloud\.oslogin\.v1\w*\.OsLoginService\.CreateSshPublicKey$")

#: ATT&CK techniques used when the matching rule carries none.
FALLBACK_TECHNIQUES: dict[str, list[str]] = {
    "gcp_sa_key": ["T1098.001"],
    "gcp_api_key": ["T1098.001"],
    "gcp_oslogin_ssh_key": ["T1098.004"],
    "gcp_hmac_key": ["T1098.001"],
    "gcp_service_account": ["T1136.003"],
    "gcp_iam_binding": ["T1098.003"],
}


def credential_kind(method: str) -> str | None:
    """The credential kind a Cloud Audit Log ``methodName`` creates or grants, or ``None``.

    ``SetIamPolicy`` in any service (``SetIamPolicy``, ``google.iam.admin.v1.SetIAMPolicy``,
    ``google.cloud.resourcemanager.v3.Projects.SetIamPolicy``, ...) and Cloud Storage's
    ``storage.setIamPermissions`` are ``gcp_iam_binding``.
    """
    if method in _SA_KEY_METHODS:
        return "gcp_sa_key"
    if method in _SA_CREATE_METHODS:
        return "gcp_service_account"
    if method in _API_KEY_METHODS:
        return "gcp_api_key"
    if method in _HMAC_METHODS:
        return "gcp_hmac_key"
    if _OSLOGIN_IMPORT.match(method) or _OSLOGIN_CREATE.match(method):
        return "gcp_oslogin_ssh_key"
    if method.rsplit(".", 1)[-1].lower() == "setiampolicy" or method == "storage.setIamPermissions":
        return "gcp_iam_binding"
    return None


# -- small helpers -----------------------------------------------------------------------------

_GOOGLE_ENUMS: dict[str, dict[int, str]] = {
    # google.iam.admin.v1 enums (https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts.keys)
    "keyType": {0: "KEY_TYPE_UNSPECIFIED", 1: "USER_MANAGED", 2: "SYSTEM_MANAGED"},
    "keyAlgorithm": {0: "KEY_ALG_UNSPECIFIED", 1: "KEY_ALG_RSA_1024", 2: "KEY_ALG_RSA_2048"},
    "keyOrigin": {0: "ORIGIN_UNSPECIFIED", 1: "USER_PROVIDED", 2: "GOOGLE_PROVIDED"},
    "privateKeyType": {0: "TYPE_UNSPECIFIED", 1: "TYPE_PKCS12_FILE", 2: "TYPE_GOOGLE_CREDENTIALS_FILE"},
}

_KEY_NAME = re.compile(r"^(?://iam\.googleapis\.com/)?projects/([^/]+)/serviceAccounts/([^/]+)/keys/([^/]+)$")
_SA_RESOURCE = re.compile(r"^(?://iam\.googleapis\.com/)?projects/([^/]+)/serviceAccounts/([^/]+)$")
_SA_DOMAIN = re.compile(r"^[^@]+@([a-z][a-z0-9-]*[a-z0-9])\.iam\.gserviceaccount\.com$")
_LOG_NAME_PROJECT = re.compile(r"^projects/([^/]+)/logs/")
_API_KEY_NAME = re.compile(r"^projects/[^/]+/locations/[^/]+/keys/[^/]+$")
_HMAC_RESOURCE = re.compile(r"^projects/([^/]+)/hmacKeys/([^/]+)$")
_FULL_RESOURCE = re.compile(r"^//[a-z0-9.-]+\.googleapis\.com/")
_GOOGLE_AGENT = re.compile(
    r"(@cloudservices\.gserviceaccount\.com|@gcp-sa-[a-z0-9-]+\.iam\.gserviceaccount\.com"
    r"|@cloudbuild\.gserviceaccount\.com|@container-engine-robot\.iam\.gserviceaccount\.com"
    r"|@compute-system\.iam\.gserviceaccount\.com)$"
)
_MEMBER_TYPES = {
    "user": "User",
    "serviceAccount": "ServiceAccount",
    "group": "Group",
    "domain": "Domain",
    "deleted": "Deleted",
    "principal": "FederatedIdentity",
    "principalSet": "FederatedIdentitySet",
}


def _sa_project(email: str | None) -> str | None:
    """Project ID of a user-managed service account (``NAME@PROJECT.iam.gserviceaccount.com``)."""
    m = _SA_DOMAIN.match(email or "")
    return m.group(1) if m else None


def _principal_type(email: str) -> str:
    return "ServiceAccount" if email.endswith(".gserviceaccount.com") else "User"


def _sa_principal(email: str | None, project: str | None) -> Principal:
    if not email:
        return Principal(type="ServiceAccount", account_uid=project)
    return Principal(uid=email, name=email, type="ServiceAccount", account_uid=_sa_project(email) or project)


def _member_principal(member: str) -> Principal:
    """A ``Policy`` member (``user:x@y``, ``serviceAccount:...``, ``group:...``, ``principal://...``)
    as a :class:`Principal`."""
    if member.startswith(("principal://", "principalSet://")):
        kind = member.split(":", 1)[0]
        return Principal(uid=member, name=member, type=_MEMBER_TYPES[kind])
    prefix, sep, rest = member.partition(":")
    if not sep:
        return Principal(uid=member, name=member)  # allUsers, allAuthenticatedUsers, projectOwner:...
    rest = rest.split("?uid=", 1)[0]  # deleted:user:x@y?uid=123
    if prefix == "deleted":
        inner = _member_principal(rest)
        return inner.model_copy(update={"type": f"Deleted{inner.type or ''}"})
    ptype = _MEMBER_TYPES.get(prefix, prefix)
    account = _sa_project(rest) if ptype == "ServiceAccount" else None
    return Principal(uid=rest, name=rest, type=ptype, account_uid=account)


def _seconds_to_iso(value: Any) -> str | None:
    """A protobuf ``Timestamp`` as IAM logs it (``{"seconds": 1.678e9, "nanos": n}``) or an RFC
    3339 string, as an ISO 8601 UTC string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        seconds = value.get("seconds")
        if isinstance(seconds, str) and seconds.strip().lstrip("-").isdigit():
            seconds = int(seconds)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            try:
                return datetime.fromtimestamp(float(seconds), UTC).isoformat().replace("+00:00", "Z")
            except (OverflowError, OSError, ValueError):
                return None
    return None


class _Fields(RecordFields):
    """:class:`RecordFields` plus reads that accept either spelling of a field (camelCase as the
    REST API writes it, snake_case as audit logs write proto messages, Panther's renames)."""

    def first(self, paths: list[str], kind: type | tuple[type, ...]) -> tuple[str, Any]:
        """``(path, value)`` of the first of ``paths`` present and not null; ``(paths[0], None)``."""
        for path in paths:
            value = self.get(path, kind)
            if value is not None and value != "":
                return path, value
        return paths[0], None

    def value(self, paths: list[str], kind: type | tuple[type, ...]) -> Any:
        return self.first(paths, kind)[1]


# -- Cloud Audit Logs ----------------------------------------------------------------------------

_PP = "protoPayload"


def _project(f: _Fields) -> str | None:
    project = f.get("resource.labels.project_id", str)
    if project:
        return project
    log_name = f.value(["logName", "logname"], str)
    m = _LOG_NAME_PROJECT.match(log_name or "")
    return m.group(1) if m else None


def _region(f: _Fields) -> str | None:
    return f.value(["resource.labels.location", "resource.labels.region", "resource.labels.zone"], str)


def _entry_time(f: _Fields) -> datetime:
    for path in ("timestamp", "receiveTimestamp", "receivetimestamp"):
        if f.get(path, str) is not None:
            return f.time(path)
    raise f.error("timestamp", "required field missing (no timestamp nor receiveTimestamp either)")


def _delegation_chain(f: _Fields) -> list[str]:
    chain = f.get(f"{_PP}.authenticationInfo.serviceAccountDelegationInfo", list) or []
    out = []
    for i, link in enumerate(chain):
        base = f"{_PP}.authenticationInfo.serviceAccountDelegationInfo[{i}]"
        if not isinstance(link, dict):
            raise f.error(base, f"expected an object, got {type_name(link)}")
        who = (
            f.get("firstPartyPrincipal.principalEmail", str, base=link, prefix=base)
            or f.get("principalSubject", str, base=link, prefix=base)
            or f.get("thirdPartyPrincipal.thirdPartyClaims.sub", str, base=link, prefix=base)
        )
        if who:
            out.append(who)
    return out


def _audit_actor(f: _Fields) -> tuple[Actor, list[str]]:
    auth = f"{_PP}.authenticationInfo"
    f.get(auth, dict)
    email = f.get(f"{auth}.principalEmail", str) or None
    subject = f.get(f"{auth}.principalSubject", str) or None
    if email:
        user = Principal(uid=email, name=email, type=_principal_type(email), account_uid=_sa_project(email))
    elif subject:
        kind = subject.split(":", 1)[0]
        ptype = {"serviceAccount": "ServiceAccount", "user": "User"}.get(kind, "FederatedIdentity")
        name = subject.split(":", 1)[1] if kind in ("serviceAccount", "user") else subject
        user = Principal(uid=name, name=name, type=ptype, account_uid=_sa_project(name))
    else:
        user = Principal()
    key_name = f.get(f"{auth}.serviceAccountKeyName", str)
    m = _KEY_NAME.match(key_name or "")
    session_uid = f"projects/{m.group(1)}/serviceAccounts/{m.group(2)}/keys/{m.group(3)}" if m else key_name
    chain = _delegation_chain(f)
    meta = f"{_PP}.requestMetadata"
    f.get(meta, dict)
    src_ip = f.value([f"{meta}.callerIp", f"{meta}.callerIP"], str)
    user_agent = f.get(f"{meta}.callerSuppliedUserAgent", str)
    invoked_by = None
    if user.uid and _GOOGLE_AGENT.search(user.uid):
        access_path = "service"  # a Google-managed service agent acting for a service
        invoked_by = user.uid
    elif user.uid is None and src_ip in ("private", "gce-internal-ip"):
        access_path = "service"  # Google-internal call with no caller identity
    elif user_agent and (user_agent.startswith("Mozilla/") or "console.cloud.google.com" in user_agent):
        access_path = "console"  # a browser: the Cloud Console (gcloud, SDKs and Terraform name themselves)
    elif user_agent or src_ip or user.uid:
        access_path = "api"
    else:
        access_path = "unknown"
    actor = Actor(
        user=user,
        session_uid=session_uid,
        session_issuer=chain[0] if chain else None,
        src_ip=src_ip,
        user_agent=user_agent,
        invoked_by=invoked_by,
        access_path=access_path,
    )
    return actor, chain


def _failure(f: _Fields, method: str) -> tuple[str | None, dict[str, Any]]:
    """``(suppression reason, attributes)`` when ``status.code`` says the call failed."""
    f.get(f"{_PP}.status", dict)
    code = f.get(f"{_PP}.status.code", (int, str))
    if isinstance(code, str):
        if not code.strip().lstrip("-").isdigit():
            raise f.error(f"{_PP}.status.code", f"expected a google.rpc.Code number, got {code!r}")
        code = int(code)
    if not code:
        return None, {}
    message = f.get(f"{_PP}.status.message", str)
    attrs: dict[str, Any] = {"statusCode": code}
    if message:
        attrs["statusMessage"] = message
    detail = f": {message}" if message else ""
    return f"the {method} call failed (status code {code}{detail}): nothing was created or granted", attrs


def _denied_permissions(f: _Fields) -> list[str]:
    infos = f.get(f"{_PP}.authorizationInfo", list) or []
    denied = []
    for i, info in enumerate(infos):
        base = f"{_PP}.authorizationInfo[{i}]"
        if not isinstance(info, dict):
            raise f.error(base, f"expected an object, got {type_name(info)}")
        if f.get("granted", bool, base=info, prefix=base) is False:
            denied.append(f.get("permission", str, base=info, prefix=base) or "?")
    return denied


def _sa_key_credential(f: _Fields, project: str | None) -> Credential:
    path = f"{_PP}.response.name"
    name = f.get(path, str, required=True)
    m = _KEY_NAME.match(name)
    if not m:
        raise f.error(path, f"expected a key name projects/P/serviceAccounts/SA/keys/KEY_ID, got {name!r}")
    key_project, sa, key_id = m.groups()
    attrs: dict[str, Any] = {}
    email = sa if "@" in sa else f.get("resource.labels.email_id", str) or None
    if email and (sa != email or key_project == "-"):
        key_project = _sa_project(email) or (key_project if key_project != "-" else project) or key_project
        attrs["nameAsLogged"] = name
    uid = f"projects/{key_project}/serviceAccounts/{email or sa}/keys/{key_id}"
    resp = f"{_PP}.response"
    for attr, paths in (
        ("keyType", ["key_type", "keyType"]),
        ("keyAlgorithm", ["key_algorithm", "keyAlgorithm"]),
        ("keyOrigin", ["key_origin", "keyOrigin"]),
        ("privateKeyType", ["private_key_type", "privateKeyType"]),
    ):
        value = f.value([f"{resp}.{p}" for p in paths], (str, int))
        if value is not None:
            attrs[attr] = _GOOGLE_ENUMS[attr].get(value, value) if isinstance(value, int) else value
    for attr, paths in (
        ("validAfterTime", ["valid_after_time", "validAfterTime"]),
        ("validBeforeTime", ["valid_before_time", "validBeforeTime"]),
    ):
        value = f.value([f"{resp}.{p}" for p in paths], (str, dict))
        iso = _seconds_to_iso(value)
        if iso is not None:
            attrs[attr] = iso
    owner = _sa_principal(email, project)
    if not email:
        owner = Principal(uid=sa, name=sa, type="ServiceAccount", account_uid=project)
    return Credential(kind="gcp_sa_key", uid=uid, owner=owner, attributes=attrs)


def _sa_from_request(f: _Fields, project: str | None) -> Principal:
    """The service account a call is about, from ``request.name`` / ``resourceName`` / the
    ``service_account`` resource labels (for failed calls, which have no response)."""
    for path in (f"{_PP}.request.name", f"{_PP}.resourceName"):
        value = f.get(path, str) or ""
        m = _SA_RESOURCE.match(value) or _KEY_NAME.match(value)
        if m and "@" in m.group(2):
            return _sa_principal(m.group(2), project)
    return _sa_principal(f.get("resource.labels.email_id", str) or None, project)


def _service_account_credential(f: _Fields, project: str | None) -> Credential:
    resp = f"{_PP}.response"
    email = f.get(f"{resp}.email", str) or None
    attrs: dict[str, Any] = {}
    if not email:
        account_id = f.get(f"{_PP}.request.account_id", str) or f.get(f"{_PP}.request.accountId", str)
        req_name = f.get(f"{_PP}.request.name", str) or ""
        req_project = req_name.split("/", 1)[1] if req_name.startswith("projects/") else None
        where = project or req_project
        if not account_id or not where:
            raise f.error(
                f"{resp}.email",
                "required field missing: the new service account's email (nor request.account_id and a project)",
            )
        email = f"{account_id}@{where}.iam.gserviceaccount.com"
        attrs["emailDerivedFromRequest"] = True
    for attr, paths in (
        ("uniqueId", ["unique_id", "uniqueId"]),
        ("name", ["name"]),
        ("displayName", ["display_name", "displayName"]),
        ("description", ["description"]),
        ("oauth2ClientId", ["oauth2_client_id", "oauth2ClientId"]),
    ):
        value = f.value([f"{resp}.{p}" for p in paths], str)
        if value is not None:
            attrs[attr] = value
    owner = _sa_principal(email, project)
    return Credential(kind="gcp_service_account", uid=email, owner=owner, attributes=attrs)


def _api_key_credential(f: _Fields, actor: Actor) -> tuple[Credential | None, str | None]:
    """The API key named by a ``CreateKey`` entry, or ``(None, reason)`` for the first entry of the
    long-running operation, which does not name it yet."""
    path = f"{_PP}.response.name"
    name = f.get(path, str)
    if name and _API_KEY_NAME.match(name):
        attrs: dict[str, Any] = {}
        for attr in ("uid", "displayName", "createTime"):
            value = f.get(f"{_PP}.response.{attr}", str)
            if value is not None:
                attrs[attr] = value
        return Credential(kind="gcp_api_key", uid=name, owner=actor.user, attributes=attrs), None
    first = f.get("operation.first", bool)
    last = f.get("operation.last", bool)
    if first and not last:
        reason = (
            "first log entry of the CreateKey long-running operation: the key is named by the "
            "operation's last entry (same operation.id), which is the one to act on"
        )
        op = f.get("operation.id", str)
        return Credential(kind="gcp_api_key", uid=None, owner=actor.user,
                          attributes={"operationId": op} if op else {}), reason
    raise f.error(path, "required field missing: the new key's name projects/P/locations/L/keys/KEY_ID")


def _oslogin_credential(f: _Fields, method: str) -> Credential:
    req = f"{_PP}.request"
    resp = f"{_PP}.response"
    parent = f.value([f"{req}.parent", f"{req}.name"], str) or ""
    user_email = parent[len("users/"):].split("/", 1)[0] if parent.startswith("users/") else None
    if _OSLOGIN_CREATE.match(method):
        name = f.get(f"{resp}.name", str)
        fingerprint = f.get(f"{resp}.fingerprint", str)
        if not name and not (fingerprint and user_email):
            raise f.error(f"{resp}.name", "required field missing: the new key's users/EMAIL/sshPublicKeys/FP")
        uid = name or f"users/{user_email}/sshPublicKeys/{fingerprint}"
        entry = {"fingerprint": fingerprint, "expirationTimeUsec": f.get(f"{resp}.expirationTimeUsec", (str, int))}
    else:
        keys_path, keys = f.first(
            [f"{resp}.loginProfile.sshPublicKeys", f"{resp}.login_profile.ssh_public_keys"], dict
        )
        sent = f.value([f"{req}.sshPublicKey.key", f"{req}.ssh_public_key.key"], str)
        chosen: tuple[str, dict] | None = None
        candidates = []
        for fp, item in (keys or {}).items():
            if not isinstance(item, dict):
                raise f.error(f"{keys_path}.{fp}", f"expected an object, got {type_name(item)}")
            candidates.append((fp, item))
        if sent:
            matching = [(fp, it) for fp, it in candidates if (it.get("key") or "").strip() == sent.strip()]
            chosen = matching[0] if len(matching) == 1 else None
        elif len(candidates) == 1:
            chosen = candidates[0]
        if chosen is None:
            raise f.error(
                keys_path,
                "cannot tell which key was imported: the login profile's keys do not single out the "
                "request's sshPublicKey.key" if candidates else "required field missing",
            )
        fp, item = chosen
        fingerprint = item.get("fingerprint") or fp
        uid = item.get("name") or (f"users/{user_email}/sshPublicKeys/{fingerprint}" if user_email else None)
        if uid is None:
            raise f.error(f"{req}.parent", "required field missing: the user the key was imported for")
        entry = {"fingerprint": fingerprint, "expirationTimeUsec": item.get("expirationTimeUsec")}
        if user_email is None and uid.startswith("users/"):
            user_email = uid.split("/")[1]
    attrs = {k: v for k, v in entry.items() if v is not None}
    project = f.value([f"{req}.projectId", f"{req}.project_id"], str)
    if project:
        attrs["projectId"] = project
    owner = Principal()
    if user_email:
        owner = Principal(
            uid=user_email, name=user_email, type=_principal_type(user_email), account_uid=_sa_project(user_email)
        )
    return Credential(kind="gcp_oslogin_ssh_key", uid=uid, owner=owner, attributes=attrs)


def _hmac_credential(f: _Fields, project: str | None) -> Credential:
    req = f"{_PP}.request"
    resp = f"{_PP}.response"
    access_path, access_id = f.first(
        [f"{resp}.metadata.accessId", f"{resp}.metadata.access_id", f"{resp}.accessId", f"{resp}.access_id"], str
    )
    resource_name = f.get(f"{_PP}.resourceName", str) or ""
    m = _HMAC_RESOURCE.match(_FULL_RESOURCE.sub("", resource_name))
    if access_id is None and m:
        access_id = m.group(2)
    if access_id is None:
        raise f.error(access_path, "required field missing: the new HMAC key's access ID (nor resourceName "
                                   "projects/P/hmacKeys/ACCESS_ID)")
    key_project = (
        f.value([f"{resp}.metadata.projectId", f"{resp}.metadata.project_id", f"{req}.projectId", f"{req}.project_id"],
                str)
        or (m.group(1) if m and m.group(1) != "_" else None)
        or project
    )
    email = f.value(
        [
            f"{resp}.metadata.serviceAccountEmail",
            f"{resp}.metadata.service_account_email",
            f"{req}.serviceAccountEmail",
            f"{req}.service_account_email",
            f"{resp}.serviceAccountEmail",
        ],
        str,
    )
    attrs: dict[str, Any] = {"accessId": access_id}
    for attr in ("state", "timeCreated", "id"):
        value = f.value([f"{resp}.metadata.{attr}", f"{resp}.{attr}"], str)
        if value is not None:
            attrs[attr] = value
    owner = _sa_principal(email, key_project)
    return Credential(kind="gcp_hmac_key", uid=f"projects/{key_project}/hmacKeys/{access_id}", owner=owner,
                      attributes=attrs)


# -- SetIamPolicy ------------------------------------------------------------------------------

_DELTA_PATHS = (
    f"{_PP}.serviceData.policyDelta.bindingDeltas",
    f"{_PP}.metadata.policyDelta.bindingDeltas",
    f"{_PP}.metadata.bindingDeltas",
)


def _binding_deltas(f: _Fields) -> tuple[str | None, list[dict[str, Any]]]:
    """``(dotted path, deltas)``: each delta checked to be an object with string ``action`` /
    ``role`` / ``member``."""
    for path in _DELTA_PATHS:
        deltas = f.get(path, list)
        if deltas is None:
            continue
        out = []
        for i, delta in enumerate(deltas):
            base = f"{path}[{i}]"
            if not isinstance(delta, dict):
                raise f.error(base, f"expected an object, got {type_name(delta)}")
            item = {k: f.get(k, str, base=delta, prefix=base, required=True) for k in ("action", "role", "member")}
            condition = f.get("condition", dict, base=delta, prefix=base)
            if condition:
                item["condition"] = condition
            out.append(item)
        return path, out
    return None, []


def _policy_resource(f: _Fields, project: str | None) -> str:
    """The resource whose policy changed, in the form the binding uid uses: a service account as
    ``projects/P/serviceAccounts/EMAIL`` (``-`` and unique IDs replaced when the log names them),
    anything else as ``resourceName`` without its ``//service.googleapis.com/`` prefix."""
    resource_name = f.get(f"{_PP}.resourceName", str)
    request_resource = f.get(f"{_PP}.request.resource", str)
    for candidate in (request_resource, resource_name):
        m = _SA_RESOURCE.match(candidate or "")
        if m:
            sa_project, sa = m.groups()
            email = sa if "@" in sa else (f.get("resource.labels.email_id", str) or sa)
            if sa_project == "-":
                sa_project = _sa_project(email) or project or "-"
            return f"projects/{sa_project}/serviceAccounts/{email}"
    if resource_name:
        return _FULL_RESOURCE.sub("", resource_name)
    if request_resource:
        return _FULL_RESOURCE.sub("", request_resource)
    raise f.error(f"{_PP}.resourceName", "required field missing: the resource whose IAM policy was set")


# -- entry point -------------------------------------------------------------------------------


def detections_from_gcp_audit(
    entry: dict[str, Any], match: SigmaMatchLike, origin: str, position: int
) -> list[Detection]:
    """Normalise one Cloud Audit Log entry that ``match`` (a Sigma rule) flagged.

    ``entry`` is a ``LogEntry`` (as exported to Cloud Storage, delivered by a Pub/Sub sink, or
    listed by ``entries.list``) whose ``protoPayload`` is an ``AuditLog``; ``match`` any object with
    ``id``, ``title``, ``path``, ``level`` and ``technique_ids``.

    Returns one :class:`Detection` (``provider="gcp"``, ``source="gcp_audit"``, ``event_name`` =
    ``protoPayload.methodName``, ``account_uid`` = ``resource.labels.project_id`` else the project
    of ``logName``, ``region`` = ``resource.labels.location`` / ``region`` / ``zone``, ``time`` =
    ``timestamp`` else ``receiveTimestamp``), except for ``SetIamPolicy``, which gives one per
    binding of a :data:`SENSITIVE_ROLES` role that ``bindingDeltas`` marks ``ADD`` (credential
    ``gcp_iam_binding``, uid ``<resource>#<role>#<member>``), or a single suppressed detection
    without credential when it added none.

    ``actor``: ``authenticationInfo.principalEmail`` (else ``principalSubject``) as uid and name,
    type ``ServiceAccount`` for ``*.gserviceaccount.com`` else ``User``; ``session_uid`` = the
    ``serviceAccountKeyName`` that signed the call (as ``projects/P/serviceAccounts/SA/keys/K``);
    ``session_issuer`` = the first principal of ``serviceAccountDelegationInfo`` (who started an
    impersonation chain; the whole chain is copied to ``credential.attributes.delegationChain``);
    ``access_path`` ``console`` for a browser user agent, ``service`` for Google service agents,
    else ``api``. Credentials by method: see :func:`credential_kind`. A failed call
    (``protoPayload.status.code`` non-zero) created nothing: its credential has no uid and the
    detection is ``suppressed``. Secrets in the record (private key data, API key strings, HMAC
    secrets) are never copied.

    Raises :class:`RecordError` naming the dotted field for a missing ``protoPayload`` /
    ``methodName`` / timestamp, a field of the wrong type, or a successful call without what names
    its credential (``protoPayload.response.name`` for ``CreateServiceAccountKey``).
    """
    f = _Fields(entry, origin, position)
    f.get(_PP, dict, required=True)
    method = f.get(f"{_PP}.methodName", str, required=True)
    time = _entry_time(f)
    f.get(f"{_PP}.request", dict)
    f.get(f"{_PP}.response", dict)
    f.get("resource", dict)
    project = _project(f)
    region = _region(f)
    actor, chain = _audit_actor(f)
    suppressed, fail_attrs = _failure(f, method)
    kind = credential_kind(method)

    techniques = list(getattr(match, "technique_ids", None) or [])
    if not techniques and kind:
        techniques = list(FALLBACK_TECHNIQUES[kind])
    rule_uid = getattr(match, "id", None)
    rule = RuleRef(
        type="sigma",
        uid=rule_uid,
        name=getattr(match, "title", None),
        path=str(match.path) if getattr(match, "path", None) is not None else None,
    )
    severity = severity_label(getattr(match, "level", None))
    raw_ref = RawRef(origin=origin, position=position, sha256=record_sha256(entry))
    extra: dict[str, Any] = {}
    if chain:
        extra["delegationChain"] = chain
    denied = _denied_permissions(f)
    if denied and not suppressed:
        # status is the call's outcome; a denied check on a call that still succeeded is noted.
        extra["deniedPermissions"] = denied

    def make(target: Principal, credential: Credential | None, reason: str | None, salt: str = "") -> Detection:
        if credential is not None and extra:
            credential = credential.model_copy(update={"attributes": {**credential.attributes, **extra}})
        return Detection(
            uid=detection_uid(entry, f"{rule_uid or ''}{salt}"),
            provider="gcp",
            source="gcp_audit",
            event_name=method,
            technique_ids=techniques,
            rule=rule,
            severity=severity,
            time=time,
            account_uid=project,
            region=region,
            actor=actor,
            target=target,
            credential=credential,
            suppressed=reason,
            raw_ref=raw_ref,
            raw=entry,
        )

    if kind is None:
        return [make(actor.user.model_copy(), None, suppressed)]

    if suppressed:
        if kind in ("gcp_sa_key", "gcp_service_account", "gcp_hmac_key"):
            owner = _sa_from_request(f, project)
            if kind == "gcp_hmac_key":
                owner = _sa_principal(
                    f.value([f"{_PP}.request.serviceAccountEmail", f"{_PP}.request.service_account_email"], str),
                    project,
                )
        else:
            owner = actor.user
        if kind == "gcp_service_account":
            account_id = f.get(f"{_PP}.request.account_id", str) or f.get(f"{_PP}.request.accountId", str)
            if account_id:
                fail_attrs = {**fail_attrs, "accountId": account_id}
        credential = Credential(kind=kind, uid=None, owner=owner, attributes=fail_attrs)
        return [make(owner, credential, suppressed)]

    if kind == "gcp_iam_binding":
        return _binding_detections(f, project, actor, make)
    if kind == "gcp_sa_key":
        credential = _sa_key_credential(f, project)
        return [make(credential.owner, credential, None)]
    if kind == "gcp_service_account":
        credential = _service_account_credential(f, project)
        return [make(credential.owner, credential, None)]
    if kind == "gcp_api_key":
        credential, reason = _api_key_credential(f, actor)
        return [make(actor.user.model_copy(), credential, reason)]
    if kind == "gcp_oslogin_ssh_key":
        credential = _oslogin_credential(f, method)
        return [make(credential.owner, credential, None)]
    credential = _hmac_credential(f, project)
    return [make(credential.owner, credential, None)]


def _binding_detections(f: _Fields, project: str | None, actor: Actor, make) -> list[Detection]:
    path, deltas = _binding_deltas(f)
    resource = _policy_resource(f, project)
    added = [d for d in deltas if d["action"].upper() == "ADD" and d["role"] in SENSITIVE_ROLES]
    if not added:
        summary = ", ".join(f"{d['action']} {d['role']} {d['member']}" for d in deltas) or "no bindingDeltas logged"
        reason = f"the policy change on {resource} added no sensitive role binding ({summary})"
        return [make(actor.user.model_copy(), None, reason)]
    out = []
    for delta in added:
        uid = f"{resource}#{delta['role']}#{delta['member']}"
        member = _member_principal(delta["member"])
        attrs: dict[str, Any] = {
            "resource": resource,
            "role": delta["role"],
            "member": delta["member"],
            "deltaPath": path,
        }
        if "condition" in delta:
            attrs["condition"] = delta["condition"]
        credential = Credential(kind="gcp_iam_binding", uid=uid, owner=member, attributes=attrs)
        out.append(make(member, credential, None, salt=f"#{uid}"))
    return out


def detection_from_gcp_audit(
    entry: dict[str, Any], match: SigmaMatchLike, origin: str, position: int
) -> Detection:
    """The single :class:`Detection` of an audit log entry (see :func:`detections_from_gcp_audit`,
    which the pipeline uses). Raises ``ValueError`` when the entry yields several (a
    ``SetIamPolicy`` adding more than one sensitive binding), and :class:`RecordError` as
    :func:`detections_from_gcp_audit` does."""
    found = detections_from_gcp_audit(entry, match, origin, position)
    if len(found) != 1:
        raise ValueError(f"{origin}: record {position} yields {len(found)} detections: use detections_from_gcp_audit")
    return found[0]


# -- Security Command Center -------------------------------------------------------------------

#: ATT&CK techniques per SCC ``category``. Categories are the names Event Threat Detection and
#: Security Health Analytics write (Google's "Event Threat Detection findings" and "Security Health
#: Analytics findings" pages); the IDs are Cordon's reading of each description against ATT&CK.
TECHNIQUES_BY_CATEGORY: dict[str, list[str]] = {
    "Persistence: IAM Anomalous Grant": ["T1098.003"],
    "Persistence: Unmanaged Account Granted Sensitive Role": ["T1098.003"],
    "Privilege Escalation: Dormant Service Account Granted Sensitive Role": ["T1098.003"],
    "Initial Access: Dormant Service Account Key Created": ["T1098.001"],
    "Initial Access: Leaked Service Account Key Used": ["T1078.004"],
    "Persistence: New Geography": ["T1078.004"],
    "Persistence: New User Agent": ["T1078.004"],
    "Persistence: New API Method": ["T1078.004"],
    "NON_ORG_IAM_MEMBER": ["T1098.003"],
    # The seed documents' name for SCC's anomalous token creation signal, and Event Threat
    # Detection's service-account impersonation findings: tokens minted for a service account
    # outside its normal provisioning path.
    "SERVICE_ACCOUNT_ANOMALOUS_TOKEN_CREATION": ["T1098.001", "T1550.001"],
    "Privilege Escalation: Anomalous Service Account Impersonator": ["T1098.001", "T1550.001"],
    "Privilege Escalation: Anomalous Impersonation of Service Account for Admin Activity": ["T1098.001", "T1550.001"],
}

#: SCC categories whose answer is the service account itself (its tokens), not one key.
SA_TOKEN_CATEGORIES = frozenset({
    "SERVICE_ACCOUNT_ANOMALOUS_TOKEN_CREATION",
    "Privilege Escalation: Anomalous Service Account Impersonator",
    "Privilege Escalation: Anomalous Impersonation of Service Account for Admin Activity",
})


_SCC_SEVERITY = {"CRITICAL": "critical", "HIGH": "high", "MEDIUM": "medium", "LOW": "low"}


def detections_from_scc(finding: dict[str, Any], origin: str, position: int) -> list[Detection]:
    """Normalise one Security Command Center finding (the pipeline's entry point).

    ``finding`` is a notification ``{"notificationConfigName", "finding", "resource"}``, a
    ``ListFindings`` result ``{"finding", "resource"}``, ``{"finding"}`` alone, or a bare finding
    (fields are then named ``finding.x`` or ``x`` accordingly in errors).

    Returns one :class:`Detection` per granted binding for grant findings (Event Threat
    Detection's "Persistence: IAM Anomalous Grant" and similar: ``iamBindings[]`` with action
    ``ADD``, else ``sourceProperties.properties.sensitiveRoleGrant.bindingDeltas`` / ``.bindingDeltas``
    with action ``ADD``; credential ``gcp_iam_binding``), otherwise exactly one. Fields:
    ``finding_type`` = ``category``, ``rule`` = ``RuleRef(type="gcp_scc", uid=name, name=category)``,
    ``severity`` from ``severity`` (else Security Health Analytics' ``sourceProperties.SeverityLevel``
    or ETD's ``detectionPriority``), ``time`` = ``eventTime`` else ``createTime``, ``account_uid`` =
    the project ID (``sourceProperties.properties.project_id``, ``sourceProperties.ProjectId``,
    the notification's ``resource.projectDisplayName``, else the project number in ``resourceName``
    / ``resource.project``), ``actor`` from ``access`` (``principalEmail``, ``callerIp``,
    ``userAgent`` / ``userAgentFamily``, ``serviceAccountKeyName``, ``serviceAccountDelegationInfo``)
    else ``sourceProperties.properties.principalEmail``. A finding whose ``resourceName`` is a
    service account key (``//iam.googleapis.com/projects/P/serviceAccounts/SA/keys/K``) names a
    ``gcp_sa_key``. ``state`` ``INACTIVE`` or ``mute`` ``MUTED`` is ``suppressed``.

    Raises :class:`RecordError` naming the dotted field for a missing ``name`` / ``category`` /
    time, or a field of the wrong type.
    """
    f = _Fields(finding, origin, position)
    wrapped = "finding" in finding
    if wrapped:
        f.get("finding", dict, required=True)
    p = "finding." if wrapped else ""
    if wrapped:
        f.get("resource", dict)
    name = f.get(f"{p}name", str, required=True)
    category = f.get(f"{p}category", str, required=True)
    state = f.get(f"{p}state", str)
    mute = f.get(f"{p}mute", str)
    time = f.time(f"{p}eventTime", required=False) or f.time(f"{p}createTime")
    f.get(f"{p}sourceProperties", dict)
    props = f"{p}sourceProperties.properties"
    f.get(props, dict)
    resource_name = f.get(f"{p}resourceName", str)

    sev = f.get(f"{p}severity", str)
    severity = _SCC_SEVERITY.get((sev or "").upper())
    if severity is None:
        alt = f.value([f"{p}sourceProperties.SeverityLevel", f"{p}sourceProperties.detectionPriority"], str)
        severity = _SCC_SEVERITY.get((alt or "").upper(), "unknown")

    number = None
    for value in (resource_name, f.get("resource.project", str) if wrapped else None,
                  f.get("resource.gcpMetadata.project", str) if wrapped else None):
        m = re.match(r"^//cloudresourcemanager\.googleapis\.com/projects/([^/]+)$", value or "")
        if m:
            number = m.group(1)
            break
    key_match = _KEY_NAME.match(resource_name or "")
    project = (
        f.value([f"{props}.project_id", f"{props}.projectId", f"{p}sourceProperties.ProjectId"], str)
        or (f.value(["resource.projectDisplayName", "resource.gcpMetadata.projectDisplayName"], str)
            if wrapped else None)
        or (key_match.group(1) if key_match and key_match.group(1) != "-" else None)
        or number
    )

    access = f"{p}access"
    f.get(access, dict)
    email = f.value([f"{access}.principalEmail", f"{props}.principalEmail",
                     f"{props}.sensitiveRoleGrant.principalEmail"], str)
    subject = f.get(f"{access}.principalSubject", str)
    who = email or subject
    user = (
        Principal(uid=who, name=who, type=_principal_type(who), account_uid=_sa_project(who)) if who else Principal()
    )
    user_agent = f.value([f"{access}.userAgent", f"{access}.userAgentFamily"], str)
    chain_items = f.get(f"{access}.serviceAccountDelegationInfo", list) or []
    chain = []
    for i, link in enumerate(chain_items):
        base = f"{access}.serviceAccountDelegationInfo[{i}]"
        if not isinstance(link, dict):
            raise f.error(base, f"expected an object, got {type_name(link)}")
        link_who = f.get("principalEmail", str, base=link, prefix=base) or f.get(
            "principalSubject", str, base=link, prefix=base)
        if link_who:
            chain.append(link_who)
    key_used = f.get(f"{access}.serviceAccountKeyName", str)
    km = _KEY_NAME.match(key_used or "")
    actor = Actor(
        user=user,
        session_uid=f"projects/{km.group(1)}/serviceAccounts/{km.group(2)}/keys/{km.group(3)}" if km else key_used,
        session_issuer=chain[0] if chain else None,
        src_ip=f.get(f"{access}.callerIp", str),
        # SCC: access.callerIpGeo.regionCode, "a CLDR region code" (ISO 3166-1 alpha-2 for countries)
        src_location=Location(country=code) if (code := f.get(f"{access}.callerIpGeo.regionCode", str)) else None,
        user_agent=user_agent,
        access_path="console" if (user_agent or "").startswith("Mozilla/") else ("api" if who else "unknown"),
    )

    suppressed = None
    if (state or "").upper() == "INACTIVE":
        suppressed = f"the SCC finding is INACTIVE (resolved or no longer applicable): {name}"
    elif (mute or "").upper() == "MUTED":
        suppressed = f"the SCC finding is muted: {name}"

    techniques = list(TECHNIQUES_BY_CATEGORY.get(category, []))
    rule = RuleRef(type="gcp_scc", uid=name, name=category)
    raw_ref = RawRef(origin=origin, position=position, sha256=record_sha256(finding))
    attrs_common: dict[str, Any] = {"findingName": name}
    if chain:
        attrs_common["delegationChain"] = chain

    def make(target: Principal, credential: Credential | None, salt: str = "") -> Detection:
        return Detection(
            uid=detection_uid(finding, f"{name}{salt}"),
            provider="gcp",
            source="gcp_scc",
            event_name=f.get(f"{access}.methodName", str),
            finding_type=category,
            technique_ids=techniques,
            rule=rule,
            severity=severity,
            time=time,
            account_uid=project,
            region=None,
            actor=actor,
            target=target,
            credential=credential,
            suppressed=suppressed,
            raw_ref=raw_ref,
            raw=finding,
        )

    grants = _scc_grants(f, p)
    if grants:
        grant_resource = _scc_grant_resource(resource_name, project)
        out = []
        for role, member in grants:
            uid = f"{grant_resource}#{role}#{member}"
            principal = _member_principal(member)
            credential = Credential(
                kind="gcp_iam_binding",
                uid=uid,
                owner=principal,
                attributes={**attrs_common, "resource": grant_resource, "role": role, "member": member},
            )
            out.append(make(principal, credential, salt=f"#{uid}"))
        return out
    if key_match:
        credential = Credential(
            kind="gcp_sa_key",
            uid=f"projects/{key_match.group(1)}/serviceAccounts/{key_match.group(2)}/keys/{key_match.group(3)}",
            owner=_sa_principal(key_match.group(2), project),
            attributes=attrs_common,
        )
        return [make(credential.owner, credential)]
    key_prop = f.get(f"{props}.serviceAccountKeyName", str) or f.get(f"{props}.keyName", str)
    km2 = _KEY_NAME.match(key_prop or "")
    if km2:
        credential = Credential(
            kind="gcp_sa_key",
            uid=f"projects/{km2.group(1)}/serviceAccounts/{km2.group(2)}/keys/{km2.group(3)}",
            owner=_sa_principal(km2.group(2), project),
            attributes=attrs_common,
        )
        return [make(credential.owner, credential)]
    if category in SA_TOKEN_CATEGORIES:
        sa_match = _SA_RESOURCE.match(resource_name or "")
        sa_email = (sa_match.group(2) if sa_match else None) or f.value(
            [f"{props}.serviceAccountEmail", f"{props}.impersonatedServiceAccount"], str)
        sa_email = sa_email or (chain[-1] if chain else None)
        if project is None and sa_match and sa_match.group(1) != "-":
            project = sa_match.group(1)  # read late by make()
        if sa_email and "@" in sa_email:
            owner = _sa_principal(sa_email, project)
            credential = Credential(kind="gcp_service_account", uid=sa_email, owner=owner,
                                    attributes={**attrs_common, "reason": "anomalous token creation"})
            return [make(owner, credential)]
    return [make(Principal(), None)]


def detection_from_scc(finding: dict[str, Any], origin: str, position: int) -> Detection:
    """The single :class:`Detection` of an SCC finding (see :func:`detections_from_scc`, which the
    pipeline uses). Raises ``ValueError`` when the finding reports several granted bindings, and
    :class:`RecordError` as :func:`detections_from_scc` does."""
    found = detections_from_scc(finding, origin, position)
    if len(found) != 1:
        raise ValueError(f"{origin}: record {position} yields {len(found)} detections: use detections_from_scc")
    return found[0]


def _scc_grant_resource(resource_name: str | None, project: str | None) -> str:
    """``projects/<project id>`` for a project finding when the ID is known (as audit logs name
    the project), else ``resourceName`` without its ``//service.googleapis.com/`` prefix."""
    bare = _FULL_RESOURCE.sub("", resource_name or "")
    if bare.startswith("projects/") and bare.count("/") == 1 and project:
        return f"projects/{project}"
    return bare or (f"projects/{project}" if project else "-")


def _scc_grants(f: _Fields, p: str) -> list[tuple[str, str]]:
    """``(role, member)`` pairs a finding reports as added: ``iamBindings[]`` (v1 field), else ETD's
    ``sourceProperties.properties.sensitiveRoleGrant.bindingDeltas`` / ``.bindingDeltas``."""
    out: list[tuple[str, str]] = []
    candidates = [
        f"{p}iamBindings",
        f"{p}sourceProperties.properties.sensitiveRoleGrant.bindingDeltas",
        f"{p}sourceProperties.properties.bindingDeltas",
    ]
    for path in candidates:
        items = f.get(path, list)
        if not items:
            continue
        for i, item in enumerate(items):
            base = f"{path}[{i}]"
            if not isinstance(item, dict):
                raise f.error(base, f"expected an object, got {type_name(item)}")
            action = f.get("action", str, base=item, prefix=base) or "ADD"
            role = f.get("role", str, base=item, prefix=base, required=True)
            member = f.get("member", str, base=item, prefix=base, required=True)
            if action.upper() == "ADD" and (role, member) not in out:
                out.append((role, member))
        if out:
            return out
    return out


__all__ = [
    "FALLBACK_TECHNIQUES",
    "SENSITIVE_ROLES",
    "TECHNIQUES_BY_CATEGORY",
    "credential_kind",
    "detection_from_gcp_audit",
    "detection_from_scc",
    "detections_from_gcp_audit",
    "detections_from_scc",
]
