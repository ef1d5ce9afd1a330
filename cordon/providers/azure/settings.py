"""The ``azure:`` section of ``cordon.yaml`` (Azure's own settings; :attr:`Provider.config_section`).

Shape (every key optional)::

    azure:
      # Object id of the security group a Conditional Access policy blocks legacy authentication for
      # (conditions: client apps "Exchange ActiveSync clients" and "Other clients"; grant: block).
      # App passwords only sign in through legacy protocols, so membership stops them: playbook
      # azure-app-password adds the user to it. Unset: that playbook refuses, naming this key.
      legacy_auth_block_group: "0f6a3c2e-..."
      # Also disable the account (accountEnabled false) when an app password was created for it.
      app_password_disable_account: false

Source: Conditional Access "Block legacy authentication"
(https://learn.microsoft.com/entra/identity/conditional-access/policy-block-legacy-authentication);
app passwords (https://learn.microsoft.com/entra/identity/authentication/howto-mfa-app-passwords).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class AzureSettings(BaseModel):
    """``azure:`` as read: ``legacy_auth_block_group`` (a group object id or ``None``),
    ``app_password_disable_account`` (bool, default ``False``)."""

    model_config = ConfigDict(extra="forbid")

    legacy_auth_block_group: str | None = Field(default=None, pattern=GUID)
    app_password_disable_account: bool = False


class AzureSettingsError(ValueError):
    """The ``azure:`` section is not :class:`AzureSettings`; the message names ``azure.<field>``."""


def azure_settings_from_raw(raw: dict[str, Any] | None) -> AzureSettings:
    """Parse ``cordon.yaml``'s mapping (``Config.raw``); an absent section is the defaults. Raises
    :class:`AzureSettingsError` naming the field."""
    section = (raw or {}).get("azure")
    if section is None:
        return AzureSettings()
    if not isinstance(section, dict):
        raise AzureSettingsError("azure: expected a mapping")
    try:
        return AzureSettings.model_validate(section)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise AzureSettingsError(f"azure.{field}: {err['msg']}") from None


def azure_settings() -> AzureSettings:
    """The running configuration's ``azure:`` section (:func:`cordon.config.load_config`)."""
    from cordon.config import load_config

    return azure_settings_from_raw(load_config().raw)


def legacy_auth_group() -> str | None:
    """``azure.legacy_auth_block_group`` of the running configuration, or ``None``."""
    return azure_settings().legacy_auth_block_group
