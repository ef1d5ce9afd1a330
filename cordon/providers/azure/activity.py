"""Read the Azure Activity Log with azure-mgmt-monitor, for the ``azure-activity`` sensor.

Activity Logs - List (https://learn.microsoft.com/rest/api/monitor/activity-logs/list, api-version
2015-04-01): ``GET /subscriptions/{id}/providers/Microsoft.Insights/eventtypes/management/values``
with ``$filter=eventTimestamp ge '<start>' and eventTimestamp le '<end>'``, every page
(``MonitorManagementClient.activity_logs.list`` follows ``nextLink``). Each ``EventData`` is
written back to its REST JSON (``serialize(keep_readonly=True)``: ``operationName {value,
localizedValue}``, ``resourceId``, ``eventTimestamp``, ``caller``, ``eventDataId``, ...), the
Activity Log event schema Cordon's intake reads
(https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema). Events reach the
log within minutes: the sensor reads an overlap window again and drops what it has seen by
``eventDataId``. Retries of 429 / 5xx are azure-core's ``RetryPolicy`` (it waits ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any


def _iso(dt: datetime) -> str:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def activity_events(clients: Any, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """Every Activity Log event of the factory's subscription with ``since <= eventTimestamp <=
    until``, as REST JSON dicts, newest first (as the API orders them). ``clients`` is an Azure
    client factory (:func:`cordon.providers.azure.clients.azure_clients`, ``clients("monitor")``).
    Raises ``azure.core.exceptions.HttpResponseError`` for an error answer left after the retries
    (403 without ``Microsoft.Insights/eventtypes/values/read``)."""
    monitor = clients("monitor")
    flt = f"eventTimestamp ge '{_iso(since)}' and eventTimestamp le '{_iso(until)}'"
    for event in monitor.activity_logs.list(filter=flt):
        yield event.serialize(keep_readonly=True)
