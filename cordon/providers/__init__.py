"""The provider registry: one package per cloud (``cordon/providers/<cloud>/``), each describing itself
with a :class:`Provider` and registered here; the core asks the registry, it does not branch on cloud
names. Learnt from Cloud Custodian's ``c7n.provider.Provider`` / ``clouds`` registry and StackStorm
packs (a cloud's sources, rules and actions side by side).

A provider declares:

* ``name`` (``detection.provider``, the prefix of its action names, e.g. ``aws.deactivate-access-key``)
  and ``title`` (how people write it, e.g. ``AWS``);
* ``sources``: one :class:`Source` per record kind its intake recognises (``RawRecord.kind``): Sigma
  events name the logsource they are matched as (``product``, ``service``) and optionally a ``view``
  (the shape rules are written against); findings map directly. ``parse`` turns a record (and the
  Sigma match, for events) into zero or more :class:`~cordon.detections.model.Detection`;
* ``actions_module``: the module whose import registers its actions (:mod:`cordon.action`), and
  ``grants_module``: the least-privilege documents generated from them (:mod:`cordon.permissions`);
* :meth:`Provider.clients`: its client factory, rebuilt from plain JSON parameters (``cloud``) so a
  Prefect worker in another process makes the same clients; ``clients_per_account`` when the
  clients act in the detection's account (``cloud["account_id"]``);
* ``credential_kinds`` (what each kind's ``uid`` holds), ``detection_sources`` and ``rule_types``:
  the values its detections may carry (the model validates against the registry);
* ``ocsf_account``: the OCSF ``account.type_id`` / ``type`` of its accounts, when OCSF has one.

Adding a cloud is a folder with such a class and one entry in :data:`BUILTIN` (or, outside this
distribution, an entry point in the group ``cordon.providers`` naming the class).

Raises: :func:`get_provider` ``ValueError`` naming the registered providers for an unknown name;
:func:`source_for` ``KeyError`` for a record kind no provider declares.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

#: Built-in providers: ``(name, "module:Class")``. A new cloud adds one line here.
BUILTIN: tuple[tuple[str, str], ...] = (
    ("aws", "cordon.providers.aws:AwsProvider"),
    ("azure", "cordon.providers.azure:AzureProvider"),
    ("gcp", "cordon.providers.gcp:GcpProvider"),
    ("kubernetes", "cordon.providers.kubernetes:KubernetesProvider"),
)

#: Entry point group through which another distribution registers a provider class.
ENTRY_POINT_GROUP = "cordon.providers"


@dataclass(frozen=True)
class Source:
    """One kind of input record a provider reads (``RawRecord.kind``, decided by
    :func:`cordon.detections.intake.classify`).

    ``sigma``: ``(product, service)`` or ``(product, service, category)`` the records are matched as
    (Sigma logsource; rules naming that category fit too), or ``None`` for
    findings, which map directly. ``view``: the record as Sigma rules see it (``None``: the record
    itself); it may raise :class:`cordon.detections.errors.RecordError` naming the field (its origin
    and position are filled in by the pipeline). ``parse``: ``parse(record, match, origin, position)`` for Sigma events,
    ``parse(record, origin, position)`` for findings; returns a Detection or an iterable of them;
    raises :class:`cordon.detections.errors.RecordError` naming the field for a malformed record.
    ``evaluated``: ``False`` for records counted as events on which no rule is evaluated (Entra
    sign-ins create no credential). ``normalise``: a
    :class:`cordon.sigma.normalise.FieldNormalisation` applied alike to the view and to the rules'
    values of its fields when the record is matched (names a log spells otherwise than its
    documentation: trailing spaces, en dashes), or ``None``.
    """

    kind: str
    parse: Callable[..., Any] | None
    sigma: tuple[str, ...] | None = None
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    evaluated: bool = True
    normalise: Any = None

    @property
    def is_finding(self) -> bool:
        """A finding (maps directly) rather than an event matched by Sigma rules."""
        return self.sigma is None and self.evaluated


@dataclass(frozen=True)
class EventEnvelope:
    """An event-bus envelope a provider's records arrive in: an object with ``detail-type`` and
    ``detail`` (the EventBridge event structure,
    https://docs.aws.amazon.com/eventbridge/latest/ref/overiew-event-structure.html) whose
    ``detail-type`` says what ``detail`` holds.

    ``detail_type``: the exact value, or ``"*suffix"`` for every value ending in ``suffix``;
    ``kind``: the :class:`Source` kind of the records; ``records``: the key of ``detail`` holding an
    array of records (``None``: ``detail`` is the record)."""

    detail_type: str
    kind: str
    records: str | None = None

    def matches(self, detail_type: str) -> bool:
        """Whether ``detail_type`` is this envelope's."""
        if self.detail_type.startswith("*"):
            return detail_type.endswith(self.detail_type[1:])
        return detail_type == self.detail_type

    @property
    def example(self) -> str:
        """The ``detail-type`` as a person would quote it (``'... via CloudTrail'``)."""
        return f"'...{self.detail_type[1:]}'" if self.detail_type.startswith("*") else f"'{self.detail_type}'"


@dataclass(frozen=True)
class ActorAccess:
    """What :meth:`Provider.actor_access` answers: ``detection``, the derived detection whose
    ``credential`` is the actor's own access (an access key, a role's sessions), and ``playbook``,
    the name of the playbook that contains it."""

    detection: Any
    playbook: str


#: ATT&CK for an actor's use of a credential it holds: Valid Accounts: Cloud Accounts
VALID_CLOUD_ACCOUNTS = "T1078.004"


def actor_detection(detection: Any, credential: Any, playbook: str) -> ActorAccess:
    """The :class:`ActorAccess` of ``credential`` (the actor's own access, whose ``owner`` becomes the
    target) derived from ``detection``: a copy keeping the record (``raw``, ``raw_ref``, ``rule``,
    ``time``, ``event_name``) with ``uid`` ``<uid>#actor`` and technique ``T1078.004`` added; its
    case key is the credential's, so every detection of the same actor joins one case."""
    derived = detection.model_copy(deep=True, update={
        "uid": f"{detection.uid}#actor", "credential": credential, "target": credential.owner.model_copy(),
        "technique_ids": sorted({*detection.technique_ids, VALID_CLOUD_ACCOUNTS})})
    return ActorAccess(detection=derived, playbook=playbook)


class Provider:
    """Base class of a cloud provider package (see the module docstring for what it declares)."""

    name: ClassVar[str]
    title: ClassVar[str]
    actions_module: ClassVar[str]
    #: module with ``classify(record) -> kind | None``, ``SHAPES`` (text for dead-letter reasons) and
    #: optionally ``claims(record) -> bool`` (a record only it may classify)
    shapes_module: ClassVar[str | None] = None
    #: when its shapes are tried (lower first: the more specific shapes)
    classify_order: ClassVar[int] = 100
    #: module whose import registers its Slack enrichment renderers (:mod:`cordon.slack.render`)
    renderers_module: ClassVar[str | None] = None
    #: credential kind -> (what a new one is called, the word joining it to its owner) in Slack
    credential_phrases: ClassVar[dict[str, tuple[str, str]]] = {}
    #: module holding ``DOCUMENTS``, the :class:`cordon.permissions.GrantDocument` s it generates
    grants_module: ClassVar[str | None] = None
    clients_per_account: ClassVar[bool] = False
    #: whether one client factory's clients may be used from several threads at once (boto3
    #: clients are; httplib2, under google-api-python-client, and the Azure factory are not): then
    #: a playbook's independent enrichment steps run concurrently (:func:`cordon.respond.enrich`)
    thread_safe_clients: ClassVar[bool] = False
    #: credential kind (``detection.credential.kind``) -> what its ``uid`` holds
    credential_kinds: ClassVar[dict[str, str]] = {}
    #: ``detection.source`` values its parsers produce (a log, a finding service)
    detection_sources: ClassVar[tuple[str, ...]] = ()
    #: ``detection.rule.type`` values of its findings (besides ``sigma``)
    rule_types: ClassVar[tuple[str, ...]] = ()
    ocsf_account: ClassVar[tuple[int, str] | None] = None
    #: event-bus envelopes whose ``detail`` holds this provider's records
    event_envelopes: ClassVar[tuple[EventEnvelope, ...]] = ()
    #: the label under which ``detection.account_uid`` is shown among a case's identifiers (Entra:
    #: ``tenant``); ``None``: it is an account or project, shown beside the region
    account_label: ClassVar[str | None] = None
    #: module whose import registers the provider's sensors (:func:`cordon.sensors.register_sensor`)
    sensors_module: ClassVar[str | None] = None
    #: whether ``cordon.yaml`` may hold a top-level section named after the provider (``aws:``),
    #: checked by :meth:`check_config`, not by the core schema
    config_section: ClassVar[bool] = False

    @property
    def sources(self) -> tuple[Source, ...]:
        """The record kinds this provider reads (imported lazily: parsers are heavy)."""
        return ()

    def clients(self, cloud: dict[str, Any]) -> Callable[..., Any]:
        """A client factory for ``cloud`` (the provider's parameters): a
        :class:`cordon.clouds.Clients` (``clients(service, ...)`` plus Cordon's own identity)."""
        raise NotImplementedError

    def guard(self, detection: Any, clients: Callable[..., Any], me: str | None,
              enrichment: dict[str, Any] | None = None) -> str | None:
        """A provider's own reason to refuse containment of ``detection`` with ``clients`` (Cordon's
        identity there: ``me``, or ``None`` when it could not be read), beyond the core guard
        (:func:`cordon.respond.guard`); ``None`` to allow. ``enrichment``: the playbook's enrichment
        results (``{action name: facts}``) when the caller has them, else ``None``."""
        return None

    def rule_problem(self, sigma_rule: Any) -> str | None:
        """Why a Sigma rule (a pySigma ``SigmaRule``) whose logsource ``product`` is one of this
        provider's sources can never match its records, or ``None`` (the default). Such a rule is
        reported when rules load (:attr:`cordon.sigma.RuleSet.problems`) instead of being kept."""
        return None

    def same_principal(self, a: str, b: str) -> bool:
        """Whether two different uids name one principal by this provider's rules (called only
        when they differ ignoring case); default ``False``."""
        return False

    def actor_access(self, detection: Any) -> ActorAccess | None:
        """The actor's own access behind ``detection`` (a :class:`cordon.detections.model.Detection`
        that named a credential someone added): what the actor signed that call with, as a
        detection of its own and the playbook that contains it, so the key that did it is
        answered, not only what it created (issue 14). ``None`` (the default) when the provider
        cannot name it, or must not (a root user, a cloud service)."""
        return None

    def actor_key(self, detection: Any) -> str | None:
        """The key that correlates ``detection`` (a :class:`cordon.detections.model.Detection`)
        with the others of the same actor into one incident (issue 14): ``<provider>|<account>|
        <actor principal uid>|<session or signing key>`` (for AWS ``userIdentity.arn`` and
        ``userIdentity.accessKeyId``: one key, or one role session, that did several things).
        ``None`` when there is no actor to correlate by: a suppressed detection, a run by hand
        (``rule.type: manual``) or a record that names no actor. A provider may override it."""
        user = detection.actor.user
        if detection.suppressed or detection.rule.type == "manual" or not user.uid:
            return None
        account = user.account_uid or detection.account_uid or ""
        return "|".join((detection.provider, account, user.uid, detection.actor.session_uid or ""))

    def plan_conflict_key(self, detection: Any) -> str | None:
        """The object ``detection``'s containment rewrites as a whole, when two cases' plans of it
        cannot be made together (each dry-run reads the object as it is, so the second plan would
        undo the first: a read-modify-write such as GCP's ``setIamPolicy``). Two cases of one
        incident with the same key are never in one plan: the later one is run alone
        (:meth:`cordon.engine.Responder.incident_runs`). ``None`` (the default): independent objects.
        """
        return None

    def credential_usage(self, detection: Any, since: Any, clients: Any) -> list[dict[str, Any]] | None:
        """Uses of ``detection``'s credential after ``since`` (an aware datetime: when it was
        contained), from the cloud's audit log, for the watch after containment
        (:mod:`cordon.watch`): ``[{event_id, event_name, event_time, source_ip, ...}]``, newest
        first; ``None`` (the default) when this provider does not search for this kind (the watch
        then only reads the state again). Raises what the cloud's client raises."""
        return None

    def check_config(self, config: Any) -> str | None:
        """Check this provider's section of ``cordon.yaml`` (``config``: a
        :class:`cordon.config.Config`), raising its ``ConfigError`` naming the field; return a short
        summary for ``cordon config validate`` (or ``None`` to say nothing)."""
        return None

    def manual_fields(self, kind: str, fields: dict[str, Any]) -> None:
        """Fill, in place, the detection fields a manual run's parameters imply for this provider
        (dotted names such as ``credential.owner.uid``, ``account_uid``), never overwriting a given
        value. Called before the target is taken from the credential's owner."""

    def manual_principals(self, kind: str, fields: dict[str, Any]) -> None:
        """Complete, in place, the principals of a manual run's detection (``target.name``,
        ``*.type``, ``*.account_uid``) once the target is known."""

    @property
    def rules_dir(self) -> Path | None:
        """Its shipped Sigma rules: the ``rules/`` folder of its package, when it has one."""
        module = importlib.import_module(type(self).__module__)
        folder = Path(str(module.__file__)).parent / "rules"
        return folder if folder.is_dir() else None

    def load_actions(self) -> None:
        """Import :attr:`actions_module`, registering the provider's actions."""
        importlib.import_module(self.actions_module)


_LOCK = threading.Lock()
_PROVIDERS: dict[str, Provider] = {}
_SOURCES: dict[str, Source] = {}


def _load_class(spec: str) -> type[Provider]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _ensure_loaded() -> None:
    if _PROVIDERS:
        return
    with _LOCK:
        if _PROVIDERS:
            return
        found: dict[str, Provider] = {}
        for name, spec in BUILTIN:
            found[name] = _load_class(spec)()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in found:
                found[ep.name] = ep.load()()
        _PROVIDERS.update(found)


def register(provider: Provider) -> Provider:
    """Register (or replace) ``provider`` under its ``name``; returns it. For tests and plug-ins
    that are not installed distributions."""
    _ensure_loaded()
    with _LOCK:
        _PROVIDERS[provider.name] = provider
        _SOURCES.clear()
        _DECLARED.clear()
        _CLASSIFIERS.clear()
    return provider


def providers() -> dict[str, Provider]:
    """Every registered provider by name (built-ins, then entry points)."""
    _ensure_loaded()
    return dict(_PROVIDERS)


def provider_names() -> tuple[str, ...]:
    """The registered providers' names, sorted."""
    return tuple(sorted(providers()))


def get_provider(name: str) -> Provider:
    """The provider registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    found = providers().get(name)
    if found is None:
        raise ValueError(f"no provider '{name}' (registered: {', '.join(provider_names())})")
    return found


def all_sources() -> dict[str, Source]:
    """Every provider's sources by record kind."""
    return dict(_sources())


def _sources() -> dict[str, Source]:
    if not _SOURCES:
        table: dict[str, Source] = {}
        for provider in providers().values():
            for source in provider.sources:
                table[source.kind] = source
        with _LOCK:
            _SOURCES.update(table)
    return _SOURCES


def source_for(kind: str) -> Source:
    """The :class:`Source` that reads records of ``kind``; ``KeyError`` when no provider does."""
    try:
        return _SOURCES[kind] if _SOURCES else _sources()[kind]
    except KeyError:
        raise KeyError(f"no provider reads records of kind {kind!r}") from None


_DECLARED: dict[str, frozenset[str]] = {}
_CLASSIFIERS: list[tuple[Callable[[dict[str, Any]], str | None], Callable[[dict[str, Any]], bool] | None, str]] = []


def _classifiers() -> list[tuple[Callable[[dict[str, Any]], str | None], Callable[[dict[str, Any]], bool] | None,
                                 str]]:
    if not _CLASSIFIERS:
        found = []
        for provider in sorted(providers().values(), key=lambda p: (p.classify_order, p.name)):
            if provider.shapes_module:
                module = importlib.import_module(provider.shapes_module)
                found.append((module.classify, getattr(module, "claims", None), module.SHAPES))
        with _LOCK:
            if not _CLASSIFIERS:
                _CLASSIFIERS.extend(found)
    return _CLASSIFIERS


def classify_record(record: dict[str, Any]) -> str | None:
    """The record kind of a bare record: the first provider (in ``classify_order``) that recognises
    its shape; ``None`` when none does, or when a provider claims it without recognising it."""
    for classify, claims, _ in _classifiers():
        kind = classify(record)
        if kind is not None:
            return kind
        if claims is not None and claims(record):
            return None
    return None


@dataclass(frozen=True)
class Unreadable:
    """An item of a container record (:func:`unpack_record`) that could not be decoded: ``field``
    (dotted, within the container) and ``reason``, for the dead letter."""

    field: str
    reason: str


_UNPACKERS: list[Callable[[dict[str, Any]], list[Any] | None]] = []


def unpack_record(record: dict[str, Any]) -> list[Any] | None:
    """The records inside a container record a provider's shapes module knows (its optional
    ``unpack(record) -> list | None``: a list of records, each a decoded object or an
    :class:`Unreadable`), asked in ``classify_order``; ``None`` when no provider unpacks it."""
    if not _UNPACKERS:
        found = [u for p in sorted(providers().values(), key=lambda p: (p.classify_order, p.name))
                 if p.shapes_module and (u := getattr(importlib.import_module(p.shapes_module), "unpack", None))]
        with _LOCK:
            if not _UNPACKERS:
                _UNPACKERS.extend(found)
    for unpack in _UNPACKERS:
        items = unpack(record)
        if items is not None:
            return items
    return None


def sigma_rule_problem(product: str | None, sigma_rule: Any) -> str | None:
    """The reason a provider reading ``product`` gives why ``sigma_rule`` can never match
    (:meth:`Provider.rule_problem`), or ``None``."""
    for provider in providers().values():
        if product and any(s.sigma and s.sigma[0] == product for s in provider.sources):
            problem = provider.rule_problem(sigma_rule)
            if problem:
                return problem
    return None


def shipped_rule_dirs() -> tuple[Path, ...]:
    """Every registered provider's :attr:`Provider.rules_dir`, in registration order: the Sigma
    rules Cordon uses when ``cordon.yaml`` names no ``rules:`` folder."""
    return tuple(d for p in providers().values() if (d := p.rules_dir) is not None)


def event_envelopes() -> tuple[EventEnvelope, ...]:
    """Every registered provider's :attr:`Provider.event_envelopes`, in registration order."""
    return tuple(e for p in providers().values() for e in p.event_envelopes)


def shapes() -> list[str]:
    """Every provider's description of the record shapes it recognises (for dead-letter reasons)."""
    return [text for _, _, text in _classifiers()]


def _declared(attr: str) -> frozenset[str]:
    if attr not in _DECLARED:
        values: set[str] = set()
        for provider in providers().values():
            values.update(getattr(provider, attr))
        _DECLARED[attr] = frozenset(values)
    return _DECLARED[attr]


def credential_kinds() -> dict[str, str]:
    """Every provider's credential kinds -> what the ``uid`` of each holds."""
    out: dict[str, str] = {}
    for provider in providers().values():
        out.update(provider.credential_kinds)
    return out


def credential_kind_names() -> frozenset[str]:
    """Every provider's credential kinds (cached; what the model validates against)."""
    return _declared("credential_kinds")


def detection_sources() -> frozenset[str]:
    """Every provider's ``detection.source`` values."""
    return _declared("detection_sources")


def rule_types() -> frozenset[str]:
    """Every provider's finding ``rule.type`` values."""
    return _declared("rule_types")


def load_all_actions(names: Iterable[str] | None = None) -> None:
    """Import the actions of every provider (or of ``names``), so they register."""
    for name in names or provider_names():
        get_provider(name).load_actions()


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Provider", "Source", "all_sources", "credential_kind_names",
           "credential_kinds", "detection_sources", "get_provider", "load_all_actions", "provider_names", "providers",
           "register", "rule_types", "classify_record", "shapes", "source_for", "VALID_CLOUD_ACCOUNTS",
           "actor_detection"]
