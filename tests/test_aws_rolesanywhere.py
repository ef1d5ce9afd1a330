"""IAM Roles Anywhere persistence (issue 14, item 6): an attacker's X.509 CA registered as a trust anchor
(``CreateTrustAnchor``) and a profile naming the roles its certificates may assume (``CreateProfile``),
T1098.001. Each is matched by its Sigma rule, routed to its playbook and disabled exactly (by the ID and
ARN the record names), with rollback; another object answering for the ID is refused.

The records are the real ones of Stratus Red Team's ``aws.persistence.rolesanywhere-create-trust-anchor``
detonation log (DataDog/stratus-red-team @ 7c9a7a5a, ``docs/detonation-logs/``; anonymised region
``cn-northsouth-3r``), read from ``../shared/data/real/`` at run time. moto has no Roles Anywhere: the
sandbox's stand-in serves it over HTTP (REST-JSON) and boto3's own ``rolesanywhere`` client talks to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordon.action import ActionContext, get_action
from tests.conftest import STRATUS_LOGS, detection_from_event, stratus_event
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

LOG = "aws.persistence.rolesanywhere-create-trust-anchor"
ACCOUNT = "791182566784"
ANCHOR = "4d07f6a0-1c50-44d3-951b-b68b783daa0a"
PROFILE = "910042eb-8463-427d-8095-6fd60ac303d9"
OTHER = "0b9c4ad1-2f39-4a6e-9a53-7c1d2e3f4a5b"

pytestmark = pytest.mark.skipif(not STRATUS_LOGS.exists(), reason="the shared corpus is not here")


def anchor_detection():
    return detection_from_event(stratus_event(LOG, "CreateTrustAnchor"))


def profile_detection():
    return detection_from_event(stratus_event(LOG, "CreateProfile"))


def ctx(aws, det, **params):
    return ActionContext(detection=det, params=params, clients=aws.clients)


def enabled(aws, kind: str, object_id: str) -> bool:
    client = aws.clients("rolesanywhere", region="cn-northsouth-3r")
    if kind == "trustanchor":
        return client.get_trust_anchor(trustAnchorId=object_id)["trustAnchor"]["enabled"]
    return client.get_profile(profileId=object_id)["profile"]["enabled"]


def test_the_rules_match_and_the_records_name_the_objects():
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.providers import shipped_rule_dirs
    from cordon.sigma import RuleSet

    dets = {d.event_name: d for d in detect(read_inputs([STRATUS_LOGS / f"{LOG}.json"]),
                                            RuleSet.load(shipped_rule_dirs()))}
    anchor, profile = dets["CreateTrustAnchor"], dets["CreateProfile"]
    assert anchor.rule.name == "IAM Roles Anywhere Trust Anchor Created" and anchor.technique_ids == ["T1098.001"]
    assert (anchor.credential.kind, anchor.credential.uid) == ("aws_rolesanywhere_trust_anchor", ANCHOR)
    assert anchor.credential.attributes["arn"] == (
        f"arn:aws:rolesanywhere:cn-northsouth-3r:{ACCOUNT}:trust-anchor/{ANCHOR}")
    assert anchor.credential.attributes["sourceType"] == "CERTIFICATE_BUNDLE"
    assert "CERTIFICATE" not in str(anchor.credential.attributes.get("arn"))  # the CA bundle is not copied
    assert profile.rule.name == "IAM Roles Anywhere Profile Created"
    assert (profile.credential.kind, profile.credential.uid) == ("aws_rolesanywhere_profile", PROFILE)
    role = f"arn:aws:iam::{ACCOUNT}:role/stratus-red-team-trust-anchor-role"
    assert profile.credential.attributes["roleArns"] == [role]
    assert anchor.credential.owner.name == "christophe" and anchor.account_uid == ACCOUNT


def test_exactly_the_trust_anchor_is_disabled_idempotent_and_rolled_back(aws):
    det = anchor_detection()
    aws.seed_from_detection(det)
    aws.standin.add_rolesanywhere(ACCOUNT, "trustanchor", OTHER, region="cn-northsouth-3r", name="corp-ca")
    action = get_action("aws.disable-trust-anchor")()
    result = action.run(ctx(aws, det, trust_anchor_id=ANCHOR, region="cn-northsouth-3r"))
    assert result.status == "contained", result.error
    assert [c.describe() for c in result.calls] == [f"rolesanywhere:DisableTrustAnchor(trustAnchorId={ANCHOR})"]
    assert result.before["enabled"] is True and result.after["enabled"] is False
    assert result.before["arn"] == det.credential.attributes["arn"] and result.before["same_object"] is True
    assert enabled(aws, "trustanchor", ANCHOR) is False and enabled(aws, "trustanchor", OTHER) is True
    assert action.verify(ctx(aws, det, trust_anchor_id=ANCHOR))[0] is True

    again = action.run(ctx(aws, det, trust_anchor_id=ANCHOR))
    assert again.status == "already_contained" and again.calls == []

    undone = action.rollback(ctx(aws, det, trust_anchor_id=ANCHOR), result)
    assert undone.status == "rolled_back", undone.error
    assert [c.operation for c in undone.calls] == ["EnableTrustAnchor"] and enabled(aws, "trustanchor", ANCHOR)
    assert "DisableTrustAnchor" in aws.standin.operations()


def test_another_trust_anchor_answering_for_the_id_is_refused(aws):
    """The same ID read back under another ARN (another account or region than the record's) is not the
    trust anchor the record names: refused, left enabled; and a step naming another ID is refused by the
    guard's identity check."""
    det = anchor_detection()
    aws.use_account(ACCOUNT)
    aws.standin.add_rolesanywhere(ACCOUNT, "trustanchor", ANCHOR, region="eu-west-1", name="not-the-one")
    result = get_action("aws.disable-trust-anchor")().run(ctx(aws, det, trust_anchor_id=ANCHOR))
    assert result.status == "refused" and result.calls == [], result
    assert "trust-anchor/" in result.error and "not the one named" in result.error
    assert enabled(aws, "trustanchor", ANCHOR) is True
    reason = get_action("aws.disable-trust-anchor").check_identifies({"trust_anchor_id": OTHER}, det)
    assert reason and "is not the detection's credential.uid" in reason


def test_a_missing_trust_anchor_is_already_contained(aws):
    aws.use_account(ACCOUNT)
    result = get_action("aws.disable-trust-anchor")().run(ctx(aws, anchor_detection(), trust_anchor_id=ANCHOR))
    assert result.status == "already_contained" and result.data == {"missing": True}


def test_exactly_the_profile_is_disabled_and_rolled_back(aws):
    det = profile_detection()
    aws.seed_from_detection(det)
    action = get_action("aws.disable-rolesanywhere-profile")()
    result = action.run(ctx(aws, det, profile_id=PROFILE))
    assert result.status == "contained", result.error
    assert [c.describe() for c in result.calls] == [f"rolesanywhere:DisableProfile(profileId={PROFILE})"]
    assert result.before["role_arns"] == det.credential.attributes["roleArns"]
    assert enabled(aws, "profile", PROFILE) is False
    assert action.run(ctx(aws, det, profile_id=PROFILE)).status == "already_contained"
    assert action.rollback(ctx(aws, det, profile_id=PROFILE), result).status == "rolled_back"
    assert enabled(aws, "profile", PROFILE) is True


def test_the_grants_follow_from_the_declarations():
    from cordon.providers.aws.grants import aws_policy

    policy = aws_policy([get_action("aws.disable-trust-anchor"), get_action("aws.disable-rolesanywhere-profile")])
    by_sid = {s["Sid"]: s["Action"] for s in policy["Statement"]}
    assert by_sid["AwsDisableTrustAnchor"] == ["rolesanywhere:DisableTrustAnchor", "rolesanywhere:EnableTrustAnchor",
                                               "rolesanywhere:GetTrustAnchor"]
    assert by_sid["AwsDisableRolesanywhereProfile"] == ["rolesanywhere:DisableProfile", "rolesanywhere:EnableProfile",
                                                        "rolesanywhere:GetProfile"]


def test_the_detonation_log_is_contained_end_to_end(responder, aws):
    """The whole detonation log through intake, routing and the respond flow (auto approval) on the
    sandbox, seeded from the detections: both objects disabled and verified."""
    summaries = list(responder.run_all(responder.intake([STRATUS_LOGS / f"{LOG}.json"]), approval="auto",
                                       stand_ins=aws))
    by_playbook = {s["playbook"]: s for s in summaries}
    assert set(by_playbook) == {"aws-rolesanywhere-trust-anchor", "aws-rolesanywhere-profile"}, summaries
    for s in summaries:
        assert s["status"] == "contained" and s["verified"] is True, s
    (anchor,) = by_playbook["aws-rolesanywhere-trust-anchor"]["actions"]
    assert [(c["operation"], c["params"]) for c in anchor["calls"]] == [
        ("DisableTrustAnchor", {"trustAnchorId": ANCHOR})]
    assert enabled(aws, "trustanchor", ANCHOR) is False and enabled(aws, "profile", PROFILE) is False
    assert responder.ledger.verify().ok


def test_the_example_is_contained_in_the_sandbox(responder, aws):
    """``examples/cloudtrail-rolesanywhere-trust-anchor.json`` (made-up IDs, the detonation log's shape),
    as the quick start would answer it: both objects seeded, disabled and verified."""
    path = Path(__file__).resolve().parents[1] / "examples" / "cloudtrail-rolesanywhere-trust-anchor.json"
    summaries = list(responder.run_all(responder.intake([path]), approval="auto", stand_ins=aws))
    assert sorted(s["playbook"] for s in summaries) == ["aws-rolesanywhere-profile",
                                                        "aws-rolesanywhere-trust-anchor"]
    assert all(s["status"] == "contained" and s["verified"] for s in summaries), summaries
