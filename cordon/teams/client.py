"""Posting the approval card into Teams and updating it in place (Bot Framework connector).

:class:`Connector` calls the connector REST API at an activity's ``serviceUrl``:
``POST /v3/conversations/{conversationId}/activities`` (send, answers ``{"id"}``) and
``PUT /v3/conversations/{conversationId}/activities/{activityId}`` (update), with the bot's
token; a 429 is retried after its ``Retry-After`` (seconds; Teams throttles at about 7 messages
a second per conversation), at most ``attempts`` times in all.

:class:`TeamsCards` keeps the card's reference (conversation id, activity id, ``serviceUrl``) in
the ledger (a ``teams.card_posted`` record: the database every replica and a restarted Cordon
read; no table of its own, as the Slack message's ``where`` lives in ``approval.asked``), and
updates the card after each decision from the ledger's state.

Sources: Bot Framework REST API reference, "Send to conversation" and "Update activity",
https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-api-reference;
Teams rate limits, https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from cordon.approvals.gate import settling_claim
from cordon.audit.ledger import Ledger
from cordon.detections.model import Detection
from cordon.slack.verify import DecisionOutcome, Interaction
from cordon.teams.card import approval_card, decided_card, status_card
from cordon.teams.verify import TeamsSettings

POSTED_KIND = "teams.card_posted"
UPDATED_KIND = "teams.card_updated"
UPDATE_FAILED_KIND = "teams.update_failed"
CARD_TYPE = "application/vnd.microsoft.card.adaptive"


class ConnectorError(RuntimeError):
    """The connector refused a call: ``status`` (HTTP) and its body (clipped)."""

    def __init__(self, status: int, body: str):
        self.status = status
        super().__init__(f"connector answered {status}: {body[:200]}")


#: The scope of the bot's token for the Bot Framework connector.
BOT_SCOPE = "https://api.botframework.com/.default"
LOGIN = "https://login.microsoftonline.com"


def bot_token_provider(settings: TeamsSettings, *, login: str = LOGIN,
                       verify: str | bool = True) -> Callable[[], str]:
    """``token()`` for the connector: the bot's access token from Entra by client credentials
    (MSAL ``ConfidentialClientApplication``, authority ``<login>/<tenant>`` for a single-tenant bot,
    scope :data:`BOT_SCOPE`; MSAL caches it until shortly before it expires), the secret read from
    the environment variable ``settings.app_password_env`` at once (``KeyError`` when unset); the
    MSAL client is built at the first call. ``login`` is Entra's login host (another cloud's, or the
    Azure sandbox's TLS stand-in, with ``verify`` its CA bundle: then instance discovery is off).
    ``token()`` raises ``RuntimeError`` naming Entra's error when no token is issued.
    Source: https://learn.microsoft.com/azure/bot-service/rest-api/bot-framework-rest-connector-authentication
    ("Bot to connector")."""
    secret = os.environ[settings.app_password_env]
    apps: list[Any] = []  # MSAL discovers the authority over the network: built at the first call

    def token() -> str:
        import msal
        import requests

        if not apps:
            session = requests.Session()
            if verify is not True:  # a CA bundle of its own: REQUESTS_CA_BUNDLE must not replace it
                session.verify = verify
                session.trust_env = False
            apps.append(msal.ConfidentialClientApplication(
                settings.app_id, client_credential=secret, authority=f"{login.rstrip('/')}/{settings.tenant_id}",
                http_client=session, instance_discovery=login == LOGIN))
        got = apps[0].acquire_token_for_client(scopes=[BOT_SCOPE])
        if "access_token" not in got:
            raise RuntimeError(f"no bot token: {got.get('error')}: {got.get('error_description')}")
        return got["access_token"]

    return token


class Connector:
    """The connector at ``service_url``; ``token()`` returns a bearer token; ``sleep`` waits
    (seconds) before a retry; ``attempts`` caps the calls per operation."""

    def __init__(self, service_url: str, token: Callable[[], str], *, attempts: int = 4,
                 sleep: Callable[[float], None] = time.sleep, timeout: float = 10.0):
        self.service_url = service_url.rstrip("/") + "/"
        self.token = token
        self.attempts = attempts
        self.sleep = sleep
        self.timeout = timeout

    def _call(self, method: str, path: str, activity: Mapping[str, Any]) -> dict[str, Any]:
        for attempt in range(1, self.attempts + 1):
            r = httpx.request(method, self.service_url + path, json=dict(activity), timeout=self.timeout,
                              headers={"Authorization": f"Bearer {self.token()}"})
            if r.status_code == 429 and attempt < self.attempts:
                retry = r.headers.get("retry-after", "1")
                self.sleep(min(float(retry) if retry.replace(".", "", 1).isdigit() else 1.0, 60.0))
                continue
            if r.status_code >= 300:
                raise ConnectorError(r.status_code, r.text)
            return r.json() if r.content else {}
        raise AssertionError("unreachable")

    def send(self, conversation_id: str, activity: Mapping[str, Any]) -> str:
        """Send ``activity`` to the conversation; returns the new activity id. Raises
        :class:`ConnectorError` or ``httpx.HTTPError``."""
        return str(self._call("POST", f"v3/conversations/{quote(conversation_id, safe='')}/activities",
                              activity)["id"])

    def update(self, conversation_id: str, activity_id: str, activity: Mapping[str, Any]) -> None:
        """Replace the activity ``activity_id`` with ``activity``; raises as :meth:`send`."""
        self._call("PUT", f"v3/conversations/{quote(conversation_id, safe='')}/activities/"
                          f"{quote(activity_id, safe='')}", {**activity, "id": activity_id})


def card_activity(card: Mapping[str, Any]) -> dict[str, Any]:
    """A message activity carrying the Adaptive Card ``card``."""
    return {"type": "message", "attachments": [{"contentType": CARD_TYPE, "content": dict(card)}]}


class TeamsCards:
    """The approval cards of one ledger. ``connector_for(service_url) -> Connector``."""

    def __init__(self, ledger: Ledger, connector_for: Callable[[str], Connector]):
        self.ledger = ledger
        self.connector_for = connector_for

    def post_request(self, *, service_url: str, conversation_id: str, case_id: str, run_id: str, playbook: str,
                     detection: Mapping[str, Any], plan: Mapping[str, Any], expires_at: str | None,
                     quorum: int) -> dict[str, Any]:
        """Post the request card (:func:`cordon.teams.card.approval_card`) and record its reference
        as ``teams.card_posted`` (``service_url``, ``conversation_id``, ``activity_id``,
        ``plan_hash``, plus what rebuilding the card needs); returns that payload."""
        card = approval_card(case_id=case_id, playbook=playbook, detection=detection, plan=plan, run_id=run_id,
                             expires_at=expires_at, quorum=quorum)
        activity_id = self.connector_for(service_url).send(conversation_id, card_activity(card))
        ref = {"service_url": service_url, "conversation_id": conversation_id, "activity_id": activity_id,
               "plan_hash": plan.get("hash"), "playbook": playbook, "expires_at": expires_at, "quorum": quorum}
        self.ledger.append(POSTED_KIND, ref, case_id=case_id, run_id=run_id, actor="cordon")
        return ref

    def reference(self, case_id: str, run_id: str | None = None) -> dict[str, Any] | None:
        """The last posted card of ``case_id`` (and ``run_id`` when given), from the ledger."""
        found = None
        for r in self.ledger.records(case_id=case_id, kind_prefix=POSTED_KIND):
            if run_id is None or r.run_id == run_id:
                found = r.payload
        return found

    def after_decision(self, ix: Interaction, outcome: DecisionOutcome) -> None:
        """Update the card of ``ix``'s case after a click (Teams' or, for ``approval: both``,
        Slack's) for everyone, from the ledger: a decision's (:meth:`refresh`) or a rollback's
        (:meth:`after_rollback`). Never raises."""
        if ix.decision == "rollback":
            self.after_rollback(ix.case_id, ix.run_id)
            return
        if ix.decision == "manual_done":
            self.after_manual(ix.case_id, ix.run_id)
            return
        self.refresh(ix.case_id, ix.run_id, accepted=outcome.accepted)

    def after_rollback(self, case_id: str, run_id: str | None) -> bool:
        """The card after a *Roll back* click, from the ledger: the rollback's outcome, one line
        per action (``rollback.completed``), or the rollback approvals so far (``rollback.vote``)
        with the button still there. Returns whether the card was updated."""
        from cordon.approvals.decide import ROLLBACKABLE, distinct_voters, principal

        found = self._context(case_id, run_id)
        case = self.ledger.case(case_id) or {}
        if found is None:
            return False
        ref, records, _, _ = found
        done = [r.payload for r in records if r.kind == "rollback.completed" and r.run_id == run_id]
        status = str(case.get("status"))
        if done:
            story = [f"{o.get('name')} on {o.get('target')}: {o.get('status')}"
                     + (f" ({o['error']})" if o.get("error") else "") for o in done[-1].get("outcomes") or []]
            story = ["Rolled back" if done[-1].get("ok") else "Rollback incomplete: see each action", *story]
        else:
            voters = [principal(u) for u in distinct_voters(records, "rollback.vote", run_id, ref["plan_hash"])]
            story = [f"Rollback requested by {', '.join(voters)} ({len(voters)} of {ref['quorum']} approvals)"]
        return self.show_status(case_id, run_id, status, story, rollback=status in ROLLBACKABLE)

    def _context(self, case_id: str, run_id: str | None) -> tuple[dict[str, Any], list[Any], dict[str, Any],
                                                                   dict[str, Any]] | None:
        ref = self.reference(case_id, run_id)
        case = self.ledger.case(case_id)
        if ref is None or case is None:
            return None
        records = list(self.ledger.records(case_id=case_id))
        plan = next((r.payload for r in reversed(records) if r.kind == "plan.created"
                     and r.payload.get("hash") == ref["plan_hash"]), {"hash": ref["plan_hash"], "steps": []})
        try:
            summary = Detection.model_validate_json(case["detection"]).summary() if case.get("detection") else {}
        except ValueError:  # a redacted or older record: show what there is
            summary = {}
        return ref, records, plan, summary

    def refresh(self, case_id: str, run_id: str | None, *, accepted: bool | None = None) -> bool:
        """Rebuild the card of ``case_id``'s run ``run_id`` from the ledger and update it in place
        for everyone: the decision (who, when, outcome) once the request is settled, else the
        approvals so far out of the quorum with the sweeper's notes (escalation, reminders).
        Returns whether the card was updated; a case without a card is ``False``. A failed update
        is recorded (``teams.update_failed``), never raised: the decision stands."""
        found = self._context(case_id, run_id)
        if found is None:
            return False
        ref, records, plan, summary = found
        run = run_id or ""
        from cordon.approvals.decide import principal, request_state

        st = request_state(records, run_id, ref["plan_hash"])
        claim = settling_claim(records, run_id, ref["plan_hash"])
        if claim is not None:
            p = claim.payload
            verb = {"approve": "approved", "deny": "denied"}.get(str(p.get("decision")), str(p.get("decision")))
            by = p.get("approvers") or [p.get("approver")]
            card = decided_card(case_id=case_id, playbook=ref["playbook"], detection=summary, plan=plan,
                                run_id=run, outcome=verb, by=[str(b) for b in by if b], at=claim.ts)
        else:
            voters = [principal(u) for u in (st.votes if st is not None else [])]
            notes = []
            if st is not None and st.escalated is not None:
                notes.append(f"Escalated to {st.escalated.payload.get('escalate_to')} at "
                             f"{st.escalated.payload.get('at')}: they may approve or deny now")
            if st is not None and st.reminders:
                notes.append(f"{len(st.reminders)} reminder(s) sent")
            card = approval_card(case_id=case_id, playbook=ref["playbook"], detection=summary, plan=plan,
                                 run_id=run, expires_at=ref.get("expires_at"), quorum=ref["quorum"],
                                 approvals=voters, notes=notes)
        return self._update(case_id, run_id, ref, card, accepted)

    def after_manual(self, case_id: str, run_id: str | None) -> bool:
        """The card after *Mark done*: the steps still left to a person (with the button for the
        next), or the case closed contained. Returns whether the card was updated."""
        from cordon.manual_steps import pending

        case = self.ledger.case(case_id) or {}
        left = pending(self.ledger, case_id) if case.get("status") == "awaiting_manual" else []
        done = [r.payload for r in self.ledger.records(case_id=case_id, kind_prefix="manual.done")]
        story = [f"Step {d.get('step')} marked done by {d.get('by')}" for d in done]
        return self.show_status(case_id, run_id, str(case.get("status")), story, manual=left)

    def show_status(self, case_id: str, run_id: str | None, status: str, story: Sequence[str],
                    rollback: bool = False, manual: Sequence[Mapping[str, Any]] = ()) -> bool:
        """Update the card with the run's outcome (:func:`cordon.teams.card.status_card`: the
        case's ``status``, the ``story`` lines, a *Roll back* button with ``rollback``); what the
        flow calls where it updates the Slack message. Returns whether it was updated (``False``
        without a card); never raises."""
        found = self._context(case_id, run_id)
        if found is None:
            return False
        ref, _, plan, summary = found
        card = status_card(case_id=case_id, playbook=ref["playbook"], detection=summary, plan=plan,
                           run_id=run_id or "", status=status, story=story, rollback=rollback, manual=manual)
        return self._update(case_id, run_id, ref, card, None)

    def _update(self, case_id: str, run_id: str | None, ref: Mapping[str, Any], card: Mapping[str, Any],
                accepted: bool | None) -> bool:
        try:
            self.connector_for(ref["service_url"]).update(ref["conversation_id"], ref["activity_id"],
                                                          card_activity(card))
        except Exception as exc:  # noqa: BLE001 - recorded; the decision stands
            self.ledger.append(UPDATE_FAILED_KIND, {"error": f"{type(exc).__name__}: {exc}"[:300], **ref},
                               case_id=case_id, run_id=run_id, actor="cordon")
            return False
        self.ledger.append(UPDATED_KIND, {"activity_id": ref["activity_id"], "accepted": accepted},
                           case_id=case_id, run_id=run_id, actor="cordon")
        return True
