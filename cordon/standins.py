"""Rehearsals against local stand-ins, as a plug-in: the core knows the shape of a stand-in, never
where one comes from.

A package that serves local stand-ins for a provider's APIs (Cordon's own ``sandbox`` extra, or a
third party's) registers, in its distribution's metadata:

* entry point group ``cordon.standins``: name = a provider's name (``aws``), value = a class whose
  instances have ``start() -> StandIn`` (see :class:`StandIn`);
* entry point group ``cordon.clients`` (optional): name = the value a stand-in puts in its
  ``cloud_params()["clients"]``, value = a factory ``(cloud: dict) -> Clients`` used instead of the
  provider's own (:func:`cordon.clouds.clients_for`), for stand-ins that need more than an endpoint.

``cordon respond --sandbox`` and the manual / recovery / rollback rehearsals take a
:class:`StandIns`; the engine only calls the :class:`StandIn` methods. Entry points:
https://packaging.python.org/en/latest/specifications/entry-points/ .
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

#: Entry point group of stand-in classes, one per provider name.
STANDINS_GROUP = "cordon.standins"
#: Entry point group of client factories named by ``cloud["clients"]``.
CLIENTS_GROUP = "cordon.clients"
#: Rehearsals of an approval channel with a scripted responder (``teams``:
#: :class:`cordon.sandbox.teams_rehearsal.TeamsRehearsal`), registered by the sandbox extra.
REHEARSALS_GROUP = "cordon.rehearsals"


class StandInsMissing(RuntimeError):
    """No stand-ins are installed (the ``sandbox`` extra), or one cannot be imported; the message
    names what is missing (``No module named 'moto'``)."""


@runtime_checkable
class StandIn(Protocol):
    """A provider's local stand-in, started.

    ``seed_from_detection(detection)`` creates, in the stand-in, the principal and the exact
    credential a :class:`~cordon.detections.model.Detection` names (so containment has something to
    act on) and returns what it created; ``cloud_params()`` the JSON-serialisable ``cloud`` dict that
    points the provider's clients at it (it carries ``"sandbox": True``: the ledger records that the
    case ran against stand-ins); ``stop()`` shuts it down.
    """

    def seed_from_detection(self, detection: Any) -> Any: ...

    def cloud_params(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class StandIns:
    """One stand-in per provider, started on first use.

    ``StandIns()`` finds the classes registered under :data:`STANDINS_GROUP`; ``StandIns({"aws":
    cls})`` takes them as given (tests). ``for_provider("aws")`` starts (once) and returns the AWS
    stand-in; raises :class:`StandInsMissing` for a provider none is registered for or whose module
    cannot be imported."""

    def __init__(self, factories: Mapping[str, Callable[[], Any]] | None = None):
        self._factories: dict[str, Callable[[], Any]] | None = dict(factories) if factories is not None else None
        self._started: dict[str, Any] = {}

    def _registered(self) -> dict[str, Callable[[], Any]]:
        if self._factories is None:
            self._factories = {ep.name: _loader(ep) for ep in entry_points(group=STANDINS_GROUP)}
        return self._factories

    def check(self) -> StandIns:
        """Import every registered stand-in now (without starting any). Raises
        :class:`StandInsMissing` when none is registered or one cannot be imported (its extra's
        dependencies are not installed). Returns ``self``."""
        registered = self._registered()
        if not registered:
            raise StandInsMissing(f"no stand-ins are registered (entry point group '{STANDINS_GROUP}')")
        for factory in registered.values():
            getattr(factory, "load", lambda: None)()
        return self

    def for_provider(self, provider: str) -> StandIn:
        """The started stand-in for ``provider`` (a registered provider's name)."""
        if provider not in self._started:
            factory = self._registered().get(provider)
            if factory is None:
                raise StandInsMissing(f"no stand-in for provider '{provider}'")
            self._started[provider] = factory().start()
        return self._started[provider]

    def describe(self) -> str:
        """``aws at http://127.0.0.1:PORT, ...`` for the stand-ins started so far."""
        return ", ".join(f"{p} at {getattr(s, 'endpoint_url', None) or getattr(s, 'url', '?')}"
                         for p, s in self._started.items()) or "none started"

    def stop(self) -> None:
        """Stop every started stand-in."""
        for standin in self._started.values():
            standin.stop()
        self._started.clear()


class _Single:
    """One started stand-in, answering for whatever provider is asked (a test's single sandbox)."""

    def __init__(self, standin: Any):
        self._standin = standin

    def for_provider(self, provider: str) -> Any:
        return self._standin


def as_stand_ins(value: Any) -> Any:
    """``value`` as something with ``for_provider(name)``: a :class:`StandIns` as is, one started
    :class:`StandIn` wrapped so it answers for every provider, ``None`` as ``None``."""
    if value is None or hasattr(value, "for_provider"):
        return value
    return _Single(value)


def plugin_clients(cloud: Mapping[str, Any]) -> Any | None:
    """The client factory a stand-in named in ``cloud["clients"]`` (:data:`CLIENTS_GROUP`), built
    from ``cloud``; ``None`` when ``cloud`` names none. Raises :class:`StandInsMissing` when the named
    factory is not installed or cannot be imported."""
    name = cloud.get("clients")
    if not name:
        return None
    found = [ep for ep in entry_points(group=CLIENTS_GROUP) if ep.name == name]
    if not found:
        raise StandInsMissing(f"no client factory '{name}' is installed (entry point group '{CLIENTS_GROUP}')")
    return _load(found[0])(dict(cloud))


def rehearsal(name: str) -> Any:
    """The rehearsal class registered as ``name`` (:data:`REHEARSALS_GROUP`; ``teams``: the Teams
    approval rehearsal of ``cordon respond --sandbox --approve teams``). Raises
    :class:`StandInsMissing` when it is not installed or cannot be imported."""
    found = [ep for ep in entry_points(group=REHEARSALS_GROUP) if ep.name == name]
    if not found:
        raise StandInsMissing(f"no '{name}' rehearsal is installed (entry point group '{REHEARSALS_GROUP}')")
    return _load(found[0])


class _loader:
    """A lazily imported entry point: calling it imports the class and instantiates it."""

    def __init__(self, ep: EntryPoint):
        self.ep = ep

    def load(self) -> Any:
        return _load(self.ep)

    def __call__(self) -> Any:
        return self.load()()


def _load(ep: EntryPoint) -> Any:
    try:
        return ep.load()
    except ImportError as exc:
        raise StandInsMissing(str(exc)) from exc
