"""Microsoft Entra ID and Azure: Entra audit logs (Sigma logsource ``product: azure, service:
auditlogs``, matched on the Graph ``directoryAudit`` shape), the Azure Activity Log (``service:
activitylogs``), Entra sign-ins (read, counted, never matched: a sign-in adds no credential);
Graph actions over msgraph-sdk and role assignments over azure-mgmt-authorization.

Modules: :mod:`.detections` (record parsers, the views rules are written against and their field
normalisation), :mod:`.actions`, :mod:`.clients` (the Graph / ARM client factory), :mod:`.guard` (never
contain a managed identity's credential).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cordon.providers import Provider, Source


class AzureProvider(Provider):
    """The Entra ID / Azure provider (see the package docstring)."""

    name = "azure"
    title = "Azure"
    actions_module = "cordon.providers.azure.actions"
    sensors_module = "cordon.providers.azure.sensors"
    grants_module = "cordon.providers.azure.grants"
    shapes_module = "cordon.providers.azure.shapes"
    renderers_module = "cordon.providers.azure.render"
    classify_order = 30
    config_section = True  # azure: legacy_auth_block_group, app_password_disable_account (settings.py)
    account_label = "tenant"  # detection.account_uid is the Entra tenant id

    detection_sources = ("entra", "azure_activity")
    rule_types = ("entra",)
    #: credential kind -> what its ``uid`` holds
    credential_kinds = {
        "azure_sp_password": "uid = the credential's keyId (GUID); owner = the application or service principal",
        "azure_sp_key": "uid = keyId of a certificate (keyCredentials)",
        "azure_federated_credential": "uid = '<application object id>/federatedIdentityCredentials/<id>'",
        "azure_role_assignment": "uid = full ARM ID .../providers/Microsoft.Authorization/roleAssignments/<guid>",
        "azure_directory_role": "uid = '<directory role template id>#<principal object id>'",
        "azure_app_role_assignment": "uid = '<assignee SP object id>#<resource SP object id>#<appRoleId>'",
        "azure_user": "uid = user object id (a created account, T1136.003)",
        "azure_user_app_password": "uid = object id of the user an app password was created for (T1098.001)",
        "azure_service_principal": "uid = service principal object id (a created service principal)",
        "azure_user_sessions": "the sign-in sessions of the user an actor signed in as, uid = user object id",
        "azure_sp_sign_in": "the sign-in of the service principal an actor signed in as, uid = its object id",
    }

    #: what a new credential of each kind is called in Slack, and the word joining it to its owner
    credential_phrases = {
    "azure_sp_password": ("New client secret", "on"),
    "azure_sp_key": ("New certificate", "on"),
    "azure_federated_credential": ("New federated credential", "on"),
    "azure_role_assignment": ("New Azure role assignment", "for"),
    "azure_directory_role": ("Directory role granted", "to"),
    "azure_app_role_assignment": ("App permission granted", "to"),
    "azure_user": ("New Entra user", ""),
    "azure_user_app_password": ("New app password", "for"),
    "azure_service_principal": ("New service principal", ""),
    "azure_user_sessions": ("Sessions of the user who did it", "of"),
    "azure_sp_sign_in": ("Service principal that did it", ""),
    }

    @property
    def sources(self) -> tuple[Source, ...]:
        from cordon.providers.azure.detections import (
            ACTIVITY_NAMES,
            ENTRA_NAMES,
            activity_match_view,
            detections_from_azure_activity,
            detections_from_entra_audit,
            entra_match_view,
        )

        return (Source("entra_audit", detections_from_entra_audit, sigma=("azure", "auditlogs"),
                       view=entra_match_view, normalise=ENTRA_NAMES),
                Source("azure_activity", detections_from_azure_activity, sigma=("azure", "activitylogs"),
                       view=activity_match_view, normalise=ACTIVITY_NAMES),
                Source("entra_signin", None, evaluated=False))

    def guard(self, detection: Any, clients: Callable[..., Any], me: str | None,
              enrichment: dict[str, Any] | None = None) -> str | None:
        """Refuse to remove a password or certificate from a managed identity (Azure rotates their
        certificates itself): the owner's ``servicePrincipalType`` from ``enrichment``'s
        ``azure.service-principal`` facts, else read from Graph
        (:func:`cordon.providers.azure.guard.managed_identity_refusal`); refuse to disable, as the
        actor's own access, a managed identity or a Microsoft first-party app
        (:func:`cordon.providers.azure.guard.actor_service_principal_refusal`)."""
        from cordon.providers.azure.guard import actor_service_principal_refusal, managed_identity_refusal

        return managed_identity_refusal(detection, clients, enrichment) or actor_service_principal_refusal(
            detection, clients)

    def actor_access(self, detection: Any) -> Any:
        """The user's sessions or the service principal the actor signed in as
        (:func:`cordon.providers.azure.actor.actor_access`)."""
        from cordon.providers.azure.actor import actor_access

        return actor_access(detection)

    def credential_usage(self, detection: Any, since: Any, clients: Any) -> Any:
        """Entra sign-ins (Graph beta ``auditLogs/signIns``) with the credential since it was
        contained (:func:`cordon.providers.azure.watch.credential_usage`)."""
        from cordon.providers.azure.watch import credential_usage

        return credential_usage(detection, since, clients)

    def check_config(self, config: Any) -> str | None:
        """The ``azure:`` section (:mod:`cordon.providers.azure.settings`); raises its
        ``AzureSettingsError`` naming ``azure.<field>`` and ``cordon.yaml``'s path."""
        from cordon.providers.azure.settings import AzureSettingsError, azure_settings_from_raw

        try:
            settings = azure_settings_from_raw(config.raw)
        except AzureSettingsError as exc:
            raise AzureSettingsError(f"{config.directory / 'cordon.yaml'}: {exc}") from None
        group = settings.legacy_auth_block_group
        return (f"app passwords: users go to group {group}" if group else
                "app passwords: no azure.legacy_auth_block_group (playbook azure-app-password refuses)")

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        from cordon.providers.azure.clients import azure_clients

        return azure_clients(cloud)
