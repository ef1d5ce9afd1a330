"""The Kubernetes audit ``Event`` inside each layout a collector delivers, as one normaliser.

An audit Event follows ``audit.k8s.io/v1`` (https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/):
``verb``, ``user.username`` / ``user.groups``, ``sourceIPs``, ``userAgent``, ``objectRef``
(``resource``, ``subresource``, ``namespace``, ``name``, ``apiGroup``), ``responseStatus.code`` (an
HTTP status), ``requestObject`` / ``responseObject``, ``requestReceivedTimestamp``.

Layouts read (:func:`event_of`):

* plain: the Event itself (``kind: Event``, or ``auditID`` with ``verb``);
* AKS diagnostic record (https://learn.microsoft.com/azure/aks/monitor-aks-reference): ``category``
  ``kube-audit`` / ``kube-audit-admin`` with the Event in ``properties.log``, an object or a JSON string;
* GKE Cloud Audit Log entry (https://cloud.google.com/kubernetes-engine/docs/how-to/audit-logging):
  ``protoPayload.serviceName: k8s.io``; ``methodName`` ``io.k8s.<group>.<version>.<resource>.<verb>``,
  ``resourceName`` ``<group>/<version>/[namespaces/<ns>/]<resource>/<name>[/<subresource>]`` (group
  ``core`` is the empty group), ``authenticationInfo.principalEmail``, ``requestMetadata.callerIp`` /
  ``callerSuppliedUserAgent``, ``request`` / ``response``, ``status`` (``google.rpc.Status``).

Containers of Events (:func:`unpack`, called by the intake): an ``EventList`` (``items``) and an EKS
control-plane log from a CloudWatch Logs subscription
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/SubscriptionFilters.html): the Lambda event
``{"awslogs": {"data": base64(gzip(JSON))}}`` or the decoded ``DATA_MESSAGE`` (as Firehose delivers it),
whose ``logEvents[].message`` is an Event as JSON text.

Raises: :class:`EventError` (``field``, ``reason``) when a layout's Event cannot be read.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from typing import Any

AKS_CATEGORIES = ("kube-audit", "kube-audit-admin")

#: google.rpc.Code -> the HTTP status the API server would have answered
_RPC_HTTP = {0: 200, 3: 400, 5: 404, 6: 409, 7: 403, 9: 409, 10: 409, 16: 401}


class EventError(ValueError):
    """An Event that cannot be read from its layout: ``field`` (dotted) and ``reason``."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def layout(record: dict[str, Any]) -> str | None:
    """``plain``, ``aks``, ``gke`` or ``None``: which layout holds one Event."""
    if record.get("kind") == "Event" and str(record.get("apiVersion", "")).startswith("audit.k8s.io/"):
        return "plain"
    if "verb" in record and (record.get("kind") == "Event" or ("auditID" in record and "kind" not in record)):
        return "plain"  # hand-written or re-shaped Events (no apiVersion, or no kind)
    if record.get("category") in AKS_CATEGORIES and isinstance(record.get("properties"), dict):
        return "aks"
    payload = record.get("protoPayload")
    if isinstance(payload, dict) and payload.get("serviceName") == "k8s.io":
        return "gke"
    return None


def event_of(record: dict[str, Any]) -> dict[str, Any]:
    """The audit Event of ``record`` in any single-Event layout (see the module docstring).

    Raises :class:`EventError` naming the field: ``properties.log`` not an object nor JSON text,
    a GKE ``protoPayload.methodName`` / ``resourceName`` missing or not a string."""
    kind = layout(record)
    if kind == "plain":
        return record
    if kind == "aks":
        log = record["properties"].get("log")
        if isinstance(log, str):
            try:
                log = json.loads(log)
            except json.JSONDecodeError as exc:
                raise EventError("properties.log", f"not JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(log, dict):
            raise EventError("properties.log", f"expected an Event object or its JSON text, got {_type(log)}")
        return log
    if kind == "gke":
        return _gke_event(record)
    raise EventError("kind", "not a Kubernetes audit Event layout")


def _type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _gke_event(entry: dict[str, Any]) -> dict[str, Any]:
    pp = entry["protoPayload"]
    method = pp.get("methodName")
    if not isinstance(method, str) or not method:
        raise EventError("protoPayload.methodName", f"expected a string, got {_type(method)}")
    resource_name = pp.get("resourceName", "")
    if not isinstance(resource_name, str):
        raise EventError("protoPayload.resourceName", f"expected a string, got {_type(resource_name)}")
    parts = resource_name.split("/")
    ref: dict[str, Any] = {}
    if len(parts) >= 3:
        ref["apiGroup"] = "" if parts[0] == "core" else parts[0]
        ref["apiVersion"] = parts[1]
        rest = parts[2:]
        if rest[0] == "namespaces" and len(rest) >= 3:
            ref["namespace"], rest = rest[1], rest[2:]
        ref["resource"] = rest[0]
        if len(rest) > 1:
            ref["name"] = rest[1]
        if len(rest) > 2:
            ref["subresource"] = rest[2]
    auth = pp.get("authenticationInfo") if isinstance(pp.get("authenticationInfo"), dict) else {}
    meta = pp.get("requestMetadata") if isinstance(pp.get("requestMetadata"), dict) else {}
    status = pp.get("status") if isinstance(pp.get("status"), dict) else {}
    code = status.get("code") or 0
    event: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": entry.get("insertId"),
        "verb": method.rsplit(".", 1)[-1],
        "user": {"username": auth.get("principalEmail")},
        "sourceIPs": [ip] if (ip := meta.get("callerIp") or meta.get("callerIP")) else [],
        "userAgent": meta.get("callerSuppliedUserAgent"),
        "objectRef": ref,
        "responseStatus": {"code": _RPC_HTTP.get(code, 500) if isinstance(code, int) else 500},
        "requestReceivedTimestamp": entry.get("timestamp") or entry.get("receiveTimestamp"),
    }
    for src, dst in (("request", "requestObject"), ("response", "responseObject")):
        if isinstance(pp.get(src), dict):
            event[dst] = pp[src]
    labels = entry.get("labels")
    if isinstance(labels, dict):
        event["annotations"] = {k: v for k, v in labels.items() if k.startswith("authorization.k8s.io/")}
    return event


def cluster_of(record: dict[str, Any]) -> str | None:
    """The cluster a record names: GKE ``resource.labels.cluster_name``, the AKS ``resourceId``'s
    last segment, or ``cluster`` that :func:`unpack` set from an EKS ``logGroup`` (``/aws/eks/<name>/cluster``)."""
    res = record.get("resource")
    if isinstance(res, dict) and isinstance(res.get("labels"), dict):
        return res["labels"].get("cluster_name")
    rid = record.get("resourceId")
    if isinstance(rid, str) and "/MANAGEDCLUSTERS/" in rid.upper():
        return rid.rsplit("/", 1)[-1].lower()
    return None


def unpack(record: dict[str, Any]) -> list[Any] | None:
    """The records inside an ``EventList`` or an EKS CloudWatch Logs subscription payload (see the
    module docstring), each an Event or a :class:`cordon.providers.Unreadable` naming the field
    (``awslogs.data``, ``logEvents[3].message``, ``items[2]``); ``None`` for any other record. A
    ``CONTROL_MESSAGE`` holds no Events."""
    from cordon.providers import Unreadable

    if record.get("kind") == "EventList" and "items" in record:
        items = record["items"]
        if not isinstance(items, list):
            return [Unreadable("items", f"expected an array, got {_type(items)}")]
        return [i if isinstance(i, dict) else Unreadable(f"items[{n}]", f"expected an Event object, got {_type(i)}")
                for n, i in enumerate(items)]
    payload = record
    awslogs = record.get("awslogs")
    if isinstance(awslogs, dict) and "data" in awslogs:
        try:
            payload = json.loads(gzip.decompress(base64.b64decode(awslogs["data"], validate=True)))
        except (binascii.Error, ValueError, TypeError, OSError, EOFError) as exc:
            return [Unreadable("awslogs.data", f"not base64 of gzip of JSON: {exc}")]
        if not isinstance(payload, dict):
            return [Unreadable("awslogs.data", f"expected an object, got {_type(payload)}")]
    if payload.get("messageType") not in ("DATA_MESSAGE", "CONTROL_MESSAGE") or "logEvents" not in payload:
        return None
    group = payload.get("logGroup")
    if not (isinstance(group, str) and group.startswith("/aws/eks/")):
        return None
    if payload["messageType"] == "CONTROL_MESSAGE":
        return []
    events = payload["logEvents"]
    if not isinstance(events, list):
        return [Unreadable("logEvents", f"expected an array, got {_type(events)}")]
    cluster = group.split("/")[3] if group.count("/") >= 3 else None
    out: list[Any] = []
    for n, item in enumerate(events):
        message = item.get("message") if isinstance(item, dict) else None
        try:
            event = json.loads(message) if isinstance(message, str) else None
        except json.JSONDecodeError as exc:
            out.append(Unreadable(f"logEvents[{n}].message", f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(event, dict):
            out.append(Unreadable(f"logEvents[{n}].message", "expected an audit Event as JSON text"))
            continue
        if cluster and "cluster" not in event:
            event = {**event, "annotations": {**(event.get("annotations") or {}), "cordon.dev/cluster": cluster}}
        out.append(event)
    return out
