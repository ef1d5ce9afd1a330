"""Google Security Operations (Chronicle) detections, read as the same detections as the raw records.

A detection object (the Detection Engine API's ``legacySearchDetections`` / ``streamDetectionAlerts``,
https://cloud.google.com/chronicle/docs/reference/detection-engine-api ; the shape Google's sample
``detect/v2/stream_detection_alerts.py`` documents): ``type`` ``RULE_DETECTION`` or ``GCTI_FINDING``,
``id``, ``detectionTime``, ``detection[0]`` with ``ruleId``, ``ruleName``, ``ruleVersion``,
``ruleLabels``, ``outcomes``, ``collectionElements[].references[].event`` (UDM events in camelCase,
https://cloud.google.com/chronicle/docs/reference/udm-field-list) and ``tags``.

Each UDM event that is a credential Cordon answers is rebuilt as the native record it came from
(:data:`UDM_TO_NATIVE`: field mappings as data, native path <- UDM paths) and read by that record's
own parser, found through the registry by source kind, so it becomes the same detection a raw
record would be (same credential kind and uid: the same case when both arrive) and runs the same
playbook; only ``rule`` (``type`` ``chronicle``, the rule id and name), ``raw`` and ``raw_ref`` (the
detection object) say where it came from:

* a GCP service-account key created or uploaded (``metadata.productEventType``
  ``google.iam.admin.v1.CreateServiceAccountKey`` / ``UploadServiceAccountKey``): the key is named by
  a ``projects/P/serviceAccounts/SA/keys/K`` in the event (``target.resource.name`` ...). An event
  that names no key gives ``gcp_sa_key`` with ``uid`` ``None`` and the window to find it in
  (playbook ``gcp-sa-key-unnamed``: the one key of the account created then, never all of them).
  The UDM ``securityResult.detectionFields`` ``key_id`` (and the rule's ``*key_id`` match
  variable) is never taken as the key: for these calls it can be the caller's own key; the key that
  signed the call (``principal.user.attribute.labels`` ``key_id``, Google's mapping of
  ``authenticationInfo.serviceAccountKeyName``) is the actor's session and never the key made;
* an Entra credential added (``Add service principal credentials``, ``Update application –
  Certificates and secrets management``): the Entra directory audit record, its target the
  ServicePrincipal or, for ``Update application``, the Application;
* an AWS access key created (``CreateAccessKey``): the CloudTrail record.

Anything else is a suppressed detection naming the rule (``provider`` ``gcp``, ``source``
``chronicle``), never a case. A detection object missing what this needs is a dead letter naming
the field (:class:`cordon.detections.errors.RecordError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from cordon.detections.errors import RecordError
from cordon.detections.fields import detection_uid
from cordon.detections.model import Actor, Detection, Principal, RawRef, RuleRef, record_sha256

DETECTION_TYPES = ("RULE_DETECTION", "GCTI_FINDING")
#: ``Detection.rule.type`` of what a Chronicle rule flagged
RULE_TYPE = "chronicle"
_KEY_NAME = re.compile(r"^projects/[^/]+/serviceAccounts/[^/]+/keys/[A-Za-z0-9]+$")
_AUDIT_LOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
_SA_KEY_EVENTS = ("google.iam.admin.v1.CreateServiceAccountKey", "google.iam.admin.v1.UploadServiceAccountKey")
_ENTRA_CREDENTIAL_EVENTS = ("add service principal credentials",
                            "update application - certificates and secrets management")


@dataclass(frozen=True)
class NativeMapping:
    """How one kind of UDM event is rebuilt as its native record: ``source`` (the record kind of
    :func:`cordon.providers.source_for`), ``fields`` (native dotted path -> UDM dotted paths, the
    first present wins; ``[n]`` indexes a list), ``constants`` (native path -> value) and
    ``by_event`` (``metadata.productEventType`` as :func:`event_key` spells it -> constants that
    differ by event, over ``constants``)."""

    source: str
    fields: dict[str, tuple[str, ...]]
    constants: dict[str, Any]
    by_event: dict[str, dict[str, Any]] = field(default_factory=dict)


_WHO = ("principal.user.userid", "principal.user.emailAddresses[0]", "principal.user.userDisplayName")
_WHEN = ("metadata.eventTimestamp", "metadata.collectedTimestamp")
_IP = ("principal.ip[0]", "principal.asset.ip[0]")
_UA = ("network.http.userAgent",)

#: UDM -> native record, by what ``metadata.productEventType`` says happened
UDM_TO_NATIVE: dict[str, NativeMapping] = {
    "gcp_sa_key": NativeMapping("gcp_audit", {
        "protoPayload.methodName": ("metadata.productEventType",),
        "protoPayload.authenticationInfo.principalEmail": _WHO,
        "protoPayload.requestMetadata.callerIp": _IP,
        "protoPayload.requestMetadata.callerSuppliedUserAgent": _UA,
        "protoPayload.resourceName": ("target.resource.name",),
        # the key that signed the call (Google's parser: authenticationInfo.serviceAccountKeyName ->
        # principal.user.attribute key_id); the actor's session, never the key the call made
        "protoPayload.authenticationInfo.serviceAccountKeyName": (
            "principal.user.attribute.labels.key_id", "principal.user.attribute.labels.service_account_key_name",
            "principal.user.attribute.labels.serviceAccountKeyName"),
        "resource.labels.project_id": ("target.cloud.project.name", "target.resource.attribute.cloud.project.name",
                                       "principal.cloud.project.name"),
        "resource.labels.email_id": ("target.user.userid", "target.user.emailAddresses[0]"),
        "timestamp": _WHEN,
    }, {"protoPayload.@type": _AUDIT_LOG_TYPE, "protoPayload.serviceName": "iam.googleapis.com",
        "resource.type": "service_account", "protoPayload.status": {}}),
    "entra_credential": NativeMapping("entra_audit", {
        "activityDisplayName": ("metadata.productEventType",),
        "activityDateTime": _WHEN,
        "initiatedBy.user.userPrincipalName": _WHO,
        "initiatedBy.user.id": ("principal.user.productObjectId",),
        "initiatedBy.user.ipAddress": _IP,
        "targetResources[0].id": ("target.resource.productObjectId", "target.user.productObjectId"),
        "targetResources[0].displayName": ("target.resource.name", "target.application"),
        "tenantId": ("metadata.productDeploymentId", "target.resource.attribute.labels.tenantId"),
    }, {"category": "ApplicationManagement", "result": "success", "loggedByService": "Core Directory",
        "targetResources[0].type": "ServicePrincipal", "targetResources[0].modifiedProperties": []},
        # the application object, as the Entra record's target is (its credentials are the app's)
        {"update application - certificates and secrets management": {"targetResources[0].type": "Application"}}),
    "aws_access_key": NativeMapping("cloudtrail", {
        "eventName": ("metadata.productEventType",),
        "eventTime": _WHEN,
        "userIdentity.arn": ("principal.user.productObjectId", "principal.user.userid"),
        "userIdentity.userName": ("principal.user.userDisplayName", "principal.user.userid"),
        "userIdentity.accessKeyId": ("principal.user.attribute.labels.accessKeyId",),
        "recipientAccountId": ("target.cloud.project.id", "principal.cloud.project.id",
                               "target.resource.attribute.cloud.project.id"),
        "sourceIPAddress": _IP,
        "userAgent": _UA,
        "requestParameters.userName": ("target.user.userid", "target.user.userDisplayName"),
        "responseElements.accessKey.accessKeyId": ("target.resource.productObjectId", "target.resource.name"),
        "responseElements.accessKey.userName": ("target.user.userid", "target.user.userDisplayName"),
        "awsRegion": ("principal.location.countryOrRegion", "target.location.name"),
    }, {"eventSource": "iam.amazonaws.com", "eventType": "AwsApiCall", "userIdentity.type": "IAMUser",
        "responseElements.accessKey.status": "Active"}),
}


def chronicle_records(batch: Any) -> list[dict[str, Any]]:
    """The detection objects in what the API returns: ``{"detections": [...], "nextPageToken"?}``
    (a ``legacySearchDetections`` page), a list of them, or one. Others are returned as they are
    (the intake rejects them with the reason)."""
    if isinstance(batch, dict) and isinstance(batch.get("detections"), list):
        return list(batch["detections"])
    if isinstance(batch, list):
        return list(batch)
    return [batch]


def is_detection(record: Any) -> bool:
    """Whether ``record`` has the shape of a Chronicle detection object (``type``, ``id``, ``detection``)."""
    return (isinstance(record, dict) and record.get("type") in DETECTION_TYPES and "detection" in record
            and "id" in record)


def detection_key(detection: dict[str, Any]) -> str:
    """The dedup id of a delivery: ``<id>@<ruleVersion>`` (a new version of the rule re-delivers)."""
    rules = detection.get("detection") or [{}]
    first = rules[0] if isinstance(rules, list) and rules and isinstance(rules[0], dict) else {}
    return f"{detection.get('id')}@{first.get('ruleVersion', '')}"


def _dig(obj: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            i = int(part[1:-1])
            obj = obj[i] if isinstance(obj, list) and i < len(obj) else None
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
        if obj is None:
            return None
    return obj


def _put(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dotted; ``name[0]`` makes a one-item list) in ``obj`` to ``value``."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    cur: Any = obj
    i = 0
    while i < len(parts) - 1:
        part, nxt = parts[i], parts[i + 1]
        if nxt.startswith("["):
            items = cur.setdefault(part, [{}])
            cur = items[int(nxt[1:-1])]
            i += 2
        else:
            cur = cur.setdefault(part, {})
            i += 1
    if i == len(parts) - 1:
        cur[parts[-1]] = value


def _labels(event: dict[str, Any], path: str) -> dict[str, Any]:
    """UDM ``labels`` lists (``[{"key", "value"}]``) under ``path`` as a dict."""
    items = _dig(event, path)
    return {i.get("key"): i.get("value") for i in items if isinstance(i, dict)} if isinstance(items, list) else {}


def detection_field_values(event: dict[str, Any], key: str) -> list[str]:
    """The string values of ``key`` in every ``securityResult[].detectionFields`` (UDM
    ``SecurityResult.detection_fields``: ``[{"key", "value"}]``) of ``event``, in order, once each."""
    out: list[str] = []
    results = event.get("securityResult")
    for result in results if isinstance(results, list) else [results]:
        items = result.get("detectionFields") if isinstance(result, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("key") == key and isinstance(item.get("value"), str) \
                    and item["value"] and item["value"] not in out:
                out.append(item["value"])
    return out


def native_record(mapping: NativeMapping, event: dict[str, Any]) -> dict[str, Any]:
    """The native record ``event`` (one UDM event) was made from, as far as UDM keeps it."""
    flat = json.loads(json.dumps(event))
    for base in ("principal.user.attribute.labels", "target.resource.attribute.labels"):
        labels = _labels(event, base)
        if labels:  # a.b.labels.key reads the UDM label list by key
            _put(flat, base, labels)
    out: dict[str, Any] = {}
    for path, value in {**mapping.constants,
                        **mapping.by_event.get(event_key(_dig(event, "metadata.productEventType")), {})}.items():
        _put(out, path, value)
    for path, candidates in mapping.fields.items():
        value = next((v for v in (_dig(flat, c) for c in candidates) if v not in (None, "", [])), None)
        if value is not None:
            _put(out, path, value)
    return out


def event_key(product_event_type: Any) -> str:
    """``metadata.productEventType`` as the mappings spell it: dashes as ``-``, one space between
    words, no trailing period, lower case (Entra writes "Update application – Certificates and secrets
    management " with an en dash and a trailing space)."""
    text = str(product_event_type or "").replace("\u2013", "-").replace("\u2014", "-")
    return re.sub(r"\s+", " ", text).strip().rstrip(".").lower()


def _kind(event: dict[str, Any]) -> str | None:
    pet = str(_dig(event, "metadata.productEventType") or "")
    if pet in _SA_KEY_EVENTS:
        return "gcp_sa_key"
    if event_key(pet) in _ENTRA_CREDENTIAL_EVENTS:
        return "entra_credential"
    if pet == "CreateAccessKey" and str(_dig(event, "metadata.vendorName") or "AMAZON").upper().startswith("AMAZON"):
        return "aws_access_key"
    return None


def _match(rule: dict[str, Any], detection: dict[str, Any]) -> SimpleNamespace:
    """What the native parsers take from a Sigma match, from the Chronicle rule: id, name, level
    (``ruleLabels`` severity, else a GCTI finding's ``detection[0].severity``), ATT&CK ids (``tags``
    / the ``mitre_attack_technique_id`` outcome)."""
    labels = {str(i.get("key")).lower(): i.get("value") for i in rule.get("ruleLabels") or [] if isinstance(i, dict)}
    outcomes = {str(i.get("key")).lower(): i.get("value") for i in rule.get("outcomes") or [] if isinstance(i, dict)}
    techniques = []
    for text in [*(str(t) for t in detection.get("tags") or []), str(outcomes.get("mitre_attack_technique_id") or "")]:
        techniques += [t for t in re.findall(r"T\d{4}(?:\.\d{3})?", text) if t not in techniques]
    return SimpleNamespace(id=rule.get("ruleId"), title=rule.get("ruleName"), path=None,
                           level=str(labels.get("severity") or rule.get("severity") or "medium").lower(),
                           technique_ids=techniques)


def detections_from_chronicle(record: dict[str, Any], origin: str, position: int) -> list[Detection]:
    """One Chronicle detection object -> detections (see the module docstring): one per UDM
    event that is a credential Cordon answers, the same as the native record would give; else one
    suppressed detection naming the rule. Raises :class:`RecordError` naming the field for a
    missing ``id`` / ``detection[0].ruleName`` / event, a ``type`` that is not a detection's, or a
    native field the rebuilt record lacks (the native parser's error, prefixed with the UDM event)."""
    from cordon.providers import source_for

    def err(field: str, reason: str) -> RecordError:
        return RecordError(origin, position, field, reason)

    if record.get("type") not in DETECTION_TYPES:
        raise err("type", f"expected one of {', '.join(DETECTION_TYPES)}, got {record.get('type')!r}")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise err("id", "required field missing")
    rules = record.get("detection")
    if not isinstance(rules, list) or not rules or not isinstance(rules[0], dict):
        raise err("detection[0]", "required: the rule that made the detection")
    rule = rules[0]
    if not isinstance(rule.get("ruleName"), str) or not rule["ruleName"]:
        raise err("detection[0].ruleName", "required field missing")
    events: list[tuple[str, dict[str, Any]]] = []
    for i, element in enumerate(record.get("collectionElements") or []):
        for j, ref in enumerate((element or {}).get("references") or []):
            path = f"collectionElements[{i}].references[{j}].event"
            if not isinstance((ref or {}).get("event"), dict):
                raise err(path, "expected a UDM event object")
            events.append((path, ref["event"]))
    match = _match(rule, record)
    ref = RawRef(origin=origin, position=position, sha256=record_sha256(record))
    chronicle_rule = RuleRef(type=RULE_TYPE, uid=rule.get("ruleId") or rule.get("ruleVersion"), name=rule["ruleName"])
    out: list[Detection] = []
    for path, event in events:
        kind = _kind(event)
        if kind is None:
            continue
        native = native_record(UDM_TO_NATIVE[kind], event)
        try:
            if kind == "gcp_sa_key":
                found = _sa_key_detections(native, event, match, origin, position, _rule_key_ids(rule))
            else:
                found = source_for(UDM_TO_NATIVE[kind].source).parse(native, match, origin, position)
        except RecordError as exc:
            raise err(f"{path} ({exc.field})", exc.reason) from None
        for det in found if isinstance(found, list) else [found]:
            out.append(det.model_copy(update={"rule": chronicle_rule, "raw_ref": ref, "raw": record}))
    if out:
        return out
    when = record.get("detectionTime") or (_dig(events[0][1], "metadata.eventTimestamp") if events else None)
    if not isinstance(when, str):
        raise err("detectionTime", "required field missing")
    from cordon.detections.fields import RecordFields

    time = RecordFields({"t": when}, origin, position).time("t")
    return [Detection(uid=detection_uid(record, rule.get("ruleId")), provider="gcp", source="chronicle",
                      event_name=rule["ruleName"], technique_ids=match.technique_ids, rule=chronicle_rule,
                      severity=match.level, time=time, actor=Actor(user=Principal()), target=Principal(),
                      suppressed=f"Chronicle rule {rule['ruleName']!r}: its events are no credential Cordon answers "
                                 "(a GCP service-account key, an Entra credential, an AWS access key)",
                      raw_ref=ref, raw=record)]


def _rule_key_ids(rule: dict[str, Any]) -> list[str]:
    """The values of the rule's match variables (``detection[0].detectionFields``) whose name ends in
    ``key_id`` (the community rule matches ``$sa_key_id``: the UDM ``key_id`` detection field)."""
    items = rule.get("detectionFields")
    return [str(i["value"]) for i in items if isinstance(i, dict) and str(i.get("key", "")).lower().endswith("key_id")
            and isinstance(i.get("value"), str) and i["value"]] if isinstance(items, list) else []


def _sa_key_detections(native: dict[str, Any], event: dict[str, Any], match: Any, origin: str,
                       position: int, rule_key_ids: list[str] | None = None) -> list[Detection]:
    """The GCP parser's detections of a rebuilt Cloud Audit Log entry. The key is the first
    ``projects/P/serviceAccounts/SA/keys/K`` the event holds (``target.resource.name``,
    ``target.resource.productObjectId``, ``about.resource.name``), unless it is the key that signed
    the call (then it is not named); without one, the detection keeps
    ``gcp_sa_key`` with ``uid`` ``None`` and ``attributes`` ``keyId: not logged``, ``eventTime``,
    ``callerKey`` (the key that signed the call: ``principal.user.attribute.labels`` ``key_id``,
    read as ``authenticationInfo.serviceAccountKeyName``, or a key name in ``principal.resource.name``)
    and ``notKeys`` (the ``securityResult[].detectionFields`` ``key_id`` values and the rule's
    ``*key_id`` match variables in ``detection[0].detectionFields``: the key a rule matched on, which
    can be the caller's), for ``gcp-sa-key-unnamed``, which never takes either."""
    from cordon.providers import source_for

    named = next((v for v in (_dig(event, p) for p in ("target.resource.name", "target.resource.productObjectId",
                                                        "about.resource.name"))
                  if isinstance(v, str) and _KEY_NAME.match(v)), None)
    signer = _dig(native, "protoPayload.authenticationInfo.serviceAccountKeyName")
    if named and isinstance(signer, str) and signer.rsplit("/", 1)[-1] == named.rsplit("/", 1)[-1]:
        named = None  # the key the event names is the one that signed the call: not the key it made
    sa = _dig(native, "resource.labels.email_id")
    if not named and not sa:
        raise RecordError(origin, position, "target.user.userid", "names neither the key nor its service account")
    placeholder = f"projects/-/serviceAccounts/{sa}/keys/0"
    _put(native, "protoPayload.response.name", named or placeholder)
    if not _dig(native, "protoPayload.resourceName"):
        _put(native, "protoPayload.resourceName", f"projects/-/serviceAccounts/{sa}")
    found = source_for("gcp_audit").parse(native, match, origin, position)
    found = found if isinstance(found, list) else [found]
    if named:
        return found
    resource = _dig(event, "principal.resource.name")
    out = []
    for det in found:
        cred = det.credential
        caller = det.actor.session_uid or (resource if isinstance(resource, str) and _KEY_NAME.match(
            resource.removeprefix("//iam.googleapis.com/")) else None)
        not_keys = list(dict.fromkeys(k for k in [*detection_field_values(event, "key_id"), *(rule_key_ids or [])]
                                      if k != caller))
        attrs = {k: v for k, v in (cred.attributes if cred else {}).items() if k != "nameAsLogged"}
        attrs.update({"keyId": "not logged", "eventTime": det.time.isoformat(),
                      "reason": "the Chronicle event names no key (target.resource.name)",
                      **({"callerKey": caller} if caller else {}), **({"notKeys": not_keys} if not_keys else {})})
        out.append(det.model_copy(update={"credential": cred.model_copy(update={"uid": None, "attributes": attrs})}
                                  if cred else {}))
    return out
