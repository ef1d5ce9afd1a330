"""EKS access entries (issue 17): ``CreateAccessEntry`` and ``AssociateAccessPolicy`` with a
cluster-admin access policy in CloudTrail (T1098.006) are matched by Cordon's rules, routed to their
playbooks and contained exactly: the entry the record names is deleted (another entry made since
under the same principal, with another ARN, is refused), the policy the record names is
disassociated (the entry's other policies stay); rollback creates both again. boto3's own ``eks``
client talks over HTTP to the AWS stand-in (moto 5.2 has no access entries).

The records are ``examples/cloudtrail-eks-access-entry.json`` (written for Cordon; no public
CloudTrail sample of these calls is in ../shared/data/real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cordon.action import ActionContext, get_action
from tests.responder_fixtures import *  # noqa: F401,F403 - the responder fixture

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cloudtrail-eks-access-entry.json"
ACCOUNT = "111122223333"
PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:role/ci-runner"
ADMIN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
VIEW = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"


def detections():
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.providers import shipped_rule_dirs
    from cordon.sigma import RuleSet

    return {d.event_name: d for d in detect(read_inputs([EXAMPLE]), RuleSet.load(shipped_rule_dirs()))}


def eks(aws):
    return aws.clients("eks", region="eu-west-1")


def test_the_rules_match_and_the_records_name_the_entry_and_the_policy(tmp_path):
    dets = detections()
    entry, policy = dets["CreateAccessEntry"], dets["AssociateAccessPolicy"]
    assert entry.rule.name == "Amazon EKS Access Entry Created" and entry.technique_ids == ["T1098.006"]
    assert (entry.credential.kind, entry.credential.uid) == ("aws_eks_access_entry", f"prod-eu/{PRINCIPAL}")
    assert entry.credential.attributes["accessEntryArn"].endswith("/ci-runner/84c6a1b2-0d3e-4f5a-9b8c-7d6e5f4a3b2c")
    assert (entry.target.uid, entry.target.type, entry.target.name) == (PRINCIPAL, "Role", "ci-runner")
    assert policy.rule.name == "Amazon EKS Admin Access Policy Associated"
    assert policy.credential.kind == "aws_eks_access_policy"
    assert policy.credential.attributes["policyArn"] == ADMIN
    # a node entry EKS makes for a node group, a view policy and a failed call open nothing
    record = json.loads(EXAMPLE.read_text())["Records"]
    node = json.loads(json.dumps(record[0]))
    node["requestParameters"]["type"] = "EC2_LINUX"
    view = json.loads(json.dumps(record[1]))
    view["requestParameters"]["policyArn"] = VIEW
    failed = {**record[0], "errorCode": "AccessDeniedException", "responseElements": None}
    path = tmp_path / "more.json"
    path.write_text(json.dumps({"Records": [node, view, failed]}))
    from cordon.detections.intake import read_inputs
    from cordon.detections.pipeline import detect
    from cordon.providers import shipped_rule_dirs
    from cordon.sigma import RuleSet

    assert [d for d in detect(read_inputs([path]), RuleSet.load(shipped_rule_dirs())) if not d.suppressed] == []


def test_the_example_is_contained_exactly_in_the_sandbox_and_rolled_back(responder, aws):
    summaries = list(responder.run_all(responder.intake([EXAMPLE]), approval="auto", stand_ins=aws))
    by_playbook = {s["playbook"]: s for s in summaries}
    assert set(by_playbook) == {"aws-eks-access-entry", "aws-eks-access-policy"}, summaries
    for s in summaries:
        assert s["status"] == "contained" and s["verified"] is True, s
    neighbour = f"arn:aws:iam::{ACCOUNT}:role/cordon-sandbox-neighbour"
    assert eks(aws).describe_access_entry(clusterName="prod-eu", principalArn=neighbour)["accessEntry"]
    (entry,) = by_playbook["aws-eks-access-entry"]["actions"]
    assert [(c["operation"], c["params"]) for c in entry["calls"]] == [
        ("DeleteAccessEntry", {"clusterName": "prod-eu", "principalArn": PRINCIPAL})]
    assert {p["policyArn"] for p in entry["before"]["policies"]} >= {VIEW}
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        eks(aws).describe_access_entry(clusterName="prod-eu", principalArn=PRINCIPAL)
    assert responder.ledger.verify().ok
    # rollback, last case first: the entry and its stored policies come back
    for s in reversed(summaries):
        for outcome in responder.rollback(s["case_id"], aws.clients, "cli:alice"):
            assert outcome["status"] in ("rolled_back", "already_rolled_back"), outcome
    back = eks(aws).list_associated_access_policies(clusterName="prod-eu", principalArn=PRINCIPAL)
    assert VIEW in {p["policyArn"] for p in back["associatedAccessPolicies"]}


def test_a_policy_is_disassociated_alone_and_a_remade_entry_is_refused(aws):
    dets = detections()
    policy_det, entry_det = dets["AssociateAccessPolicy"], dets["CreateAccessEntry"]
    aws.use_account(ACCOUNT)
    aws.standin.add_eks_access_entry(ACCOUNT, "prod-eu", PRINCIPAL, region="eu-west-1",
                                     policies=[{"policyArn": VIEW}, {"policyArn": ADMIN}])
    action = get_action("aws.disassociate-eks-access-policy")()
    ctx = ActionContext(detection=policy_det, clients=aws.clients, params={
        "cluster_name": "prod-eu", "principal_arn": PRINCIPAL, "policy_arn": ADMIN, "region": "eu-west-1"})
    done = action.run(ctx)
    assert done.status == "contained" and done.after is None, done
    left = eks(aws).list_associated_access_policies(clusterName="prod-eu", principalArn=PRINCIPAL)
    assert [p["policyArn"] for p in left["associatedAccessPolicies"]] == [VIEW]
    assert action.run(ctx).status == "already_contained"
    # the entry standing now was made by add_eks_access_entry, not by the record: another ARN
    delete = get_action("aws.delete-eks-access-entry")()
    refused = delete.run(ActionContext(detection=entry_det, clients=aws.clients, params={
        "cluster_name": "prod-eu", "principal_arn": PRINCIPAL, "region": "eu-west-1"}))
    assert refused.status == "refused" and "made again" in refused.error, refused
    assert eks(aws).describe_access_entry(clusterName="prod-eu", principalArn=PRINCIPAL)["accessEntry"]
    # parameters naming another principal than the record's are refused before any call
    assert get_action("aws.delete-eks-access-entry").check_identifies(
        {"cluster_name": "prod-eu", "principal_arn": f"arn:aws:iam::{ACCOUNT}:role/other"}, entry_det)
