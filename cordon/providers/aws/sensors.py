"""AWS's sensors (:mod:`cordon.sensors`): two read an SQS queue with boto3, one sweeps AWS Config:

* ``aws-s3-sqs``: the organisation trail's delivery files, announced by S3 event notifications
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html) sent
  to the queue directly, through SNS (the notification is the SNS envelope's ``Message``), or
  through EventBridge (``detail-type`` ``Object Created``, ``detail.bucket.name`` /
  ``detail.object.key``). Each named object is read (gunzipped as a stream when it is gzip) and
  handed to the intake as one file, ``s3://bucket/key``: its records are dead-lettered one by one
  with that name and their position. The message's visibility timeout is extended before the
  objects are read (``ChangeMessageVisibility``), so a large file is not delivered to another
  reader meanwhile. S3's ``s3:TestEvent`` is acknowledged and ignored. A message that names
  nothing readable (not a notification, an object that is gone) is dead-lettered with the reason
  and deleted: never retried forever.
* ``aws-eventbridge-sqs``: GuardDuty findings and Security Hub ``Findings - Imported`` events put
  on the queue by an EventBridge rule; each message body is the EventBridge event, which the
  intake reads as it is (AWS Config's "Config Rules Compliance Change" events too, when the rule
  routes them there);
* ``aws-config``: a sweep of AWS Config's credential rules (``DescribeConfigRules``: every rule whose
  managed identifier is one :mod:`cordon.providers.aws.config_rules` answers, or the ``rules`` named),
  each rule's ``NON_COMPLIANT`` evaluations (``GetComplianceDetailsByConfigRule``, paged) delivered as
  one record each, the ``EvaluationResult`` with ``awsAccountId`` / ``awsRegion`` added (Config's
  answer names neither). Dedup key: account, rule, resource and ``ResultRecordedTime``, so an
  evaluation is answered once and a new one (the user broke the rule again) is answered again.

A message is deleted (``DeleteMessage``) only after its records are in the ledger. Dedup keys: the
object (``bucket/key`` and its ``ETag``) for trail files (each record in it is deduplicated by the
intake on its own ``eventID``-derived detection ID), GuardDuty's finding ``id`` + ``updatedAt``,
Security Hub's findings' ``Id`` + ``UpdatedAt``, else the SQS ``MessageId``. SQS API reference:
``ReceiveMessage``, ``ChangeMessageVisibility``, ``DeleteMessage``.
"""

from __future__ import annotations

import gzip
import io
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from cordon.sensors import Delivery, Fetched, Sensor, SensorSettings, records_of, register_sensor
from cordon.sensors.store import SensorState

#: SQS's largest batch of one ReceiveMessage
SQS_BATCH = 10


class SqsSettings(SensorSettings):
    """``sensors.aws-s3-sqs`` / ``sensors.aws-eventbridge-sqs``: ``queue_url`` (required),
    ``region`` (default the queue URL's), ``wait_seconds`` (SQS long polling, 0-20, default 10),
    ``visibility_seconds`` (the visibility timeout set while a message's objects are read,
    default 300)."""

    queue_url: str
    region: str | None = None
    wait_seconds: int = 10
    visibility_seconds: int = 300


def _region(settings: SqsSettings) -> str | None:
    if settings.region:
        return settings.region
    host = settings.queue_url.split("/")[2] if "://" in settings.queue_url else ""
    parts = host.split(".")
    return parts[1] if len(parts) > 3 and parts[0] == "sqs" else None


class _SqsSensor(Sensor):
    kind = "queue"
    settings_model = SqsSettings
    settings: SqsSettings

    def sqs(self) -> Any:
        return self.clients("sqs", _region(self.settings))

    def receive(self) -> list[dict[str, Any]]:
        """Up to ``max_records`` messages (several ``ReceiveMessage`` calls of at most 10; only the
        first one waits)."""
        out: list[dict[str, Any]] = []
        wait = self.settings.wait_seconds
        while len(out) < self.settings.max_records:
            most = min(SQS_BATCH, self.settings.max_records - len(out))
            answer = self.sqs().receive_message(
                QueueUrl=self.settings.queue_url, MaxNumberOfMessages=most, WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"])
            got = answer.get("Messages") or []
            out.extend(got)
            wait = 0
            if len(got) < SQS_BATCH:
                break
        return out

    def settle(self, deliveries: list[Delivery]) -> None:
        for handle in dict.fromkeys(d.handle for d in deliveries if d.handle):
            self.sqs().delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=handle)

    @staticmethod
    def sent_at(message: dict[str, Any]) -> datetime | None:
        ms = (message.get("Attributes") or {}).get("SentTimestamp")
        return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None


def s3_objects(body: str) -> list[tuple[str, str, str | None]] | None:
    """``(bucket, key, etag)`` of each object an S3 event notification names, through SNS or
    EventBridge; ``[]`` for S3's test event; ``None`` when ``body`` is none of those."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return s3_objects(doc["Message"])  # SNS
    if not isinstance(doc, dict):
        return None
    if doc.get("Event") == "s3:TestEvent":
        return []
    if doc.get("source") == "aws.s3" and isinstance(doc.get("detail"), dict):  # EventBridge
        d = doc["detail"]
        bucket, obj = (d.get("bucket") or {}).get("name"), d.get("object") or {}
        return [(bucket, obj["key"], obj.get("etag"))] if bucket and obj.get("key") else None
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        return None
    out = []
    for r in records:
        s3 = r.get("s3") if isinstance(r, dict) else None
        if not isinstance(s3, dict) or not str(r.get("eventName", "")).startswith("ObjectCreated"):
            continue
        bucket, obj = (s3.get("bucket") or {}).get("name"), s3.get("object") or {}
        if bucket and obj.get("key"):
            # keys in S3 notifications are URL-encoded (spaces as '+')
            out.append((bucket, unquote_plus(obj["key"]), obj.get("eTag")))
    return out if out or any(isinstance(r, dict) and "s3" in r for r in records) else None


@register_sensor
class S3SqsSensor(_SqsSensor):
    """Trail delivery files announced on an SQS queue (module docstring). Needs ``sqs:ReceiveMessage``,
    ``sqs:ChangeMessageVisibility``, ``sqs:DeleteMessage`` on the queue and ``s3:GetObject`` on the
    trail bucket (and ``kms:Decrypt`` when the trail is SSE-KMS encrypted)."""

    name = "aws-s3-sqs"
    title = "CloudTrail delivery files announced by S3 event notifications on an SQS queue"
    provider = "aws"
    permissions = ("sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "s3:GetObject")

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """A bucket whose ``s3:ObjectCreated:*`` notifications go to a queue (moto sends them);
        each input uploaded as a delivery file (gzipped when it is not)."""
        clients = _stand_in_clients(stand_in)
        sqs, s3 = clients("sqs"), clients("s3")
        queue_url = sqs.create_queue(QueueName="cordon-rehearsal-trail")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket="cordon-rehearsal-trail")
        s3.put_bucket_notification_configuration(Bucket="cordon-rehearsal-trail", NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
        for n, (path, data) in enumerate(inputs):
            body = data if data[:2] == b"\x1f\x8b" else gzip.compress(data)
            name = path.replace("\\", "/").rsplit("/", 1)[-1]
            s3.put_object(Bucket="cordon-rehearsal-trail", Key=f"AWSLogs/rehearsal/{n:04d}_{name}", Body=body)
        return {"queue_url": queue_url, "wait_seconds": 0, "max_records": 1000}

    def read_object(self, bucket: str, key: str) -> bytes:
        """The object's bytes, gunzipped (streamed through ``gzip``) when it starts with the gzip
        magic. Raises botocore's ``ClientError`` (``NoSuchKey``, ``AccessDenied``) or
        ``OSError`` / ``EOFError`` for a broken gzip stream."""
        body = self.clients("s3", _region(self.settings)).get_object(Bucket=bucket, Key=key)["Body"]
        head = body.read(2)
        rest = io.BufferedReader(_Chain(head, body))
        if head == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=rest) as gz:
                return gz.read()
        return rest.read()

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        fetched = Fetched()
        for m in self.receive():
            handle, origin = m["ReceiptHandle"], f"sqs:{self.settings.queue_url}#{m['MessageId']}"
            objects = s3_objects(m.get("Body") or "")
            if objects is None:
                fetched.rejected.append((Delivery(record_id=f"message:{m['MessageId']}", origin=origin,
                                                  body=(m.get("Body") or "").encode(), handle=handle),
                                         "not an S3 event notification (direct, through SNS or EventBridge)",
                                         "Body"))
                continue
            if not objects:  # s3:TestEvent
                fetched.deliveries.append(Delivery(record_id=f"message:{m['MessageId']}", origin=origin, body=b"",
                                                   handle=handle))
                continue
            self.sqs().change_message_visibility(QueueUrl=self.settings.queue_url, ReceiptHandle=handle,
                                                 VisibilityTimeout=self.settings.visibility_seconds)
            for bucket, key, etag in objects:
                where = f"s3://{bucket}/{key}"
                rid = f"s3:{bucket}/{key}@{etag or m['MessageId']}"
                try:
                    data = self.read_object(bucket, key)
                except Exception as exc:  # noqa: BLE001 - the object cannot be read: dead letter, delete
                    fetched.rejected.append((Delivery(record_id=rid, origin=where, body=b"", handle=handle),
                                             f"cannot read the object: {type(exc).__name__}: {exc}", "s3.object.key"))
                    continue
                fetched.deliveries.append(Delivery(record_id=rid, origin=where, body=data, at=self.sent_at(m),
                                                   handle=handle))
        return fetched


def _stand_in_clients(stand_in: Any) -> Any:
    from cordon.clouds import clients_for

    return clients_for("aws", stand_in.cloud_params())


class _Chain(io.RawIOBase):
    """``head`` (bytes already read) then the rest of ``stream``, as one readable raw stream."""

    def __init__(self, head: bytes, stream: Any):
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n], self.head = self.head[:n], self.head[n:]
            return n
        chunk = self.stream.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)


def finding_key(body: str, message_id: str) -> str:
    """The dedup key of an EventBridge finding event (module docstring)."""
    try:
        doc = json.loads(body)
        detail = doc.get("detail") or {}
    except (ValueError, AttributeError):
        return f"message:{message_id}"
    if doc.get("source") == "aws.guardduty" and detail.get("id"):
        return f"guardduty:{detail['id']}@{detail.get('updatedAt', '')}"
    findings = detail.get("findings") if isinstance(detail, dict) else None
    if isinstance(findings, list) and findings and all(isinstance(f, dict) and f.get("Id") for f in findings):
        return "securityhub:" + ",".join(f"{f['Id']}@{f.get('UpdatedAt', '')}" for f in findings)
    return f"message:{doc.get('id') or message_id}"


@register_sensor
class EventBridgeSqsSensor(_SqsSensor):
    """GuardDuty and Security Hub findings routed by EventBridge to an SQS queue (module docstring).
    Needs ``sqs:ReceiveMessage`` and ``sqs:DeleteMessage`` on the queue."""

    name = "aws-eventbridge-sqs"
    title = "GuardDuty and Security Hub findings routed by EventBridge to an SQS queue"
    provider = "aws"
    permissions = ("sqs:ReceiveMessage", "sqs:DeleteMessage")

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """A queue; each EventBridge event of the inputs sent as one message, as a rule's target."""
        sqs = _stand_in_clients(stand_in)("sqs")
        queue_url = sqs.create_queue(QueueName="cordon-rehearsal-findings")["QueueUrl"]
        for _path, data in inputs:
            for event in records_of(data):
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
        return {"queue_url": queue_url, "wait_seconds": 0, "max_records": 1000}

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        return Fetched(deliveries=[
            Delivery(record_id=finding_key(m.get("Body") or "", m["MessageId"]),
                     origin=f"sqs:{self.settings.queue_url}#{m['MessageId']}", body=(m.get("Body") or "").encode(),
                     at=self.sent_at(m), handle=m["ReceiptHandle"]) for m in self.receive()])


class ConfigSweepSettings(SensorSettings):
    """``sensors.aws-config``: ``region`` (default the client's), ``rules`` (Config rule names; empty:
    every credential rule ``DescribeConfigRules`` lists), ``interval_seconds`` between sweeps (default
    900: Config evaluates periodic rules every 1 to 24 hours)."""

    region: str | None = None
    rules: list[str] = []
    interval_seconds: float = 900.0


@register_sensor
class ConfigSweepSensor(Sensor):
    """AWS Config's credential rules, swept (module docstring). Needs ``config:DescribeConfigRules``,
    ``config:GetComplianceDetailsByConfigRule`` and ``sts:GetCallerIdentity``."""

    name = "aws-config"
    title = "AWS Config credential rules (access-keys-rotated, unused credentials), swept for NON_COMPLIANT users"
    provider = "aws"
    kind = "poll"
    permissions = ("config:DescribeConfigRules", "config:GetComplianceDetailsByConfigRule", "sts:GetCallerIdentity")
    settings_model = ConfigSweepSettings
    settings: ConfigSweepSettings

    def rules(self, config: Any) -> list[str]:
        """The rule names to sweep: the settings' ``rules``, else each credential rule Config lists."""
        from cordon.providers.aws.config_rules import RULES

        if self.settings.rules:
            return list(self.settings.rules)
        out, token = [], None
        while True:
            page = config.describe_config_rules(**({"NextToken": token} if token else {}))
            out += [r["ConfigRuleName"] for r in page.get("ConfigRules") or []
                    if (r.get("Source") or {}).get("SourceIdentifier") in RULES]
            token = page.get("NextToken")
            if not token:
                return out

    def fetch(self, state: SensorState, now: datetime) -> Fetched:
        config = self.clients("config", self.settings.region)
        account = self.clients("sts", self.settings.region).get_caller_identity()["Account"]
        region = self.settings.region or config.meta.region_name
        out: list[Delivery] = []
        for rule in self.rules(config):
            token = None
            while len(out) < self.settings.max_records:
                page = config.get_compliance_details_by_config_rule(
                    ConfigRuleName=rule, ComplianceTypes=["NON_COMPLIANT"], Limit=100,
                    **({"NextToken": token} if token else {}))
                for result in page.get("EvaluationResults") or []:
                    record = json.loads(json.dumps(result, default=_iso_time))
                    record.update(awsAccountId=account, awsRegion=region)
                    qual = record["EvaluationResultIdentifier"]["EvaluationResultQualifier"]
                    when = record.get("ResultRecordedTime")
                    out.append(Delivery(record_id=f"config:{account}:{rule}:{qual.get('ResourceId')}:{when}",
                                        origin=f"config:{account}/{region}/{rule}",
                                        body=json.dumps(record).encode(), at=_parse_time(when)))
                token = page.get("NextToken")
                if not token:
                    break
        return Fetched(deliveries=out[: self.settings.max_records])

    @classmethod
    def rehearse(cls, stand_in: Any, inputs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Each Config evaluation of the inputs (an EventBridge event, its ``detail``) recorded in the
        sandbox's Config stand-in: the rule (its managed identifier from its name) and the user's
        ``NON_COMPLIANT`` evaluation, in the sandbox's current account."""
        from cordon.providers.aws.config_rules import RULE_NAMES, criterion_for_rule

        for _path, data in inputs:
            for rec in records_of(data):
                detail = rec.get("detail") if isinstance(rec.get("detail"), dict) else rec
                rule, user = detail.get("configRuleName"), detail.get("resourceId")
                criterion = criterion_for_rule(str(rule or ""))
                if not rule or not user or criterion is None:
                    continue
                stand_in.use_account(str(detail.get("awsAccountId") or stand_in.account_id))
                if (stand_in.account_id, rule) not in stand_in.standin.config_rules:
                    identifier = next(i for n, i in RULE_NAMES.items() if criterion_for_rule(n) is criterion)
                    stand_in.standin.add_config_rule(stand_in.account_id, rule, identifier)
                stand_in.standin.set_compliance(stand_in.account_id, rule, user)
        return {"region": "us-east-1", "interval_seconds": 0}


def _iso_time(value: Any) -> str:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    return str(value)


def _parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
