"""Pull detections from a Pub/Sub subscription (a Cloud Logging sink's topic, Security Command
Center notifications) with google-api-python-client, for the ``gcp-pubsub`` sensor.

Pub/Sub REST v1 (https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions):
``pull`` (``maxMessages``; each ``ReceivedMessage`` has ``ackId``, ``message`` {``data`` base64,
``attributes``, ``messageId``, ``publishTime``} and ``deliveryAttempt``), ``acknowledge``
(``ackIds``) and ``modifyAckDeadline`` (``ackIds``, ``ackDeadlineSeconds``). A message not
acknowledged before its deadline is delivered again: the caller acknowledges only after the
message's records are in the ledger, and extends the deadline while it works.

Each pulled message is handed to the intake as the **push** envelope Pub/Sub would have POSTed
(``{"message": {...}, "subscription": ...}``, https://cloud.google.com/pubsub/docs/push#receive_push),
so pulled and pushed messages are read by the same code (:mod:`cordon.detections.intake`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PulledMessage:
    """One ``ReceivedMessage``: ``ack_id``; ``message_id`` and ``publish_time`` (RFC 3339) of the
    message; ``delivery_attempt`` (1 the first time; Pub/Sub sets it only with a dead-letter
    policy, so it may be ``None``); ``envelope``, the push-shaped JSON bytes the intake reads."""

    ack_id: str
    message_id: str
    publish_time: str | None
    delivery_attempt: int | None
    envelope: bytes


def pull(pubsub: Any, subscription: str, max_messages: int = 100, num_retries: int = 3) -> list[PulledMessage]:
    """Pull up to ``max_messages`` from ``subscription`` (``projects/P/subscriptions/S``) with
    ``pubsub`` (a ``googleapiclient`` ``pubsub`` v1 Resource). Returns ``[]`` when nothing is due.
    Raises ``googleapiclient.errors.HttpError`` after ``num_retries`` retries of 429 / 5xx."""
    subs = pubsub.projects().subscriptions()
    answer = subs.pull(subscription=subscription, body={"maxMessages": int(max_messages)}).execute(
        num_retries=num_retries)
    out = []
    for received in answer.get("receivedMessages") or []:
        message = received.get("message") or {}
        envelope = json.dumps({"message": message, "subscription": subscription},
                              separators=(",", ":")).encode()
        attempt = received.get("deliveryAttempt")
        out.append(PulledMessage(ack_id=str(received["ackId"]), message_id=str(message.get("messageId") or ""),
                                 publish_time=message.get("publishTime"),
                                 delivery_attempt=int(attempt) if attempt is not None else None, envelope=envelope))
    return out


def acknowledge(pubsub: Any, subscription: str, ack_ids: list[str], num_retries: int = 3) -> None:
    """Acknowledge ``ack_ids`` (Pub/Sub will not deliver them again). No call for an empty list.
    Raises ``googleapiclient.errors.HttpError``."""
    if ack_ids:
        pubsub.projects().subscriptions().acknowledge(subscription=subscription, body={"ackIds": list(ack_ids)}
                                                     ).execute(num_retries=num_retries)


def extend(pubsub: Any, subscription: str, ack_ids: list[str], seconds: int, num_retries: int = 3) -> None:
    """Set the ack deadline of ``ack_ids`` to ``seconds`` from now (0-600; 0 hands them back for
    redelivery at once). Raises ``googleapiclient.errors.HttpError``."""
    if ack_ids:
        pubsub.projects().subscriptions().modifyAckDeadline(
            subscription=subscription, body={"ackIds": list(ack_ids), "ackDeadlineSeconds": int(seconds)}
        ).execute(num_retries=num_retries)
