"""Azure's sensors (:mod:`cordon.sensors`): ``entra-audit`` polls the Entra audit log through
Microsoft Graph (:mod:`cordon.providers.azure.audit`), ``azure-activity`` the subscription's
Activity Log (:mod:`cordon.providers.azure.activity`).

Both are log sensors: a pass reads from the watermark minus ``overlap_seconds`` (the logs are
eventually consistent: records land minutes after their time) to now, at most
``max_window_seconds`` of log a pass (the back-pressure bound: a long outage is caught up window by
window), and moves the watermark to the window's end; records read again in the overlap are
dropped by their ``id`` (Graph) or ``eventDataId`` (Activity Log). The first pass starts
``start_lookback_seconds`` back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from cordon.providers.azure.activity import activity_events
from cordon.providers.azure.audit import directory_audits
from cordon.sensors import Delivery, Fetched, Sensor, SensorSettings, records_of, register_sensor
from cordon.sensors.store import SensorState


class LogSettings(SensorSettings):
    """``sensors.entra-audit`` / ``sensors.azure-activity``: ``overlap_seconds`` read again each
    pass (default 600), ``start_lookback_seconds`` for the first pass (default 3600),
    ``max_window_seconds`` of log a pass (default 900)."""

    overlap_seconds: float = 600.0
    start_lookback_seconds: float = 3600.0
    max_window_seconds: float = 900.0


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


class _LogSensor(Sensor):
    kind = "poll"
    settings_model = LogSettings
    settings: LogSettings
    origin: ClassVar[str]
    id_field: ClassVar[str]
    time_field: ClassVar[str]
    read: ClassVar[Callable[..., Iterator[dict[str, Any]]]]

    def window(self, state: SensorState, now: datetime) -> tuple[datetime, datetime]:
        """``(since, until)`` of this pass (module docstring)."""
        s = self.settings
        start = (state.watermark - timedelta(seconds=s.overlap_seconds)) if state.watermark \
            else now - timedelta(seconds=s.start_lookback_seconds)
        end = min(now, (state.watermark or start) + timedelta(seconds=s.max_window_seconds))
        return start, max(end, start)

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """The inputs' records put in the stand-in's log (the audit and activity logs have no write
        API: this is how they get there); the settings look back far enough to read the oldest."""
        records = [r for _path, data in inputs for r in records_of(data) if isinstance(r, dict)]
        cls.add_to_log(stand_in, records)
        times = [t for t in (_time(r.get(cls.time_field)) for r in records) if t is not None]
        back = (datetime.now(UTC) - min(times)).total_seconds() + 60 if times else 3600.0
        return {"start_lookback_seconds": back, "max_window_seconds": back + 60}

    @classmethod
    def add_to_log(cls, stand_in: Any, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        since, until = self.window(state, now)
        out = []
        for rec in type(self).read(self.clients, since, until):
            rid = rec.get(self.id_field)
            body = json.dumps(rec, separators=(",", ":")).encode()
            out.append(Delivery(record_id=str(rid) if rid else f"sha256:{hashlib.sha256(body).hexdigest()}",
                                origin=self.origin, body=body,
                                at=_time(rec.get(self.time_field))))
        out.sort(key=lambda d: d.at.timestamp() if d.at else 0.0)  # oldest first, as they happened
        return Fetched(deliveries=out, watermark=until)


@register_sensor
class EntraAuditSensor(_LogSensor):
    """The Entra audit log (Graph ``auditLogs/directoryAudits``). Needs the Graph application
    permission ``AuditLog.Read.All``."""

    name = "entra-audit"
    title = "Entra ID audit log, polled through Microsoft Graph"
    provider = "azure"
    permissions = ("AuditLog.Read.All",)
    origin = "graph:auditLogs/directoryAudits"
    id_field = "id"
    time_field = "activityDateTime"
    read = staticmethod(directory_audits)

    @classmethod
    def add_to_log(cls, stand_in: Any, records: list[dict[str, Any]]) -> None:
        # Azure Monitor's diagnostic form wraps the Graph record in ``properties``: Graph serves the record
        graph = [dict(r["properties"], id=r.get("id") or r["properties"].get("id") or r.get("correlationId"))
                 if isinstance(r.get("properties"), dict) and "activityDisplayName" in r["properties"] else r
                 for r in records]
        stand_in.standin.add_directory_audits(*[r for r in graph if r.get("activityDateTime")])


@register_sensor
class ActivityLogSensor(_LogSensor):
    """The subscription's Activity Log. Needs ``Microsoft.Insights/eventtypes/values/read`` (the
    Reader role has it)."""

    name = "azure-activity"
    title = "Azure Activity Log of the subscription, polled through Azure Monitor"
    provider = "azure"
    permissions = ("Microsoft.Insights/eventtypes/values/read",)
    origin = "azure:activityLog"
    id_field = "eventDataId"
    time_field = "eventTimestamp"
    read = staticmethod(activity_events)

    @classmethod
    def add_to_log(cls, stand_in: Any, records: list[dict[str, Any]]) -> None:
        stand_in.standin.add_activity_events(*[{**r, "subscriptionId": stand_in.subscription_id}
                                               for r in records if r.get("eventTimestamp")])
