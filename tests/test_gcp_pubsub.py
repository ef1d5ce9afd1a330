"""Pulling from Pub/Sub (:mod:`cordon.providers.gcp.pubsub`) with the real google-api-python-client
over HTTP to the GCP stand-in's Pub/Sub v1: publish, pull, redelivery after the ack deadline,
acknowledge, and a pulled message read by Cordon's intake as the push envelope it was made into
(a real Cloud Audit Log entry: GoogleCloudPlatform/security-analytics fixture)."""

from __future__ import annotations

import base64
import json
import time

from cordon.detections.intake import read_bytes
from cordon.providers.gcp.clients import gcp_clients
from cordon.providers.gcp.pubsub import acknowledge, extend, pull
from tests.gcp_fixtures import *  # noqa: F403 - gcp, gcp_sandbox fixtures
from tests.gcp_fixtures import real_audit_entry

TOPIC = "projects/p1/topics/cordon-audit"
SUB = "projects/p1/subscriptions/cordon-audit-pull"


def _setup(gcp, deadline: int = 10):  # noqa: F811
    pubsub = gcp_clients(gcp.cloud_params())("pubsub")
    pubsub.projects().topics().create(name=TOPIC, body={}).execute()
    pubsub.projects().subscriptions().create(name=SUB, body={"topic": TOPIC, "ackDeadlineSeconds": deadline}).execute()
    return pubsub


def _publish(pubsub, *entries: dict) -> list[str]:
    msgs = [{"data": base64.b64encode(json.dumps(e).encode()).decode()} for e in entries]
    return pubsub.projects().topics().publish(topic=TOPIC, body={"messages": msgs}).execute()["messageIds"]


def test_pulled_audit_entry_is_read_by_the_intake_and_acked_once(gcp):  # noqa: F811
    pubsub = _setup(gcp)
    entry = real_audit_entry("google.iam.admin.v1.SetIamPolicy-tokenCreator")
    (mid,) = _publish(pubsub, entry)
    (got,) = pull(pubsub, SUB, max_messages=10)
    assert got.message_id == mid and got.delivery_attempt == 1
    (record,) = list(read_bytes(f"pubsub:{SUB}", got.envelope))
    assert record.kind == "gcp_audit" and record.record == entry
    assert record.envelope["messageId"] == mid and record.envelope["subscription"] == SUB
    assert pull(pubsub, SUB) == []  # outstanding, not due again yet
    acknowledge(pubsub, SUB, [got.ack_id])
    assert gcp.standin.pubsub_backlog(SUB) == 0


def test_an_unacknowledged_message_comes_back_after_its_deadline(gcp):  # noqa: F811
    pubsub = _setup(gcp)
    ids = _publish(pubsub, {"insertId": "a"}, {"insertId": "b"})
    first = pull(pubsub, SUB, max_messages=1)
    assert len(first) == 1
    extend(pubsub, SUB, [first[0].ack_id], 0)  # handed back: due again at once
    again = pull(pubsub, SUB, max_messages=10)
    assert sorted(m.message_id for m in again) == sorted(ids)  # the handed-back one and the other
    assert {m.message_id: m.delivery_attempt for m in again}[first[0].message_id] == 2
    acknowledge(pubsub, SUB, [m.ack_id for m in again])
    assert gcp.standin.pubsub_backlog(SUB) == 0
    time.sleep(0.01)
    assert pull(pubsub, SUB) == []
