"""Read the Entra audit log from Microsoft Graph, for the ``entra-audit`` sensor.

Microsoft Graph v1.0 ``GET /auditLogs/directoryAudits`` (List directoryAudits,
https://learn.microsoft.com/graph/api/directoryaudit-list?view=graph-rest-1.0; permission
``AuditLog.Read.All``), filtered on ``activityDateTime`` (``ge`` the window's start, ``lt`` its
end), every page followed through ``@odata.nextLink``. Each page is read as the raw JSON Graph
sent (msgraph-sdk's request adapter, ``send_primitive_async(..., "bytes")``), so the records reach
Cordon's intake exactly as Graph wrote them, as a file of them would.

Throttling: the request adapter's retry middleware (kiota ``RetryHandler``) retries 429 and
503/504, waiting the ``Retry-After`` the answer gives (https://learn.microsoft.com/graph/throttling);
the retries and the longest wait are set per request (:data:`RETRY`). Graph's audit log is
eventually consistent (records appear minutes after the activity): the sensor reads an overlap
window again and drops what it has seen by record ``id``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

#: kiota ``RetryHandlerOption`` arguments for the audit reads: up to 5 retries, waiting what
#: ``Retry-After`` says (or ``delay`` seconds when it says nothing)
RETRY = {"delay": 3.0, "max_retries": 5}


def _odata_time(dt: datetime) -> str:
    """An OData ``DateTimeOffset`` literal in UTC with milliseconds (``2024-05-01T10:00:00.000Z``)."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def directory_audits_url(graph: Any, since: datetime, until: datetime, top: int) -> str:
    """The first page's URL on ``graph``'s host (its request adapter's base URL, ``.../v1.0``)."""
    base = str(graph.request_adapter.base_url).rstrip("/")
    flt = f"activityDateTime ge {_odata_time(since)} and activityDateTime lt {_odata_time(until)}"
    return f"{base}/auditLogs/directoryAudits?$filter={quote(flt, safe='')}&$top={int(top)}"


async def _page(graph: Any, url: str) -> dict[str, Any]:
    from kiota_abstractions.method import Method
    from kiota_abstractions.request_information import RequestInformation
    from kiota_http.middleware.options import RetryHandlerOption

    info = RequestInformation()
    info.http_method = Method.GET
    info.url = url
    info.headers.try_add("Accept", "application/json")
    info.add_request_options([RetryHandlerOption(**RETRY)])
    raw = await graph.request_adapter.send_primitive_async(info, "bytes", None)
    return json.loads(raw or b"{}")


def directory_audits(clients: Any, since: datetime, until: datetime, page_size: int = 500) -> Iterator[dict[str, Any]]:
    """Every Entra audit record with ``since <= activityDateTime < until``, as Graph's JSON dicts
    (newest first within the window, as Graph orders them), all pages. ``clients`` is an Azure
    client factory (:func:`cordon.providers.azure.clients.azure_clients`: ``clients("graph")`` and
    ``clients.run(coroutine)``). Raises msgraph's ``APIError`` (kiota) for an error answer Graph
    still gives after the retries (403 without ``AuditLog.Read.All``, 429 past the retries)."""
    graph = clients("graph")
    url: str | None = directory_audits_url(graph, since, until, page_size)
    while url:
        page = clients.run(_page(graph, url))
        yield from page.get("value") or []
        url = page.get("@odata.nextLink")
