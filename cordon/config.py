"""Cordon's configuration: the folder in ``CORDON_CONFIG`` (default: the project's ``config/``).

``config/cordon.yaml`` holds the rules and playbooks locations, the protected principals and the
Slack settings; secrets come from the environment only (``CORDON_SLACK_BOT_TOKEN``,
``CORDON_SLACK_SIGNING_SECRET``, ``CORDON_WEBHOOK_TOKEN``), never from files.
``CORDON_SLACK_CHANNEL`` overrides ``slack.channel``. The ledger's checkpoint signing key is
``CORDON_LEDGER_KEY`` (with ``CORDON_LEDGER_OLD_KEYS``, ``CORDON_LEDGER_CHECKPOINT_EVERY``; read by
:mod:`cordon.audit.checkpoint`); its database ``CORDON_DATABASE_URL`` and ``CORDON_DB_AUTO_UPGRADE``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """Configuration that cannot be used: names the file and the field."""


@dataclass
class Config:
    """Loaded configuration.

    ``rules_dir`` / ``playbooks_dir`` are absolute paths; ``protected_principals`` shell-style
    patterns (``fnmatch``) over ARNs; ``slack_channel`` a channel ID; ``approvers`` Slack user IDs.
    """

    directory: Path
    rules_dir: Path
    playbooks_dir: Path
    protected_principals: list[str] = field(default_factory=list)
    slack_channel: str = ""
    approvers: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def is_protected(self, *arns: str | None) -> str | None:
        """The first pattern that any of ``arns`` matches, or ``None``."""
        for arn in arns:
            if not arn:
                continue
            for pattern in self.protected_principals:
                if fnmatch.fnmatchcase(arn, pattern):
                    return pattern
        return None


def config_dir() -> Path:
    """``CORDON_CONFIG`` or the project's ``config/``."""
    return Path(os.environ.get("CORDON_CONFIG") or PROJECT_ROOT / "config").resolve()


def load_config(directory: str | Path | None = None) -> Config:
    """Read ``cordon.yaml`` from ``directory`` (default :func:`config_dir`).

    Raises :class:`ConfigError` naming the file and field when a value has the wrong type.
    """
    d = Path(directory).resolve() if directory else config_dir()
    path = d / "cordon.yaml"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    protected = data.get("protected_principals", [])
    if not isinstance(protected, list) or not all(isinstance(p, str) for p in protected):
        raise ConfigError(f"{path}: field 'protected_principals': expected a list of ARN patterns")
    slack = data.get("slack") or {}
    if not isinstance(slack, dict):
        raise ConfigError(f"{path}: field 'slack': expected a mapping")
    approvers = slack.get("approvers") or []
    if not isinstance(approvers, list):
        raise ConfigError(f"{path}: field 'slack.approvers': expected a list of Slack user IDs")
    return Config(
        directory=d,
        rules_dir=(d / data.get("rules", "rules")).resolve(),
        playbooks_dir=(d / data.get("playbooks", "../playbooks")).resolve(),
        protected_principals=protected,
        slack_channel=os.environ.get("CORDON_SLACK_CHANNEL") or str(slack.get("channel", "")),
        approvers=[str(a) for a in approvers],
        raw=data,
    )
