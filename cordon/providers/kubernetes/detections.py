"""Kubernetes audit Events matched by a Sigma rule, normalised to :class:`Detection`.

Fields follow the audit Event (``audit.k8s.io/v1``,
https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/) read from any layout by
:func:`cordon.providers.kubernetes.events.event_of`.
"""

from __future__ import annotations

from typing import Any

from cordon.detections.errors import RecordError
from cordon.detections.fields import RecordFields, SigmaMatchLike, detection_uid, severity_label
from cordon.detections.model import Actor, Credential, Detection, Principal, RawRef, RuleRef, record_sha256
from cordon.providers.kubernetes.events import EventError, cluster_of, event_of

#: ATT&CK when the rule names none, per credential kind
FALLBACK_TECHNIQUES = {
    "k8s_role_binding": ["T1098.006"],
    "k8s_sa_token": ["T1528"],
    "k8s_csr": ["T1098.001"],
    "k8s_aws_auth": ["T1098.006"],
    "k8s_service_account": ["T1136"],
    "k8s_secret": ["T1098.001"],
}


def view(record: dict[str, Any]) -> dict[str, Any]:
    """The audit Event of ``record`` as Sigma rules see it.

    Raises :class:`RecordError` naming the field when the layout's Event cannot be read (the
    pipeline fills in the record's origin and position), so the record is a dead letter."""
    try:
        return event_of(record)
    except EventError as exc:
        raise RecordError("", None, exc.field, exc.reason) from None


def object_path(ref: dict[str, Any]) -> str | None:
    """The object an Event names, as its API path below the group/version: ``clusterrolebindings/NAME``,
    ``namespaces/NS/rolebindings/NAME`` (plus ``/SUBRESOURCE``); ``None`` without resource or name."""
    resource, name = ref.get("resource"), ref.get("name")
    if not resource or not name:
        return None
    path = f"{resource}/{name}"
    if ref.get("namespace"):
        path = f"namespaces/{ref['namespace']}/{path}"
    if ref.get("subresource"):
        path = f"{path}/{ref['subresource']}"
    return path


def credential_kind(ref: dict[str, Any], verb: str) -> str | None:
    """What an Event's ``objectRef`` and ``verb`` create or grant, or ``None``."""
    resource, sub = ref.get("resource"), ref.get("subresource")
    if resource in ("clusterrolebindings", "rolebindings") and verb in ("create", "update", "patch"):
        return "k8s_role_binding"
    if resource == "serviceaccounts" and sub == "token":
        return "k8s_sa_token"
    if resource == "certificatesigningrequests":
        return "k8s_csr"
    if resource == "configmaps" and ref.get("name") == "aws-auth":
        return "k8s_aws_auth"
    if resource == "serviceaccounts" and verb == "create":
        return "k8s_service_account"
    if resource == "secrets" and verb == "create":
        return "k8s_secret"
    return None


#: Namespaces whose ServiceAccounts are the control plane's own
CONTROL_PLANE_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def is_system(username: str | None) -> bool:
    """A Kubernetes system principal: ``system:`` prefix (controllers, nodes, ``system:anonymous``),
    except a workload's ServiceAccount (``system:serviceaccount:<ns>:<name>`` outside
    :data:`CONTROL_PLANE_NAMESPACES`), which can be stolen and is treated as a person would be."""
    if not username or not username.startswith("system:"):
        return False
    if username.startswith("system:serviceaccount:"):
        return username.split(":")[2] in CONTROL_PLANE_NAMESPACES
    return True


def detections_from_k8s_audit(record: dict[str, Any], match: SigmaMatchLike, origin: str,
                              position: int) -> list[Detection]:
    """Normalise one record holding a Kubernetes audit Event that ``match`` flagged.

    Returns one :class:`Detection` (``provider="kubernetes"``, ``source="k8s_audit"``,
    ``event_name`` = ``<verb> <objectRef.resource>[/<subresource>]``, ``account_uid`` = the cluster
    when the layout names it, ``time`` = ``requestReceivedTimestamp`` else ``stageTimestamp`` else
    an AKS record's ``time``).
    ``actor``: ``user.username`` (type ``System`` for ``system:``, ``ServiceAccount`` for
    ``system:serviceaccount:*``, else ``User``), ``sourceIPs[0]``, ``userAgent``. ``credential``:
    see :func:`credential_kind`, uid :func:`object_path` (with the namespace), ``attributes``
    ``roleRef`` and ``subjects`` of a binding, ``apiGroup``, ``objectUid``
    (``responseObject.metadata.uid``). Suppressed: a failed call (``responseStatus.code`` >= 400)
    or an actor that is a ``system:`` principal (controllers and nodes are never contained).

    Raises :class:`RecordError` naming the field: an unreadable layout (``properties.log``), a
    missing ``verb`` / ``objectRef`` / timestamp, or a field of the wrong type.
    """
    f = RecordFields(record, origin, position)
    try:
        event = event_of(record)
    except EventError as exc:
        raise f.error(exc.field, exc.reason) from None
    e = RecordFields(event, origin, position)
    verb = e.get("verb", str, required=True)
    ref = e.get("objectRef", dict, required=True)
    for key in ("resource", "subresource", "namespace", "name", "apiGroup"):
        e.get(f"objectRef.{key}", str)
    username = e.get("user.username", str)
    groups = e.get("user.groups", list) or []
    ips = e.get("sourceIPs", list) or []
    if e.get("requestReceivedTimestamp", str) or e.get("stageTimestamp", str):
        time = e.time("requestReceivedTimestamp" if e.get("requestReceivedTimestamp", str) else "stageTimestamp")
    elif record is not event and f.get("time", str):  # an AKS record's own time
        time = f.time("time")
    else:
        raise e.error("requestReceivedTimestamp", "required field missing (no stageTimestamp, nor the record's time)")
    code = e.get("responseStatus.code", int)
    cluster = cluster_of(record) or (e.get("annotations", dict) or {}).get("cordon.dev/cluster")
    if username and username.startswith("system:serviceaccount:"):
        utype = "ServiceAccount"
    elif is_system(username):
        utype = "System"
    else:
        utype = "User"
    actor = Actor(user=Principal(uid=username, name=username, type=utype, account_uid=cluster),
                  src_ip=ips[0] if ips and isinstance(ips[0], str) else None, user_agent=e.get("userAgent", str),
                  access_path="api" if username else "unknown")
    kind = credential_kind(ref, verb)
    credential = None
    target = Principal(account_uid=cluster)
    if kind:
        attrs: dict[str, Any] = {"apiGroup": ref.get("apiGroup"), "verb": verb, "groups": groups}
        obj = e.get("requestObject", dict) or {}
        uid = e.get("responseObject.metadata.uid", str)
        if uid:
            attrs["objectUid"] = uid
        if kind == "k8s_role_binding":
            attrs["roleRef"] = e.get("requestObject.roleRef", dict)
            attrs["subjects"] = e.get("requestObject.subjects", list) or []
            subject = next((s for s in attrs["subjects"] if isinstance(s, dict)), {})
            if subject.get("name"):
                target = Principal(uid=subject["name"], name=subject["name"], type=subject.get("kind"),
                                   account_uid=cluster)
        if kind == "k8s_csr":
            attrs["signerName"] = e.get("requestObject.spec.signerName", str)
            attrs["usages"] = e.get("requestObject.spec.usages", list) or []
        if kind == "k8s_sa_token":  # a TokenRequest (RequestResponse level names what it is bound to)
            attrs["boundObjectRef"] = e.get("requestObject.spec.boundObjectRef", dict)
            attrs["expirationSeconds"] = e.get("requestObject.spec.expirationSeconds", int)
        if kind == "k8s_secret" and e.get("requestObject.type", str):  # only at Request level or above
            attrs["type"] = e.get("requestObject.type", str)
        name = ref.get("name") or e.get("requestObject.metadata.name", str) if obj else ref.get("name")
        ref_named = {**ref, "name": name}
        credential = Credential(kind=kind, uid=object_path(ref_named), owner=target, attributes=attrs)
    suppressed = None
    if isinstance(code, int) and code >= 400:
        suppressed = f"the call failed (responseStatus.code {code})"
    elif is_system(username):
        suppressed = f"made by the system principal {username}"
    techniques = list(getattr(match, "technique_ids", None) or []) or list(FALLBACK_TECHNIQUES.get(kind or "", []))
    rule_uid = getattr(match, "id", None)
    event_name = f"{verb} {ref.get('resource')}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return [Detection(
        uid=detection_uid(record, rule_uid), provider="kubernetes", source="k8s_audit", event_name=event_name,
        technique_ids=techniques,
        rule=RuleRef(type="sigma", uid=rule_uid, name=getattr(match, "title", None),
                     path=str(match.path) if getattr(match, "path", None) is not None else None),
        severity=severity_label(getattr(match, "level", None)), time=time, account_uid=cluster,
        actor=actor, target=target, credential=credential, suppressed=suppressed,
        raw_ref=RawRef(origin=origin, position=position, sha256=record_sha256(record)), raw=record)]
