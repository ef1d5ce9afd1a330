"""Approval channels behind one interface (issue 12, item 4): ``channel_for(mode, required)`` picks
the channel, each writes its own ledger records, and only Slack leaves the run waiting. The flow's
end-to-end behaviour on each channel is covered by the e2e, Slack and durability tests; these pin
the interface on a real ledger and a real playbook."""

from __future__ import annotations

from pathlib import Path

import pytest

from cordon.approvals.channels import (
    CHANNELS,
    AskContext,
    Asked,
    Auto,
    Both,
    Console,
    NotRequired,
    Slack,
    Teams,
    channel_for,
)
from cordon.approvals.console import NoTerminalError
from cordon.audit.ledger import Ledger
from cordon.config import load_config
from cordon.playbooks.schema import load_playbooks
from cordon.respond import Plan, PlanStep
from tests.conftest import detection_from_event

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _ctx(tmp_path, run_id: str | None = "run-1") -> AskContext:
    import json

    config = load_config()
    pb = next(p for p in load_playbooks(config.playbooks_dir) if p.name == "aws-access-key-created")
    event = json.loads((EXAMPLES / "cloudtrail-create-access-key.json").read_text())
    event = event["Records"][0] if "Records" in event else event
    plan = Plan(case_id="case-1", playbook=pb.name, hash="h" * 64,
                steps=[PlanStep(action="aws.deactivate-access-key", params={}, target="key",
                                describe=["iam:UpdateAccessKey(...)"])])
    return AskContext(ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"), case_id="case-1", run_id=run_id, plan=plan,
                      playbook=pb, config=config, detection=detection_from_event(event))


def test_the_channel_follows_the_mode_and_the_policy():
    assert isinstance(channel_for("auto", True), Auto)
    assert isinstance(channel_for("console", True), Console)
    assert isinstance(channel_for("slack", True), Slack)
    assert isinstance(channel_for("teams", True), Teams)
    assert isinstance(channel_for("both", True), Both)
    for mode in ("auto", "console", "slack", "teams", "both"):
        assert isinstance(channel_for(mode, False), NotRequired)
    assert set(CHANNELS) == {"auto", "console", "slack", "teams", "both"}
    with pytest.raises(KeyError, match=r"no approval channel 'pager' \(known: auto, both, console, slack, teams\)"):
        channel_for("pager", True)


def test_auto_and_not_required_decide_now_and_say_so_in_the_ledger(tmp_path):
    ctx = _ctx(tmp_path)
    asked = channel_for("auto", True).request(ctx)
    assert isinstance(asked, Asked) and not asked.waiting
    assert asked.decision == {"decision": "approve", "approver": "auto (--approve auto)", "plan_hash": "h" * 64}
    kinds = [(r.kind, r.run_id) for r in ctx.ledger.records(case_id="case-1")]
    assert kinds == [("approval.asked", "run-1"), ("approval.given", "run-1")]

    asked = channel_for("slack", False).request(ctx)
    assert asked.decision["approver"] == "policy: approval not required" and not asked.waiting
    assert [r.kind for r in ctx.ledger.records(case_id="case-1")][-1] == "approval.not_required"


def test_console_without_a_terminal_refuses_after_recording_the_question(tmp_path, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a pipe, not a terminal
    ctx = _ctx(tmp_path)
    with pytest.raises(NoTerminalError):
        channel_for("console", True).request(ctx)
    assert [r.kind for r in ctx.ledger.records(case_id="case-1")] == ["approval.asked"]


def test_slack_needs_a_flow_run_to_wait_on(tmp_path):
    ctx = _ctx(tmp_path, run_id=None)
    with pytest.raises(RuntimeError, match="needs a flow run ID"):
        channel_for("slack", True).request(ctx)
    assert list(ctx.ledger.records(case_id="case-1")) == []


def test_teams_posts_the_card_then_records_the_request_a_click_decides(tmp_path, monkeypatch):
    """``teams``: the Adaptive Card is posted to the connector (the Teams stand-in over HTTP), its
    reference kept (``teams.card_posted``), then ``approval.asked`` with ``mode: teams`` and the
    same policy fields as Slack's; the case waits and the decider's request state finds it."""
    from cordon.approvals.decide import request_state
    from cordon.sandbox.teams_standin import TeamsStandIn
    from tests.helpers import config_with_approvers, with_teams

    monkeypatch.setenv("CORDON_TEAMS_CONNECTOR_TOKEN", "standin-token")
    with TeamsStandIn() as teams:
        cfg = with_teams(config_with_approvers(tmp_path), teams)
        ctx = _ctx(tmp_path)
        ctx.config = load_config(cfg)
        asked = channel_for("teams", True).request(ctx)
        assert asked.waiting and asked.where is None and asked.quorum == 1 and asked.expires_at
        records = list(ctx.ledger.records(case_id="case-1"))
        assert [r.kind for r in records] == ["teams.card_posted", "approval.asked"]
        ref, req = records[0].payload, records[1].payload
        assert req["mode"] == "teams" and req["plan_hash"] == "h" * 64 and req["teams"]["activity_id"] == \
            ref["activity_id"]
        card = teams.activity("19:security-approvals@thread.tacv2", ref["activity_id"])
        content = card["attachments"][0]["content"]
        verbs = {a["verb"]: a["data"] for a in content["actions"]}
        assert verbs == {"cordon_approve": {"case_id": "case-1", "plan_hash": "h" * 64, "run_id": "run-1"},
                         "cordon_deny": {"case_id": "case-1", "plan_hash": "h" * 64, "run_id": "run-1"}}
        assert teams.requests[-1]["headers"]["authorization"] == "Bearer standin-token"
        st = request_state(records, "run-1", "h" * 64)
        assert st is not None and st.asked.seq == records[1].seq and st.where is None


def test_teams_without_a_destination_refuses_before_posting(tmp_path, monkeypatch):
    from cordon.config import ConfigError
    from tests.helpers import config_with_approvers

    ctx = _ctx(tmp_path)
    ctx.config = load_config(config_with_approvers(tmp_path))
    with pytest.raises(ConfigError, match="field 'teams': required to approve in Microsoft Teams"):
        channel_for("teams", True).request(ctx)
    assert [r.kind for r in ctx.ledger.records(case_id="case-1")] == []


def test_approval_channel_is_read_from_cordon_yaml_and_a_wrong_value_is_refused_by_name(tmp_path):
    import yaml

    from cordon.approvals.modes import configured_channel, waits
    from cordon.config import ConfigError
    from tests.helpers import config_with_approvers

    cfg = config_with_approvers(tmp_path)
    assert configured_channel(load_config(cfg)) == "slack"  # the default
    data = yaml.safe_load((cfg / "cordon.yaml").read_text())
    for value in ("teams", "both", "slack"):
        data["approval"]["channel"] = value
        (cfg / "cordon.yaml").write_text(yaml.safe_dump(data))
        assert configured_channel(load_config(cfg)) == value and waits(value)
    data["approval"]["channel"] = "pager"
    (cfg / "cordon.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"approval\.channel"):
        load_config(cfg)
    assert not waits("auto") and not waits("console")
