"""GCP's sensor: ``gcp-pubsub``, a Pub/Sub pull subscription on a Cloud Logging sink's topic (Cloud
Audit Log entries) or on Security Command Center notifications (:mod:`cordon.sensors`).

Each pulled message is one delivery, read by the intake as the push envelope it would have been
(:func:`cordon.providers.gcp.pubsub.pull`), acknowledged once its records are in the ledger. The
dedup key is the record's own: the ``LogEntry``'s ``insertId`` (a sink may publish an entry twice),
an SCC finding's ``name`` + ``eventTime``, else the ``messageId``.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from cordon.providers.gcp.pubsub import acknowledge, pull
from cordon.sensors import Delivery, Fetched, Sensor, SensorSettings, records_of, register_sensor
from cordon.sensors.store import SensorState


class PubSubSettings(SensorSettings):
    """``sensors.gcp-pubsub``: ``subscription`` (``projects/P/subscriptions/S``, required)."""

    subscription: str


def record_id(envelope: bytes, message_id: str) -> str:
    """The dedup key of a pulled message (module docstring)."""
    try:
        data = json.loads(base64.b64decode(json.loads(envelope)["message"].get("data") or ""))
    except (ValueError, KeyError, TypeError):
        return f"message:{message_id}"
    if isinstance(data, dict) and data.get("insertId"):
        return f"entry:{data.get('logName', '')}:{data['insertId']}"
    finding = data.get("finding") if isinstance(data, dict) else None
    if isinstance(finding, dict) and finding.get("name"):
        return f"finding:{finding['name']}:{finding.get('eventTime', '')}"
    return f"message:{message_id}"


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


@register_sensor
class PubSubSensor(Sensor):
    """Pull a Pub/Sub subscription (module docstring). Needs ``pubsub.subscriptions.consume`` on the
    subscription (``roles/pubsub.subscriber``)."""

    name = "gcp-pubsub"
    title = "Pub/Sub pull subscription: Cloud Audit Log sink or SCC notifications"
    provider = "gcp"
    kind = "queue"
    settings_model = PubSubSettings
    permissions = ("pubsub.subscriptions.consume",)
    settings: PubSubSettings

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """A topic (as a log sink's) and a pull subscription; each log entry or SCC notification of
        the inputs published as one message."""
        from cordon.clouds import clients_for

        pubsub = clients_for("gcp", stand_in.cloud_params())("pubsub")
        project = getattr(stand_in, "project", "cordon-sandbox")
        topic, sub = f"projects/{project}/topics/cordon-rehearsal", f"projects/{project}/subscriptions/cordon-rehearsal"
        pubsub.projects().topics().create(name=topic, body={}).execute()
        pubsub.projects().subscriptions().create(name=sub, body={"topic": topic}).execute()
        for _path, data in inputs:
            msgs = [{"data": base64.b64encode(json.dumps(r).encode()).decode()} for r in records_of(data)]
            for i in range(0, len(msgs), 100):
                pubsub.projects().topics().publish(topic=topic, body={"messages": msgs[i:i + 100]}).execute()
        return {"subscription": sub, "max_records": 1000}

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        got = pull(self.clients("pubsub"), self.settings.subscription, max_messages=self.settings.max_records)
        return Fetched(deliveries=[
            Delivery(record_id=record_id(m.envelope, m.message_id), origin=f"pubsub:{self.settings.subscription}",
                     body=m.envelope, at=_time(m.publish_time), handle=m.ack_id) for m in got])

    def settle(self, deliveries: list[Delivery]) -> None:
        acknowledge(self.clients("pubsub"), self.settings.subscription,
                    [str(d.handle) for d in deliveries if d.handle])


# the ``chronicle`` sensor (Google SecOps detections) registers itself on import
from cordon.providers.gcp import chronicle_sensor  # noqa: E402,F401
