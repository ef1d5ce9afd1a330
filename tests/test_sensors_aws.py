"""The AWS sensors (issue 15) through moto's server over real HTTP: real boto3 S3 and SQS clients,
Cordon's real intake and ledger.

Trail files are built from Stratus Red Team detonation logs (DataDog/stratus-red-team,
``docs/detonation-logs``, Apache-2.0: real CloudTrail events) as CloudTrail delivers them: a gzipped
``{"Records": [...]}`` object; S3 announces it on the queue with its own event notification
(moto's bucket notification to SQS), or, for the SNS and EventBridge routes, the test sends the
documented envelope. The GuardDuty event is the project's example (the documented EventBridge shape).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import yaml

from cordon.audit.ledger import Ledger
from cordon.clouds import clients_for
from cordon.config import load_config
from cordon.engine import Responder
from cordon.sensors import build_sensor
from cordon.sensors.runner import run_pass
from cordon.sensors.store import SensorStore
from tests.conftest import stratus_events

BUCKET = "org-trail-delivery"


def world(aws, tmp_path: Path, name: str, ledger_url: str | None = None, **settings):
    clients = clients_for("aws", aws.cloud_params())
    sqs, s3 = clients("sqs"), clients("s3")
    queue_url = sqs.create_queue(QueueName=f"cordon-{name}")["QueueUrl"]
    d = tmp_path / "config"
    d.mkdir(exist_ok=True)
    (d / "cordon.yaml").write_text(yaml.safe_dump({"sensors": {name: {"queue_url": queue_url, "wait_seconds": 0,
                                                                      **settings}}}))
    cfg = load_config(d)
    responder = Responder(config=cfg, ledger=Ledger(ledger_url or f"sqlite:///{tmp_path}/ledger.db"))
    sensor = build_sensor(name, cfg, clients_for, aws.cloud_params())
    return sqs, s3, queue_url, responder, sensor, SensorStore(responder.ledger.engine)


def trail_file(*logs: str) -> bytes:
    return gzip.compress(json.dumps({"Records": [e for log in logs for e in stratus_events(log)]}).encode())


def notification(bucket: str, key: str) -> str:
    """An S3 event notification (the documented message structure, version 2.1)."""
    return json.dumps({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                                    "eventTime": "2024-05-01T10:00:00.000Z", "eventName": "ObjectCreated:Put",
                                    "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
                                           "object": {"key": key, "size": 1, "eTag": "e1"}}}]})


def backlog(sqs, queue_url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    a = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return sum(int(a["Attributes"][k]) for k in names)


def test_a_trail_file_announced_by_s3_opens_its_cases_and_the_message_is_deleted(aws, tmp_path, ledger_url):
    sqs, s3, queue_url, responder, sensor, store = world(aws, tmp_path, "aws-s3-sqs", ledger_url)
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    key = "AWSLogs/o-abc/946986569305/CloudTrail/us-east-1/2024/05/01/946986569305_CloudTrail_us-east-1_x.json.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=trail_file("aws.persistence.iam-backdoor-user",
                                                          "aws.persistence.iam-create-admin-user"))
    result = run_pass(sensor, store, responder, None)
    assert result.error is None and result.read >= 1, result  # moto's test event and/or the object
    cases = responder.ledger.cases()
    assert len(cases) >= 2  # the backdoor key, the admin user (and what the rules make of them)
    assert {c["playbook"] for c in cases} >= {"aws-access-key-created"}
    assert backlog(sqs, queue_url) == 0
    # the same notification again (S3 delivers at least once): dropped by the object's key
    sqs.send_message(QueueUrl=queue_url, MessageBody=notification(BUCKET, key))
    again = run_pass(sensor, store, responder, None)
    assert again.read == 1 and again.cases == [] and len(responder.ledger.cases()) == len(cases)


def test_sns_and_eventbridge_routes_and_a_poison_message(aws, tmp_path):
    sqs, s3, queue_url, responder, sensor, store = world(aws, tmp_path, "aws-s3-sqs")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="a.json.gz", Body=trail_file("aws.persistence.iam-backdoor-user"))
    s3.put_object(Bucket=BUCKET, Key="b.json", Body=json.dumps({"Records": stratus_events(
        "aws.persistence.iam-create-admin-user")}).encode())
    sns = {"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:1:trail",
           "Message": notification(BUCKET, "a.json.gz")}
    eventbridge = {"version": "0", "id": "e-1", "detail-type": "Object Created", "source": "aws.s3",
                   "account": "1", "time": "2024-05-01T10:00:00Z", "region": "us-east-1",
                   "detail": {"bucket": {"name": BUCKET}, "object": {"key": "b.json", "etag": "e2"}}}
    for body in (json.dumps(sns), json.dumps(eventbridge), "hello", notification(BUCKET, "gone.json.gz")):
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    result = run_pass(sensor, store, responder, None)
    assert result.error is None and (result.read, result.rejected) == (2, 2)
    assert len(responder.ledger.cases()) >= 2
    dead = {d["origin"].split("#")[0] if d["origin"].startswith("sqs:") else d["origin"]: d
            for d in responder.ledger.dead_letters()}
    assert "not an S3 event notification" in dead[f"sqs:{queue_url}"]["reason"]
    assert "NoSuchKey" in dead[f"s3://{BUCKET}/gone.json.gz"]["reason"]
    assert backlog(sqs, queue_url) == 0  # poison messages are deleted, not retried forever


def test_guardduty_findings_from_eventbridge_once_each(aws, tmp_path):
    sqs, _s3, queue_url, responder, sensor, store = world(aws, tmp_path, "aws-eventbridge-sqs")
    # the shipped example: a GuardDuty finding in its EventBridge event, as the documented shape
    event = json.loads((Path(__file__).resolve().parents[1] / "examples" / "guardduty-same-key.json").read_text())
    for _ in range(2):  # EventBridge delivers at least once
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))
    result = run_pass(sensor, store, responder, None)
    assert result.error is None and (result.read, result.duplicates) == (2, 1)
    assert result.dead_letters == 0 and len(result.cases) == 1
    assert backlog(sqs, queue_url) == 0
