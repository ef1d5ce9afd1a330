"""Playbooks: declarative YAML answering one kind of detection.

A playbook (``cordon/defaults/playbooks/*.yaml``) is data, not code::

    name: aws-access-key-created
    description: Deactivate an IAM access key created for persistence (T1098.001).
    priority: 100                      # lower runs first when several match
    when:                              # all given clauses must hold
      provider: aws
      credential_kinds: [aws_access_key]
      sources: [cloudtrail, guardduty, securityhub]
      event_names: [CreateAccessKey]   # optional
      technique_ids: [T1098.001]       # optional, any of
      min_severity: low                # optional
      actor_is_infrastructure: true    # optional: only (false: never) when the actor is one of
                                       # cordon.yaml's infrastructure_principals
    enrich:
      - action: aws.iam-user
        with: {user_name: "{{ credential.owner.name }}"}
    approval:
      required: true
      quorum: 1
      expire_after: 4h
      on_expiry: deny
    contain:
      - action: aws.deactivate-access-key
        with:
          user_name: "{{ credential.owner.name }}"
          access_key_id: "{{ credential.uid }}"
    verify: true

Parameter values are Jinja2 templates rendered in a sandbox with ``StrictUndefined`` from the
detection (``detection``, ``credential``, ``target``, ``actor``), the ``enrichment`` gathered so
far and ``now`` (ISO 8601 UTC). Validation happens at load: the schema below, every action name,
and every action's parameter schema (template strings stand for values not yet known). Errors are
:class:`PlaybookError` naming the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cordon.action import Action, get_action
from cordon.config import first_pattern
from cordon.detections.model import SEVERITY_IDS, Detection, Provider
from cordon.durations import parse_duration


class PlaybookError(ValueError):
    """A playbook that cannot be loaded: ``path``, ``line`` (1-based, or ``None``), ``field``
    (dotted path such as ``contain.0.with.access_key_id``) and ``reason``."""

    def __init__(self, path: str, line: int | None, field: str, reason: str):
        self.path, self.line, self.field, self.reason = path, line, field, reason
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: field '{field}': {reason}")


class When(BaseModel):
    """Which detections a playbook answers. Empty lists mean "any".

    ``actor_is_infrastructure``: ``true`` answers only detections whose actor is an
    infrastructure principal (:func:`infrastructure_pattern`: its ARN, or the role behind its
    session, matches a pattern of ``infrastructure_principals`` in ``cordon.yaml``); ``false`` only
    those whose actor is not; unset (the default) either. With no patterns configured no actor is
    one, so a ``true`` clause never matches.
    """

    model_config = ConfigDict(extra="forbid")

    provider: Provider
    credential_kinds: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    event_names: list[str] = Field(default_factory=list)
    finding_types: list[str] = Field(default_factory=list)
    technique_ids: list[str] = Field(default_factory=list)
    min_severity: Literal["unknown", "informational", "low", "medium", "high", "critical"] = "unknown"
    requires_credential: bool = True
    actor_is_infrastructure: bool | None = None

    def matches(self, d: Detection, infrastructure: Sequence[str] = ()) -> bool:
        """Whether detection ``d`` satisfies every clause; ``infrastructure`` is the configured
        ``infrastructure_principals`` (patterns), asked only by ``actor_is_infrastructure``."""
        if d.provider != self.provider:
            return False
        if (self.actor_is_infrastructure is not None
                and (infrastructure_pattern(d, infrastructure) is not None) != self.actor_is_infrastructure):
            return False
        if self.requires_credential and (d.credential is None or not d.credential.uid):
            return False
        if self.credential_kinds and (d.credential is None or d.credential.kind not in self.credential_kinds):
            return False
        if self.sources and d.source not in self.sources:
            return False
        if self.event_names and d.event_name not in self.event_names:
            return False
        if self.finding_types and not any(
            (d.finding_type or "").startswith(p.rstrip("*")) if p.endswith("*") else d.finding_type == p
            for p in self.finding_types
        ):
            return False
        if self.technique_ids and not set(self.technique_ids) & set(d.technique_ids):
            return False
        return SEVERITY_IDS[d.severity] >= SEVERITY_IDS[self.min_severity]


class Step(BaseModel):
    """One action step: the registered action ``name`` and its (templated) parameters."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")


class ManualStep(BaseModel):
    """A step no API can take, left to a person after containment (``manual:`` in a playbook):
    ``id`` (lower case, digits, ``-``; what ``cordon case done CASE --step ID`` names) and ``text``
    (what to do, shown in Slack and recorded). A case whose containment held and whose playbook has
    manual steps ends its run ``awaiting_manual`` (:mod:`cordon.manual_steps`) until each is marked done."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    text: str = Field(min_length=1)


#: Detection fields a manual-run parameter may fill (``sets``); ``credential.attributes.<name>`` too.
MANUAL_FIELDS = ("account_uid", "region", "credential.kind", "credential.uid", "credential.owner.uid",
                 "credential.owner.name", "target.uid", "target.name")


class Parameter(BaseModel):
    """One parameter of a manual run (``cordon run``, ``/cordon run``; see :mod:`cordon.manual`).

    A JSON-Schema-like property (``type``, ``description``, ``pattern``, ``enum``, ``default``)
    plus ``required`` and ``sets``: the detection fields the value fills (:data:`MANUAL_FIELDS`,
    or ``credential.attributes.<name>``). Validated at load: ``pattern`` must compile and the
    property must be a valid JSON Schema (``jsonschema`` Draft 2020-12) that its own ``enum`` and
    ``default`` satisfy.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["string", "integer", "boolean"] = "string"
    description: str = Field(min_length=1, max_length=2000)
    pattern: str | None = None
    enum: list[Any] | None = None
    default: Any = None
    required: bool = True
    sets: list[str] = Field(min_length=1)

    @field_validator("sets")
    @classmethod
    def _sets(cls, v: list[str]) -> list[str]:
        for f in v:
            if f not in MANUAL_FIELDS and not re.fullmatch(r"credential\.attributes\.[A-Za-z_][A-Za-z0-9_]*", f):
                raise ValueError(f"{f!r} is not a detection field a parameter can set ({', '.join(MANUAL_FIELDS)}, "
                                 "credential.attributes.<name>)")
        return v

    @model_validator(mode="after")
    def _valid_schema(self) -> Parameter:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        schema = self.json_schema()
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema property: {exc.message}") from None
        validator = jsonschema.Draft202012Validator(schema)
        for value in [*(self.enum or []), *([] if self.default is None else [self.default])]:
            for err in validator.iter_errors(value):
                raise ValueError(f"{value!r} does not satisfy the parameter's own schema: {err.message}")
        return self

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema property (``type``, ``description``, ``pattern``, ``enum``)."""
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.enum is not None:
            schema["enum"] = self.enum
        return schema


#: A Slack user group ``S...`` or another directory's group ``<directory>:<object id>`` (a GUID; the
#: Teams integration's ``entra:<object id>``)
_GROUP_ID = r"S[A-Z0-9]{2,}|[a-z][a-z0-9-]*:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


class Approvers(BaseModel):
    """Who may approve: Slack user IDs (``U...``/``W...``) or Teams clickers (``teams:<Entra object
    id>``), and Slack user group IDs (``S...``),
    resolved with ``usergroups.users.list``, or Entra ID groups ``entra:<group object id>`` for
    Microsoft Teams clickers (:mod:`cordon.teams.directory`). Empty lists mean "the global policy in
    ``cordon/defaults/cordon.yaml`` decides"."""

    model_config = ConfigDict(extra="forbid")

    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @field_validator("users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        for u in v:
            if not re.fullmatch(r"[UW][A-Z0-9]{2,}|teams:[0-9A-Za-z-]{2,}", u):
                raise ValueError(f"{u!r} is not a Slack user ID (U... or W...) nor a Teams clicker "
                                 "(teams:<object id>)")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not re.fullmatch(_GROUP_ID, g):
                raise ValueError(f"{g!r} is not a Slack user group ID (S...) nor a directory group "
                                 "(<directory>:<group object id>)")
        return v


class Approval(BaseModel):
    """Who must approve containment and how long the request stands.

    ``required: false`` lets containment run without a decision (never the default);
    ``quorum``: distinct approvals needed (unset: 2 for a ``critical`` detection, else 1, or
    what ``approval.quorum`` in ``cordon/defaults/cordon.yaml`` says); ``approvers``: allowed Slack users
    and user groups (added to the global ones); ``expire_after``: how long the request stands;
    ``remind_every``: a reminder in the message's thread at this interval; ``escalate_after`` +
    ``escalate_to`` (a Slack user group ``S...`` or user ``U...``, or an Entra group
    ``entra:<object id>`` for Teams clickers): mention them after this delay,
    and let them approve from then on; ``on_expiry`` says what an unanswered request becomes
    (``deny``, or ``contain`` for high-confidence playbooks that allow it). Durations as
    :func:`parse_duration`. Expiry, reminders and escalation are done by ``cordon/flows/sweeper.py``.
    """

    model_config = ConfigDict(extra="forbid")

    required: bool = True
    quorum: int | None = Field(default=None, ge=1, le=5)
    approvers: Approvers = Field(default_factory=Approvers)
    expire_after: str = "4h"
    remind_every: str | None = None
    escalate_after: str | None = None
    escalate_to: str | None = Field(default=None, pattern=rf"^(?:[SUW][A-Z0-9]{{2,}}|{_GROUP_ID})$")
    on_expiry: Literal["deny", "contain"] = "deny"

    @field_validator("expire_after", "remind_every", "escalate_after")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _escalation(self) -> Approval:
        if self.escalate_after and not self.escalate_to:
            raise ValueError("escalate_after needs escalate_to (a Slack user group S... or user U...)")
        return self

    @property
    def expire_seconds(self) -> int:
        """``expire_after`` in seconds."""
        return parse_duration(self.expire_after)

    @property
    def remind_seconds(self) -> int | None:
        """``remind_every`` in seconds, or ``None``."""
        return parse_duration(self.remind_every) if self.remind_every else None

    @property
    def escalate_seconds(self) -> int | None:
        """``escalate_after`` in seconds, or ``None``."""
        return parse_duration(self.escalate_after) if self.escalate_after else None


class Playbook(BaseModel):
    """A loaded, validated playbook (see the module docstring for the YAML form)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    description: str
    priority: int = 100
    when: When
    enrich: list[Step] = Field(default_factory=list)
    approval: Approval = Field(default_factory=Approval)
    contain: list[Step] = Field(default_factory=list)
    verify: bool = True
    #: How long after containment the credential is watched (:mod:`cordon.watch`: the state read
    #: again and the audit log searched for its use, every pass of the ``watch`` flow), as
    #: :func:`parse_duration`; ``None``: not watched.
    watch: str | None = None
    #: Manual runs (``cordon run``, ``/cordon run``): parameter name -> :class:`Parameter`.
    #: Only playbooks that declare parameters can be run by hand.
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    #: Steps left to a person once containment held (:class:`ManualStep`); ids unique.
    manual: list[ManualStep] = Field(default_factory=list)
    path: str | None = None

    @model_validator(mode="after")
    def _manual_steps(self) -> Playbook:
        ids = [m.id for m in self.manual]
        if len(ids) != len(set(ids)):
            raise ValueError(f"manual: step ids must be unique ({', '.join(ids)})")
        if self.manual and not self.contain:
            raise ValueError("manual: steps follow containment; this playbook contains nothing")
        return self

    @model_validator(mode="after")
    def _manual_parameters(self) -> Playbook:
        for name in self.parameters:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"parameters: {name!r} is not a parameter name (lower case, digits, _)")
        sets = {f for p in self.parameters.values() for f in p.sets}
        if self.parameters and "credential.kind" not in sets and len(self.when.credential_kinds) != 1:
            raise ValueError("parameters: a manual run needs its credential kind: list exactly one in "
                             "when.credential_kinds, or add a parameter that sets credential.kind")
        return self

    @field_validator("watch")
    @classmethod
    def _watch(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @property
    def watch_seconds(self) -> int | None:
        """``watch`` in seconds, or ``None``."""
        return parse_duration(self.watch) if self.watch else None

    def parameters_schema(self) -> dict[str, Any]:
        """The manual-run parameters as one JSON Schema object (``additionalProperties: false``)."""
        return {"type": "object", "additionalProperties": False,
                "properties": {n: p.json_schema() for n, p in self.parameters.items()},
                "required": [n for n, p in self.parameters.items() if p.required]}

    def actions(self, section: Literal["enrich", "contain"]) -> list[tuple[Step, type[Action]]]:
        """The steps of ``section`` with their action classes."""
        return [(s, get_action(s.action)) for s in getattr(self, section)]


# -- templates -------------------------------------------------------------------------------
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def template_context(detection: Detection, enrichment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The names a playbook template can use: ``detection`` (``Detection.summary()``),
    ``credential``, ``target``, ``actor``, ``enrichment``, ``now``."""
    summary = detection.summary()
    return {
        "detection": summary,
        "credential": summary["credential"] or {},
        "target": summary["target"],
        "actor": summary["actor"],
        "enrichment": enrichment or {},
        "now": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def render_params(params: Any, context: dict[str, Any], where: str = "with") -> Any:
    """Render every template string in ``params`` (recursively).

    A value that is exactly one ``{{ expression }}`` keeps the expression's type (a list stays a
    list); other strings render to strings. Raises :class:`ValueError` naming the parameter when
    an expression refers to something undefined (e.g. a detection with no credential owner).
    """
    if isinstance(params, dict):
        return {k: render_params(v, context, f"{where}.{k}") for k, v in params.items()}
    if isinstance(params, list):
        return [render_params(v, context, f"{where}.{i}") for i, v in enumerate(params)]
    if isinstance(params, str) and "{{" in params:
        try:
            whole = re.fullmatch(r"\{\{\s*(.+?)\s*\}\}", params)
            if whole:
                value = _ENV.compile_expression(whole.group(1), undefined_to_none=False)(**context)
                if isinstance(value, StrictUndefined):
                    str(value)  # raises UndefinedError naming the variable
                return value
            return _ENV.from_string(params).render(**context)
        except TemplateError as exc:
            raise ValueError(f"parameter '{where}': {exc}") from exc
    return params


# -- loading ---------------------------------------------------------------------------------
def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path in a composed YAML document to its 1-based line number."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _nearest_line(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def load_playbook_text(text: str, path: str = "<inline>") -> Playbook:
    """Parse and validate one playbook. Raises :class:`PlaybookError`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PlaybookError(path, mark.line + 1 if mark else None, "<document>", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or node is None:
        raise PlaybookError(path, 1, "<document>", "a playbook is a YAML mapping")
    lines = _line_index(node)
    try:
        pb = Playbook.model_validate({**data, "path": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(x for x in err["loc"])
        loc_yaml = tuple("with" if x == "with_" else x for x in loc)
        field = ".".join(str(x) for x in loc_yaml) or "<document>"
        raise PlaybookError(path, _nearest_line(lines, loc_yaml), field, err["msg"]) from None
    for section in ("enrich", "contain"):
        for i, step in enumerate(getattr(pb, section)):
            base = (section, i)
            try:
                cls = get_action(step.action)
            except KeyError as exc:
                raise PlaybookError(path, _nearest_line(lines, base + ("action",)), f"{section}.{i}.action",
                                    str(exc.args[0])) from None
            want = "contain" if section == "contain" else "enrich"
            if cls.kind != want:
                raise PlaybookError(path, _nearest_line(lines, base + ("action",)), f"{section}.{i}.action",
                                    f"'{step.action}' is a {cls.kind} action, not allowed under '{section}'")
            if cls.provider != pb.when.provider:
                raise PlaybookError(path, _nearest_line(lines, base + ("action",)), f"{section}.{i}.action",
                                    f"'{step.action}' is an {cls.provider} action; this playbook answers "
                                    f"{pb.when.provider} detections")
            _check_params(cls, step.with_, path, lines, base)
    return pb


def _check_params(cls: type[Action], params: dict[str, Any], path: str, lines: dict, base: tuple) -> None:
    validator = jsonschema.Draft202012Validator(cls.schema)
    for err in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        if isinstance(err.instance, str) and "{{" in err.instance:
            continue  # a template: its value is known only when the playbook runs
        rel = tuple(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(cls.schema.get("properties", {})))
            rel = rel + (extra[0],) if extra else rel
        field = ".".join(str(x) for x in (*base, "with", *rel))
        raise PlaybookError(path, _nearest_line(lines, (*base, "with", *rel)), field,
                            f"{cls.name}: {err.message}")
    for name in params:
        if isinstance(params[name], str) and "{{" in params[name]:
            try:
                _ENV.parse(params[name])
            except TemplateError as exc:
                field = ".".join(str(x) for x in (*base, "with", name))
                raise PlaybookError(path, _nearest_line(lines, (*base, "with", name)), field,
                                    f"bad template: {exc}") from None


def load_playbooks(directory: str | Path) -> list[Playbook]:
    """Load every ``*.yaml`` / ``*.yml`` in ``directory`` (sorted by priority, then name).

    Parsing and validating is the expensive part (about 0.2 s for the shipped playbooks, 32 today), and a
    run asks for them several times: the result is kept per process, keyed by the files' paths and a
    SHA-256 of their bytes (read each call, so an edited playbook is parsed again), and each call
    returns deep copies, so a caller's changes never leak into another's.

    Raises :class:`PlaybookError` for the first invalid file, and for two playbooks with one name.
    """
    directory = Path(directory)
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    texts = [(str(p), p.read_text(encoding="utf-8")) for p in files]
    digest = hashlib.sha256()
    for name, text in texts:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    key = digest.hexdigest()
    cached = _LOADED.get(key)
    if cached is None:
        cached = _parse_playbooks(texts)
        with _LOADED_LOCK:
            if len(_LOADED) >= 8:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = cached
    return [pb.model_copy(deep=True) for pb in cached]


_LOADED: dict[str, list[Playbook]] = {}
_LOADED_LOCK = threading.Lock()


def _parse_playbooks(texts: list[tuple[str, str]]) -> list[Playbook]:
    books: list[Playbook] = []
    seen: dict[str, str] = {}
    for path, text in texts:
        pb = load_playbook_text(text, path)
        if pb.name in seen:
            raise PlaybookError(path, 1, "name", f"playbook '{pb.name}' already defined in {seen[pb.name]}")
        seen[pb.name] = path
        books.append(pb)
    return sorted(books, key=lambda b: (b.priority, b.name))


def route(playbooks: list[Playbook], detection: Detection, infrastructure: Sequence[str] = ()) -> Playbook | None:
    """The playbook that answers ``detection``: the first (by priority, then name) whose
    ``when`` matches, ``infrastructure`` being the configured ``infrastructure_principals``
    (:attr:`cordon.config.Config.infrastructure_principals`). ``None`` for suppressed detections
    and when nothing matches."""
    if detection.suppressed:
        return None
    for pb in playbooks:
        if pb.when.matches(detection, infrastructure):
            return pb
    return None


def infrastructure_pattern(detection: Detection, infrastructure: Sequence[str]) -> str | None:
    """The first of the ``infrastructure`` patterns (``infrastructure_principals`` in
    ``cordon.yaml``, shell-style like ``protected_principals``) that the detection's actor matches:
    its ARN (``actor.user.uid``), then the role that issued its session (``actor.session_issuer``).
    ``None`` when the actor is not an infrastructure principal."""
    return first_pattern(infrastructure, detection.actor.user.uid, detection.actor.session_issuer)


def routed_because(playbook: Playbook | None, detection: Detection, infrastructure: Sequence[str]) -> str | None:
    """Why :func:`route` chose ``playbook`` for ``detection`` when its actor decided it (a
    ``when: actor_is_infrastructure: true`` playbook): the actor, the role behind its session and the
    pattern matched, in one sentence for the ledger (``case.opened``). ``None`` otherwise."""
    if playbook is None or not playbook.when.actor_is_infrastructure:
        return None
    pattern = infrastructure_pattern(detection, infrastructure)
    if pattern is None:
        return None
    actor = detection.actor
    issuer = f" (session issued by {actor.session_issuer})" if actor.session_issuer else ""
    triage = "" if playbook.contain else ", triage: nothing contained"
    return (f"actor {actor.user.uid or '-'}{issuer} matches infrastructure_principals pattern {pattern!r}: "
            f"answered by {playbook.name}{triage}")
