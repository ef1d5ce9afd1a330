"""Google SecOps (Chronicle) detections (issue 17): a detection object whose UDM event is a GCP
service-account key creation, an Entra credential addition or an AWS access-key creation becomes the
same detection the raw record would (same kind, uid and case), runs the same playbook, and in the
sandbox disables exactly that key; a key the event does not name is found by its creation time or
refused; anything else is suppressed with the rule name; malformed objects are dead letters naming
the field. ``examples/chronicle-gcp-sa-key.json`` follows the detection shape Google's sample
(../shared/data/real/chronicle-api-samples-python) documents and the UDM fields the community rule
(../shared/data/real/chronicle-detection-rules, GCP service-account key) reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cordon.detections.errors import Rejected
from cordon.detections.intake import read_inputs
from cordon.detections.pipeline import detect
from cordon.providers import shipped_rule_dirs
from cordon.providers.gcp.chronicle import detection_key
from cordon.sigma import RuleSet
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chronicle-gcp-sa-key.json"
RAW = ROOT / "examples" / "gcp-create-sa-key.json"
SA = "deploy-bot@acme-prod-4821.iam.gserviceaccount.com"
KEY = f"projects/acme-prod-4821/serviceAccounts/{SA}/keys/3f1c9a7e5b2d4c6e8f0a1b2c3d4e5f6071829304"
DECOY = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807"  # the key_id detection field: never taken as the key


def example() -> dict:
    return json.loads(EXAMPLE.read_text())["detections"][0]


def run(tmp_path: Path, *records: dict) -> list:
    path = tmp_path / "detections.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return list(detect(read_inputs([path]), RuleSet.load(shipped_rule_dirs())))


def with_event(det: dict, **event_parts: dict) -> dict:
    det = json.loads(json.dumps(det))
    event = det["collectionElements"][0]["references"][0]["event"]
    for key, value in event_parts.items():
        event[key] = value
    return det


def test_a_chronicle_detection_is_the_same_detection_and_case_as_the_raw_entry():
    dets = list(detect(read_inputs([EXAMPLE, RAW]), RuleSet.load(shipped_rule_dirs())))
    chronicle, raw = dets
    assert (chronicle.credential.kind, chronicle.credential.uid) == ("gcp_sa_key", KEY)
    assert chronicle.case_key() == raw.case_key()
    assert chronicle.source == raw.source == "gcp_audit" and chronicle.actor.user.uid == "mallory@example.com"
    assert chronicle.rule.type == "chronicle" and chronicle.rule.name.startswith("google_cloud_service_account_key")
    assert chronicle.technique_ids == ["T1098.001"] and chronicle.raw["id"] == example()["id"]
    assert DECOY not in chronicle.credential.uid
    assert detection_key(example()) == f"{example()['id']}@{example()['detection'][0]['ruleVersion']}"


def test_both_arriving_are_one_case_and_the_key_is_disabled_exactly(responder, gcp):
    gcp.standin.ensure_sa_key(SA, DECOY)  # the other key the event mentions stays enabled
    report = responder.intake([EXAMPLE, RAW])
    assert report.detections == 2 and len(report.cases) == 1, report  # the second joined the first's case
    summaries = list(responder.run_all(report, approval="auto", stand_ins=gcp))
    ran = [s for s in summaries if s.get("actions")]
    assert len(ran) == 1, summaries
    (s,) = ran
    assert s["playbook"] == "gcp-sa-key-created" and s["status"] == "contained" and s["verified"] is True
    iam = gcp.clients("iam", "v1").projects().serviceAccounts().keys()
    assert iam.get(name=KEY).execute()["disabled"] is True
    assert iam.get(name=f"projects/acme-prod-4821/serviceAccounts/{SA}/keys/{DECOY}").execute()["disabled"] is False


def unnamed(now: datetime) -> dict:
    return with_event(example(), target={"user": {"userid": SA},
                                         "resource": {"name": f"projects/-/serviceAccounts/{SA}"},
                                         "cloud": {"project": {"name": "acme-prod-4821"}}},
                      metadata={**example()["collectionElements"][0]["references"][0]["event"]["metadata"],
                                "eventTimestamp": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})


def test_an_unnamed_key_is_the_one_made_at_the_records_time_or_the_case_is_refused(responder, gcp, tmp_path):
    now = datetime.now(UTC)
    path = tmp_path / "unnamed.json"
    path.write_text(json.dumps(unnamed(now)))
    gcp.standin.ensure_sa_key(SA, "aaaa1111", valid_after=datetime(2026, 1, 1, tzinfo=UTC))  # an old key
    gcp.standin.ensure_sa_key(SA, "bbbb2222", valid_after=now)  # made by the call
    report = responder.intake([path])
    (case,) = report.cases
    assert case.detection.credential.uid is None and case.detection.credential.attributes["keyId"] == "not logged"
    (s,) = list(responder.run_all(report, approval="auto", stand_ins=gcp))
    assert s["playbook"] == "gcp-sa-key-unnamed" and s["status"] == "contained", s["enrichment"]
    keys = {k["name"].rsplit("/", 1)[-1]: k["disabled"]
            for k in gcp.clients("iam", "v1").projects().serviceAccounts().keys().list(
                name=f"projects/-/serviceAccounts/{SA}").execute()["keys"] if k["keyType"] == "USER_MANAGED"}
    assert keys["bbbb2222"] is True and keys["aaaa1111"] is False, keys


def test_two_keys_made_at_that_time_refuse_the_case(responder, gcp, tmp_path):
    now = datetime.now(UTC)
    path = tmp_path / "unnamed.json"
    path.write_text(json.dumps(unnamed(now)))
    gcp.standin.ensure_sa_key(SA, "cccc3333", valid_after=now)
    gcp.standin.ensure_sa_key(SA, "dddd4444", valid_after=now)
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=gcp))
    assert s["status"] == "refused" and "never disables every key" in json.dumps(s), s
    listed = gcp.clients("iam", "v1").projects().serviceAccounts().keys().list(
        name=f"projects/-/serviceAccounts/{SA}").execute()["keys"]
    assert not any(k["disabled"] for k in listed)


def test_entra_and_aws_events_become_their_own_detections_and_others_are_suppressed(tmp_path):
    entra = with_event(example(), metadata={"eventTimestamp": "2026-11-20T03:52:18.441Z",
                                            "productEventType": "Add service principal credentials",
                                            "productName": "Azure AD Directory Audit", "vendorName": "Microsoft"},
                       principal={"user": {"userid": "mallory@contoso.example",
                                           "productObjectId": "5d7b0c1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e"},
                                  "ip": ["203.0.113.77"]},
                       target={"resource": {"name": "payments-api",
                                            "productObjectId": "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"}})
    aws = with_event(example(), metadata={"eventTimestamp": "2026-11-20T03:14:07Z",
                                          "productEventType": "CreateAccessKey",
                                          "vendorName": "AMAZON", "productName": "AWS CloudTrail"},
                     principal={"user": {"userid": "mallory",
                                         "productObjectId": "arn:aws:iam::111122223333:user/mallory"},
                                "ip": ["203.0.113.77"]},
                     target={"user": {"userid": "build-bot"}, "resource": {"productObjectId": "AKIAEXAMPLEBUILDBOT9"},
                             "cloud": {"project": {"id": "111122223333"}}})
    other = with_event(example(), metadata={"eventTimestamp": "2026-11-20T03:14:07Z",
                                            "productEventType": "storage.objects.get"})
    other["detection"][0]["ruleName"] = "gcs_bucket_enumeration"
    bad = {**example(), "detection": [{"ruleId": "ru_x"}]}
    out = run(tmp_path, entra, bad, aws, other)
    rejected = [o for o in out if isinstance(o, Rejected)]
    assert [(r.position, r.field) for r in rejected] == [(1, "detection[0].ruleName")], rejected
    dets = [o for o in out if not isinstance(o, Rejected)]
    by = {d.provider: d for d in dets if not d.suppressed}
    assert by["azure"].credential.kind == "azure_sp_password" and by["azure"].credential.uid is None
    assert by["azure"].credential.owner.uid == "0b9e4a52-7c31-4d8e-a6f2-93c15d7e2b40"
    assert (by["aws"].credential.kind, by["aws"].credential.uid) == ("aws_access_key", "AKIAEXAMPLEBUILDBOT9")
    assert by["aws"].target.name == "build-bot"
    (sup,) = [d for d in dets if d.suppressed]
    assert sup.source == "chronicle" and "gcs_bucket_enumeration" in sup.suppressed


def test_a_chronicle_page_posted_to_the_webhook_opens_the_case(tmp_path):
    """A SOAR forwarder posting a ``legacySearchDetections`` page to ``/webhook/detections/chronicle``
    (a bearer push source): the same intake, one case for the named key."""
    import httpx

    from cordon.audit.ledger import Ledger
    from cordon.engine import Responder
    from cordon.server import create_app
    from cordon.server.push_auth import PushSource
    from tests.test_server import SECRET, Decider, serve

    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    responder = Responder(ledger=ledger)

    def on_detections(body: bytes, origin: str) -> dict:
        report = responder.intake_bytes(body, origin)
        return {"cases": [t.case_id for t in report.cases], "rejected": [r.message() for r in report.rejected]}

    app = create_app(signing_secret=SECRET, ledger=ledger, decide=Decider(), on_detections=on_detections,
                     push_sources={"chronicle": PushSource(name="chronicle", kind="bearer", secret="s3cret-token")})
    with serve(app) as url:
        r = httpx.post(f"{url}/webhook/detections/chronicle", content=EXAMPLE.read_bytes(),
                       headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 202, r.text
    assert len(r.json()["cases"]) == 1 and r.json()["rejected"] == []
    case = ledger.case(r.json()["cases"][0])
    assert json.loads(case["detection"])["credential"]["uid"] == KEY


def test_an_empty_page_is_read_as_nothing(tmp_path):
    path = tmp_path / "page.json"
    path.write_text(json.dumps({"detections": [], "nextPageToken": ""}))
    assert list(detect(read_inputs([path]), RuleSet.load(shipped_rule_dirs()))) == []


# -- the key an event does not name: never the caller's ----------------------------------------------------------
def _unnamed_case(responder, gcp, tmp_path: Path, det: dict, keys: dict[str, tuple[datetime, str]]) -> tuple:
    """Seed ``keys`` (key ID -> (validAfterTime, keyOrigin)) on SA, run ``det`` through intake and the
    respond flow (approval auto); returns ``(summary, {key ID: disabled})``."""
    for key_id, (after, origin) in keys.items():
        gcp.standin.ensure_sa_key(SA, key_id, valid_after=after, key_origin=origin)
    path = tmp_path / "unnamed.json"
    path.write_text(json.dumps(det))
    (s,) = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=gcp))
    listed = gcp.clients("iam", "v1").projects().serviceAccounts().keys().list(
        name=f"projects/-/serviceAccounts/{SA}").execute()["keys"]
    return s, {k["name"].rsplit("/", 1)[-1]: k["disabled"] for k in listed if k["keyType"] == "USER_MANAGED"}


def _signed_by(det: dict, key: str) -> dict:
    """``det`` whose event says the call was signed by ``key`` (Google's parser:
    authenticationInfo.serviceAccountKeyName -> principal.user.attribute.labels key_id)."""
    event = det["collectionElements"][0]["references"][0]["event"]
    event["principal"]["user"]["attribute"] = {"labels": [{"key": "key_id", "value": key}]}
    return det


def test_the_key_that_signed_the_call_is_never_the_unnamed_key(responder, gcp, tmp_path):
    """The key the call made is gone already (deleted by the attacker); the only user-managed key made
    near the record's time is the one that signed the call, 5 s before it: the case is refused naming
    it, and it stays enabled (before, the principal's key_id label was not read and the ±120 s window
    took it)."""
    now = datetime.now(UTC)
    caller = f"//iam.googleapis.com/projects/acme-prod-4821/serviceAccounts/{SA}/keys/caller0001"
    det = _signed_by(unnamed(now), caller)
    s, keys = _unnamed_case(responder, gcp, tmp_path, det, {"caller0001": (now - timedelta(seconds=5),
                                                                           "GOOGLE_PROVIDED")})
    assert s["status"] == "refused" and "signed the call" in json.dumps(s), s
    assert keys == {"caller0001": False}


def test_a_key_made_a_minute_before_the_call_is_not_the_one_it_made(responder, gcp, tmp_path):
    """A key valid from 60 s before the record cannot be the one the call made (IAM stamps a new key
    with the time of the call): with no other key the case is refused, nothing disabled."""
    now = datetime.now(UTC)
    s, keys = _unnamed_case(responder, gcp, tmp_path, unnamed(now),
                            {"early0001": (now - timedelta(seconds=60), "GOOGLE_PROVIDED")})
    assert s["status"] == "refused" and "0 keys" in json.dumps(s), s
    assert keys == {"early0001": False}


def test_the_key_id_detection_field_is_set_aside_and_the_new_key_disabled(responder, gcp, tmp_path):
    """The rule's key_id detection field names a key made 3 s before the record (inside the clock-skew
    margin): it may be the caller's, so it is set aside; the one other key made then is disabled."""
    now = datetime.now(UTC)
    det = unnamed(now)  # its detectionFields key_id is DECOY
    s, keys = _unnamed_case(responder, gcp, tmp_path, det, {DECOY: (now - timedelta(seconds=3), "GOOGLE_PROVIDED"),
                                                            "fresh0001": (now, "GOOGLE_PROVIDED")})
    assert s["status"] == "contained", s
    assert keys == {DECOY: False, "fresh0001": True}
    found = s["enrichment"]["gcp.unnamed-sa-key"]
    assert found["set_aside"] == [f"projects/acme-prod-4821/serviceAccounts/{SA}/keys/{DECOY}"], found


def test_an_unnamed_uploaded_key_is_the_user_provided_one(responder, gcp, tmp_path):
    """UploadServiceAccountKey: the key's validAfterTime is the certificate's notBefore, made before
    the upload; a Google-provided key made at the same moment (another caller's create) is not it."""
    now = datetime.now(UTC)
    det = unnamed(now)
    det["collectionElements"][0]["references"][0]["event"]["metadata"]["productEventType"] = \
        "google.iam.admin.v1.UploadServiceAccountKey"
    seeded = {"upload0001": (now - timedelta(seconds=90), "USER_PROVIDED"), "other0001": (now, "GOOGLE_PROVIDED")}
    s, keys = _unnamed_case(responder, gcp, tmp_path, det, seeded)
    assert s["status"] == "contained", s
    assert keys == {"upload0001": True, "other0001": False}


def test_an_event_naming_only_the_key_that_signed_the_call_names_no_key(tmp_path):
    """target.resource.name is the key the principal's key_id label says signed the call: that is not
    the key the call made, so the detection names none (and gcp-sa-key-unnamed never takes it)."""
    det = _signed_by(example(), KEY)
    (d,) = run(tmp_path, det)
    assert d.credential.uid is None and d.credential.attributes["callerKey"] == KEY, d.credential
    assert d.actor.session_uid == KEY


ENTRA_APP = "8d2f0e3b-6a4c-4f9b-8d7e-3a2b1c0d9e8f"


def test_an_entra_application_credential_is_the_applications_as_the_entra_record_says(tmp_path):
    """"Update application – Certificates and secrets management" (the activity the SecOps rule
    entra_id_secret_added_to_app matches) is about the application object: the detection's owner is
    the Application, as the Entra record's target is, and both are one case."""
    from cordon.providers.azure.detections import detections_from_entra_audit
    from tests.test_entra_unnamed_credential import DUMMY, record

    when = datetime(2026, 11, 20, 3, 52, 18, tzinfo=UTC)
    activity = "Update application \u2013 Certificates and secrets management "  # as Entra writes it
    raw = record(when, target=ENTRA_APP, target_type="Application")
    raw["activityDisplayName"] = activity
    (native,) = detections_from_entra_audit(raw, DUMMY, "raw", 0)
    chron = with_event(example(), metadata={"eventTimestamp": when.isoformat().replace("+00:00", "Z"),
                                            "productEventType": activity, "productName": "Azure AD Directory Audit",
                                            "vendorName": "Microsoft"},
                       principal={"user": {"userid": "mallory@contoso.example"}, "ip": ["203.0.113.7"]},
                       target={"resource": {"name": "payments-api", "productObjectId": ENTRA_APP}})
    (d,) = run(tmp_path, chron)
    assert native.credential.owner.type == "Application"
    assert (d.credential.kind, d.credential.uid, d.credential.owner.uid, d.credential.owner.type) == (
        native.credential.kind, None, ENTRA_APP, "Application")
    assert d.credential.attributes["objectType"] == "Application" and d.case_key() == native.case_key()


SECRET_A = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
SECRET_B = "Zq8~vJ3.Lm2_example-client-secret-value"


def test_secrets_in_udm_labels_and_additional_fields_are_redacted_at_intake(tmp_path):
    """UDM carries a log's extra fields as key/value lists (labels ``{"key", "value"}``,
    ``additional.fields`` with protobuf Values ``{"stringValue": ...}``): a secret there is redacted
    before the detection (or the dead letter of a bad object) reaches the ledger."""
    from cordon.audit.ledger import Ledger
    from cordon.engine import Responder

    event_extra = {"additional": {"fields": [{"key": "secretAccessKey", "value": {"stringValue": SECRET_A}},
                                             {"key": "client_secret", "value": {"stringValue": SECRET_B}}]}}
    det = with_event(example(), **event_extra)
    det["collectionElements"][0]["references"][0]["event"]["target"]["resource"]["attribute"] = {
        "labels": [{"key": "password", "value": SECRET_B}]}
    other = with_event(example(), **event_extra, metadata={"eventTimestamp": "2026-11-20T03:14:07Z",
                                                           "productEventType": "storage.objects.get"})
    other["detection"][0]["ruleName"] = "gcs_bucket_enumeration"
    bad = {**with_event(example(), **event_extra), "detection": [{"ruleId": "ru_x"}]}
    path = tmp_path / "detections.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (det, other, bad)))
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    report = Responder(ledger=ledger).intake([path])
    assert len(report.cases) == 1 and len(report.rejected) == 1, report
    with ledger.engine.connect() as conn:
        from sqlalchemy import text

        tables = [r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        dump = json.dumps([[list(r) for r in conn.execute(text(f'SELECT * FROM "{t}"'))] for t in tables],
                          default=str)
    assert "ru_x" in dump and "gcs_bucket_enumeration" in dump  # the dead letter and the suppressed one are there
    assert SECRET_A not in dump and SECRET_B not in dump
