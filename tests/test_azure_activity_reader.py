"""Reading the Azure Activity Log (:mod:`cordon.providers.azure.activity`) with azure-mgmt-monitor
over HTTPS to the ARM stand-in: a time window of one subscription over every page, written back
to the REST JSON that Cordon's intake reads.

The events are built in the documented REST ``EventData`` shape (Activity Logs - List, response
example, https://learn.microsoft.com/rest/api/monitor/activity-logs/list; the values are ours):
no public sample of the REST form is in the shared corpus (its Azure Activity samples are the
diagnostic export form, which ``tests/test_corpus_azure.py`` reads)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cordon.detections.intake import read_bytes
from cordon.providers.azure.activity import activity_events
from tests.azure_fixtures import *  # noqa: F403 - azure, azure_sandbox fixtures

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def event(sub: str, minutes: int, n: int) -> dict:
    at = (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    ra = f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleAssignments/0c1f3a7e-0000-4000-8000-{n:012d}"
    return {
        "authorization": {"action": "Microsoft.Authorization/roleAssignments/write", "scope": ra},
        "caller": "mallory@contoso.example", "channels": "Operation",
        "claims": {"ipaddr": "203.0.113.7"},
        "correlationId": f"corr-{n}", "eventDataId": f"evt-{n:04d}",
        "eventName": {"value": "EndRequest", "localizedValue": "End request"},
        "category": {"value": "Administrative", "localizedValue": "Administrative"},
        "level": "Informational", "resourceGroupName": "", "resourceId": ra,
        "resourceProviderName": {"value": "Microsoft.Authorization", "localizedValue": "Microsoft.Authorization"},
        "operationId": f"op-{n}",
        "operationName": {"value": "Microsoft.Authorization/roleAssignments/write",
                          "localizedValue": "Create role assignment"},
        "status": {"value": "Succeeded", "localizedValue": "Succeeded"},
        "subStatus": {"value": "Created", "localizedValue": "Created (HTTP Status Code: 201)"},
        "eventTimestamp": at, "submissionTimestamp": at, "subscriptionId": sub, "tenantId": "tenant-1",
    }


def test_the_subscriptions_events_of_the_window_over_every_page(azure):  # noqa: F811
    sub = azure.subscription_id
    events = [event(sub, i, i) for i in range(5)] + [event("11111111-2222-3333-4444-555555555555", 2, 99)]
    azure.standin.add_activity_events(*events)
    azure.standin.page_size = 2
    got = list(activity_events(azure.client_factory(), T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)))
    assert sorted(e["eventDataId"] for e in got) == ["evt-0001", "evt-0002", "evt-0003"]
    pages = [r for r in azure.standin.api_requests("arm") if r["path"].endswith("/eventtypes/management/values")]
    assert len(pages) == 2  # three events, two a page
    first = next(e for e in got if e["eventDataId"] == "evt-0002")
    assert first["operationName"]["value"] == "Microsoft.Authorization/roleAssignments/write"
    assert first["resourceId"] == events[2]["resourceId"] and first["caller"] == "mallory@contoso.example"
    kinds = [r.kind for r in read_bytes("azure:activity", json.dumps({"value": got}).encode())]
    assert kinds == ["azure_activity"] * 3
