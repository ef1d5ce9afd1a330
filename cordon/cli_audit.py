"""``cordon audit ...``: read the audit ledger from the command line (a Typer sub-app).

``cordon audit list``
    Cases with filters (``--since/--until`` on the case's opening time, ISO 8601; ``--provider``,
    ``--account``, ``--principal`` (substring of actor / target / credential owner),
    ``--playbook``, ``--decision``, ``--outcome``), newest first, with decision, approver, time
    to approve and time to contain. ``--output json``: one JSON object per case per line.
    ``--stranded``: only the cases that are not closed and have no live run
    (:func:`cordon.recovery.find_stranded`: never run, the run's process gone, the run ended
    FAILED/CRASHED/CANCELLED), oldest first, each with why and who will run it again; runs Prefect
    could not report are listed as ``unknown``.
``cordon audit show CASE``
    The case's figures, its incident (ID, lead case, the other cases with their status), why its
    playbook was routed, the cases of its actor's own access, approvals and timeline: every record
    in order with a one-line description. ``--output json``: when the case is in an incident, first
    one line ``{"incident": {incident_id, actor_key, provider, opened_at, last_at, lead_case_id,
    actor, cases: [{case_id, status, playbook, event, credential, target, severity, opened_at}],
    statuses}}``, then one record per line (with ``text``); ``markdown``: the Prefect artifact's text.
``cordon audit incidents``
    Incidents (one actor's burst of cases), newest first: ID, opened, number of cases, their
    statuses, lead case and actor key. ``--limit``; ``--output json``: one incident per line (the
    shape above).
``cordon audit incident INCIDENT``
    One incident: its actor, actor key, lead case and every case with status, playbook, event,
    credential and target. ``--output json``: the incident as one object. Exit 1 when unknown.
``cordon audit export --format jsonl|csv|ocsf``
    Stream records with ``ts`` in ``[--since, --until)`` (optionally only of ``--case`` IDs or
    of cases matching the list filters) to ``-o FILE`` (written to ``FILE.part`` and renamed when
    complete) or stdout. Constant memory; formats in :mod:`cordon.audit.export`.
``cordon audit hash-password``
    Print an Argon2id hash for ``CORDON_AUDIT_USERS`` (the audit pages' HTTP Basic users).
``cordon audit refusals [--source slack|webhook|audit] [--close]``
    Unsigned or forged requests counted per window (:mod:`cordon.audit.refusals`): source,
    reason, count, a sample's remote address, and the ``seq`` of the chained ``<source>.refusals``
    summary (``open`` until the window has ended and been closed). ``--close`` chains the
    summaries of ended windows now (``cordon serve`` does it every 15 s).

The ledger is the one at ``CORDON_DATABASE_URL``. Bad filter input exits 2 naming the option.
Strings from the ledger are printed as text (Rich markup escaped; control characters dropped).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

audit_app = typer.Typer(help="Read, export and verify the audit ledger.", no_args_is_help=True)

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


class ListOutput(StrEnum):
    text = "text"
    json = "json"


class ShowOutput(StrEnum):
    text = "text"
    json = "json"
    markdown = "markdown"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"
    ocsf = "ocsf"


SinceOpt = Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no zone), inclusive.")]
UntilOpt = Annotated[str | None, typer.Option(help="Up to this time (ISO 8601), exclusive.")]
ProviderOpt = Annotated[str | None, typer.Option(help="A provider's name (detection.provider).")]
AccountOpt = Annotated[str | None, typer.Option(help="Account ID / project / tenant, exact.")]
PrincipalOpt = Annotated[str | None, typer.Option(help="Substring of the actor, target or credential owner.")]
PlaybookOpt = Annotated[str | None, typer.Option(help="Playbook name, exact.")]
DecisionOpt = Annotated[str | None, typer.Option(help="approve, deny, expired, not_required or none.")]
OutcomeOpt = Annotated[str | None, typer.Option(help="Case status: contained, denied, expired, refused, failed...")]


def _ledger():
    from cordon.audit.ledger import Ledger

    return Ledger()


def _filter(**values):
    from cordon.audit.query import CaseFilter, QueryError

    try:
        return CaseFilter.parse(**values)
    except QueryError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from None


@audit_app.command("list")
def audit_list(since: SinceOpt = None, until: UntilOpt = None, provider: ProviderOpt = None,
               account: AccountOpt = None, principal: PrincipalOpt = None, playbook: PlaybookOpt = None,
               decision: DecisionOpt = None, outcome: OutcomeOpt = None,
               limit: Annotated[int, typer.Option(min=0, help="At most this many cases (0: all).")] = 50,
               output: Annotated[ListOutput, typer.Option()] = ListOutput.text,
               stranded: Annotated[bool, typer.Option("--stranded", help="Only cases not closed whose run is gone "
                                                      "(or never started), with why.")] = False) -> None:
    """Cases matching the filters, newest first, with decision and timings."""
    from cordon.audit.query import format_seconds, iter_cases

    filt = _filter(since=since, until=until, provider=provider, account=account, principal=principal,
                   playbook=playbook, decision=decision, outcome=outcome)
    if stranded:
        _list_stranded(filt, limit, output)
        return
    n = 0
    for s in iter_cases(_ledger(), filt):
        if limit and n >= limit:
            err.print("[dim](more cases: raise --limit, 0 for all)[/dim]")
            break
        n += 1
        if output is ListOutput.json:
            print(json.dumps(s.to_dict(), default=str), flush=False)
            continue
        out.print(f"[bold]{escape(s.case_id)}[/bold]  {escape(s.opened_at[:19])}  {escape(s.status):<14} "
                  f"{escape(s.playbook or '-'):<30} {escape(s.provider or '-')} {escape(s.account or '-')}  "
                  f"decision={escape(s.decision)} by {escape(s.approver or '-')}  "
                  f"tta={format_seconds(s.time_to_approve)} ttc={format_seconds(s.time_to_contain)}  "
                  f"target={escape(s.target or '-')}")
    if output is ListOutput.text:
        err.print(f"{n} case(s)")


def _list_stranded(filt, limit: int, output: ListOutput) -> None:
    from cordon.audit.query import iter_cases
    from cordon.recovery import find_stranded

    ledger = _ledger()
    checks = find_stranded(ledger, include_unknown=True)
    if any(v is not None for v in vars(filt).values()):
        wanted = {s.case_id for s in iter_cases(ledger, filt)}
        checks = [c for c in checks if c.case_id in wanted]
    shown = checks[:limit] if limit else checks
    for c in shown:
        if output is ListOutput.json:
            print(json.dumps(c.to_dict(), default=str))
            continue
        state = "unknown" if c.live is None else "stranded"
        out.print(f"[bold]{escape(c.case_id)}[/bold]  {escape((c.opened_at or '')[:19])}  {escape(c.status):<14} "
                  f"{escape(c.playbook or '-'):<30} {state} attempt={c.attempt} mode={escape(c.mode or '?')} "
                  f"run={escape(c.flow_run_id or '-')}{' ' + escape(c.state) if c.state else ''}")
        out.print(f"    why: {escape(c.reason)}")
        out.print(f"    run again by: {escape(c.to_dict()['recovered_by'])}")
    if len(shown) < len(checks):
        err.print("[dim](more cases: raise --limit, 0 for all)[/dim]")
    if output is ListOutput.text:
        err.print(f"{len(checks)} stranded case(s)")


@audit_app.command("show")
def audit_show(case_id: str, output: Annotated[ShowOutput, typer.Option()] = ShowOutput.text) -> None:
    """The timeline of one case: figures, approvals, then every ledger record in order."""
    from cordon.audit.query import format_seconds, timeline

    ledger = _ledger()
    if output is ShowOutput.markdown:
        from cordon.audit.report import markdown_timeline

        try:
            print(markdown_timeline(ledger, case_id), end="")
        except KeyError:
            err.print(f"no case {escape(case_id)} in {escape(ledger.url)}")
            raise typer.Exit(1) from None
        return
    tl = timeline(ledger, case_id)
    if tl is None:
        err.print(f"no case {escape(case_id)} in {escape(ledger.url)}")
        raise typer.Exit(1)
    if output is ShowOutput.json:
        if tl.incident is not None:
            print(json.dumps({"incident": tl.incident.to_dict()}, default=str))
        for e in tl.entries:
            print(json.dumps({"seq": e.seq, "ts": e.ts, "kind": e.kind, "actor": e.actor, "run_id": e.run_id,
                              "text": e.text, "payload": e.payload, "hash": e.hash}, default=str))
        return
    s = tl.summary
    out.print(f"[bold]{escape(case_id)}[/bold] playbook={escape(s.playbook or '-')} status=[bold]"
              f"{escape(s.status)}[/bold] opened={escape(s.opened_at)}")
    out.print(f"  {escape(s.event or '-')} on {escape(s.provider or '-')} {escape(s.account or '-')} by "
              f"{escape(s.actor or '-')}; target {escape(s.target or '-')}; credential {escape(s.credential or '-')}")
    decided = f"decision {escape(s.decision)} by {escape(s.approver or '-')}"
    if tl.covered_by and s.decision == "none":
        c = tl.covered_by
        decided = (f"decision {escape(str(c.get('decision') or '-'))} by {escape(str(c.get('approver') or '-'))} "
                   f"on lead case {escape(str(c.get('lead_case_id')))}")
    out.print(f"  {decided}; time to approve "
              f"{format_seconds(s.time_to_approve)}; time to contain {format_seconds(s.time_to_contain)}")
    _print_links(tl)
    for a in s.approvals:
        out.print(f"  approval #{a.seq}: {escape(a.decision)} by {escape(a.approver or '-')}"
                  f"{' (' + escape(a.approver_name) + ')' if a.approver_name else ''}"
                  f" workspace {escape(a.team_id or '-')} at {escape(a.decided_at)}"
                  f" plan {escape(str(a.plan_hash)[:12])}"
                  f" after {format_seconds(a.seconds_to_decide)}")
    colour = {"error": "red", "warning": "yellow", "info": "bold"}
    for e in tl.entries:
        out.print(f"  #{e.seq} {escape(e.ts)} [{colour[e.level]}]{escape(e.kind)}[/{colour[e.level]}] "
                  f"by {escape(e.actor or '-')}  {escape(e.text)}")


def _print_links(tl) -> None:
    """The case's incident, why its playbook was routed and its actor-access cases (``audit show``)."""
    me = tl.case["case_id"]
    inc = tl.incident
    if inc is not None:
        lead = "this case" if inc.lead_case_id == me else escape(inc.lead_case_id)
        out.print(f"  incident [bold]{escape(inc.incident_id)}[/bold]: lead case {lead}; {len(inc.cases)} case(s): "
                  f"{escape(inc.status_text())}; actor {escape(inc.actor_name)}")
        for c in inc.others(me):
            role = " (lead)" if c.case_id == inc.lead_case_id else ""
            out.print(f"    {escape(c.case_id)}{role} {escape(c.status or 'unknown')} {escape(c.playbook or '-')} "
                      f"{escape(c.event or '-')} {escape(c.credential or '-')}")
    if tl.because:
        out.print(f"  routed because: {escape(tl.because)}")
    for link in tl.actor_access:
        cred = link.credential or {}
        what = f"{cred.get('kind') or '-'} {cred.get('uid') or '-'}"
        text = "the actor's own access is case" if link.relation == "actor_access" else "opened for the actor of case"
        out.print(f"  {text} {escape(link.case_id)} ({escape(what)})")


@audit_app.command("incidents")
def audit_incidents(limit: Annotated[int, typer.Option(min=0, help="At most this many incidents (0: all).")] = 50,
                    output: Annotated[ListOutput, typer.Option()] = ListOutput.text) -> None:
    """Incidents (the cases of one actor's burst), newest first, with their cases' statuses."""
    from cordon.audit.query import list_incidents

    found = list_incidents(_ledger(), limit=limit + 1 if limit else None)
    more = bool(limit) and len(found) > limit
    shown = found[:limit] if limit else found
    for inc in shown:
        if output is ListOutput.json:
            print(json.dumps(inc.to_dict(), default=str))
            continue
        out.print(f"[bold]{escape(inc.incident_id)}[/bold]  {escape(inc.opened_at[:19])}  {len(inc.cases)} case(s): "
                  f"{escape(inc.status_text())}  lead={escape(inc.lead_case_id)}  actor={escape(inc.actor_key)}")
    if more:
        err.print("[dim](more incidents: raise --limit, 0 for all)[/dim]")
    if output is ListOutput.text:
        err.print(f"{len(shown)} incident(s)")


@audit_app.command("incident")
def audit_incident(incident_id: str, output: Annotated[ListOutput, typer.Option()] = ListOutput.text) -> None:
    """One incident: its actor, lead case and every case with its status."""
    from cordon.audit.query import incident

    ledger = _ledger()
    inc = incident(ledger, incident_id)
    if inc is None:
        err.print(f"no incident {escape(incident_id)} in {escape(ledger.url)}")
        raise typer.Exit(1)
    if output is ListOutput.json:
        print(json.dumps(inc.to_dict(), default=str))
        return
    out.print(f"[bold]{escape(inc.incident_id)}[/bold] opened={escape(inc.opened_at)} last={escape(inc.last_at)} "
              f"provider={escape(inc.provider or '-')}")
    out.print(f"  actor {escape(inc.actor_name)}; key {escape(inc.actor_key)}")
    out.print(f"  {len(inc.cases)} case(s): {escape(inc.status_text())}; lead case {escape(inc.lead_case_id)}")
    for c in inc.cases:
        role = "lead  " if c.case_id == inc.lead_case_id else "member"
        out.print(f"  {role} [bold]{escape(c.case_id)}[/bold]  {escape(c.status or 'unknown'):<14} "
                  f"{escape(c.playbook or '-'):<30} {escape(c.event or '-')}  credential {escape(c.credential or '-')}"
                  f"  target {escape(c.target or '-')}")


@audit_app.command("export")
def audit_export(
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="jsonl, csv or ocsf (OCSF 1.8.0 JSON lines).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    since: SinceOpt = None, until: UntilOpt = None,
    case: Annotated[list[str] | None, typer.Option("--case", help="Only this case's records; repeat.")] = None,
    provider: ProviderOpt = None, account: AccountOpt = None, principal: PrincipalOpt = None,
    playbook: PlaybookOpt = None, decision: DecisionOpt = None, outcome: OutcomeOpt = None,
) -> None:
    """Stream ledger records (time range on each record's ts) as JSONL, CSV or OCSF."""
    from cordon.audit.export import export
    from cordon.audit.query import QueryError, parse_time

    try:
        lo, hi = parse_time(since, "since"), parse_time(until, "until")
    except QueryError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from None
    cases = _filter(provider=provider, account=account, principal=principal, playbook=playbook,
                    decision=decision, outcome=outcome)
    ledger = _ledger()
    chunks = export(ledger, format.value, since=lo, until=hi, cases=cases, case_ids=case or None)
    n = 0
    if output is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
            n += 1
        sys.stdout.flush()
    else:
        part = output.with_name(output.name + ".part")
        try:
            with part.open("w", encoding="utf-8", newline="") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                    n += 1
            os.replace(part, output)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    if format is ExportFormat.csv:
        n -= 1  # the header
    what = "event(s)" if format is ExportFormat.ocsf else "record(s)"
    err.print(f"exported {max(n, 0)} {what} as {format.value}{' to ' + escape(str(output)) if output else ''}")


@audit_app.command("refusals")
def audit_refusals(
    source: Annotated[str | None, typer.Option(help="slack, webhook or audit.")] = None,
    close: Annotated[bool, typer.Option("--close", help="Chain the summaries of the windows that have ended.")]
    = False,
    output: Annotated[ListOutput, typer.Option()] = ListOutput.text,
) -> None:
    """Refused unsigned requests counted per window, and whether the chain summarises them yet."""
    from cordon.audit.refusals import SOURCES, RefusalCounter

    if source is not None and source not in SOURCES:
        raise typer.BadParameter(f"{source!r} is not one of {', '.join(SOURCES)}", param_hint="--source")
    counter = RefusalCounter(_ledger())
    if close:
        for rec in counter.close_due():
            err.print(f"chained #{rec.seq} {escape(rec.kind)}: {rec.payload['count']} refusal(s) in the window from "
                      f"{escape(rec.payload['window_start'])}")
    windows = counter.windows(source)
    for w in windows:
        if output is ListOutput.json:
            print(json.dumps(dataclasses.asdict(w), default=str))
            continue
        remote = next((str(s.get("remote")) for s in w.samples if s.get("remote")), "-")
        out.print(f"{escape(w.window_start)}  {escape(w.source):<8} {escape(w.reason):<20} {w.count:>7}  "
                  f"e.g. from {escape(remote)}  {'#' + str(w.summary_seq) if w.summary_seq else 'open'}")
    if output is ListOutput.text:
        err.print(f"{sum(w.count for w in windows)} refusal(s) in {len(windows)} window row(s)")


@audit_app.command("hash-password")
def audit_hash_password(
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the password from stdin (first line).")] = False,
) -> None:
    """Print an Argon2id hash for a CORDON_AUDIT_USERS entry (name:hash) of the audit pages."""
    from cordon.server.pages import hash_password

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        print(hash_password(password))
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None


@audit_app.command("checkpoint")
def audit_checkpoint(
    export: Annotated[Path | None, typer.Option(help="Also write the checkpoint to this anchor file (keep it "
                                                     "outside the database: ticket, retained object storage).")] = None,
    latest: Annotated[bool, typer.Option(help="Export the newest stored checkpoint instead of signing a new one.")]
    = False,
) -> None:
    """Sign the ledger's head now with CORDON_LEDGER_KEY (HMAC-SHA256) and store the checkpoint;
    `cordon audit verify [--anchor FILE]` checks against it. Exit 2 when no key is configured."""
    from cordon.audit.checkpoint import LedgerKeyError

    try:
        ledger = _ledger()
        cp = ledger.latest_checkpoint() if latest else ledger.checkpoint()
    except (LedgerKeyError, RuntimeError) as exc:
        err.print(f"cannot checkpoint: {escape(str(exc))}")
        raise typer.Exit(2) from None
    if cp is None:
        err.print("no checkpoint stored yet: run `cordon audit checkpoint` without --latest")
        raise typer.Exit(2)
    out.print(f"checkpoint #{cp.id}: seq {cp.seq} hash {cp.hash} at {cp.ts} (key {cp.key_id})")
    if export:
        cp.write_anchor(export)
        out.print(f"anchor written to {escape(str(export))}")
