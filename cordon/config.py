"""Cordon's configuration: the folder in ``CORDON_CONFIG`` (default: the shipped ``cordon/defaults/``,
package data, so an installed wheel finds it from any directory).

``cordon.yaml`` holds the rules and playbooks locations, the protected principals, the
infrastructure principals and the Slack settings; secrets come from the environment only
(``CORDON_SLACK_BOT_TOKEN``, ``CORDON_SLACK_SIGNING_SECRET``, ``CORDON_WEBHOOK_TOKEN``), never from files.
``CORDON_SLACK_CHANNEL`` overrides ``slack.channel``. The ledger's checkpoint signing key is
``CORDON_LEDGER_KEY`` (with ``CORDON_LEDGER_OLD_KEYS``, ``CORDON_LEDGER_CHECKPOINT_EVERY``; read by
:mod:`cordon.audit.checkpoint`); its database ``CORDON_DATABASE_URL`` and ``CORDON_DB_AUTO_UPGRADE``.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cordon.durations import parse_duration

#: The configuration shipped inside the package (``cordon.yaml``, ``rules/``, ``playbooks/``): what
#: an installed Cordon uses when ``CORDON_CONFIG`` is not set, found from the package, not a checkout.
DEFAULTS = Path(__file__).resolve().with_name("defaults")


class ConfigError(ValueError):
    """Configuration that cannot be used: names the file and the field."""


@dataclass
class Config:
    """Loaded configuration.

    ``rules_dir`` is an absolute path, or, without ``rules:`` in ``cordon.yaml``, every provider's
    shipped rules folder (:func:`cordon.providers.shipped_rule_dirs`; :meth:`cordon.sigma.RuleSet.load`
    takes either); ``playbooks_dir`` is an absolute path; ``protected_principals`` shell-style
    patterns (``fnmatch``) over ARNs; ``infrastructure_principals`` the same over the actor's ARN
    and the role behind its session (infrastructure as code: a playbook's ``when:
    actor_is_infrastructure`` asks them); ``actor_access`` whether a detection that named an added
    credential also opens a case for the access its actor signed with
    (:meth:`cordon.providers.Provider.actor_access`; on unless ``cordon.yaml`` says ``actor_access:
    false``); ``incident_window_seconds`` how long after an
    actor's last case another of its cases joins the same incident (``incidents.window``, default
    15 minutes) and ``incident_one_run`` whether the cases of one incident opened by one intake are
    answered by one run, one approval request and one plan (``incidents.one_run``, default on);
    ``slack_channel`` a channel ID; ``approvers`` Slack user IDs.
    """

    directory: Path
    rules_dir: Path | tuple[Path, ...]
    playbooks_dir: Path
    protected_principals: list[str] = field(default_factory=list)
    infrastructure_principals: list[str] = field(default_factory=list)
    actor_access: bool = True
    incident_window_seconds: int = 900
    incident_one_run: bool = True
    #: a new case of an incident joins its queued run (requested, not yet planning) instead of
    #: getting its own (``incidents.join_queued``, default on), up to ``incident_max_cases`` cases
    #: a run (``incidents.max_cases``, default 25)
    incident_join_queued: bool = True
    incident_max_cases: int = 25
    slack_channel: str = ""
    approvers: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def is_protected(self, *arns: str | None) -> str | None:
        """The first pattern that any of ``arns`` matches, or ``None``."""
        return first_pattern(self.protected_principals, *arns)


def first_pattern(patterns: Iterable[str], *arns: str | None) -> str | None:
    """The first of ``patterns`` (shell-style, ``fnmatch``, case-sensitive) that any of ``arns``
    matches, trying the ARNs in order; ``None`` when none does (empty or ``None`` ARNs never match)."""
    patterns = list(patterns)
    for arn in arns:
        if not arn:
            continue
        for pattern in patterns:
            if fnmatch.fnmatchcase(arn, pattern):
                return pattern
    return None


def config_dir() -> Path:
    """``CORDON_CONFIG`` or the shipped configuration (:data:`DEFAULTS`, package data)."""
    return Path(os.environ.get("CORDON_CONFIG") or DEFAULTS).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SlackSection(_Strict):
    """``slack:``: the approval channel and the older spelling of approvers."""

    channel: str | int = ""
    approvers: list[str] | None = None


class ApproversSection(_Strict):
    """``approval.approvers``: Slack user IDs and user-group IDs."""

    users: list[str] | None = None
    groups: list[str] | None = None


class QuorumSection(_Strict):
    """``approval.quorum`` in its mapping form (a bare number is accepted too)."""

    default: int | None = None
    critical: int | None = None


class ApprovalSection(_Strict):
    """``approval:`` keys; their values are checked by :func:`cordon.approvals.policy.load_settings`."""

    #: where the server's own runs ask (``slack`` | ``teams`` | ``both``: cordon.approvals.modes)
    channel: Literal["slack", "teams", "both"] | None = None
    approvers: ApproversSection | None = None
    quorum: int | QuorumSection | None = None
    group_cache: str | int | None = None
    grace: str | int | None = None
    deny_window: str | float | None = None
    identities: dict[str, list[str]] | None = None


class TeamsSection(_Strict):
    """``teams:``: the Microsoft Teams bot (issue 18); values read by
    :func:`cordon.teams.verify.load_teams_settings`. The bot's secret is named by
    ``app_password_env``, never written here."""

    app_id: str | None = None
    tenant_id: str | None = None
    openid_metadata_url: str | None = None
    issuer: str | None = None
    app_password_env: str | None = None
    service_url: str | None = None
    conversation_id: str | None = None


class IncidentsSection(_Strict):
    """``incidents:`` keys: ``window`` (a duration, ``"15m"``, or seconds), ``one_run``,
    ``join_queued`` and ``max_cases`` (at least 2)."""

    window: str | int | None = None
    one_run: bool | None = None
    join_queued: bool | None = None
    max_cases: int | None = Field(default=None, ge=2)


class PushSourceSection(_Strict):
    """One ``webhook.sources.<name>`` entry: who may push to ``/webhook/detections/<name>``
    (:mod:`cordon.server.push_auth`; the secret is named by ``secret_env``, never written here)."""

    kind: Literal["bearer", "api_key", "basic", "pubsub_oidc"]
    secret_env: str | None = None
    header: str | None = None
    username: str | None = None
    audience: str | None = None
    service_account: str | None = None
    certs_url: str | None = None
    revoked: bool = False


class WebhookSection(_Strict):
    """``webhook:`` keys: ``sources``, the senders with their own credential."""

    sources: dict[str, PushSourceSection] = {}


class CordonYaml(_Strict):
    """The shape of ``cordon.yaml``: every key Cordon reads, nothing else (a misspelt key such as
    ``protected_principal:`` or ``chanel:`` is refused, not ignored). A provider's own section
    (``Provider.config_section``, named after it) is left to that provider's ``check_config``
    (:func:`provider_sections`)."""

    rules: str | None = None  # relative to the folder; absent: each provider's shipped rules (providers/<cloud>/rules)
    playbooks: str | None = None  # absent: the shipped playbooks (cordon/defaults/playbooks)
    protected_principals: list[str] = []
    infrastructure_principals: list[str] = []
    actor_access: bool = True
    incidents: IncidentsSection | None = None
    slack: SlackSection | None = None
    approval: ApprovalSection | None = None
    teams: TeamsSection | None = None
    webhook: WebhookSection | None = None
    #: ``sensors.<name>``: each sensor's settings, checked by its own model (cordon.sensors)
    sensors: dict[str, dict[str, Any]] = {}


def shipped_rule_dirs() -> tuple[Path, ...]:
    """Each registered provider's shipped Sigma rules folder (:func:`cordon.providers.shipped_rule_dirs`)."""
    from cordon.providers import shipped_rule_dirs as dirs

    return dirs()


def provider_sections() -> set[str]:
    """Top-level keys of ``cordon.yaml`` that registered providers own (:mod:`cordon.providers`)."""
    from cordon.providers import providers

    return {name for name, p in providers().items() if p.config_section}


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """``{path of keys: 1-based line}`` for every mapping key and sequence item of a YAML document."""
    lines: dict[tuple[str | int, ...], int] = {}

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = path + (str(k.value),)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """The part of a pydantic error location that exists in ``data`` (drops union member tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def _known_keys(loc: tuple[str | int, ...]) -> list[str]:
    if len(loc) == 1:
        return [*CordonYaml.model_fields, *sorted(provider_sections())]
    model: Any = CordonYaml
    for part in loc[:-1]:
        field_ = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field_ is None:
            return []
        ann = field_.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def check_config_text(text: str, path: Path | str) -> dict[str, Any]:
    """Parse and validate ``cordon.yaml``'s text against :class:`CordonYaml`.

    Returns the mapping as read. Raises :class:`ConfigError` whose message names the file, the
    line and the key: ``/etc/cordon/cordon.yaml:11: field 'protected_principal': unknown key (did
    you mean 'protected_principals'?)``; every problem is listed, one per line."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    owned = provider_sections()
    try:
        CordonYaml.model_validate({k: v for k, v in data.items() if k not in owned})
    except ValidationError as exc:
        lines = _key_lines(text)
        found: list[tuple[int, tuple[str | int, ...], str]] = []
        for e in exc.errors():
            loc = _data_path(data, e["loc"])  # without pydantic's union tags (int, QuorumSection, ...)
            dotted = ".".join(str(p) for p in loc)
            line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), 0)
            where = f"{path}:{line}" if line else f"{path}"
            if e["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1)
                hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), near[0]])}'?)" if near else ""
                found.append((line, loc, f"{where}: field '{dotted}': unknown key{hint}"))
            else:
                found.append((line, loc, f"{where}: field '{dotted}': {e['msg'][0].lower()}{e['msg'][1:]}"))
        # of a union's alternatives keep the most specific complaint (quorum.default, not quorum)
        keep = [f for f in found if not any(o[1][:len(f[1])] == f[1] and len(o[1]) > len(f[1]) for o in found)]
        problems = [m for _, _, m in sorted(keep, key=lambda f: f[0])]
        raise ConfigError("\n".join(dict.fromkeys(problems))) from None
    return data


def load_config(directory: str | Path | None = None) -> Config:
    """Read ``cordon.yaml`` from ``directory`` (default :func:`config_dir`), validated against
    :class:`CordonYaml` (:func:`check_config_text`).

    Raises :class:`ConfigError` naming the file, line and key for an unknown key or a value of
    the wrong type, and naming the file and key when ``rules:`` or ``playbooks:`` is not a directory.
    """
    d = Path(directory).resolve() if directory else config_dir()
    path = d / "cordon.yaml"
    data: dict[str, Any] = {}
    if path.exists():
        data = check_config_text(path.read_text(encoding="utf-8"), path)
    protected = data.get("protected_principals") or []
    slack = data.get("slack") or {}
    approvers = slack.get("approvers") or []
    for key in ("rules", "playbooks"):  # a misspelt path would otherwise load nothing, silently
        if data.get(key) and not (d / data[key]).is_dir():
            raise ConfigError(f"{path}: field '{key}': {(d / data[key]).resolve()} is not a directory")
    incidents = data.get("incidents") or {}
    window = incidents.get("window", 900)
    if not isinstance(window, int) or isinstance(window, bool):
        try:
            window = parse_duration(str(window))
        except ValueError as exc:
            raise ConfigError(f"{path}: field 'incidents.window': {exc}") from None
    return Config(
        directory=d,
        # without ``rules:`` / ``playbooks:`` a configuration folder uses the shipped ones
        rules_dir=(d / data["rules"]).resolve() if data.get("rules") else shipped_rule_dirs(),
        playbooks_dir=(d / data["playbooks"]).resolve() if data.get("playbooks") else DEFAULTS / "playbooks",
        protected_principals=protected,
        infrastructure_principals=[str(p) for p in data.get("infrastructure_principals") or []],
        actor_access=bool(data.get("actor_access", True)),
        incident_window_seconds=int(window),
        incident_one_run=bool(incidents.get("one_run", True)),
        incident_join_queued=bool(incidents.get("join_queued", True)),
        incident_max_cases=int(incidents.get("max_cases") or 25),
        slack_channel=os.environ.get("CORDON_SLACK_CHANNEL") or str(slack.get("channel", "")),
        approvers=[str(a) for a in approvers],
        raw=data,
    )
