"""Google Cloud: Cloud Audit Log entries (Sigma logsource ``product: gcp, service: gcp.audit``) and
Security Command Center findings; IAM, Resource Manager, API Keys, OS Login and Storage HMAC actions
over google-api-python-client.

Modules: :mod:`.detections` (record parsers), :mod:`.actions`, :mod:`.clients` (the discovery-based
client factory).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cordon.providers import Provider, Source


class GcpProvider(Provider):
    """The Google Cloud provider (see the package docstring)."""

    name = "gcp"
    title = "GCP"
    actions_module = "cordon.providers.gcp.actions"
    sensors_module = "cordon.providers.gcp.sensors"
    grants_module = "cordon.providers.gcp.grants"
    shapes_module = "cordon.providers.gcp.shapes"
    renderers_module = "cordon.providers.gcp.render"
    classify_order = 20
    ocsf_account = (11, "GCP Project")

    detection_sources = ("gcp_audit", "gcp_scc", "chronicle")
    rule_types = ("gcp_scc", "chronicle")
    #: credential kind -> what its ``uid`` holds
    credential_kinds = {
        "gcp_sa_key": "uid = key resource name projects/P/serviceAccounts/SA_EMAIL/keys/KEY_ID",
        "gcp_service_account": "uid = service account email",
        "gcp_iam_binding": "uid = '<resource>#<role>#<member>', e.g. 'projects/p1#roles/owner#user:x@example.com'",
        "gcp_api_key": "uid = projects/P/locations/global/keys/KEY_ID",
        "gcp_oslogin_ssh_key": "uid = users/USER_EMAIL/sshPublicKeys/FINGERPRINT",
        "gcp_hmac_key": "uid = projects/P/hmacKeys/ACCESS_ID",
    }

    def plan_conflict_key(self, detection: Any) -> str | None:
        """An IAM binding's resource: its containment rewrites the resource's whole policy
        (``getIamPolicy`` then ``setIamPolicy`` with the etag), so two bindings on one resource are
        planned one after the other, never in one plan."""
        cred = detection.credential
        if cred is not None and cred.kind == "gcp_iam_binding" and cred.uid:
            return f"gcp-iam-policy|{cred.uid.split('#', 1)[0]}"
        return None

    #: what a new credential of each kind is called in Slack, and the word joining it to its owner
    credential_phrases = {
    "gcp_sa_key": ("New service-account key", "on"),
    "gcp_service_account": ("New service account", ""),
    "gcp_iam_binding": ("IAM role granted", "to"),
    "gcp_api_key": ("New API key", "in"),
    "gcp_oslogin_ssh_key": ("New OS Login SSH key", "for"),
    "gcp_hmac_key": ("New HMAC key", "for"),
    }

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.gcp.chronicle import detections_from_chronicle
        from cordon.providers.gcp.detections import detections_from_gcp_audit, detections_from_scc

        return (Source("gcp_audit", detections_from_gcp_audit, sigma=("gcp", "gcp.audit")),
                Source("gcp_scc", detections_from_scc),
                Source("chronicle", detections_from_chronicle))

    def manual_fields(self, kind: str, fields: dict[str, Any]) -> None:
        """A key's resource name gives its service account and project; a service account's email
        its project."""
        uid = fields.get("credential.uid")
        if not isinstance(uid, str):
            return
        m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)/keys/[^/]+", uid)
        if m:
            fields.setdefault("credential.owner.uid", m.group(2))
        m = re.match(r"projects/([^/]+)/", uid)
        if m:
            fields.setdefault("account_uid", m.group(1))
        m = re.fullmatch(r"[^@]+@([a-z][a-z0-9-]+)\.iam\.gserviceaccount\.com", uid)
        if m:
            fields.setdefault("account_uid", m.group(1))

    def actor_access(self, detection: Any) -> Any:
        """The user-managed service-account key the actor signed the call with
        (:func:`cordon.providers.gcp.actor.actor_access`)."""
        from cordon.providers.gcp.actor import actor_access

        return actor_access(detection)

    def credential_usage(self, detection: Any, since: Any, clients: Any) -> Any:
        """Cloud Logging ``entries.list`` for calls signed with the key since it was contained
        (:func:`cordon.providers.gcp.watch.credential_usage`)."""
        from cordon.providers.gcp.watch import credential_usage

        return credential_usage(detection, since, clients)

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        from cordon.providers.gcp.clients import gcp_clients

        return gcp_clients(cloud)
