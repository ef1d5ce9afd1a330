"""Google Cloud: Cloud Audit Log entries (Sigma logsource ``product: gcp, service: gcp.audit``) and
Security Command Center findings; IAM, Resource Manager, API Keys, OS Login and Storage HMAC actions
over google-api-python-client.

Modules: :mod:`.detections` (record parsers), :mod:`.actions`, :mod:`.clients` (the discovery-based
client factory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordon.providers import Provider, Source


class GcpProvider(Provider):
    """The Google Cloud provider (see the package docstring)."""

    name = "gcp"
    title = "GCP"
    actions_module = "cordon.providers.gcp.actions"
    grants_module = "cordon.providers.gcp.grants"
    ocsf_account = (11, "GCP Project")

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.gcp.detections import detections_from_gcp_audit, detections_from_scc

        return (Source("gcp_audit", detections_from_gcp_audit, sigma=("gcp", "gcp.audit")),
                Source("gcp_scc", detections_from_scc))

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        from cordon.providers.gcp.clients import gcp_clients

        return gcp_clients(cloud)
