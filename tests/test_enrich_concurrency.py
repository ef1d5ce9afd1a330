"""A playbook's enrichment runs its independent steps concurrently where the provider's clients
are thread-safe (:func:`cordon.respond.enrich`, ``Provider.thread_safe_clients``), so the ask
waits for the slowest call rather than their sum; a step that reads earlier enrichment waits."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cordon.action import _REGISTRY, ActionContext, EnrichmentAction, Params, register
from cordon.playbooks.schema import Playbook
from cordon.respond import enrich

REPO = Path(__file__).resolve().parents[1]
_meeting = threading.Barrier(2, timeout=5)


class _Meet(EnrichmentAction):
    """Test action: waits (5 s at most) until the other ``test.meet-*`` step reaches the same
    point, which only a concurrent run allows."""

    provider = "aws"

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        _meeting.wait()
        return {"met": self.name, "thread": threading.current_thread().name}


class MeetA(_Meet):
    name = "test.meet-a"


class MeetB(_Meet):
    name = "test.meet-b"


class After(EnrichmentAction):
    """Test action: reports the enrichment it was given (it names ``enrichment`` in ``with``)."""

    name = "test.after-meeting"
    provider = "aws"

    class Params(Params):
        seen: str

    permissions: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: ActionContext) -> dict[str, Any]:
        return {"seen": ctx.params["seen"], "keys": sorted(ctx.enrichment)}


@pytest.fixture(autouse=True)
def _test_actions():
    """Registered for this module's tests only (the house's tests check every registered action)."""
    for cls in (MeetA, MeetB, After):
        register(cls)
    yield
    for cls in (MeetA, MeetB, After):
        _REGISTRY.pop(cls.name, None)


def _playbook() -> Playbook:
    return Playbook.model_validate({
        "name": "test-enrich-concurrency", "description": "test", "when": {"provider": "aws"},
        "enrich": [{"action": "test.meet-a"}, {"action": "test.meet-b"},
                   {"action": "test.after-meeting", "with": {"seen": "{{ enrichment['test.meet-a'].met }}"}}]})


def _detection(make_detection, provider: str = "aws"):
    det = make_detection(json.loads((REPO / "examples" / "cloudtrail-create-access-key.json").read_text()))
    return det.model_copy(update={"provider": provider})


def test_independent_steps_run_at_once_and_a_dependent_one_after_them(make_detection):
    _meeting.reset()
    facts = enrich(_playbook(), _detection(make_detection), clients=lambda *a, **k: None)
    assert list(facts) == ["test.meet-a", "test.meet-b", "test.after-meeting"]  # the playbook's order
    assert facts["test.meet-a"]["met"] == "test.meet-a" and facts["test.meet-b"]["met"] == "test.meet-b"
    assert facts["test.meet-a"]["thread"] != facts["test.meet-b"]["thread"]
    assert facts["test.after-meeting"] == {"seen": "test.meet-a", "keys": ["test.meet-a", "test.meet-b"]}


def test_clients_that_are_not_thread_safe_are_used_one_step_at_a_time(make_detection):
    _meeting.reset()
    facts = enrich(_playbook(), _detection(make_detection, "gcp"), clients=lambda *a, **k: None)
    # one after another: the first step waits alone at the meeting point and gives up
    assert "BrokenBarrierError" in facts["test.meet-a"]["error"]
    _meeting.reset()
    facts = enrich(_playbook(), _detection(make_detection), clients=lambda *a, **k: None, max_workers=1)
    assert "BrokenBarrierError" in facts["test.meet-a"]["error"]


def test_concurrent_enrichment_finds_what_one_step_at_a_time_finds(aws, make_detection):
    from cordon.clouds import clients_for
    from cordon.config import load_config
    from cordon.playbooks.schema import load_playbooks

    det = _detection(make_detection)
    aws.seed_from_detection(det)
    pb = next(p for p in load_playbooks(load_config().playbooks_dir) if p.name == "aws-access-key-created")
    assert len(pb.enrich) >= 3
    clients = clients_for("aws", {**aws.cloud_params(), "account_id": "111122223333"})
    together, apart = enrich(pb, det, clients), enrich(pb, det, clients, max_workers=1)
    assert list(together) == list(apart) == [s.action for s in pb.enrich]
    assert not any("error" in v for v in together.values() if isinstance(v, dict)), together
    assert json.dumps(together, sort_keys=True, default=str) == json.dumps(apart, sort_keys=True, default=str)
