"""The AWS sandbox: moto's server plus a small stand-in for the AWS APIs moto lacks.

:class:`AwsSandbox` runs, on 127.0.0.1,

* moto's ``ThreadedMotoServer`` (IAM, EC2, STS, ...), reset with ``POST /moto-api/reset``;
* :class:`AwsStandIn`, a tiny HTTP server for what moto 5.2 does not implement:

  - CloudTrail ``LookupEvents`` (JSON 1.1 protocol: ``POST /`` with
    ``X-Amz-Target: com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents``),
    https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_LookupEvents.html ;
  - IAM service-specific credentials (``Create/List/Update/DeleteServiceSpecificCredential``,
    query protocol, XML answers),
    https://docs.aws.amazon.com/IAM/latest/APIReference/API_ListServiceSpecificCredentials.html .
    Sandbox IAM clients send exactly these four operations to the stand-in (a botocore
    ``before-send`` hook rewrites the URL); every other IAM operation goes to moto;
  - IAM Roles Anywhere trust anchors and profiles (``Create/Get/List/Enable/Disable`` of each,
    REST-JSON: ``POST /trustanchors``, ``GET /trustanchor/{id}``, ``POST /trustanchor/{id}/disable``,
    ...), https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/Welcome.html . Sandbox
    ``rolesanywhere`` clients talk only to the stand-in;
  - EKS access entries and access policies (REST JSON: ``CreateAccessEntry``, ``DescribeAccessEntry``,
    ``DeleteAccessEntry``, ``AssociateAccessPolicy``, ``ListAssociatedAccessPolicies``,
    ``DisassociateAccessPolicy``; :meth:`AwsStandIn.add_eks_access_entry`),
    https://docs.aws.amazon.com/eks/latest/APIReference/ . moto 5.2 serves EKS clusters but no access
    entries, so sandbox ``eks`` clients talk only to the stand-in.
  - AWS Config rules and their evaluations (JSON 1.1, ``X-Amz-Target: StarlingDoveService.<Op>``):
    ``DescribeConfigRules``, ``GetComplianceDetailsByConfigRule`` (``ComplianceTypes``, ``Limit``,
    ``NextToken``) and ``StartConfigRulesEvaluation`` (recorded in :attr:`AwsStandIn.evaluations`),
    over the rules and results a test adds (:meth:`AwsStandIn.add_config_rule`,
    :meth:`AwsStandIn.set_compliance`), https://docs.aws.amazon.com/config/latest/APIReference/ .
    moto 5.2 keeps Config rules but has no compliance or re-evaluation calls, so sandbox ``config``
    clients talk only to the stand-in;
  - STS ``AssumeRoot`` (centralized root access; query protocol) and the root user's own access
    keys as a root session sees them (IAM ``ListAccessKeys`` / ``DeleteAccessKey`` / ``CreateAccessKey``
    with no ``UserName``, signed with the credentials ``AssumeRoot`` issued, allowed only what the
    task policy allows), https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoot.html ,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/security-iam-awsmanpol.html (the root task
    policies). Sandbox STS clients send ``AssumeRoot`` to the stand-in; a client made with the
    credentials it issued (``clients("iam", credentials=...)``) talks only to the stand-in.

Sandbox-only approximations (never used against real AWS):

* **Accounts.** moto picks the account of a request from the ``x-moto-account-id`` header
  (``moto.core.responses.BaseResponse.get_current_account``). Sandbox clients send it, set to
  :attr:`AwsSandbox.account_id` (the detection's account after :meth:`AwsSandbox.seed_from_detection`),
  so ARNs carry the detection's account. For clients that do not send it, moto falls back to the
  account owning the signing key: :meth:`AwsSandbox.use_account` registers the sandbox's dummy
  key IDs as user-less keys of the current account (one account at a time).
* **Regions.** moto's EC2 answers HTTP 500 for a region botocore does not know (the corpus has
  anonymised regions such as ``ap-central-2r``). :meth:`AwsSandbox.sandbox_region` maps any
  unknown region to ``us-east-1`` for the *client* only; actions still record the detection's
  region in their planned calls.
* **Exact access key IDs.** moto generates its own ``AccessKeyId``. The seeder creates the key
  through the API and then renames it in moto's in-process backend
  (``moto.iam.models.iam_backends[account]["aws"]``: the ``AccessKey`` object's
  ``access_key_id`` and the backend's ``access_keys`` index), so the sandbox holds exactly the
  key ID the detection names and playbook parameters need no translation.
* **AWS managed policies.** moto loads none by default (loading all is slow). The seeder adds
  the one AWS managed policy a detection names (e.g. ``AdministratorAccess``) to the account's
  backend from moto's bundled copy of the policy data, then attaches it through the API.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import string
import threading
import uuid
import xml.sax.saxutils as saxutils
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

from cordon.clouds import ClientFactory

DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
CLOUDTRAIL_TARGET_PREFIX = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101."
IAM_XMLNS = "https://iam.amazonaws.com/doc/2010-05-08/"
SSC_OPERATIONS = (
    "CreateServiceSpecificCredential",
    "ListServiceSpecificCredentials",
    "UpdateServiceSpecificCredential",
    "DeleteServiceSpecificCredential",
)
LOOKUP_ATTRIBUTE_KEYS = (
    "EventId", "EventName", "ReadOnly", "Username", "ResourceType", "ResourceName", "EventSource",
    "AccessKeyId",
)
ROOT_TASK_POLICY_PREFIX = "arn:aws:iam::aws:policy/root-task/"
#: What each root task policy lets a root session do (AWS managed policies under ``root-task/``;
#: the stand-in serves the access-key operations of these).
ROOT_TASK_POLICIES: dict[str, tuple[str, ...]] = {
    "IAMDeleteRootUserCredentials": ("GetUser", "ListAccessKeys", "DeleteAccessKey", "GetLoginProfile",
                                     "DeleteLoginProfile", "ListMFADevices", "DeactivateMFADevice",
                                     "ListSigningCertificates", "DeleteSigningCertificate",
                                     "GetAccessKeyLastUsed"),
    "IAMCreateRootUserPassword": ("GetUser", "GetLoginProfile", "CreateLoginProfile"),
    "IAMAuditRootUserCredentials": ("GetUser", "ListAccessKeys", "GetLoginProfile", "ListMFADevices",
                                    "ListSigningCertificates", "GetAccessKeyLastUsed"),
}
ROOT_KEY_OPERATIONS = ("ListAccessKeys", "DeleteAccessKey", "CreateAccessKey", "UpdateAccessKey")
ROLESANYWHERE_KINDS = {"trustanchor": ("trustAnchor", "trust-anchor", "trustAnchorId", "trustAnchorArn"),
                       "profile": ("profile", "profile", "profileId", "profileArn")}
ADMIN_POLICY_DOCUMENT = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def _parse_time(value: Any) -> datetime:
    """A CloudTrail ``eventTime`` (``2024-07-30T21:53:13Z``) or epoch seconds as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def lookup_record(event: dict[str, Any]) -> dict[str, Any]:
    """The ``LookupEvents`` view of one raw CloudTrail event.

    Returns ``{EventId, EventName, ReadOnly ("true"/"false"), AccessKeyId, EventTime (epoch
    seconds), EventSource, Username, Resources: [{ResourceType, ResourceName}], CloudTrailEvent
    (the raw event as a JSON string)}``, omitting fields the event lacks. ``Resources`` come from
    the event's ``resources`` (ARN / type) when present, else from well-known request and
    response fields (user, policy, key pair, access key): an approximation of CloudTrail's own
    resource extraction.
    """
    ident = event.get("userIdentity") or {}
    username = ident.get("userName")
    if not username and ident.get("arn"):
        username = str(ident["arn"]).rsplit("/", 1)[-1]
    resources: list[dict[str, str]] = []
    for res in event.get("resources") or []:
        if isinstance(res, dict) and res.get("ARN"):
            resources.append({"ResourceType": str(res.get("type", "")), "ResourceName": str(res["ARN"])})
    if not resources:
        req = event.get("requestParameters") or {}
        resp = event.get("responseElements") or {}
        if isinstance(req, dict):
            if req.get("userName"):
                resources.append({"ResourceType": "AWS::IAM::User", "ResourceName": str(req["userName"])})
            if req.get("policyArn"):
                resources.append({"ResourceType": "AWS::IAM::Policy", "ResourceName": str(req["policyArn"])})
            if req.get("keyName"):
                resources.append({"ResourceType": "AWS::EC2::KeyPair", "ResourceName": str(req["keyName"])})
        key = (resp or {}).get("accessKey") if isinstance(resp, dict) else None
        if isinstance(key, dict) and key.get("accessKeyId"):
            resources.append({"ResourceType": "AWS::IAM::AccessKey", "ResourceName": str(key["accessKeyId"])})
    record: dict[str, Any] = {
        "EventId": event.get("eventID"),
        "EventName": event.get("eventName"),
        "ReadOnly": str(event.get("readOnly", False)).lower(),
        "AccessKeyId": ident.get("accessKeyId"),
        "EventTime": _parse_time(event["eventTime"]).timestamp(),
        "EventSource": event.get("eventSource"),
        "Username": username,
        "Resources": resources,
        "CloudTrailEvent": json.dumps(event, sort_keys=True),
    }
    return {k: v for k, v in record.items() if v is not None}


def _ssc_id() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "ACCA" + "".join(secrets.choice(alphabet) for _ in range(17))


class AwsStandIn:
    """HTTP stand-in for CloudTrail ``LookupEvents`` and IAM service-specific credentials.

    State (all guarded by one lock): ``events`` (raw CloudTrail event dicts keyed by
    ``eventID``), ``ssc`` (service-specific credentials keyed by ``(account, user)``),
    ``requests`` (one ``{"operation", "status", "account"}`` dict per request received, in
    order, injected failures included) and the failure queue filled by :meth:`fail_next`.

    LookupEvents honours one ``LookupAttributes`` entry (more is
    ``InvalidLookupAttributesException``), ``StartTime`` / ``EndTime`` (epoch seconds,
    inclusive), ``MaxResults`` (1-50, default 50) and ``NextToken``; events come newest first.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._lock = threading.Lock()
        self.events: dict[str, dict[str, Any]] = {}
        self.ssc: dict[tuple[str, str], list[dict[str, Any]]] = {}
        #: Roles Anywhere objects keyed by (account, "trustanchor" | "profile", id)
        self.rolesanywhere: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: EKS access entries by (account, cluster, principal ARN); each holds its ``policies``
        self.eks_entries: dict[tuple[str, str, str], dict[str, Any]] = {}
        #: the root user's access keys by account; the root sessions AssumeRoot issued by key ID
        self.root_keys: dict[str, list[dict[str, Any]]] = {}
        self.root_sessions: dict[str, dict[str, str]] = {}
        #: AWS Config: rules by (account, name); evaluation results by (account, rule name); the
        #: StartConfigRulesEvaluation calls received, as (account, [rule names])
        self.config_rules: dict[tuple[str, str], dict[str, Any]] = {}
        self.compliance: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.evaluations: list[tuple[str, list[str]]] = []
        self.requests: list[dict[str, Any]] = []
        self._failures: list[tuple[int, str | None, str | None]] = []
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> AwsStandIn:
        """Serve in a daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="aws-standin",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def reset(self) -> None:
        """Forget events, credentials, recorded requests and pending failures."""
        with self._lock:
            self.events.clear()
            self.ssc.clear()
            self.rolesanywhere.clear()
            self.eks_entries.clear()
            self.config_rules.clear()
            self.compliance.clear()
            self.evaluations.clear()
            self.root_keys.clear()
            self.root_sessions.clear()
            self.requests.clear()
            self._failures.clear()

    # -- seeding and fault injection -------------------------------------------------------
    def add_events(self, events: list[dict[str, Any]]) -> int:
        """Store raw CloudTrail events (each needs ``eventID`` and ``eventTime``); an event whose
        ``eventID`` is already stored replaces it. Returns how many are stored in all."""
        with self._lock:
            for ev in events:
                if not ev.get("eventID") or not ev.get("eventTime"):
                    raise ValueError("a CloudTrail event needs eventID and eventTime")
                self.events[str(ev["eventID"])] = dict(ev)
            return len(self.events)

    def add_service_specific_credential(self, account: str, user_name: str, service_name: str,
                                        credential_id: str | None = None, status: str = "Active",
                                        create_date: datetime | None = None) -> dict[str, Any]:
        """Create (or return the existing one with that ID) a service-specific credential."""
        with self._lock:
            creds = self.ssc.setdefault((account, user_name), [])
            for cred in creds:
                if credential_id and cred["ServiceSpecificCredentialId"] == credential_id:
                    return dict(cred)
            cred = {
                "UserName": user_name,
                "ServiceName": service_name,
                "ServiceUserName": f"{user_name}-at-{account}",
                "ServiceSpecificCredentialId": credential_id or _ssc_id(),
                "Status": status,
                "CreateDate": _iso(create_date or datetime.now(UTC)),
            }
            creds.append(cred)
            return dict(cred)

    def add_config_rule(self, account: str, name: str, identifier: str,
                        parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add an AWS managed Config rule ``name`` (``Source.SourceIdentifier`` ``identifier``, e.g.
        ``ACCESS_KEYS_ROTATED``; ``InputParameters`` the JSON of ``parameters``) to ``account``."""
        rule = {"ConfigRuleName": name, "ConfigRuleId": f"config-rule-{uuid.uuid4().hex[:6]}",
                "ConfigRuleArn": f"arn:aws:config:{DEFAULT_REGION}:{account}:config-rule/config-rule-{name}",
                "Source": {"Owner": "AWS", "SourceIdentifier": identifier},
                "InputParameters": json.dumps(parameters or {}), "ConfigRuleState": "ACTIVE",
                "Scope": {"ComplianceResourceTypes": ["AWS::IAM::User"]}}
        with self._lock:
            self.config_rules[(account, name)] = rule
        return dict(rule)

    def set_compliance(self, account: str, rule: str, resource_id: str, compliance: str = "NON_COMPLIANT",
                       annotation: str | None = None) -> None:
        """Record rule ``rule``'s evaluation of IAM user ``resource_id`` (its ``UserId``) in
        ``account``, replacing an earlier one."""
        now = datetime.now(UTC).timestamp()
        result = {"EvaluationResultIdentifier": {"EvaluationResultQualifier": {
            "ConfigRuleName": rule, "ResourceType": "AWS::IAM::User", "ResourceId": resource_id,
            "EvaluationMode": "DETECTIVE"}, "OrderingTimestamp": now},
            "ComplianceType": compliance, "ResultRecordedTime": now, "ConfigRuleInvokedTime": now,
            **({"Annotation": annotation} if annotation else {})}
        with self._lock:
            results = self.compliance.setdefault((account, rule), [])
            results[:] = [r for r in results if r["EvaluationResultIdentifier"]["EvaluationResultQualifier"]
                          ["ResourceId"] != resource_id] + [result]

    def _config(self, operation: str, account: str, req: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if operation == "DescribeConfigRules":
                names = req.get("ConfigRuleNames")
                rules = [dict(r) for (acct, name), r in self.config_rules.items()
                         if acct == account and (not names or name in names)]
                missing = set(names or []) - {r["ConfigRuleName"] for r in rules}
                if missing:
                    raise _ApiError(400, "NoSuchConfigRuleException",
                                    f"The ConfigRule '{sorted(missing)[0]}' provided in the request is invalid.")
                return {"ConfigRules": rules}
            name = str(req.get("ConfigRuleName") or "")
            if operation == "GetComplianceDetailsByConfigRule":
                if (account, name) not in self.config_rules:
                    raise _ApiError(400, "NoSuchConfigRuleException",
                                    f"The ConfigRule '{name}' provided in the request is invalid.")
                wanted = set(req.get("ComplianceTypes") or ["COMPLIANT", "NON_COMPLIANT"])
                results = [r for r in self.compliance.get((account, name), []) if r["ComplianceType"] in wanted]
                limit = int(req.get("Limit") or 100)
                start = int(req.get("NextToken") or 0)
                page = results[start:start + limit]
                out: dict[str, Any] = {"EvaluationResults": page}
                if start + limit < len(results):
                    out["NextToken"] = str(start + limit)
                return out
            if operation == "StartConfigRulesEvaluation":
                names = list(req.get("ConfigRuleNames") or [])
                missing = [n for n in names if (account, n) not in self.config_rules]
                if missing or not names:
                    raise _ApiError(400, "NoSuchConfigRuleException",
                                    f"The ConfigRule '{(missing or ['-'])[0]}' provided in the request is invalid.")
                self.evaluations.append((account, names))
                return {}
        raise _ApiError(400, "InvalidAction", f"operation {operation} is not served here")

    def add_eks_access_entry(self, account: str, cluster: str, principal_arn: str, *, arn: str | None = None,
                             region: str = DEFAULT_REGION, kubernetes_groups: list[str] | None = None,
                             entry_type: str = "STANDARD", username: str | None = None,
                             policies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Add (or replace) the EKS access entry of ``principal_arn`` on ``cluster``; ``arn`` defaults
        to ``arn:aws:eks:<region>:<account>:access-entry/<cluster>/<role|user>/<account>/<name>/<uuid>``;
        ``policies``: ``[{"policyArn", "accessScope"}]``. Returns a copy of the entry."""
        noun, _, name = principal_arn.split(":", 5)[-1].partition("/")
        arn = arn or (f"arn:aws:eks:{region}:{account}:access-entry/{cluster}/{noun}/{account}/"
                      f"{name.rsplit('/', 1)[-1]}/{uuid.uuid4().hex[:12]}")
        now = datetime.now(UTC).timestamp()
        entry = {"clusterName": cluster, "principalArn": principal_arn, "accessEntryArn": arn,
                 "kubernetesGroups": list(kubernetes_groups or []), "type": entry_type,
                 "username": username or principal_arn, "createdAt": now, "modifiedAt": now, "tags": {},
                 "policies": [{"policyArn": p["policyArn"], "accessScope": p.get("accessScope") or {"type": "cluster"},
                               "associatedAt": now, "modifiedAt": now} for p in policies or []]}
        with self._lock:
            self.eks_entries[(account, cluster, principal_arn)] = entry
        return {k: v for k, v in entry.items() if k != "policies"}

    def _eks(self, route: tuple[str, str, str | None, str | None], account: str,
             body: dict[str, Any]) -> dict[str, Any]:
        operation, cluster, principal, policy = route
        key = (account, cluster, principal or str(body.get("principalArn") or ""))
        if operation == "CreateAccessEntry":
            if key in self.eks_entries:
                raise _ApiError(409, "ResourceInUseException", f"The specified access entry resource is already in use "
                                                               f"on this cluster: {key[2]}")
            created = self.add_eks_access_entry(
                account, cluster, key[2], kubernetes_groups=body.get("kubernetesGroups"),
                entry_type=body.get("type") or "STANDARD", username=body.get("username"))
            return {"accessEntry": created}
        with self._lock:
            entry = self.eks_entries.get(key)
            if entry is None:
                raise _ApiError(404, "ResourceNotFoundException", f"The specified principalArn could not be found. "
                                                                  f"You can view your available access entries with "
                                                                  f"'aws eks list-access-entries': {key[2]}")
            if operation == "DescribeAccessEntry":
                return {"accessEntry": {k: v for k, v in entry.items() if k != "policies"}}
            if operation == "DeleteAccessEntry":
                del self.eks_entries[key]
                return {}
            if operation == "ListAssociatedAccessPolicies":
                return {"clusterName": cluster, "principalArn": key[2],
                        "associatedAccessPolicies": [dict(p) for p in entry["policies"]]}
            if operation == "AssociateAccessPolicy":
                now = datetime.now(UTC).timestamp()
                entry["policies"] = [p for p in entry["policies"] if p["policyArn"] != body.get("policyArn")]
                assoc = {"policyArn": body.get("policyArn"),
                         "accessScope": body.get("accessScope") or {"type": "cluster"},
                         "associatedAt": now, "modifiedAt": now}
                entry["policies"].append(assoc)
                return {"clusterName": cluster, "principalArn": key[2], "associatedAccessPolicy": dict(assoc)}
            # DisassociateAccessPolicy
            kept = [p for p in entry["policies"] if p["policyArn"] != policy]
            if len(kept) == len(entry["policies"]):
                raise _ApiError(404, "ResourceNotFoundException", f"The specified policy {policy} is not associated")
            entry["policies"] = kept
            return {}

    def add_rolesanywhere(self, account: str, kind: str, object_id: str, arn: str | None = None,
                          region: str = DEFAULT_REGION, **fields: Any) -> dict[str, Any]:
        """Create (or return the existing one with that ID) a Roles Anywhere trust anchor
        (``kind="trustanchor"``) or profile (``"profile"``) with exactly ``object_id`` and ``arn``
        (default ``arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>`` / ``profile/<id>``);
        ``fields`` (``name``, ``enabled``, ``source``, ``roleArns``, ...) as the API's detail shape."""
        member, noun, id_key, arn_key = ROLESANYWHERE_KINDS[kind]
        with self._lock:
            key = (account, kind, object_id)
            if key not in self.rolesanywhere:
                now = _iso(datetime.now(UTC))
                self.rolesanywhere[key] = {
                    id_key: object_id, arn_key: arn or f"arn:aws:rolesanywhere:{region}:{account}:{noun}/{object_id}",
                    "name": fields.pop("name", object_id), "enabled": bool(fields.pop("enabled", True)),
                    "createdAt": now, "updatedAt": now, **fields}
            return dict(self.rolesanywhere[key])

    def add_root_access_key(self, account: str, access_key_id: str, status: str = "Active",
                            create_date: datetime | None = None) -> dict[str, Any]:
        """Give the root user of ``account`` an access key with exactly ``access_key_id`` (idempotent)."""
        with self._lock:
            keys = self.root_keys.setdefault(account, [])
            for key in keys:
                if key["AccessKeyId"] == access_key_id:
                    return dict(key)
            key = {"AccessKeyId": access_key_id, "Status": status, "CreateDate": _iso(create_date or datetime.now(UTC))}
            keys.append(key)
            return dict(key)

    def fail_next(self, status: int, times: int = 1, code: str | None = None,
                  retry_after: str | None = "0") -> None:
        """Answer the next ``times`` requests with HTTP ``status`` and error ``code`` (default
        ``ThrottlingException`` for 429, ``InternalFailure`` otherwise) and, when given, a
        ``Retry-After`` header. botocore retries 429 / throttling codes and 500/502/503/504."""
        if code is None:
            code = "ThrottlingException" if status == 429 else "InternalFailure"
        with self._lock:
            self._failures.extend([(status, code, retry_after)] * times)

    def operations(self) -> list[str]:
        """The operation names received so far, in order (retries appear once per attempt)."""
        with self._lock:
            return [r["operation"] for r in self.requests]

    # -- request handling ------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.do_POST()

            def do_DELETE(self) -> None:  # noqa: N802 - http.server API
                self.do_POST()

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                account = self.headers.get("x-moto-account-id", DEFAULT_ACCOUNT_ID)
                path = urlsplit(self.path).path
                rest = _rolesanywhere_route(self.command, path)
                eks = _eks_route(self.command, path)
                if eks is not None:
                    operation, proto = eks[0], "json"
                    form: dict[str, list[str]] = {}
                elif rest is not None:
                    operation, proto = rest[0], "json"
                    form: dict[str, list[str]] = {}
                elif target:
                    operation, proto = target.rsplit(".", 1)[-1], "json"
                    form: dict[str, list[str]] = {}
                else:
                    form = parse_qs(body.decode("utf-8"), keep_blank_values=True)
                    operation, proto = (form.get("Action") or ["?"])[0], "query"
                with standin._lock:
                    failure = standin._failures.pop(0) if standin._failures else None
                    standin.requests.append({"operation": operation, "account": account,
                                             "status": failure[0] if failure else 200})
                if failure:
                    status, code, retry_after = failure
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    self._error(proto, status, code or "InternalFailure", "injected failure", headers)
                    return
                try:
                    signer = _signing_key(self.headers.get("Authorization", ""))
                    if eks is not None:
                        self._json(200, standin._eks(eks, account, json.loads(body or b"{}")))
                    elif rest is not None:
                        status, payload = standin._rolesanywhere(rest, account, json.loads(body or b"{}"))
                        self._json(status, payload)
                    elif proto == "json" and operation == "LookupEvents":
                        self._json(200, standin._lookup_events(json.loads(body or b"{}")))
                    elif proto == "json" and target.startswith("StarlingDoveService."):
                        self._json(200, standin._config(operation, account, json.loads(body or b"{}")))
                    elif proto == "query" and operation == "AssumeRoot":
                        self._xml(operation, standin._assume_root(form, account))
                    elif proto == "query" and signer in standin.root_sessions:
                        self._xml(operation, standin._root_operation(operation, form, signer))
                    elif proto == "query" and operation in SSC_OPERATIONS:
                        self._xml(operation, standin._ssc_operation(operation, form, account))
                    else:
                        self._error(proto, 400, "InvalidAction", f"operation {operation} is not served here")
                except _ApiError as err:
                    self._error(proto, err.status, err.code, err.message)

            def _send(self, status: int, ctype: str, data: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                self._send(status, "application/x-amz-json-1.1", json.dumps(payload).encode())

            def _xml(self, operation: str, result_xml: str) -> None:
                data = (f'<{operation}Response xmlns="{IAM_XMLNS}"><{operation}Result>{result_xml}'
                        f"</{operation}Result><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
                        f"</ResponseMetadata></{operation}Response>")
                self._send(200, "text/xml", data.encode())

            def _error(self, proto: str, status: int, code: str, message: str,
                       headers: dict[str, str] | None = None) -> None:
                if proto == "json":
                    data = json.dumps({"__type": code, "message": message}).encode()
                    self._send(status, "application/x-amz-json-1.1", data, headers)
                else:
                    kind = "Sender" if status < 500 else "Receiver"
                    data = (f'<ErrorResponse xmlns="{IAM_XMLNS}"><Error><Type>{kind}</Type>'
                            f"<Code>{code}</Code><Message>{saxutils.escape(message)}</Message></Error>"
                            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
                    self._send(status, "text/xml", data, headers)

        return Handler

    def _lookup_events(self, req: dict[str, Any]) -> dict[str, Any]:
        attrs = req.get("LookupAttributes") or []
        if len(attrs) > 1:
            raise _ApiError(400, "InvalidLookupAttributesException", "only one lookup attribute is allowed")
        for attr in attrs:
            if attr.get("AttributeKey") not in LOOKUP_ATTRIBUTE_KEYS:
                raise _ApiError(400, "InvalidLookupAttributesException", "unknown AttributeKey")
        max_results = int(req.get("MaxResults") or 50)
        if not 1 <= max_results <= 50:
            raise _ApiError(400, "InvalidMaxResultsException", "MaxResults must be 1-50")
        start = req.get("StartTime")
        end = req.get("EndTime")
        if start is not None and end is not None and float(start) > float(end):
            raise _ApiError(400, "InvalidTimeRangeException", "StartTime is after EndTime")
        with self._lock:
            records = [lookup_record(ev) for ev in self.events.values()]
        selected = []
        for rec in records:
            if start is not None and rec["EventTime"] < float(start):
                continue
            if end is not None and rec["EventTime"] > float(end):
                continue
            if attrs and not _matches(rec, attrs[0]["AttributeKey"], attrs[0].get("AttributeValue")):
                continue
            selected.append(rec)
        selected.sort(key=lambda r: (-r["EventTime"], r.get("EventId", "")))
        offset = 0
        if req.get("NextToken"):
            try:
                offset = int(base64.urlsafe_b64decode(str(req["NextToken"]).encode()).decode())
            except ValueError:
                raise _ApiError(400, "InvalidNextTokenException", "invalid NextToken") from None
        page = selected[offset:offset + max_results]
        out: dict[str, Any] = {"Events": page}
        if offset + max_results < len(selected):
            out["NextToken"] = base64.urlsafe_b64encode(str(offset + max_results).encode()).decode()
        return out

    def _ssc_operation(self, operation: str, form: dict[str, list[str]], account: str) -> str:
        def arg(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        user = arg("UserName")
        if operation == "ListServiceSpecificCredentials" and (arg("AllUsers") or "").lower() == "true":
            with self._lock:
                creds = [c for (acct, _), cs in self.ssc.items() if acct == account for c in cs]
        else:
            if not user or not _moto_user_exists(account, user):
                raise _ApiError(404, "NoSuchEntity", f"The user with name {user} cannot be found.")
            if operation == "CreateServiceSpecificCredential":
                cred = self.add_service_specific_credential(account, user, arg("ServiceName") or "")
                cred["ServicePassword"] = secrets.token_urlsafe(24)
                return f"<ServiceSpecificCredential>{_xml_fields(cred)}</ServiceSpecificCredential>"
            with self._lock:
                creds = self.ssc.setdefault((account, user), [])
                if operation in ("UpdateServiceSpecificCredential", "DeleteServiceSpecificCredential"):
                    cid = arg("ServiceSpecificCredentialId")
                    match = [c for c in creds if c["ServiceSpecificCredentialId"] == cid]
                    if not match:
                        raise _ApiError(404, "NoSuchEntity",
                                        f"No such ServiceSpecificCredential: {cid} for user {user}")
                    if operation == "DeleteServiceSpecificCredential":
                        creds.remove(match[0])
                    else:
                        status = arg("Status")
                        if status not in ("Active", "Inactive"):
                            raise _ApiError(400, "ValidationError", "Status must be Active or Inactive")
                        match[0]["Status"] = status
                    return ""
                creds = list(creds)
        service = arg("ServiceName")
        members = "".join(f"<member>{_xml_fields(c)}</member>" for c in creds
                          if not service or c["ServiceName"] == service)
        return (f"<ServiceSpecificCredentials>{members}</ServiceSpecificCredentials>"
                "<IsTruncated>false</IsTruncated>")


    def _rolesanywhere(self, route: tuple[str, str, str | None], account: str,
                       body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        operation, kind, object_id = route
        member, _, id_key, _ = ROLESANYWHERE_KINDS[kind]
        if operation.startswith("Create"):
            fields = {k: v for k, v in body.items() if k not in ("tags", "notificationSettings")}
            created = self.add_rolesanywhere(account, kind, str(uuid.uuid4()), **fields)
            return 201, {member: created}
        if operation.startswith("List"):
            with self._lock:
                items = [dict(v) for (acct, k, _), v in self.rolesanywhere.items() if acct == account and k == kind]
            return 200, {f"{member}s": items}
        with self._lock:
            found = self.rolesanywhere.get((account, kind, str(object_id)))
            if found is None:
                raise _ApiError(404, "ResourceNotFoundException", f"{member} {object_id} not found")
            if operation.startswith(("Enable", "Disable")):
                found["enabled"] = operation.startswith("Enable")
                found["updatedAt"] = _iso(datetime.now(UTC))
            return 200, {member: dict(found)}

    def _assume_root(self, form: dict[str, list[str]], account: str) -> str:
        target = (form.get("TargetPrincipal") or [""])[0]
        policy = (form.get("TaskPolicyArn.arn") or [""])[0]
        name = policy[len(ROOT_TASK_POLICY_PREFIX):] if policy.startswith(ROOT_TASK_POLICY_PREFIX) else ""
        if not re.fullmatch(r"\d{12}", target):
            raise _ApiError(400, "ValidationError", f"TargetPrincipal {target!r} is not an account ID")
        if name not in ROOT_TASK_POLICIES:
            raise _ApiError(400, "ValidationError", f"TaskPolicyArn {policy!r} is not a root task policy")
        if target == account:
            raise _ApiError(403, "AccessDenied", "AssumeRoot cannot target the calling (management) account")
        key_id = "ASIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        with self._lock:
            self.root_sessions[key_id] = {"account": target, "task_policy": name, "caller": account}
        expires = _iso(datetime.now(UTC) + timedelta(minutes=15))
        return (f"<Credentials><AccessKeyId>{key_id}</AccessKeyId><SecretAccessKey>{secrets.token_hex(20)}"
                f"</SecretAccessKey><SessionToken>{secrets.token_hex(32)}</SessionToken>"
                f"<Expiration>{expires}</Expiration></Credentials><SourceIdentity></SourceIdentity>")

    def _root_operation(self, operation: str, form: dict[str, list[str]], signer: str) -> str:
        session = self.root_sessions[signer]
        if operation not in ROOT_TASK_POLICIES[session["task_policy"]] or operation not in ROOT_KEY_OPERATIONS:
            raise _ApiError(403, "AccessDenied", f"root session ({session['task_policy']}) is not allowed "
                                                 f"iam:{operation}")
        if form.get("UserName"):
            raise _ApiError(403, "AccessDenied", "a root session acts on the root user only")
        with self._lock:
            keys = self.root_keys.setdefault(session["account"], [])
            if operation == "ListAccessKeys":
                members = "".join(f"<member>{_xml_fields(k)}</member>" for k in keys)
                return f"<AccessKeyMetadata>{members}</AccessKeyMetadata><IsTruncated>false</IsTruncated>"
            key_id = (form.get("AccessKeyId") or [""])[0]
            match = [k for k in keys if k["AccessKeyId"] == key_id]
            if not match:
                raise _ApiError(404, "NoSuchEntity", f"The Access Key with id {key_id} cannot be found.")
            keys.remove(match[0])
            return ""


def _rolesanywhere_route(method: str, path: str) -> tuple[str, str, str | None] | None:
    """``(operation, kind, id)`` of a Roles Anywhere REST path, else ``None``."""
    m = re.fullmatch(r"/(trustanchor|profile)s", path)
    if m:
        noun = "TrustAnchor" if m.group(1) == "trustanchor" else "Profile"
        return ("Create" if method == "POST" else "List") + noun + ("" if method == "POST" else "s"), m.group(1), None
    m = re.fullmatch(r"/(trustanchor|profile)/([^/]+)(?:/(enable|disable))?", path)
    if m:
        noun = "TrustAnchor" if m.group(1) == "trustanchor" else "Profile"
        verb = (m.group(3) or "get").capitalize()
        return verb + noun, m.group(1), m.group(2)
    return None


def _eks_route(method: str, path: str) -> tuple[str, str, str | None, str | None] | None:
    """``(operation, cluster, principal ARN, policy ARN)`` of an EKS access-entry REST path, else
    ``None`` (botocore percent-encodes the ARNs in the path)."""
    m = re.fullmatch(r"/clusters/([^/]+)/access-entries(?:/([^/]+)(?:/access-policies(?:/([^/]+))?)?)?", path)
    if not m:
        return None
    cluster, principal, policy = (unquote(g) if g else None for g in m.groups())
    if principal is None:
        return ("CreateAccessEntry", cluster, None, None) if method == "POST" else None
    if "/access-policies" not in path:
        op = {"GET": "DescribeAccessEntry", "DELETE": "DeleteAccessEntry"}.get(method)
    elif policy is None:
        op = {"GET": "ListAssociatedAccessPolicies", "POST": "AssociateAccessPolicy"}.get(method)
    else:
        op = "DisassociateAccessPolicy" if method == "DELETE" else None
    return (op, cluster, principal, policy) if op else None


def _signing_key(authorization: str) -> str | None:
    """The access key ID of a SigV4 ``Authorization`` header (``Credential=AKIA.../...``)."""
    m = re.search(r"Credential=([A-Z0-9]+)/", authorization)
    return m.group(1) if m else None


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _matches(rec: dict[str, Any], key: str, value: Any) -> bool:
    if key in ("ResourceType", "ResourceName"):
        return any(r.get(key) == value for r in rec.get("Resources", []))
    return rec.get(key) == value


def _xml_fields(fields: dict[str, Any]) -> str:
    return "".join(f"<{k}>{saxutils.escape(str(v))}</{k}>" for k, v in fields.items() if v is not None)


#: Credential kinds owned by no IAM user (seeded by :meth:`AwsSandbox._seed_without_user`).
_NO_USER_KINDS = ("aws_rolesanywhere_trust_anchor", "aws_rolesanywhere_profile", "aws_role_trust",
                  "aws_root_access_key", "aws_stale_credentials", "aws_eks_access_entry", "aws_eks_access_policy")


def _honour_key_pair_id() -> None:
    """Make moto's ``DeleteKeyPair`` honour ``KeyPairId`` as EC2 does (moto reads only ``KeyName``):
    with an ID, the key pair of that ID is deleted, whatever its name; an unknown ID deletes nothing.
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteKeyPair.html . Idempotent."""
    from moto.ec2.responses.key_pairs import ActionResult, KeyPairs

    if getattr(KeyPairs.delete_key_pair, "_cordon_key_pair_id", False):
        return
    by_name = KeyPairs.delete_key_pair

    def delete_key_pair(self: Any) -> Any:
        key_pair_id = self._get_param("KeyPairId")
        if not key_pair_id:
            return by_name(self)
        self.error_on_dryrun()
        found = next((kp for kp in self.ec2_backend.key_pairs.values() if kp.id == key_pair_id), None)
        if found is not None:
            self.ec2_backend.key_pairs.pop(found.key_name, None)
        return ActionResult({"Return": True, "KeyPairId": key_pair_id if found is not None else None})

    delete_key_pair._cordon_key_pair_id = True  # type: ignore[attr-defined]
    KeyPairs.delete_key_pair = delete_key_pair  # type: ignore[method-assign]


def _moto_iam_backend(account: str) -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account]["aws"]


def _moto_user_exists(account: str, user: str) -> bool:
    return user in _moto_iam_backend(account).users


_AWS_MANAGED_POLICY_DATA: dict[str, Any] | None = None


def _aws_managed_policy_data(name: str) -> dict[str, Any] | None:
    global _AWS_MANAGED_POLICY_DATA
    if _AWS_MANAGED_POLICY_DATA is None:
        from moto.iam.aws_managed_policies import aws_managed_policies_data

        _AWS_MANAGED_POLICY_DATA = json.loads(aws_managed_policies_data)
    return _AWS_MANAGED_POLICY_DATA.get(name)


#: The access key ID sandbox clients sign with. The seeder registers it, as a user-less key
#: like the temporary keys moto's STS makes, in the IAM backend of the account being seeded, so
#: moto attributes requests signed with it to that account even from a client that does not send
#: ``x-moto-account-id`` (moto's third rule: the account that owns the signing key).
SANDBOX_ACCESS_KEY = "ASIACORDONSANDBOX000"
#: The key ID moto assumes when a request's signing key is not 20 upper-case characters (e.g.
#: boto3 clients with the customary dummy key ``testing``); registered the same way, so such
#: clients also land in the current account.
MOTO_FALLBACK_ACCESS_KEY = "AKIAEXAMPLE"
_ACCOUNT_KEYS = (SANDBOX_ACCESS_KEY, MOTO_FALLBACK_ACCESS_KEY)

_KNOWN_REGIONS: dict[str, set[str]] = {}


def _regions(service: str) -> set[str]:
    if service not in _KNOWN_REGIONS:
        sess = botocore.session.get_session()
        regions: set[str] = set()
        for partition in sess.get_available_partitions():
            regions.update(sess.get_available_regions(service, partition_name=partition))
        _KNOWN_REGIONS[service] = regions
    return _KNOWN_REGIONS[service]


def sandbox_region(service: str, region: str | None, default: str = DEFAULT_REGION) -> str:
    """``region`` if botocore knows it (for ``service``; for the global IAM / STS and for
    CloudTrail, as an EC2 region), else ``default``: moto's EC2 answers HTTP 500 for regions it
    does not know, such as the corpus's anonymised ``ap-central-2r``."""
    region = region or default
    known = _regions("ec2" if service in ("iam", "sts", "cloudtrail") else service)
    return region if region in known else default


def make_sandbox_client(service: str, region: str, *, moto_url: str, standin_url: str,
                        account_id: str, credentials: dict[str, Any] | None = None) -> Any:
    """One boto3 client for the sandbox.

    ``cloudtrail``, ``rolesanywhere``, ``config`` and ``eks`` go to the stand-in, every other service to moto. Every
    request carries ``x-moto-account-id: <account_id>``. On IAM clients, the four service-specific
    credential operations are sent to the stand-in, and on STS clients ``AssumeRoot`` (a
    ``before-send`` hook rewrites the URL). Dummy credentials (:data:`SANDBOX_ACCESS_KEY`), or
    ``credentials`` (``{AccessKeyId, SecretAccessKey, SessionToken}``, what the stand-in's
    ``AssumeRoot`` issued: such a client talks only to the stand-in, which knows the root session by
    its key); botocore *standard* retries, 4 attempts in all.
    """
    if credentials is not None:
        session = boto3.Session(aws_access_key_id=credentials["AccessKeyId"],
                                aws_secret_access_key=credentials["SecretAccessKey"],
                                aws_session_token=credentials.get("SessionToken"), region_name=region)
    else:
        session = boto3.Session(aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key="testing",
                                region_name=region)
    url = standin_url if service in ("cloudtrail", "rolesanywhere", "config", "eks") or credentials is not None \
        else moto_url
    client = session.client(service, endpoint_url=url,
                            config=Config(retries={"mode": "standard", "total_max_attempts": 4}))

    def add_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account_id

    client.meta.events.register(f"before-send.{client.meta.service_model.service_id.hyphenize()}",
                                add_account)
    if service == "iam":
        standin_netloc = urlsplit(standin_url).netloc

        def to_standin(request: Any, **_: Any) -> None:
            request.url = urlsplit(request.url)._replace(netloc=standin_netloc).geturl()

        for op in SSC_OPERATIONS:
            client.meta.events.register(f"before-send.iam.{op}", to_standin)
    if service == "sts":
        standin_netloc = urlsplit(standin_url).netloc

        def root_to_standin(request: Any, **_: Any) -> None:
            request.url = urlsplit(request.url)._replace(netloc=standin_netloc).geturl()

        client.meta.events.register("before-send.sts.AssumeRoot", root_to_standin)
    return client


_CLIENTS: dict[tuple[str, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def sandbox_clients(cloud: dict[str, Any]) -> Any:
    """The :class:`cordon.clouds.Clients` for :meth:`AwsSandbox.cloud_params` (usable in another
    process: it needs only the params), registered as the ``aws-standins`` entry point of group
    ``cordon.clients`` (:mod:`cordon.standins`). ``clients(service, region=None)``: regions are
    mapped with ``cloud["region_map"]`` and then :func:`sandbox_region`; clients are cached. Its
    ``own_access_key()`` is :data:`SANDBOX_ACCESS_KEY`. Clients are
    shared by every factory of the process with the same endpoints, account and region."""
    default = cloud.get("region") or DEFAULT_REGION

    def clients(service: str, region: str | None = None, account_id: str | None = None,
                credentials: dict[str, Any] | None = None) -> Any:
        mapped = (cloud.get("region_map") or {}).get(region, region) if region else None
        mapped = sandbox_region(service, mapped, default)
        standin = cloud.get("standin_url") or cloud["cloudtrail_endpoint_url"]
        if credentials is not None:  # a root session's (AssumeRoot): not cached
            return make_sandbox_client(service, mapped, moto_url=cloud["aws_endpoint_url"], standin_url=standin,
                                       account_id=account_id or cloud.get("account_id") or DEFAULT_ACCOUNT_ID,
                                       credentials=credentials)
        key = (service, mapped, cloud["aws_endpoint_url"], standin,
               account_id or cloud.get("account_id") or DEFAULT_ACCOUNT_ID)
        with _CLIENTS_LOCK:  # one client per process for each key: boto3 clients are thread-safe
            if key not in _CLIENTS:
                _CLIENTS[key] = make_sandbox_client(service, mapped, moto_url=key[2], standin_url=key[3],
                                                    account_id=key[4])
            return _CLIENTS[key]

    return ClientFactory(clients, own_access_key=lambda: SANDBOX_ACCESS_KEY,
                         own_identity=lambda: str(clients("sts").get_caller_identity()["Arn"]))


class AwsSandbox:
    """Local AWS for rehearsals and tests: moto's server plus :class:`AwsStandIn`.

    ``AwsSandbox(region="us-east-1", account_id="123456789012").start()`` binds both servers to
    free ports on 127.0.0.1. ``clients(service, region=None)`` is the
    :class:`~cordon.action.ActionContext` client factory. Use as a context manager or call
    :meth:`stop`.
    """

    def __init__(self, region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT_ID,
                 host: str = "127.0.0.1", port: int = 0):
        from moto.server import ThreadedMotoServer

        _honour_key_pair_id()
        self.region = region
        self.default_account_id = account_id
        self.account_id = account_id
        self._moto = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.standin = AwsStandIn(host=host)
        self._started = False
        self._clients: dict[tuple[str, str, str], Any] = {}
        self._seen_regions: set[str] = set()
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> AwsSandbox:
        """Start moto and the stand-in; returns ``self``."""
        if not self._started:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            self._moto.start()
            self.standin.start()
            self._started = True
        return self

    def stop(self) -> None:
        """Stop both servers."""
        if self._started:
            self._moto.stop()
            self.standin.stop()
            self._started = False

    def __enter__(self) -> AwsSandbox:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        """moto's ``http://127.0.0.1:<port>``."""
        host, port = self._moto.get_host_and_port()
        return f"http://{host}:{port}"

    @property
    def cloudtrail_url(self) -> str:
        """The stand-in's ``http://127.0.0.1:<port>`` (CloudTrail and service-specific credentials)."""
        return self.standin.url

    def endpoint_env(self) -> dict[str, str]:
        """Environment for a separate process: ``AWS_ENDPOINT_URL`` (moto),
        ``AWS_ENDPOINT_URL_CLOUDTRAIL`` (stand-in) and dummy credentials. (Service-specific
        credential calls are redirected only by :meth:`clients`, not by this environment.)"""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_CLOUDTRAIL": self.cloudtrail_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
        }

    def reset(self) -> None:
        """Empty moto (``POST /moto-api/reset``) and the stand-in; back to the default account."""
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            resp.read()
        self.standin.reset()
        self._seen_regions.clear()
        self.account_id = self.default_account_id

    def fail_next(self, status: int, times: int = 1, code: str | None = None) -> None:
        """Inject failures on the stand-in (see :meth:`AwsStandIn.fail_next`)."""
        self.standin.fail_next(status, times=times, code=code)

    # -- clients ----------------------------------------------------------------------------
    def sandbox_region(self, service: str, region: str | None) -> str:
        """See :func:`sandbox_region` (default: the sandbox's region)."""
        return sandbox_region(service, region, self.region)

    def session(self, region: str | None = None) -> boto3.Session:
        """A boto3 Session with dummy credentials in ``region`` (default the sandbox's)."""
        return boto3.Session(aws_access_key_id=SANDBOX_ACCESS_KEY, aws_secret_access_key="testing",
                             region_name=region or self.region)

    def cloud_params(self) -> dict[str, Any]:
        """JSON-serialisable parameters from which another process rebuilds the sandbox's
        clients (:func:`sandbox_clients`, which ``"clients": "aws-standins"`` names):
        ``{"sandbox": True, "clients", "aws_endpoint_url", "cloudtrail_endpoint_url", "standin_url",
        "region", "account_id", "access_key_id" (sign with it to land in ``account_id`` without
        the header), "region_map": {unknown region seen while seeding: region}}``."""
        return {
            "sandbox": True,
            "clients": "aws-standins",
            "aws_endpoint_url": self.endpoint_url,
            "cloudtrail_endpoint_url": self.cloudtrail_url,
            "standin_url": self.cloudtrail_url,
            "region": self.region,
            "account_id": self.account_id,
            "access_key_id": SANDBOX_ACCESS_KEY,
            "region_map": {r: self.region for r in sorted(self._seen_regions)
                           if sandbox_region("ec2", r, self.region) != r},
        }

    def clients(self, service: str, region: str | None = None, account_id: str | None = None,
                credentials: dict[str, Any] | None = None) -> Any:
        """A boto3 client for ``service`` in ``region`` acting in ``account_id`` (default
        :attr:`account_id`); see :func:`make_sandbox_client`. Cached per (service, region,
        account); a client signing with ``credentials`` (a root session's) is not."""
        account = account_id or self.account_id
        region = self.sandbox_region(service, region)
        if credentials is not None:
            return make_sandbox_client(service, region, moto_url=self.endpoint_url, standin_url=self.cloudtrail_url,
                                       account_id=account, credentials=credentials)
        key = (service, region, account)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = make_sandbox_client(service, region, moto_url=self.endpoint_url,
                                             standin_url=self.cloudtrail_url, account_id=account)
                self._clients[key] = client
            return client

    # -- seeding ----------------------------------------------------------------------------
    def seed_from_detection(self, detection: Any) -> dict[str, Any]:
        """Create in the sandbox what ``detection`` (a :class:`~cordon.detections.model.Detection`)
        says exists, so containment has something real to act on. Idempotent: seeding twice
        leaves the same state.

        Sets :attr:`account_id` to the detection's account, then creates: the target IAM user
        (credential owner, else ``detection.target``), the actor's IAM user and its access key
        when the actor is an IAM user signing with an ``AKIA`` key, and by credential kind the
        access key (exact ID), the SSH public key (exact ID), the login profile, the EC2 key pair
        (imported ed25519 public key in the sandbox region, with the record's ``keyPairId``, else
        its ``keyFingerprint``), the service-specific credential (exact ID, on the stand-in), the
        policy grant (managed policy attachment or inline policy), the role whose sessions an actor
        signed with (``aws_role_sessions``). CloudTrail: the detection's raw
        event plus three other events by the same access key (two before, one after, within five
        minutes) and one event by another key.

        Returns ``{"account_id", "users": [...], "access_keys": [...], "login_profiles": [...],
        "key_pairs": [...], "service_specific_credentials": [...], "policies": [...],
        "cloudtrail_events": n}``.
        """
        self.use_account(detection.account_uid or self.default_account_id)
        if detection.region:
            self._seen_regions.add(detection.region)
        report: dict[str, Any] = {"account_id": self.account_id, "users": [], "access_keys": [],
                                  "login_profiles": [], "key_pairs": [], "service_specific_credentials": [],
                                  "policies": [], "cloudtrail_events": 0}
        cred = detection.credential
        raw = detection.raw if isinstance(detection.raw, dict) else {}
        req = raw.get("requestParameters") if isinstance(raw.get("requestParameters"), dict) else {}
        owner = None
        role_sessions = cred is not None and cred.kind == "aws_role_sessions"
        if role_sessions:  # the actor's assumed role (cordon.providers.aws.actor): a role, no user
            if cred.owner.name:
                self.ensure_role(cred.owner.name)
                report.setdefault("roles", []).append(cred.owner.name)
        elif cred is not None and cred.kind in _NO_USER_KINDS:
            self._seed_without_user(cred, detection, report)
        else:
            if cred is not None:
                by_uid = cred.kind in ("aws_iam_user", "aws_login_profile")
                owner = cred.owner.name or (cred.uid if by_uid else None)
            owner = owner or detection.target.name or req.get("userName")
        actor = detection.actor
        if actor.user.type == "IAMUser" and actor.user.name:
            self.ensure_user(actor.user.name)
            report["users"].append(actor.user.name)
            if actor.session_uid and actor.session_uid.startswith("AKIA"):
                self.ensure_access_key(actor.user.name, actor.session_uid)
                report["access_keys"].append(actor.session_uid)
        if owner:
            self.ensure_user(owner, tags=req.get("tags") if cred and cred.kind == "aws_iam_user" else None)
            report["users"].append(owner)
        if cred is not None and owner:
            attrs = cred.attributes or {}
            if cred.kind == "aws_access_key" and cred.uid:
                self.ensure_access_key(owner, cred.uid, status=str(attrs.get("status") or "Active"),
                                       create_date=detection.time)
                report["access_keys"].append(cred.uid)
            elif cred.kind == "aws_ssh_public_key" and cred.uid:
                self.ensure_ssh_public_key(owner, cred.uid, status=str(attrs.get("status") or "Active"))
                report.setdefault("ssh_public_keys", []).append(cred.uid)
            elif cred.kind == "aws_login_profile":
                reset = attrs.get("passwordResetRequired", req.get("passwordResetRequired", False))
                self.ensure_login_profile(owner, bool(reset))
                report["login_profiles"].append(owner)
            elif cred.kind == "aws_service_specific_credential" and cred.uid:
                service = (attrs.get("serviceName") or attrs.get("service_name") or req.get("serviceName")
                           or "codecommit.amazonaws.com")
                self.standin.add_service_specific_credential(self.account_id, owner, service, cred.uid,
                                                             create_date=detection.time)
                report["service_specific_credentials"].append(cred.uid)
            elif cred.kind == "aws_policy_grant":
                arn = attrs.get("policy_arn") or req.get("policyArn") or (
                    cred.uid if cred.uid and cred.uid.startswith("arn:") else None)
                if arn:
                    self.ensure_managed_policy_attached(owner, arn)
                    report["policies"].append(arn)
                else:
                    name = attrs.get("policy_name") or req.get("policyName") or cred.uid or "AdminGrant"
                    doc = attrs.get("policy_document") or req.get("policyDocument") or ADMIN_POLICY_DOCUMENT
                    self.ensure_inline_policy(owner, name, doc)
                    report["policies"].append(name)
        if cred is not None and cred.kind == "aws_key_pair" and cred.uid:
            attrs = cred.attributes or {}
            region = attrs.get("region") or detection.region
            self.ensure_key_pair(cred.uid, region, key_pair_id=attrs.get("keyPairId"),
                                 fingerprint=attrs.get("keyFingerprint"))
            report["key_pairs"].append(cred.uid)
        if raw.get("eventName") and raw.get("eventTime"):
            report["cloudtrail_events"] = self.standin.add_events(self.related_events(raw))
        return report

    def _seed_without_user(self, cred: Any, detection: Any, report: dict[str, Any]) -> None:
        """Seed what a credential that belongs to no IAM user names: a Roles Anywhere trust anchor or
        profile (on the stand-in, with the record's ID and ARN, enabled), a role with the trust policy the
        ``UpdateAssumeRolePolicy`` record set (its permissions are not in the record: none are given), the
        root user's access key (on the stand-in)."""
        attrs = cred.attributes or {}
        if cred.kind in ("aws_rolesanywhere_trust_anchor", "aws_rolesanywhere_profile") and cred.uid:
            kind = "trustanchor" if cred.kind == "aws_rolesanywhere_trust_anchor" else "profile"
            fields: dict[str, Any] = {"name": attrs.get("name") or cred.uid, "enabled": True}
            if attrs.get("sourceType"):
                fields["source"] = {"sourceType": attrs["sourceType"]}
            if attrs.get("roleArns"):
                fields["roleArns"] = list(attrs["roleArns"])
            self.standin.add_rolesanywhere(self.account_id, kind, cred.uid, arn=attrs.get("arn"),
                                           region=attrs.get("region") or detection.region or self.region, **fields)
            report.setdefault("rolesanywhere", []).append(cred.uid)
        elif cred.kind == "aws_role_trust" and cred.uid:
            self.ensure_role(cred.uid)
            if attrs.get("policy_document"):
                self.clients("iam").update_assume_role_policy(RoleName=cred.uid,
                                                              PolicyDocument=attrs["policy_document"])
            report.setdefault("roles", []).append(cred.uid)
        elif cred.kind == "aws_stale_credentials" and cred.uid:
            self._seed_stale(detection, report)
        elif cred.kind == "aws_root_access_key" and cred.uid:
            self.standin.add_root_access_key(self.account_id, cred.uid, create_date=detection.time)
            report["access_keys"].append(cred.uid)
        elif cred.kind in ("aws_eks_access_entry", "aws_eks_access_policy") and attrs.get("principalArn"):
            # the entry the record names (its ARN, or with the policy associated next to a view
            # policy that must stay) and a neighbour entry that containment must leave alone
            region = attrs.get("region") or detection.region or self.region
            policies = [{"policyArn": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"}]
            if cred.kind == "aws_eks_access_policy":
                policies.append({"policyArn": attrs["policyArn"], "accessScope": attrs.get("accessScope")})
            existing = self.standin.eks_entries.get((self.account_id, attrs["cluster"], attrs["principalArn"]))
            if existing is None:  # an entry seeded by another detection of the same intake stays as it is
                self.standin.add_eks_access_entry(self.account_id, attrs["cluster"], attrs["principalArn"],
                                                  arn=attrs.get("accessEntryArn"), region=region, policies=policies,
                                                  kubernetes_groups=attrs.get("kubernetesGroups"))
            elif cred.kind == "aws_eks_access_policy":
                with self.standin._lock:
                    if attrs["policyArn"] not in {p["policyArn"] for p in existing["policies"]}:
                        existing["policies"].append({"policyArn": attrs["policyArn"], "accessScope": attrs.get(
                            "accessScope") or {"type": "cluster"}, "associatedAt": existing["createdAt"],
                            "modifiedAt": existing["createdAt"]})
            elif attrs.get("accessEntryArn"):  # the entry's own record: the ARN it names
                existing["accessEntryArn"] = attrs["accessEntryArn"]
            self.standin.add_eks_access_entry(self.account_id, attrs["cluster"],
                                              f"arn:aws:iam::{self.account_id}:role/cordon-sandbox-neighbour",
                                              region=region, policies=policies[:1])
            report.setdefault("eks_access_entries", []).append(cred.uid)

    def _seed_stale(self, detection: Any, report: dict[str, Any]) -> None:
        """An ``aws_stale_credentials`` detection: each user it names (by name, or by ``UserId``: a
        user ``legacy-<last 6>`` given that id in moto's backend) with one access key created 30 days
        past the limit and one created today (a user who has keys is left as it is); with a Config
        rule not in the stand-in yet, the rule (identifier from the criterion, its parameter set to
        the limit) and the users' NON_COMPLIANT evaluations."""
        from cordon.providers.aws.config_rules import CRITERIA, RULES

        attrs = detection.credential.attributes or {}
        criterion = CRITERIA[str(attrs.get("criterion"))]
        days = int(attrs.get("max_age_days") or criterion.default_days)
        backend = _moto_iam_backend(self.account_id)
        names = [str(n) for n in attrs.get("users") or []]
        for user_id in attrs.get("user_ids") or []:
            found = next((u.name for u in backend.users.values() if u.id == user_id), None)
            if found is None:
                found = f"legacy-{str(user_id)[-6:].lower()}"
                self.ensure_user(found)
                backend.users[found].id = str(user_id)
            names.append(found)
        old = datetime.now(UTC) - timedelta(days=days + 30)
        for name in names:
            self.ensure_user(name)
            report["users"].append(name)
            user = backend.users[name]
            if not user.access_keys:
                for i, created in enumerate((old, None)):
                    key_id = f"AKIA{uuid.uuid5(uuid.NAMESPACE_URL, f'{name}/{i}').hex[:16].upper()}"
                    self.ensure_access_key(name, key_id, create_date=created)
                    report["access_keys"].append(key_id)
        rule = attrs.get("config_rule")
        if rule and (self.account_id, str(rule)) not in self.standin.config_rules:
            identifier = next(k for k, c in RULES.items() if c is criterion)
            self.standin.add_config_rule(self.account_id, str(rule), identifier, {criterion.parameter: str(days)})
            for user_id in attrs.get("user_ids") or []:
                self.standin.set_compliance(self.account_id, str(rule), str(user_id))

    def mark_key_used(self, access_key_id: str, when: datetime, service: str = "s3") -> None:
        """Set the key's last use (``GetAccessKeyLastUsed``) in moto's backend."""
        from moto.iam.models import AccessKeyLastUsed

        key = _moto_iam_backend(self.account_id).access_keys[access_key_id]
        key.last_used = AccessKeyLastUsed(when, service, DEFAULT_REGION)

    # individual seeders (idempotent) ------------------------------------------------------
    def use_account(self, account_id: str) -> None:
        """Make ``account_id`` the sandbox's current account: :meth:`clients` default to it, and
        requests without an ``x-moto-account-id`` header signed with :data:`SANDBOX_ACCESS_KEY`
        (or with a key moto does not parse, such as ``testing``) land in it: those key IDs are
        moved to that account's moto IAM backend as user-less keys. One account at a
        time: seeding detections of several accounts leaves the last one current."""
        from moto.iam.models import AccessKey, iam_backends

        for acct, partitions in list(iam_backends.items()):
            if acct != account_id:
                for key_id in _ACCOUNT_KEYS:
                    partitions["aws"].access_keys.pop(key_id, None)
        backend = _moto_iam_backend(account_id)
        for key_id in _ACCOUNT_KEYS:
            if key_id not in backend.access_keys:
                key = AccessKey(user_name=None, prefix="ASIA", account_id=account_id)
                key.access_key_id = key_id
                backend.access_keys[key_id] = key
        self.account_id = account_id

    def ensure_role(self, role_name: str) -> dict[str, Any]:
        """``iam:CreateRole`` (trusted by EC2) unless the role exists; returns ``GetRole``'s ``Role``."""
        iam = self.clients("iam")
        try:
            return iam.get_role(RoleName=role_name)["Role"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "NoSuchEntity":
                raise
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"Service": "ec2.amazonaws.com"}}]}
        return iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]

    def ensure_user(self, user_name: str, tags: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """``iam:CreateUser`` unless the user exists; returns ``GetUser``'s ``User``."""
        iam = self.clients("iam")
        try:
            return iam.get_user(UserName=user_name)["User"]
        except ClientError as err:
            if err.response["Error"]["Code"] != "NoSuchEntity":
                raise
        kwargs: dict[str, Any] = {"UserName": user_name}
        if tags:
            kwargs["Tags"] = [{"Key": t.get("key") or t.get("Key"), "Value": t.get("value") or t.get("Value")}
                              for t in tags if isinstance(t, dict)]
        return iam.create_user(**kwargs)["User"]

    def ensure_access_key(self, user_name: str, access_key_id: str, status: str = "Active",
                          create_date: datetime | None = None) -> str:
        """Give ``user_name`` an access key with exactly ``access_key_id`` (see the module
        docstring: created through the API, then renamed in moto's in-process backend).
        Raises ``ValueError`` if that key ID already belongs to another user."""
        backend = _moto_iam_backend(self.account_id)
        existing = backend.access_keys.get(access_key_id)
        if existing is not None:
            if existing.user_name != user_name:
                raise ValueError(f"access key {access_key_id} already belongs to {existing.user_name}")
            return access_key_id
        created = self.clients("iam").create_access_key(UserName=user_name)["AccessKey"]
        key = backend.access_keys.pop(created["AccessKeyId"])
        key.access_key_id = access_key_id
        if create_date is not None:
            key.create_date = _parse_time(create_date)
        backend.access_keys[access_key_id] = key
        if status != "Active":
            self.clients("iam").update_access_key(UserName=user_name, AccessKeyId=access_key_id,
                                                  Status=status)
        return access_key_id

    def ensure_ssh_public_key(self, user_name: str, ssh_public_key_id: str, status: str = "Active") -> str:
        """Give ``user_name`` an SSH public key with exactly ``ssh_public_key_id`` (uploaded through the
        API with a fresh ed25519 public key, then renamed in moto's in-process backend, as for access
        keys). Idempotent."""
        backend = _moto_iam_backend(self.account_id)
        user = backend.get_user(user_name)
        if any(k.ssh_public_key_id == ssh_public_key_id for k in user.ssh_public_keys):
            return ssh_public_key_id
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        body = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " cordon-sandbox"
        created = self.clients("iam").upload_ssh_public_key(UserName=user_name, SSHPublicKeyBody=body)
        created_id = created["SSHPublicKey"]["SSHPublicKeyId"]
        key = next(k for k in user.ssh_public_keys if k.ssh_public_key_id == created_id)
        key.ssh_public_key_id = ssh_public_key_id
        if status != "Active":
            key.status = status
        return ssh_public_key_id

    def ensure_login_profile(self, user_name: str, password_reset_required: bool = False) -> None:
        """``iam:CreateLoginProfile`` with a random password unless one exists."""
        iam = self.clients("iam")
        try:
            iam.get_login_profile(UserName=user_name)
            return
        except ClientError as err:
            if err.response["Error"]["Code"] != "NoSuchEntity":
                raise
        password = secrets.token_urlsafe(18) + "!aA1"
        iam.create_login_profile(UserName=user_name, Password=password,
                                 PasswordResetRequired=password_reset_required)
        if password_reset_required:
            # moto's CreateLoginProfile ignores the flag and its UpdateLoginProfile clears the
            # password unless it is passed again.
            iam.update_login_profile(UserName=user_name, Password=password, PasswordResetRequired=True)

    def ensure_key_pair(self, key_name: str, region: str | None = None, key_pair_id: str | None = None,
                        fingerprint: str | None = None) -> dict[str, Any]:
        """``ec2:ImportKeyPair`` of a fresh ed25519 public key unless ``key_name`` exists in
        ``region``; returns the ``DescribeKeyPairs`` entry (with ``PublicKey``).

        The key pair a CloudTrail record names is reproduced exactly: a new key pair gets
        ``key_pair_id`` (the record's ``responseElements.keyPairId``) as its ``KeyPairId``, and, when
        the record names no ID, ``fingerprint`` (its ``keyFingerprint``) as its ``KeyFingerprint``
        (both set in moto's in-process backend after the import, as for access key IDs). A key pair
        that already has the name is left as it is: a test that puts another key pair under the name
        first gets that one."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from moto.ec2.models import ec2_backends

        region = self.sandbox_region("ec2", region)
        ec2 = self.clients("ec2", region=region)
        try:
            return ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]
        except ClientError as err:
            if err.response["Error"]["Code"] != "InvalidKeyPair.NotFound":
                raise
        public = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=public + b" cordon-sandbox")
        if key_pair_id or fingerprint:
            kp = ec2_backends[self.account_id][region].key_pairs[key_name]
            if key_pair_id:
                kp.id = key_pair_id
            elif fingerprint:
                kp.key_fingerprint = fingerprint
        return ec2.describe_key_pairs(KeyNames=[key_name], IncludePublicKey=True)["KeyPairs"][0]

    def ensure_managed_policy_attached(self, user_name: str, policy_arn: str) -> None:
        """Attach ``policy_arn`` to the user, creating the policy first if the sandbox lacks it:
        an AWS managed policy (``arn:aws:iam::aws:policy/...``) is added to moto's backend from
        moto's bundled data; a customer managed one is created with an admin document."""
        iam = self.clients("iam")
        backend = _moto_iam_backend(self.account_id)
        if policy_arn not in backend.managed_policies:
            name = policy_arn.rsplit("/", 1)[-1]
            if ":iam::aws:policy/" in policy_arn:
                from moto.iam.models import AWSManagedPolicy

                data = _aws_managed_policy_data(name)
                if data is None:
                    raise ValueError(f"moto has no data for AWS managed policy {policy_arn}")
                policy = AWSManagedPolicy.from_data(name, self.account_id, DEFAULT_REGION, data)
                backend.managed_policies[policy.arn] = policy
            else:
                path = "/" + policy_arn.split(":policy/", 1)[1].rsplit("/", 1)[0] + "/"
                iam.create_policy(PolicyName=name, Path=path.replace("//", "/"),
                                  PolicyDocument=json.dumps(ADMIN_POLICY_DOCUMENT))
        attached = iam.list_attached_user_policies(UserName=user_name)["AttachedPolicies"]
        if not any(p["PolicyArn"] == policy_arn for p in attached):
            iam.attach_user_policy(UserName=user_name, PolicyArn=policy_arn)

    def ensure_inline_policy(self, user_name: str, policy_name: str, document: Any) -> None:
        """``iam:PutUserPolicy`` (idempotent by nature)."""
        doc = document if isinstance(document, str) else json.dumps(document)
        self.clients("iam").put_user_policy(UserName=user_name, PolicyName=policy_name, PolicyDocument=doc)

    @staticmethod
    def related_events(raw: dict[str, Any]) -> list[dict[str, Any]]:
        """``raw`` plus plausible other activity around it: ``GetCallerIdentity`` (-2 min),
        ``ListUsers`` (-1 min), ``ListAttachedUserPolicies`` (+1 min) by the same access key,
        and ``DescribeInstances`` (+30 s) by a different key. Event IDs are derived from
        ``raw``'s, so re-seeding replaces rather than duplicates."""
        base_time = _parse_time(raw["eventTime"])
        base_id = str(raw.get("eventID") or uuid.uuid5(uuid.NAMESPACE_URL, json.dumps(raw, sort_keys=True)))
        ident = dict(raw.get("userIdentity") or {})
        out = [dict(raw, eventID=base_id)]
        plan = [("GetCallerIdentity", "sts.amazonaws.com", -120, True, None),
                ("ListUsers", "iam.amazonaws.com", -60, True, None),
                ("ListAttachedUserPolicies", "iam.amazonaws.com", 60, True,
                 {"userName": (raw.get("requestParameters") or {}).get("userName")}),
                ("DescribeInstances", "ec2.amazonaws.com", 30, True, None)]
        for i, (name, source, offset, read_only, params) in enumerate(plan):
            who = dict(ident)
            if name == "DescribeInstances":
                who["accessKeyId"] = "AKIAOTHERKEY00000000"
            out.append({
                "eventVersion": raw.get("eventVersion", "1.09"),
                "eventID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base_id}/{i}/{name}")),
                "eventName": name,
                "eventSource": source,
                "eventTime": _iso(base_time + timedelta(seconds=offset)),
                "eventType": "AwsApiCall",
                "awsRegion": raw.get("awsRegion", DEFAULT_REGION),
                "sourceIPAddress": raw.get("sourceIPAddress"),
                "userAgent": raw.get("userAgent"),
                "userIdentity": who,
                "readOnly": read_only,
                "requestParameters": params,
                "responseElements": None,
                "recipientAccountId": raw.get("recipientAccountId"),
            })
        return out
