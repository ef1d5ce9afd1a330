"""Steps left to a person after containment (a playbook's ``manual:``).

Some containment has no API: Graph has no call that deletes a user's app passwords, so after Cordon
blocks legacy sign-in and revokes the sessions, a person must delete them on the per-user MFA page.
A playbook says so with ``manual:`` (:class:`cordon.playbooks.schema.ManualStep`: ``id``, ``text``).

* When a run's containment held (``contained``) and its playbook has manual steps, the run ends with
  the case ``awaiting_manual`` (:func:`await_manual`): its ``case.closed`` record carries
  ``manual: [{id, text}]``. The run is over (recovery leaves the case alone); the case is not.
* A person marks a step done (:func:`mark_done`: ``cordon case done CASE [--step ID]``, or the
  *Mark done* button of the case's Slack message): ``manual.done`` ``{step, by, note}``. When every
  step is done the case is closed ``contained`` (``case.closed`` ``{status, manual_done}``).
* :func:`pending` reads what is still to do from the ledger (the newest ``awaiting_manual``
  ``case.closed`` minus the ``manual.done`` records after it): no process memory.

Errors: :func:`mark_done` raises :class:`ManualStepError` with the reason (unknown case, the case is
not awaiting a manual step, an unknown or already done step).
"""

from __future__ import annotations

from typing import Any

from cordon.audit.ledger import Ledger

#: The status of a case whose containment held and which waits for a person's step.
AWAITING = "awaiting_manual"


class ManualStepError(ValueError):
    """A manual step cannot be marked done; the message says why."""


def await_manual(status: str | None, playbook: Any) -> tuple[str | None, list[dict[str, str]]]:
    """``(status, steps)`` a run ends with: ``(AWAITING, [{id, text}])`` when ``status`` is
    ``contained`` and ``playbook`` (a :class:`cordon.playbooks.schema.Playbook`) declares ``manual``
    steps, else ``(status, [])``."""
    steps = [{"id": m.id, "text": m.text.strip()} for m in getattr(playbook, "manual", None) or []]
    if status == "contained" and steps:
        return AWAITING, steps
    return status, []


def _pending(records: list[Any]) -> tuple[list[dict[str, str]], Any]:
    """``(steps not done, the awaiting case.closed record or None)`` of one case's ``records``."""
    opened = [r for r in records if r.kind == "case.closed" and r.payload.get("status") == AWAITING]
    if not opened:
        return [], None
    last = opened[-1]
    if any(r.kind == "case.closed" and r.seq > last.seq for r in records):
        return [], None
    done = {r.payload.get("step") for r in records if r.kind == "manual.done" and r.seq > last.seq}
    return [s for s in last.payload.get("manual") or [] if s.get("id") not in done], last


def pending(ledger: Ledger, case_id: str) -> list[dict[str, str]]:
    """The manual steps of ``case_id`` not marked done yet (``[{id, text}]``); ``[]`` when the case
    is not awaiting any."""
    return _pending(list(ledger.records(case_id=case_id)))[0]


def mark_done(ledger: Ledger, case_id: str, by: str, step: str | None = None,
              note: str | None = None) -> dict[str, Any]:
    """Record that ``by`` (``cli:<name>``, ``slack:<user id>``) did manual step ``step`` of
    ``case_id`` (``None``: the only one left). Returns ``{case_id, step, remaining: [ids], status}``;
    ``status`` is ``contained`` once nothing remains (the case is closed), else :data:`AWAITING`.

    One transaction under the ledger head's lock (:meth:`cordon.audit.ledger.Ledger.chained`):
    what is left is read, ``manual.done`` appended and, for the last step, the case closed together,
    so two people (two replicas, two clicks) marking the same step at once record it once; the
    second gets :class:`ManualStepError`. Raises :class:`ManualStepError` (module docstring)."""
    with ledger.chained() as w:
        case = w.case_row(case_id)
        if case is None:
            raise ManualStepError(f"no case {case_id}")
        if case.get("status") != AWAITING:
            raise ManualStepError(f"case {case_id} is {case.get('status')}, not awaiting a manual step")
        left, awaited = _pending(w.case_records(case_id))
        ids = [s["id"] for s in left]
        if step is None:
            if len(ids) != 1:
                raise ManualStepError(f"case {case_id} has {len(ids)} manual steps left ({', '.join(ids)}): name one")
            step = ids[0]
        if step not in ids:
            raise ManualStepError(f"case {case_id}: no manual step {step!r} left to do "
                                  f"(left: {', '.join(ids) or 'none'})")
        w.append("manual.done", {"step": step, "by": by, **({"note": note} if note else {})}, case_id=case_id,
                 actor=by)
        remaining = [i for i in ids if i != step]
        if remaining:
            return {"case_id": case_id, "step": step, "remaining": remaining, "status": AWAITING}
        done = [r.payload.get("step") for r in w.case_records(case_id)
                if r.kind == "manual.done" and r.seq > awaited.seq]
        ledger.close_case_in(w, case_id, "contained", {
            "status": "contained", "verified": awaited.payload.get("verified"),
            "approval": awaited.payload.get("approval") or {}, "manual_done": done}, actor=by)
    return {"case_id": case_id, "step": step, "remaining": [], "status": "contained"}
