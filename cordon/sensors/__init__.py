"""Sensors: detections that arrive by themselves (issue 15).

A sensor reads one source of records (a queue, a subscription, a log's API) and hands what it
read to the same intake as files and the webhook (formats, Sigma, dedup, dead letters); the cases
are answered on the ``respond`` deployment as the webhook's are
(:meth:`cordon.engine.Responder.submit_report`). Its checkpoint is in Cordon's database
(:mod:`cordon.sensors.store`), so any process can carry it on. :mod:`cordon.sensors.runner` runs
passes; the CLI is ``cordon sensor list | run NAME [--once] | status``.

A cloud's sensors live in its package (``cordon/providers/<cloud>/sensors.py``, named by the
provider's ``sensors_module``), each a :class:`Sensor` subclass registered with
:func:`register_sensor`, declaring its settings (a pydantic model, the ``sensors.<name>`` section
of ``cordon.yaml``) and the permissions it needs, as actions declare theirs.

Two shapes of source:

* **queues** (``kind = "queue"``: SQS, Pub/Sub): :meth:`Sensor.fetch` receives messages; each
  :class:`Delivery` carries its ``handle`` and is acknowledged (:meth:`Sensor.settle`) only after
  its records are in the ledger; a message left unacknowledged (a crash) is delivered again and
  dropped by its record ID, or read again and joined by the intake's own dedup;
* **logs** (``kind = "poll"``: Graph's audit log, the Activity Log): :meth:`Sensor.fetch` reads the
  window from the sensor's watermark minus an ``overlap`` (those logs are eventually consistent)
  up to now, and returns the new watermark; records read again in the overlap are dropped by ID.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from cordon.sensors.store import SensorState


@dataclass(frozen=True)
class Delivery:
    """One unit a sensor read: ``record_id`` (the dedup key: CloudTrail ``eventID``, GuardDuty
    finding ``id`` + ``updatedAt``, Graph audit ``id``, Activity ``eventDataId``, Pub/Sub
    ``messageId``, SQS ``MessageId``), ``origin`` (where it came from, as dead letters name it:
    ``s3://bucket/key``, ``pubsub:projects/p/subscriptions/s``, ``graph:directoryAudits``),
    ``body`` (bytes in any format the intake reads), ``at`` (the record's own time, aware, for
    the lag) and ``handle`` (what acknowledges it: an SQS receipt handle, a Pub/Sub ackId)."""

    record_id: str
    origin: str
    body: bytes
    at: datetime | None = None
    handle: Any = None


@dataclass
class Fetched:
    """What one :meth:`Sensor.fetch` read: ``deliveries``; ``watermark`` (a log sensor: read up to
    here); ``rejected``: deliveries the sensor could not make into records (a poison message: an
    object that cannot be read), each with a reason: dead-lettered, then acknowledged."""

    deliveries: list[Delivery] = field(default_factory=list)
    watermark: datetime | None = None
    rejected: list[tuple[Delivery, str, str | None]] = field(default_factory=list)  # (delivery, reason, field)


class SensorSettings(BaseModel):
    """Settings every sensor has (``sensors.<name>`` in ``cordon.yaml``): ``interval_seconds``
    between passes that found nothing (default 10), ``max_records`` a pass takes at most (the
    back-pressure bound: one pass's batch is answered before the next is read; default 100),
    ``max_pending_cases`` (the sensor waits while more of the ledger's cases than this are
    submitted but not yet asked: the engine is behind; default 500)."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = 10.0
    max_records: int = 100
    max_pending_cases: int = 500


class Sensor:
    """Base class: see the module docstring. Subclasses set ``name``, ``title``, ``provider``,
    ``kind``, ``settings_model`` and ``permissions`` and implement :meth:`fetch` (and, for
    queues, :meth:`settle`). ``clients`` is the provider's client factory for ``cloud``."""

    name: ClassVar[str]
    title: ClassVar[str]
    provider: ClassVar[str]
    kind: ClassVar[str]  # "queue" | "poll"
    settings_model: ClassVar[type[SensorSettings]] = SensorSettings
    #: what the sensor's identity needs (IAM actions, Graph permissions, GCP permissions)
    permissions: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: SensorSettings, clients: Any):
        self.settings = settings
        self.clients = clients

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        """Read what is due (at most ``settings.max_records``)."""
        raise NotImplementedError

    def settle(self, deliveries: list[Delivery]) -> None:
        """Acknowledge ``deliveries`` (their records are in the ledger). Nothing for log sensors."""

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """For ``cordon sensor rehearse``: make the source in the provider's started ``stand_in``
        (a queue, a topic and subscription, a log) and put ``inputs`` (``(path, bytes)``, files as
        given) through its real transport; returns the sensor's settings that read it. Raises
        ``NotImplementedError`` for a sensor that cannot be rehearsed."""
        raise NotImplementedError(f"sensor {cls.name} has no rehearsal")

    def lag_seconds(self, state: SensorState, fetched: Fetched, now: datetime) -> float:
        """How old the oldest record not yet in the ledger is, after this pass: for a queue, the
        oldest delivery of a full batch (more wait behind it), else 0; for a log, the time since
        the watermark. Subclasses may ask their source (SQS ``ApproximateAgeOfOldestMessage``)."""
        if self.kind == "poll":
            mark = fetched.watermark or state.watermark
            return max(0.0, (now - mark).total_seconds()) if mark else 0.0
        full = len(fetched.deliveries) + len(fetched.rejected) >= self.settings.max_records
        times = [d.at for d in fetched.deliveries if d.at is not None]
        return max(0.0, (now - min(times)).total_seconds()) if full and times else 0.0


#: A factory of client factories: ``(provider name, cloud params) -> clients``.
ClientsFor = Callable[[str, dict[str, Any] | None], Any]

def records_of(data: bytes) -> list[Any]:
    """The JSON values of a file for a rehearsal's transport: a JSON array's items, a
    ``{"Records": [...]}`` / ``{"value": [...]}`` document's, one JSON value, or JSON lines. Raises
    ``ValueError`` naming the line of JSON lines that does not parse."""
    import json

    text = data.decode("utf-8-sig")
    try:
        doc = json.loads(text)
    except ValueError:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"line {n}: {exc}") from None
        return out
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        for key in ("Records", "value", "entries"):
            if isinstance(doc.get(key), list):
                return doc[key]
    return [doc]


_REGISTRY: dict[str, type[Sensor]] = {}


def register_sensor(cls: type[Sensor]) -> type[Sensor]:
    """Class decorator: register ``cls`` under ``cls.name``. Raises ``ValueError`` for a name
    already taken by another class."""
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"sensor {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def sensors() -> dict[str, type[Sensor]]:
    """Every registered sensor by name (each provider's ``sensors_module`` imported first)."""
    import importlib

    from cordon.providers import providers

    for p in providers().values():
        module = getattr(p, "sensors_module", None)
        if module:
            importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def get_sensor(name: str) -> type[Sensor]:
    """The sensor ``name``. Raises ``KeyError`` naming the known ones."""
    known = sensors()
    if name not in known:
        raise KeyError(f"no sensor {name!r} (known: {', '.join(known) or 'none'})")
    return known[name]


def settings_for(name: str, config: Any) -> SensorSettings:
    """Sensor ``name``'s settings from ``config.raw["sensors"][name]`` (a
    :class:`cordon.config.Config`), checked by its model. Raises :class:`cordon.config.ConfigError`
    naming ``sensors.<name>.<field>`` for a missing or wrong field, ``KeyError`` for an unknown sensor."""
    from pydantic import ValidationError

    from cordon.config import ConfigError

    cls = get_sensor(name)
    raw = ((getattr(config, "raw", None) or {}).get("sensors") or {}).get(name) or {}
    try:
        return cls.settings_model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        raise ConfigError(f"field 'sensors.{name}.{where}': {err.get('msg')}") from None


def build_sensor(name: str, config: Any, clients_for: ClientsFor, cloud: dict[str, Any] | None = None) -> Sensor:
    """Sensor ``name`` with its settings (:func:`settings_for`) and its provider's clients for
    ``cloud`` (``clients_for(provider, cloud)``; ``{}``: the cloud's default credentials)."""
    cls = get_sensor(name)
    return cls(settings_for(name, config), clients_for(cls.provider, cloud or {}))
