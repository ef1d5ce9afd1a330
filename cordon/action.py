"""The action model: small, self-describing units of enrichment and containment.

Modelled on Cloud Custodian's actions (``c7n/actions``): each action class declares

* ``name``: the name playbooks use (``aws.deactivate-access-key``),
* ``provider`` and ``kind`` (``enrich`` or ``contain``),
* ``Params``: a pydantic model of its parameters (``extra="forbid"``). Its JSON Schema (draft
  2020-12) becomes ``schema``, checked when the playbook loads; a field annotated
  ``Annotated[str, Identifies("credential.uid")]`` must name the detection's own credential
  (``identifies``); ``Doc("...")`` (PEP 727) or ``Field(description=...)`` describes a field,
* ``State`` (containment actions): a pydantic model of the state ``read_state`` returns, checked
  on every read, so ``before`` / ``after`` in the ledger always have the declared shape,
* ``permissions``: the exact cloud permissions it needs (``iam:UpdateAccessKey``),
* ``credential_kinds``: the :data:`~cordon.detections.model.CredentialKind` values it may act on,
* ``rollback_supported``: whether :meth:`ContainmentAction.rollback` can undo it,

and shows a YAML example in its docstring. Provider actions live in ``cordon/providers/<cloud>/actions.py`` and
register themselves with :func:`register`.

A containment action reads the state before, acts, reads the state after, and returns both in an
:class:`ActionResult`. It is idempotent: run on a credential that is already contained it makes
no change and reports ``already_contained``. :meth:`ContainmentAction.plan` returns the exact API
calls it would make (dry run) without calling anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import Doc

from cordon.detections.model import Detection

ActionStatus = Literal[
    "contained",  # the action changed the state as intended
    "already_contained",  # nothing to do: the state was already the intended one
    "planned",  # dry run: ``calls`` holds what would be called
    "failed",  # the cloud refused or errored; ``error`` says why
    "refused",  # the guard refused to act (protected principal, credential mismatch)
    "plan_changed",  # the state now needs other calls than the approved plan's: nothing was done
    "rolled_back",
    "ok",  # enrichment succeeded
]


class ActionParamError(ValueError):
    """Parameters that do not satisfy an action's schema.

    ``action`` is the action name, ``field`` the dotted path of the offending parameter, and
    ``reason`` the JSON Schema validator's message.
    """

    def __init__(self, action: str, field_path: str, reason: str):
        self.action = action
        self.field = field_path
        self.reason = reason
        super().__init__(f"action '{action}': parameter '{field_path}': {reason}")


class GuardError(RuntimeError):
    """Containment refused: the target is protected, is Cordon itself, or is not the exact
    credential named by the detection."""


class Identifies:
    """Field metadata: the parameter names the detection's own credential or principal.

    ``access_key_id: Annotated[str, Identifies("credential.uid")]`` makes the guard refuse a step
    whose rendered ``access_key_id`` is not the detection's ``credential.uid``. Several paths mean
    "any of these" (``Identifies("credential.owner.name", "target.name")``). Paths are dotted keys
    of :meth:`cordon.detections.model.Detection.summary`.
    """

    __slots__ = ("paths",)

    def __init__(self, *paths: str):
        if not paths:
            raise ValueError("Identifies needs at least one path")
        self.paths = tuple(paths)

    def __repr__(self) -> str:
        return f"Identifies({', '.join(map(repr, self.paths))})"


class NoParams(BaseModel):
    """The parameters of an action that takes none."""

    model_config = ConfigDict(extra="forbid")


class Params(BaseModel):
    """Base of action parameter models: unknown parameters are refused (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


class State(BaseModel):
    """Base of containment state models (what ``read_state`` returns). Keys beyond the declared
    fields are kept (``extra="allow"``): the declaration is the floor, not the ceiling."""

    model_config = ConfigDict(extra="allow")


def params_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a ``Params`` model, as playbooks are checked against:
    pydantic's ``model_json_schema()`` with ``title`` keys dropped and each field's ``Doc(...)``
    (PEP 727) as its ``description``. ``additionalProperties: false`` comes from
    ``extra="forbid"``."""
    schema = model.model_json_schema()
    schema.pop("description", None)  # the model's docstring: for readers of the code, not the schema
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        doc = next((m.documentation for m in info.metadata if isinstance(m, Doc)), None)
        if doc and key in props and "description" not in props[key]:
            props[key]["description"] = doc
        prop = props.get(key, {})
        if "default" in prop and prop["default"] is None \
                and '"null"' not in json.dumps({k: v for k, v in prop.items() if k != "default"}):
            del prop["default"]  # ``T | SkipJsonSchema[None] = None``: optional, null not accepted
    return _drop_titles(schema)


def identifies_of(model: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """``{param: paths}`` for the fields of ``model`` annotated with :class:`Identifies`."""
    out: dict[str, tuple[str, ...]] = {}
    for name, info in model.model_fields.items():
        for meta in info.metadata:
            if isinstance(meta, Identifies):
                out[info.alias or name] = meta.paths
    return out


def _drop_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_titles(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_drop_titles(v) for v in node]
    return node


class ApiCall(BaseModel):
    """One cloud API call, as planned or as made: ``service`` (boto3 client name, e.g. ``iam``),
    ``operation`` (the API's own name, e.g. ``UpdateAccessKey``) and its ``params``."""

    service: str
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    region: str | None = None

    def describe(self) -> str:
        """``iam:UpdateAccessKey(AccessKeyId=AKIA..., Status=Inactive, UserName=bob)``."""
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.service}:{self.operation}({args})"


class ActionResult(BaseModel):
    """What an action did.

    ``target`` names the exact object acted on (``arn:aws:iam::111122223333:user/bob
    access-key AKIA...``); ``before`` / ``after`` are the states read from the cloud (``None``
    when the object does not exist); ``calls`` the mutating API calls made (or planned);
    ``rollback`` the parameters :meth:`ContainmentAction.rollback` needs, when supported.
    """

    name: str
    target: str
    status: ActionStatus
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    calls: list[ApiCall] = Field(default_factory=list)
    rollback: dict[str, Any] | None = None
    error: str | None = None
    data: dict[str, Any] | None = None


@dataclass
class ActionContext:
    """What an action runs with.

    ``detection`` is the detection being answered; ``params`` the action's validated parameters
    (already rendered from the playbook's templates); ``clients`` a factory
    ``clients(service, region=None)`` returning an SDK client (for AWS a boto3 client, pointed at
    the sandbox's endpoints when Cordon runs in the sandbox); ``enrichment`` the facts gathered so
    far, keyed by enrichment action name.
    """

    detection: Detection
    params: dict[str, Any]
    clients: Callable[..., Any]
    enrichment: dict[str, Any] = field(default_factory=dict)


class Action:
    """Base of every action. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    provider: ClassVar[str]
    kind: ClassVar[Literal["enrich", "contain"]]
    #: The parameters, as a pydantic model; :attr:`schema` and :attr:`identifies` are derived from it.
    Params: ClassVar[type[BaseModel]] = NoParams
    #: The state ``read_state`` returns (containment actions); ``None`` = undeclared.
    State: ClassVar[type[BaseModel] | None] = None
    schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False, "properties": {}}
    permissions: ClassVar[tuple[str, ...]] = ()
    credential_kinds: ClassVar[tuple[str, ...]] = ()
    rollback_supported: ClassVar[bool] = False
    #: What the action leaves undone, in one sentence completing "Does not ..." (``""``: nothing
    #: worth saying); the approval message shows it under the step, so an approver knows the limits
    #: of what they approve (removing a binding revokes no credential).
    does_not: ClassVar[str] = ""
    #: Which parameters name the detection's credential or principal, as ``param -> path`` with
    #: paths ``credential.uid``, ``credential.owner.name``, ``target.name``. The guard refuses a
    #: step whose rendered parameter differs from that value: containment acts on the exact
    #: credential named by the detection and nothing else.
    identifies: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__:
            cls.schema = params_schema(cls.Params)
            cls.identifies = identifies_of(cls.Params)

    @classmethod
    def validate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Check ``params`` against :attr:`schema`; raise :class:`ActionParamError` naming the
        first offending field. Returns ``params`` unchanged when valid."""
        validator = jsonschema.Draft202012Validator(cls.schema)
        errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            path = ".".join(str(p) for p in err.absolute_path)
            if not path and err.validator == "additionalProperties" and isinstance(err.instance, dict):
                path = ",".join(sorted(set(err.instance) - set(cls.schema.get("properties", {}))))
            path = path or "<params>"
            raise ActionParamError(cls.name, str(path), err.message)
        return params

    @classmethod
    def check_identifies(cls, params: dict[str, Any], detection: Detection) -> str | None:
        """``None`` when every parameter in :attr:`identifies` equals one of the detection
        values it must name; else the reason (``access_key_id 'AKIA2' is not the detection's
        credential 'AKIA1'``)."""
        summary = detection.summary()
        for param, paths in cls.identifies.items():
            if param not in params:
                continue
            allowed = {v for v in (_dig(summary, p) for p in paths) if v}
            if str(params[param]) not in {str(a) for a in allowed}:
                return (f"{cls.name}: parameter '{param}' = {params[param]!r} is not the detection's "
                        f"{' / '.join(paths)} ({', '.join(sorted(map(str, allowed))) or 'absent'})")
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Machine-readable self-description (``cordon actions``; least-privilege policy docs)."""
        return {
            "name": cls.name,
            "provider": cls.provider,
            "kind": cls.kind,
            "schema": cls.schema,
            "state_schema": _drop_titles(cls.State.model_json_schema()) if cls.State else None,
            "permissions": list(cls.permissions),
            "credential_kinds": list(cls.credential_kinds),
            "rollback_supported": cls.rollback_supported,
            "doc": (cls.__doc__ or "").strip(),
        }


class EnrichmentAction(Action):
    """Reads facts; never changes anything. :meth:`run` returns a JSON-serialisable dict."""

    kind = "enrich"

    def run(self, ctx: ActionContext) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError


class ContainmentAction(Action):
    """Changes one credential's state. Subclasses implement :meth:`target`, :meth:`read_state`,
    :meth:`is_contained`, :meth:`plan_calls` and, when ``rollback_supported``,
    :meth:`rollback_calls`. :meth:`run`, :meth:`plan`, :meth:`verify` and :meth:`rollback` are
    shared so every action records before/after and is idempotent the same way."""

    kind = "contain"

    def target(self, ctx: ActionContext) -> str:  # pragma: no cover - interface
        """Human-readable name of the exact object acted on."""
        raise NotImplementedError

    def read_state(self, ctx: ActionContext) -> dict[str, Any] | None:  # pragma: no cover
        """Read the object's current state from the cloud; ``None`` if it does not exist."""
        raise NotImplementedError

    def is_contained(self, state: dict[str, Any] | None) -> bool:  # pragma: no cover
        """Whether ``state`` is already the contained state."""
        raise NotImplementedError

    def plan_calls(self, ctx: ActionContext, state: dict[str, Any] | None) -> list[ApiCall]:  # pragma: no cover
        """The mutating API calls that take ``state`` to the contained state."""
        raise NotImplementedError

    def rollback_calls(self, ctx: ActionContext, result: ActionResult) -> list[ApiCall]:
        """The API calls that undo ``result``; only for ``rollback_supported`` actions."""
        raise GuardError(f"action '{self.name}' cannot be rolled back")

    def rollback_data(self, ctx: ActionContext, before: dict[str, Any] | None) -> dict[str, Any] | None:
        """What rollback needs to know, recorded in the result (default: the state before)."""
        return {"before": before} if self.rollback_supported else None

    # -- shared behaviour -------------------------------------------------------------------
    def checked_state(self, ctx: ActionContext) -> dict[str, Any] | None:
        """:meth:`read_state`, checked against :attr:`State` when declared. Raises
        ``pydantic.ValidationError`` when the action read a state of another shape (a defect of the
        action, recorded as ``failed``); returns the state as read (extra keys kept)."""
        state = self.read_state(ctx)
        if state is not None and self.State is not None:
            self.State.model_validate(state)
        return state

    def call(self, ctx: ActionContext, api: ApiCall) -> Any:  # pragma: no cover - interface
        """Make one API call through the provider's SDK client (each provider base class
        implements this once, e.g. boto3's ``client.<snake_case>(**params)`` for AWS)."""
        raise NotImplementedError

    def plan(self, ctx: ActionContext) -> ActionResult:
        """Dry run: read the state and return the calls that would be made, changing nothing."""
        before = self.checked_state(ctx)
        calls = [] if self.is_contained(before) else self.plan_calls(ctx, before)
        return ActionResult(name=self.name, target=self.target(ctx), status="planned", before=before,
                            calls=calls)

    def run(self, ctx: ActionContext, approved: list[dict[str, Any]] | None = None) -> ActionResult:
        """Read the state, act if needed, read it again. A :class:`GuardError` becomes
        ``status='refused'``, any other error ``status='failed'``. A state of ``None`` (the object
        does not exist) that :meth:`is_contained` accepts is ``already_contained`` with
        ``data={"missing": True}``.

        ``approved``: the calls of the approved plan (:attr:`cordon.respond.PlanStep.calls`, each
        ``ApiCall.model_dump(exclude_none=True)``). When given, exactly those calls are made: if
        the state read now needs other calls (:func:`same_calls` is false), nothing is called and
        the result is ``plan_changed`` with ``data={"approved": [...], "now": [...]}``; the run
        must plan and ask again."""
        target = self.target(ctx)
        before: dict[str, Any] | None = None
        made: list[ApiCall] = []
        try:
            before = self.checked_state(ctx)
            if self.is_contained(before):
                # ``None`` means the object does not exist: nothing to contain, said explicitly.
                return ActionResult(name=self.name, target=target, status="already_contained",
                                    before=before, after=before,
                                    data={"missing": True} if before is None else None)
            calls = self.plan_calls(ctx, before)
            if approved is not None and not same_calls(calls, approved):
                now = [c.model_dump(exclude_none=True) for c in calls]
                return ActionResult(name=self.name, target=target, status="plan_changed", before=before,
                                    data={"approved": approved, "now": now},
                                    error="the state changed since the plan was approved: it now needs "
                                          f"{len(now)} other call(s); nothing was done")
            for api in calls:
                self.call(ctx, api)
                made.append(api)
            after = self.checked_state(ctx)
        except GuardError as exc:
            return ActionResult(name=self.name, target=target, status="refused", before=before,
                                calls=made, error=f"GuardError: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            return ActionResult(name=self.name, target=target, status="failed", before=before,
                                calls=made, error=f"{type(exc).__name__}: {exc}")
        return ActionResult(name=self.name, target=target, status="contained", before=before, after=after,
                            calls=made, rollback=self.rollback_data(ctx, before))

    def verify(self, ctx: ActionContext) -> tuple[bool, dict[str, Any] | None]:
        """Read the state again; ``(held, state)`` where ``held`` says containment holds."""
        state = self.checked_state(ctx)
        return self.is_contained(state), state

    def rollback(self, ctx: ActionContext, result: ActionResult) -> ActionResult:
        """Undo ``result`` (a previous ``contained`` result of this action)."""
        target = self.target(ctx)
        if not self.rollback_supported:
            raise GuardError(f"action '{self.name}' cannot be rolled back")
        before = self.checked_state(ctx)
        made: list[ApiCall] = []
        try:
            for api in self.rollback_calls(ctx, result):
                self.call(ctx, api)
                made.append(api)
            after = self.checked_state(ctx)
        except Exception as exc:  # noqa: BLE001
            return ActionResult(name=self.name, target=target, status="failed", before=before, calls=made,
                                error=f"{type(exc).__name__}: {exc}")
        return ActionResult(name=self.name, target=target, status="rolled_back", before=before, after=after,
                            calls=made)


def same_calls(calls: list[ApiCall], approved: list[dict[str, Any]]) -> bool:
    """Whether ``calls`` are exactly ``approved`` (same order, operations and parameters),
    compared as canonical JSON so a plan that went through Prefect's result storage compares
    equal to the calls it was made from."""
    def canon(items: list[dict[str, Any]]) -> str:
        return json.dumps(items, sort_keys=True, default=str, separators=(",", ":"))

    return canon([c.model_dump(exclude_none=True) for c in calls]) == canon(list(approved))


_REGISTRY: dict[str, type[Action]] = {}


def register(cls: type[Action]) -> type[Action]:
    """Class decorator: make ``cls`` available to playbooks under ``cls.name``.

    Raises ``ValueError`` if the name is taken or the schema is not a valid JSON Schema.
    """
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"action name '{cls.name}' registered twice")
    jsonschema.Draft202012Validator.check_schema(cls.schema)
    _REGISTRY[cls.name] = cls
    return cls


def load_builtin_actions() -> None:
    """Import every registered provider's actions module (:mod:`cordon.providers`), so their
    actions register. An import error inside one propagates."""
    from cordon.providers import load_all_actions

    load_all_actions()


def get_action(name: str) -> type[Action]:
    """The action class registered as ``name``; ``KeyError`` naming the known ones if absent."""
    load_builtin_actions()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown action '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def all_actions() -> dict[str, type[Action]]:
    """Every registered action, by name."""
    load_builtin_actions()
    return dict(_REGISTRY)



def _dig(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj
