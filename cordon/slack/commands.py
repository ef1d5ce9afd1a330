"""The ``/cordon`` slash command: ``run PLAYBOOK key=value...``, ``status CASE``, ``list``, ``help``.

Slack POSTs a signed, form-encoded request to ``/slack/commands``
(https://api.slack.com/interactivity/slash-commands#app_command_handling: ``command``, ``text``,
``user_id``, ``user_name``, ``team_id``, ``channel_id``, ``response_url``, ``trigger_id``) and wants
an HTTP 200 within 3 seconds. :meth:`CommandHandler.handle` therefore answers at once with an
ephemeral acknowledgement (``{"response_type": "ephemeral", "text": ...}``) and returns the work
to do afterwards (the server runs it as a background task): opening the modal with the
``trigger_id`` (valid for 3 seconds, so first), looking the case up, or starting the run; the
result goes to ``response_url`` (ephemeral, with ``slack_sdk.webhook.WebhookClient``).

``run`` checks the playbook and the parameters given before acknowledging (errors name the
parameter and the playbook file); missing parameters (or ``run`` alone) open the modal of
:mod:`cordon.slack.modal`; a complete, valid run starts through ``start_run(playbook, params,
requested_by)`` (the server wires :meth:`cordon.engine.Responder.manual` with Slack approval),
with ``requested_by`` = ``{"slack_user_id", "email"}`` (the Slack profile email from
``users.info`` when the bot may read it), so the requester cannot approve their own run.

Ledger records: ``slack.command_received`` (user, verb, text), ``slack.command_failed`` (the
background work raised), ``manual.requested`` / ``manual.refused`` (by :mod:`cordon.manual`).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from cordon.audit.ledger import Ledger
from cordon.manual import ManualRunError, check_params, find_playbook, missing_required, parse_pairs, runnable
from cordon.playbooks.schema import Playbook
from cordon.slack.modal import (
    PICK_CALLBACK_ID,
    PLAYBOOK_BLOCK_ID,
    ViewSubmission,
    field_errors,
    params_view,
    pick_view,
)
from cordon.slack.verify import InteractionError

#: Case statuses that need nobody any more; any other status is listed by ``/cordon list``.
FINAL_STATUSES = frozenset({"contained", "denied", "expired", "refused", "no_containment", "rolled_back",
                            "no_playbook", "closed"})

StartRun = Callable[[str, dict[str, Any], dict[str, str]], Mapping[str, Any]]
Work = Callable[[], None]


@dataclass(frozen=True)
class SlashCommand:
    """One verified slash-command request (fields as Slack sends them)."""

    command: str
    text: str
    user_id: str
    user_name: str | None
    team_id: str | None
    channel_id: str | None
    response_url: str | None
    trigger_id: str | None

    @property
    def actor(self) -> str:
        """``slack:<team>/<user>``, the ledger actor."""
        return f"slack:{self.team_id or '-'}/{self.user_id}"


def parse_slash_command(form_body: bytes) -> SlashCommand:
    """Parse a slash command's form body. Raises :class:`~cordon.slack.verify.InteractionError`
    naming the field (``body``, ``command``, ``user_id``) when it is not one."""
    try:
        form = {k: v[0] for k, v in parse_qs(form_body.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise InteractionError("body", "not UTF-8") from None
    for name in ("command", "user_id"):
        if not form.get(name):
            raise InteractionError(name, "missing form field")
    return SlashCommand(command=form["command"], text=form.get("text", ""), user_id=form["user_id"],
                        user_name=form.get("user_name") or None, team_id=form.get("team_id") or None,
                        channel_id=form.get("channel_id") or None, response_url=form.get("response_url") or None,
                        trigger_id=form.get("trigger_id") or None)


def ephemeral(text: str) -> dict[str, Any]:
    """An ephemeral answer (only the person who typed the command sees it)."""
    return {"response_type": "ephemeral", "text": text}


def post_to_response_url(response_url: str, body: Mapping[str, Any], *, timeout: int = 10) -> int:
    """POST ``body`` to a ``response_url`` with ``WebhookClient`` (retrying 429 / 5xx / connection
    errors); returns the HTTP status."""
    client = WebhookClient(response_url, timeout=timeout, retry_handlers=[
        ConnectionErrorRetryHandler(), RateLimitErrorRetryHandler(max_retry_count=2),
        ServerErrorRetryHandler(max_retry_count=2)])
    return client.send_dict(dict(body)).status_code


class CommandHandler:
    """Answers ``/cordon`` and Cordon's modal submissions (module docstring).

    ``ledger``: where commands are recorded and cases read; ``playbooks``: the loaded playbooks;
    ``start_run(playbook, params, requested_by) -> summary`` starts a manual run (raises
    :class:`~cordon.manual.ManualRunError` when refused); ``client``: a bot ``WebClient`` for
    ``views.open``, ``users.info`` and ``chat.postEphemeral`` (``None``: no modal, parameters
    must all be given); ``command``: the command's name.
    """

    def __init__(self, *, ledger: Ledger, playbooks: Sequence[Playbook], start_run: StartRun,
                 client: WebClient | None = None, command: str = "/cordon"):
        self.ledger = ledger
        self.playbooks = list(playbooks)
        self.start_run = start_run
        self.client = client
        self.command = command

    # -- the slash command -------------------------------------------------------------------
    def help_text(self) -> str:
        """Usage and the runnable playbooks with their parameters."""
        lines = [f"*{self.command}* — Cordon for on-call",
                 f"• `{self.command} run PLAYBOOK key=value ...` run a playbook on a credential you name "
                 "(missing parameters open a form; someone else approves)",
                 f"• `{self.command} run` choose the playbook in a form",
                 f"• `{self.command} status CASE` where a case stands",
                 f"• `{self.command} list` open cases",
                 f"• `{self.command} help` this text", "", "*Playbooks you can run:*"]
        for pb in runnable(self.playbooks):
            params = " ".join(f"{n}={'…' if p.required else '[…]'}" for n, p in pb.parameters.items())
            lines.append(f"• `{pb.name}` {params}")
        return "\n".join(lines)

    def handle(self, cmd: SlashCommand) -> tuple[dict[str, Any], Work | None]:
        """``(acknowledgement, work)``: the JSON to answer at once, and what to do after it was
        sent (``None``: nothing). Never raises for user input: bad input is told in the answer."""
        try:
            words = shlex.split(cmd.text)
        except ValueError as exc:
            words, bad = [], f"could not read the command: {exc}"
        else:
            bad = None
        verb = words[0].lower() if words else "help"
        self.ledger.append("slack.command_received", {"command": cmd.command, "verb": verb, "text": cmd.text[:2000],
                                                      "user_id": cmd.user_id, "user_name": cmd.user_name,
                                                      "channel_id": cmd.channel_id}, actor=cmd.actor)
        if bad:
            return ephemeral(f":warning: {bad}\n\n{self.help_text()}"), None
        if verb == "help":
            return ephemeral(self.help_text()), None
        if verb == "list":
            return ephemeral("Looking up open cases…"), self._later(cmd, self._list_text)
        if verb == "status":
            if len(words) != 2:
                return ephemeral(f"usage: `{self.command} status CASE`"), None
            return ephemeral(f"Looking up {words[1]}…"), self._later(cmd, lambda: self._status_text(words[1]))
        if verb == "run":
            return self._run(cmd, words[1:])
        return ephemeral(f":warning: unknown subcommand `{verb}`\n\n{self.help_text()}"), None

    def _later(self, cmd: SlashCommand, make_text: Callable[[], str]) -> Work:
        def work() -> None:
            try:
                text = make_text()
            except Exception as exc:  # noqa: BLE001 - recorded and told to the user
                self._failed(cmd, exc)
                text = f":x: Cordon could not answer: {type(exc).__name__}: {exc}"
            self._answer(cmd, text)
        return work

    def _answer(self, cmd: SlashCommand, text: str) -> None:
        if cmd.response_url:
            post_to_response_url(cmd.response_url, {"response_type": "ephemeral", "replace_original": False,
                                                    "text": text})

    def _failed(self, cmd: SlashCommand, exc: Exception) -> None:
        self.ledger.append("slack.command_failed", {"text": cmd.text[:2000], "error": f"{type(exc).__name__}: {exc}"},
                           actor=cmd.actor)

    def _list_text(self) -> str:
        open_cases = [c for c in self.ledger.cases() if c["status"] not in FINAL_STATUSES]
        if not open_cases:
            return "No open cases."
        lines = [f"*{len(open_cases)} open case(s)*"]
        for c in open_cases[:50]:
            lines.append(f"• `{c['case_id']}` {c['status']} · {c['playbook'] or 'no playbook'} · "
                         f"opened {c['opened_at']}")
        if len(open_cases) > 50:
            lines.append(f"… and {len(open_cases) - 50} more (`cordon audit cases`)")
        return "\n".join(lines)

    def _status_text(self, case_id: str) -> str:
        case = self.ledger.case(case_id)
        if case is None:
            return f"No case `{case_id}`."
        records = list(self.ledger.records(case_id=case_id))
        lines = [f"*{case_id}* · *{case['status']}* · playbook {case['playbook'] or '-'} · opened {case['opened_at']}"
                 + (f" · run `{case['flow_run_id']}`" if case.get("flow_run_id") else "")]
        for r in records[-10:]:
            lines.append(f"• {r.ts} `{r.kind}` by {r.actor or '-'}")
        return "\n".join(lines)

    def _run(self, cmd: SlashCommand, args: list[str]) -> tuple[dict[str, Any], Work | None]:
        if not args:
            return self._open_modal(cmd, None, {}, "Opening the form…")
        try:
            pb = find_playbook(self.playbooks, args[0])
            given = parse_pairs(args[1:], pb.name)
        except ManualRunError as exc:
            return ephemeral(f":warning: {exc}"), None
        _, errors = check_params(pb, given)
        missing = missing_required(pb, given)
        wrong = {k: v for k, v in errors.items() if k not in missing}
        if wrong:
            return ephemeral(f":warning: {ManualRunError(pb.name, pb.path, wrong)}"), None
        if missing:
            ack = f"Opening the form for `{pb.name}` (missing: {', '.join(missing)})…"
            return self._open_modal(cmd, pb, given, ack)
        return (ephemeral(f"Starting `{pb.name}`… You asked for it, so someone else must approve it."),
                self._start(cmd.user_id, pb.name, given, lambda text: self._answer(cmd, text), cmd.actor))

    def _open_modal(self, cmd: SlashCommand, pb: Playbook | None, given: Mapping[str, Any],
                    ack: str) -> tuple[dict[str, Any], Work | None]:
        if self.client is None or not cmd.trigger_id:
            return ephemeral(f"Cordon cannot open a form here (no bot token or no trigger): give every parameter.\n\n"
                             f"{self.help_text()}"), None
        try:
            view = params_view(pb, given, channel_id=cmd.channel_id) if pb else pick_view(
                runnable(self.playbooks), channel_id=cmd.channel_id)
        except ValueError as exc:
            return ephemeral(f":warning: {exc}"), None
        client = self.client

        def work() -> None:
            try:
                client.views_open(trigger_id=cmd.trigger_id, view=view)
            except Exception as exc:  # noqa: BLE001 - recorded and told to the user
                self._failed(cmd, exc)
                self._answer(cmd, f":x: Cordon could not open the form: {exc}")
        return ephemeral(ack), work

    def _requester(self, user_id: str) -> dict[str, str]:
        who = {"slack_user_id": user_id}
        if self.client is not None:
            try:
                email = self.client.users_info(user=user_id)["user"].get("profile", {}).get("email")
            except Exception:  # noqa: BLE001 - no users:read.email scope, or Slack unreachable: ID only
                email = None
            if email:
                who["email"] = email
        return who

    def _start(self, user_id: str, playbook: str, params: Mapping[str, Any], tell: Callable[[str], None],
               actor: str) -> Work:
        def work() -> None:
            try:
                summary = self.start_run(playbook, dict(params), self._requester(user_id))
            except ManualRunError as exc:
                tell(f":warning: {exc}")
                return
            except Exception as exc:  # noqa: BLE001 - recorded and told to the user
                self.ledger.append("slack.command_failed", {"playbook": playbook, "error": f"{type(exc).__name__}: "
                                                            f"{exc}"}, actor=actor)
                tell(f":x: Cordon could not start `{playbook}`: {type(exc).__name__}: {exc}")
                return
            status = summary.get("status")
            if status == "joined_open_case":
                tell(f"That credential already has case `{summary['case_id']}`; no second run was started "
                     f"(`{self.command} status {summary['case_id']}`).")
            else:
                tell(f"Case `{summary['case_id']}` opened for `{playbook}` ({status}). The approval request goes to "
                     f"the approvers' channel; you cannot approve it yourself.")
        return work

    # -- the modal ---------------------------------------------------------------------------
    def handle_view(self, sub: ViewSubmission) -> tuple[dict[str, Any] | None, Work | None]:
        """``(answer, work)`` for a Cordon modal submission: ``response_action`` ``update`` (the
        chosen playbook's form), ``errors`` (per field, nothing started) or ``clear`` (the run
        starts in ``work``; the outcome is posted ephemerally in the command's channel)."""
        actor = f"slack:{sub.team_id or '-'}/{sub.user_id}"
        if sub.callback_id == PICK_CALLBACK_ID:
            name = sub.values.get(PLAYBOOK_BLOCK_ID)
            try:
                pb = find_playbook(self.playbooks, name or "")
            except ManualRunError as exc:
                return {"response_action": "errors", "errors": {PLAYBOOK_BLOCK_ID: str(exc)[:300]}}, None
            return {"response_action": "update", "view": params_view(pb, {}, channel_id=sub.channel_id)}, None
        try:
            pb = find_playbook(self.playbooks, sub.playbook or "")
        except ManualRunError as exc:
            first = next(iter(sub.values), PLAYBOOK_BLOCK_ID)
            return {"response_action": "errors", "errors": {first: str(exc)[:300]}}, None
        given = sub.params()
        _, errors = check_params(pb, given)
        if errors:
            self.ledger.append("manual.refused", {"playbook": pb.name, "path": pb.path, "errors": errors,
                                                  "parameters": given, "requested_by": {"slack_user_id": sub.user_id}},
                               actor=actor)
            return field_errors(errors), None

        def tell(text: str) -> None:
            if self.client is None:
                return
            try:
                if sub.channel_id:
                    self.client.chat_postEphemeral(channel=sub.channel_id, user=sub.user_id, text=text)
                else:
                    self.client.chat_postMessage(channel=sub.user_id, text=text)
            except Exception as exc:  # noqa: BLE001 - the run goes on; the failure is recorded
                self.ledger.append("slack.command_failed", {"playbook": pb.name, "error": f"telling the user: {exc}"},
                                   actor=actor)

        return {"response_action": "clear"}, self._start(sub.user_id, pb.name, given, tell, actor)
