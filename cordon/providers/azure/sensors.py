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
from datetime import datetime, timedelta
from typing import Any, ClassVar

from cordon.providers.azure.activity import activity_events
from cordon.providers.azure.audit import directory_audits
from cordon.sensors import Delivery, Fetched, Sensor, SensorSettings, register_sensor
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
