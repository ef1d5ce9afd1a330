"""``cordon``: the command line (Typer + Rich).

Scripts depend on ``cordon respond --output json`` (one JSON object per case per line) and on the
exit codes: 0 when every record was handled, 2 when some were rejected (each named on stderr), 1
on a configuration error; ``cordon audit verify`` exits 0 only when the chain holds.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="Cordon: incident-response playbooks for cloud credential persistence.",
                  no_args_is_help=True, add_completion=False)
from cordon.cli_audit import audit_app  # noqa: E402 - list / show / export live there

playbooks_app = typer.Typer(help="List and validate playbooks.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(playbooks_app, name="playbooks")
config_app = typer.Typer(help="Check cordon.yaml and what it names.", no_args_is_help=True)
app.add_typer(config_app, name="config")
db_app = typer.Typer(help="The ledger database's schema (Alembic) and grants.", no_args_is_help=True)
app.add_typer(db_app, name="db")
from cordon.cli_sensor import sensor_app  # noqa: E402 - list / run / status live there

app.add_typer(sensor_app, name="sensor")
from cordon.cli_case import case_app  # noqa: E402 - pending / done live there

app.add_typer(case_app, name="case")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        import prefect

        from cordon import DISTRIBUTION

        out.print(f"cordon {version(DISTRIBUTION)} (Prefect {prefect.__version__}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print Cordon's version and exit.")] = False) -> None:
    """Cordon: incident-response playbooks for cloud credential persistence."""


class ApproveMode(StrEnum):
    console = "console"
    slack = "slack"
    teams = "teams"
    both = "both"
    auto = "auto"

    @property
    def waits(self) -> bool:
        """Whether the run waits for a click (Slack, Teams or both): it runs on the deployment."""
        from cordon.approvals.modes import waits

        return waits(self.value)


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


def _prefect_defaults() -> None:
    """No analytics (no internet here), and patience for the temporary server's cold start."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _responder():
    from cordon.engine import Responder
    from cordon.playbooks.schema import PlaybookError
    from cordon.sigma import SigmaRuleError

    try:
        return Responder()
    except (PlaybookError, SigmaRuleError, ValueError) as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]configuration error:[/red] {escape(line)}", highlight=False)
        raise typer.Exit(1) from None


def _sandboxes():
    """The local stand-ins registered by the ``sandbox`` extra (:class:`cordon.standins.StandIns`,
    found by entry point), or one line naming the extra that installs them and exit 1."""
    from cordon.standins import StandIns, StandInsMissing

    try:
        return StandIns().check()
    except StandInsMissing as exc:
        from cordon import DISTRIBUTION

        hint = escape(f"{exc}; install it with pip install '{DISTRIBUTION}[sandbox]'")
        err.print(f"[red]the sandbox is not installed:[/red] {hint}", highlight=False)
        raise typer.Exit(1) from None


def _require_approvers(config=None, playbooks=None, mode: str = "slack") -> None:
    """The Slack and Teams paths start only with approvers configured
    (:func:`cordon.approvals.policy.require_approvers`), and Teams (``mode`` ``teams`` / ``both``)
    only with a ``teams`` section saying where to post
    (:func:`cordon.teams.channel.require_destination`); otherwise one line each and exit 1."""
    from cordon.approvals.modes import TEAMS_MODES
    from cordon.approvals.policy import require_approvers
    from cordon.config import ConfigError, load_config
    from cordon.playbooks.schema import PlaybookError

    try:
        config = config or load_config()
        require_approvers(config, playbooks)
        if mode in TEAMS_MODES:
            from cordon.teams.channel import require_destination

            require_destination(config)
    except (ConfigError, PlaybookError) as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]configuration error:[/red] {escape(line)}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def respond(
    paths: Annotated[list[str], typer.Argument(help="Files of events or findings; '-' reads stdin.")],
    sandbox: Annotated[bool, typer.Option(help="Run against local stand-ins seeded from the detections.")] = False,
    approve: Annotated[ApproveMode, typer.Option(help="Who approves containment.")] = ApproveMode.console,
    output: Annotated[OutputFormat, typer.Option(help="text for people, json for scripts.")] = OutputFormat.text,
) -> None:
    """Read detections, open cases, and answer each with its playbook."""
    _prefect_defaults()
    temp_server = None
    # a Teams rehearsal (--sandbox --approve teams) runs its own worker: it needs a server as well
    rehearse_teams = sandbox and approve is ApproveMode.teams
    if not approve.waits or rehearse_teams:  # boot Prefect's temporary server meanwhile
        from cordon.prefect_temp import start_early

        temp_server = start_early()
    if approve is ApproveMode.console and ("-" in paths or not sys.stdin.isatty()):
        if not sandbox:
            err.print("--approve console asks at the terminal, and there is none here (or stdin carries the "
                      "input): use --approve slack, or --approve auto to rehearse")
            raise typer.Exit(1)
        err.print("[yellow]no terminal to ask at: approving automatically, as --approve auto would (this is the "
                  "sandbox: nothing real is touched)[/yellow]")
        approve = ApproveMode.auto
    rehearsal = None
    if rehearse_teams:  # the stand-in, a worker, Cordon's endpoint and a scripted responder
        _sandboxes()  # a missing sandbox extra: one line, before anything starts
        from cordon.config import config_dir
        from cordon.standins import StandInsMissing
        from cordon.standins import rehearsal as rehearsal_class

        try:
            rehearsal = rehearsal_class("teams")()
        except StandInsMissing as exc:
            err.print(f"[red]the sandbox is not installed:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        rehearsal.configure(config_dir())
    responder = _responder()
    if approve.waits:
        _require_approvers(responder.config, responder.playbooks, approve.value)
    sb = _sandboxes() if sandbox else None  # before intake: a missing sandbox opens no case
    stdin = sys.stdin.buffer if "-" in paths else None
    report = responder.intake(paths, stdin=stdin)
    _print_intake(report, output)

    slack = _slack_settings(responder) if approve.waits else None
    errors = 0
    try:
        handled = {t.case_id for t in [*report.cases, *report.joined]}
        if temp_server is not None:
            temp_server.wait_ready(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        if rehearsal is not None:
            errors += _rehearse_teams(rehearsal, responder, report, sb, output)
        else:
            for summary in responder.run_all(report, approval=approve.value, stand_ins=sb, slack=slack):
                errors += _print_run(summary, output)
            # then the ledger's other stranded cases this invocation may run (cordon/recovery.py)
            errors += _recover_stranded(responder, approve.value, sb, slack, handled, output)
    finally:
        if rehearsal is not None:
            err.print(f"[cyan]sandbox:[/cyan] {escape(rehearsal.describe())}", highlight=False)
            rehearsal.stop()
        if sb is not None:
            err.print(f"[cyan]sandbox:[/cyan] local stand-ins ({sb.describe()}), seeded from the detections")
            sb.stop()
    if output is OutputFormat.text:
        err.print(f"{report.records_read} record(s) read, {report.detections} detection(s), {len(report.cases)} "
                  f"case(s) opened, {len(report.joined)} joined an open case, {len(report.suppressed)} suppressed, "
                  f"{len(report.rejected)} record(s) rejected. Ledger: {escape(responder.ledger.url)}",
                  highlight=False)
    else:
        print(json.dumps({"summary": {"read": report.records_read, "detections": report.detections,
                                      "cases": len(report.cases), "joined": len(report.joined),
                                      "suppressed": len(report.suppressed), "rejected": len(report.rejected),
                                      "failed": errors}}), flush=True)
    if errors:
        raise typer.Exit(1)
    if report.rejected:
        raise typer.Exit(2)


def _rehearse_teams(rehearsal, responder, report, sandbox, output: OutputFormat) -> int:
    """The Teams rehearsal (the sandbox's ``teams`` rehearsal, :func:`cordon.standins.rehearsal`):
    start its worker and endpoint, submit each case with ``approval="teams"``, click *Approve* on
    each card as the scripted responder, and print each case as the ledger closed it. Returns how
    many failed."""
    from cordon.approvals.decide import summary_from_ledger

    try:
        rehearsal.start(responder.ledger, responder.config)
    except RuntimeError as exc:  # the rehearsal's RehearsalError: a part did not come up
        err.print(f"[red]the Teams rehearsal could not start:[/red] {escape(str(exc))}", highlight=False)
        return 1
    errors = 0
    clicked: set[str] = set()  # an incident's cases share their lead's run, card and click
    for submitted in responder.run_all(report, approval="teams", stand_ins=sandbox):
        if submitted.get("status") != "awaiting_approval" or not submitted.get("flow_run_id"):
            errors += _print_run(submitted, output)
            continue
        case_id, run_id = submitted["case_id"], submitted["flow_run_id"]
        try:
            if run_id in clicked:
                rehearsal.wait_closed(responder.ledger, case_id, run_id)
            else:
                done = rehearsal.approve(responder.ledger, case_id, run_id)
                clicked.add(run_id)
                if output is OutputFormat.text:
                    err.print(f"[cyan]sandbox:[/cyan] the scripted responder clicked Approve on the Teams card of "
                              f"{case_id}: {escape(done['said'])}", highlight=False)
        except RuntimeError as exc:  # RehearsalError: a timeout or a refused click
            err.print(f"[red]{case_id}:[/red] {escape(str(exc))}", highlight=False)
            errors += 1
            continue
        summary = summary_from_ledger(list(responder.ledger.records(case_id=case_id)),
                                      responder.ledger.case(case_id) or {"case_id": case_id, "detection": "{}"})
        errors += _print_run(summary, output)
    return errors


def _print_intake(report, output: OutputFormat) -> None:
    """What the intake did besides opening cases: rejected records, suppressed detections and
    detections that joined an open case. Text goes to stderr (rejections always); with ``--output
    json`` each is also one object on stdout (``{"rejected": {...}}``, ``{"suppressed": {...}}``,
    ``{"joined": {...}}``), before the cases' objects and the closing ``{"summary": {...}}``."""
    for rej in report.rejected:  # named on stderr in both formats (exit code 2 points there)
        if output is OutputFormat.json:
            _json_line({"rejected": {"origin": rej.origin, "position": rej.position, "field": rej.field,
                                     "reason": rej.reason}})
        err.print(f"[yellow]rejected[/yellow] {escape(rej.message())} (kept in the dead-letter table)",
                  highlight=False)
    for det in report.suppressed:
        if output is OutputFormat.json:
            _json_line({"suppressed": {"reason": det.suppressed, "detection": det.summary()}})
        else:
            err.print(f"[dim]suppressed {det.source} {escape(det.finding_type or det.event_name or '')}: "
                      f"{escape(str(det.suppressed))}[/dim]", highlight=False)
    for ticket in report.joined:
        why = ticket.check.reason if ticket.check else None
        if output is OutputFormat.json:
            _json_line({"joined": {"case_id": ticket.case_id, "status": ticket.status, "rerun": ticket.run,
                                   "reason": why, "detection": ticket.detection.summary()}})
        elif ticket.run:
            err.print(f"[yellow]{escape(ticket.detection.rule.name or '')} joined case {ticket.case_id}, whose run is "
                      f"gone ({escape(why or '?')}): running it again[/yellow]", highlight=False)
        else:
            err.print(f"[dim]{escape(ticket.detection.rule.name or '')} joined case {ticket.case_id} "
                      f"({ticket.status})[/dim]", highlight=False)


def _one_line(text: Any, limit: int = 400) -> str:
    """``text`` on one line (whitespace runs folded), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _json_line(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, default=str), flush=True)


def _print_run(summary: dict[str, Any], output: OutputFormat) -> int:
    """Print one case's summary; 1 when its run failed or could not start (an error), else 0."""
    _print_case(summary, output)
    status = summary.get("status")
    if status == "error":
        err.print(f"[red]{summary['case_id']} failed:[/red] {escape(_one_line(summary['error']))}", highlight=False)
    elif status == "submit_failed":
        hint = (" Is `cordon worker` running (or the respond deployment created with `prefect deploy`)?"
                if "ObjectNotFound" in str(summary.get("error")) else "")
        err.print(f"[red]{summary['case_id']} could not be submitted to Prefect[/red] (recorded; recovery submits it "
                  f"again): {escape(_one_line(summary['error']))}.{hint}", highlight=False)
    elif status == "stranded":
        err.print(f"[red]{summary['case_id']} has no live run and this command may not run it:[/red] "
                  f"{escape(summary['error'])}")
    else:
        return 0
    return 1


def _recover_stranded(responder, approval: str, sandbox, slack, handled: set[str], output: OutputFormat) -> int:
    """Run again the stranded cases of the ledger recorded with this ``approval`` mode (after this
    intake's own cases); returns how many failed. Others are counted, not run."""
    from cordon.approvals.modes import waits
    from cordon.recovery import DEPLOYMENT, IN_PROCESS, recover

    where = DEPLOYMENT if waits(approval) else IN_PROCESS
    errors = skipped = 0
    for rec in recover(responder, modes={approval}, where=where, stand_ins=sandbox, slack=slack, exclude=handled):
        if rec.action == "skipped":
            skipped += 1
        elif rec.action == "gave_up":
            err.print(f"[red]stranded case {rec.case_id}: recovery gave up[/red] ({escape(rec.reason)})")
        elif rec.action == "lost":
            err.print(f"[dim]stranded case {rec.case_id} is being recovered by another process[/dim]")
        elif rec.summary is not None:
            err.print(f"[yellow]recovering stranded case {rec.case_id} (attempt {rec.attempt}):[/yellow] "
                      f"{escape(rec.reason)}")
            errors += _print_run(rec.summary, output)
    if skipped:
        err.print(f"[yellow]{skipped} other stranded case(s) in this ledger need another mode or the worker "
                  "(`cordon audit list --stranded`)[/yellow]")
    return errors


def _slack_settings(responder) -> dict[str, Any]:
    return {"channel": responder.config.slack_channel, "base_url": os.environ.get("CORDON_SLACK_API_URL")}


def _print_case(summary: dict[str, Any], output: OutputFormat) -> None:
    keep = ("case_id", "playbook", "status", "detection", "approval", "actions", "verified", "flow_run_id", "plan",
            "guard", "error")
    doc = {k: summary.get(k) for k in keep if k in summary}
    if output is OutputFormat.json:
        print(json.dumps(doc, default=str), flush=True)
        return
    det = summary["detection"]
    cred = det.get("credential") or {}
    out.print(f"[bold]{summary['case_id']}[/bold]  playbook={summary.get('playbook')}  status=[bold]"
              f"{summary.get('status')}[/bold]")
    out.print(f"  {_what_and_who(det)}")
    out.print(f"  target {det.get('target', {}).get('uid')}  credential {cred.get('kind')} {cred.get('uid')}")
    revealed = (cred.get("attributes") or {}).get("revealed_by")
    if isinstance(revealed, dict):  # a case Cordon opened for the actor's own access (actor_access in cordon.yaml)
        out.print(f"  the actor's own access: what the {revealed.get('event_name')} that added "
                  f"{revealed.get('credential_uid')} was signed with")
    appr = summary.get("approval") or {}
    if appr.get("decision"):
        out.print(f"  approval: {appr['decision']} by {appr.get('approver')}")
    if summary.get("guard"):
        out.print(f"  guard refused: {summary['guard'].get('reason')}")
    for a in summary.get("actions") or []:
        out.print(f"  {a['name']}: {a['status']}  {a['target']}  before={_brief(a.get('before'))} "
                  f"after={_brief(a.get('after'))}")
    if summary.get("verified") is not None:
        out.print(f"  verified: {summary['verified']}")
    for m in summary.get("manual") or []:
        out.print(f"  left to a person ({escape(m['id'])}): {escape(m['text'])}")
        out.print(f"    when done: cordon case done {escape(summary['case_id'])} --step {escape(m['id'])}")


def _what_and_who(det: dict[str, Any]) -> str:
    """One line: what happened, the techniques, who did it, from where, how; a manual run says so
    (its rule name) instead of an actor it does not have. Absent facts are left out."""
    rule = det.get("rule") or {}
    what = det.get("event_name") or det.get("finding_type") or rule.get("name") or "detection"
    techniques = det.get("technique_ids") or []
    line = what + (f" ({', '.join(techniques)})" if techniques else "")
    actor = det.get("actor") or {}
    who = (actor.get("user") or {}).get("uid") or (actor.get("user") or {}).get("name")
    if who:
        line += f" by {who}"
    if actor.get("src_ip"):
        line += f" from {actor['src_ip']}"
    if actor.get("access_path") and actor["access_path"] != "unknown":
        line += f" via {actor['access_path']}"
    return line


def _brief(state: Any) -> str:
    if not isinstance(state, dict):
        return str(state)
    for key in ("status", "Status", "exists", "attached", "present", "disabled", "state", "member_present"):
        if key in state:
            return f"{key}={state[key]}"
    return json.dumps(state, default=str)[:60]


@audit_app.command("verify")
def audit_verify(
    anchor: Annotated[Path | None, typer.Option(help="An anchor file from `cordon audit checkpoint --export`: "
                                                     "the chain must still reach it.")] = None,
) -> None:
    """Check the hash chain, the head, the signed checkpoints (key: CORDON_LEDGER_KEY) and the case
    and dead-letter rows the chain vouches for; exit 0 only when everything holds, 1 with the first
    problem (with a key configured, also when no checkpoint covers the chain), 2 when it cannot check."""
    from cordon.audit.checkpoint import Checkpoint
    from cordon.audit.ledger import Ledger
    from cordon.audit.migrations import SchemaError

    try:
        cp = Checkpoint.read_anchor(anchor) if anchor else None
        ledger = Ledger()
    except (ValueError, SchemaError) as exc:  # LedgerKeyError is a ValueError
        err.print(f"[red]cannot verify:[/red] {exc}")
        raise typer.Exit(2) from None
    res = ledger.verify(anchor=cp)
    url = ledger.engine.url.render_as_string(hide_password=True)
    for w in res.warnings:
        err.print(f"[yellow]warning:[/yellow] {w}")
    if res.ok:
        out.print(f"ledger OK: {res.checked} record(s) and {res.checkpoints} checkpoint(s) verified; {res.cases} "
                  f"case row(s) and {res.dead_letters} dead letter(s) match the chain ({url})")
        return
    where = f" at record {res.first_bad_seq}" if res.first_bad_seq is not None else ""
    err.print(f"[red]ledger BROKEN[/red]{where} ({res.problem}): {escape(res.reason or '')} "
              f"({res.checked} record(s) verified; {url})")
    raise typer.Exit(1)


@audit_app.command("dead-letters")
def audit_dead_letters() -> None:
    """Records that could not be parsed, with the reason."""
    from cordon.audit.ledger import Ledger

    for d in Ledger().dead_letters():
        out.print(f"#{d['id']} {d['ts']} {d['origin']} record {d['position']} field {d['field']}: {d['reason']}")


@audit_app.command("cases")
def audit_cases() -> None:
    """Every case, newest first."""
    from cordon.audit.ledger import Ledger

    for c in Ledger().cases():
        out.print(f"{c['case_id']}  {c['opened_at']}  {c['status']:<16} {c['playbook'] or '-'}")


@playbooks_app.command("list")
def playbooks_list(output: Annotated[OutputFormat, typer.Option(help="text for people, json for scripts.")]
                   = OutputFormat.text) -> None:
    """The loaded playbooks, in routing order: provider, credential kinds, what they contain, and
    whether they can be run by hand (`cordon run NAME`, with the parameters listed)."""
    from rich.table import Table

    responder = _responder()
    rows = [{"name": pb.name, "provider": pb.when.provider or "*", "credential_kinds": list(pb.when.credential_kinds),
             "contain": [s.action for s in pb.contain], "parameters": list(pb.parameters)}
            for pb in responder.playbooks]
    if output is OutputFormat.json:
        for row in rows:
            _json_line(row)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, wrap in (("playbook", False), ("provider", False), ("credential kinds", True), ("contain", True),
                      ("by hand (parameters)", True)):
        table.add_column(col, no_wrap=not wrap, overflow="fold")
    for row in rows:
        table.add_row(escape(row["name"]), row["provider"], escape(", ".join(row["credential_kinds"]) or "*"),
                      escape(", ".join(row["contain"]) or "-"), escape(", ".join(row["parameters"]) or "-"))
    # piped output would be 80 columns: keep one playbook per line there
    (out if out.is_terminal else Console(width=200, highlight=False)).print(table)


def _check_config() -> list[str]:
    """Everything ``cordon.yaml`` names, loaded as the server and the workers load it: the file
    against its schema, the approval section, each provider's section
    (:meth:`cordon.providers.Provider.check_config`), the playbooks and the Sigma rules. Returns
    one line per part; raises what the loaders raise."""
    from cordon.approvals.policy import load_settings
    from cordon.config import load_config
    from cordon.playbooks.schema import load_playbooks
    from cordon.providers import providers
    from cordon.sigma import RuleSet

    config = load_config()
    settings = load_settings(config)
    sections = [said for p in providers().values() if (said := p.check_config(config))]
    books = load_playbooks(config.playbooks_dir)
    rules = RuleSet.load(config.rules_dir)
    who = len(settings.users) + len(settings.groups)
    return [f"{config.directory / 'cordon.yaml'}: valid ({len(config.protected_principals)} protected principal "
            f"pattern(s), {who} approver(s)/group(s)" + "".join(f", {said}" for said in sections) + ")",
            f"{config.playbooks_dir}: {len(books)} playbook(s) valid",
            f"{_paths(config.rules_dir)}: {len(rules.rules)} Sigma rule(s) loaded"]


def _paths(value: Any) -> str:
    """A folder, or several (the providers' shipped rules), as one line."""
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


@config_app.command("validate")
def config_validate() -> None:
    """Validate cordon.yaml (unknown keys refused) and everything it names: approval settings, the
    providers' sections, the playbooks and the Sigma rules. Errors name file, line and key; exit 1."""
    from cordon.config import ConfigError
    from cordon.playbooks.schema import PlaybookError
    from cordon.sigma import SigmaRuleError

    try:
        lines = _check_config()
    except (ConfigError, PlaybookError, SigmaRuleError) as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]invalid:[/red] {escape(line)}", highlight=False)
        raise typer.Exit(1) from None
    for line in lines:
        out.print(escape(line), highlight=False)


@playbooks_app.command("validate")
def playbooks_validate(paths: Annotated[list[Path] | None, typer.Argument()] = None) -> None:
    """Validate playbook files (default: the configured folder, with cordon.yaml and its rules,
    as `cordon config validate`); errors name file, line, field."""
    from cordon.config import ConfigError
    from cordon.playbooks.schema import PlaybookError, load_playbook_text
    from cordon.sigma import SigmaRuleError

    try:
        if paths:
            for p in paths:
                load_playbook_text(p.read_text(encoding="utf-8"), str(p))
            out.print(f"{len(paths)} playbook(s) valid")
        else:
            for line in _check_config():
                out.print(escape(line), highlight=False)
    except (ConfigError, PlaybookError, SigmaRuleError) as exc:
        for line in str(exc).splitlines():
            err.print(f"[red]invalid:[/red] {escape(line)}", highlight=False)
        raise typer.Exit(1) from None


@app.command("run")
def run_playbook(
    playbook: Annotated[str, typer.Argument(help="Playbook name (one that declares parameters).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE; repeat for each.")] = None,
    sandbox: Annotated[bool, typer.Option(help="Run against local stand-ins seeded with the credential.")] = False,
    approve: Annotated[ApproveMode, typer.Option(help="Who approves containment (never you: you asked).")]
    = ApproveMode.slack,
    output: Annotated[OutputFormat, typer.Option(help="text for people, json for scripts.")] = OutputFormat.text,
) -> None:
    """Run a playbook by hand on a credential you name (the same case, ledger and approval as a
    detection). Exit 2 when the playbook or a parameter is refused (named on stderr), 1 when the run failed."""
    _prefect_defaults()
    from cordon.manual import ManualRunError, cli_requester, find_playbook, parse_pairs

    responder = _responder()
    sb = None
    if sandbox:
        sb = _sandboxes()
    slack = _slack_settings(responder) if approve.waits else None
    try:
        params = parse_pairs(param or [], playbook)
        if approve.waits:  # a wrong playbook name first (exit 2), then no approvers (exit 1)
            find_playbook(responder.playbooks, playbook)
            _require_approvers(responder.config, responder.playbooks, approve.value)
        summary = responder.manual(playbook, params, cli_requester(), approval=approve.value, stand_ins=sb,
                                   slack=slack)
    except ManualRunError as exc:
        err.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        if sb is not None:
            sb.stop()
    if _print_run(summary, output):
        raise typer.Exit(1)


@app.command()
def rollback(case_id: str,
             yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
             sandbox: Annotated[bool, typer.Option("--sandbox", help="For a case contained in the sandbox: "
                                                   "rehearse its rollback in fresh local stand-ins.")] = False,
             ) -> None:
    """Undo a case's containment where the cloud allows it (reactivate the key, detach Cordon's
    deny policies, ...), recorded in the ledger under your name. A case contained in the sandbox
    has nothing in a real cloud to undo: --sandbox rehearses its rollback instead (fresh stand-ins
    seeded from its detection, its plan applied again, then rolled back)."""
    import getpass

    from cordon.engine import SandboxCaseError

    responder = _responder()
    rehearsal = None
    try:
        clients = responder.case_clients(case_id, {})
        if sandbox:
            err.print(f"[red]{case_id} ran against real clouds:[/red] roll it back without --sandbox")
            raise typer.Exit(1)
    except SandboxCaseError as exc:
        if not sandbox:
            err.print(f"[red]{escape(str(exc))}[/red]; rehearse its rollback with --sandbox")
            raise typer.Exit(1) from None
        rehearsal = _sandboxes()
        clients = _rehearse_containment(responder, case_id, rehearsal)
    except (KeyError, ValueError) as exc:
        err.print(f"[red]{escape(str(exc).strip(chr(39)))}[/red]")
        raise typer.Exit(1) from None
    try:
        if not yes and not typer.confirm(f"Roll back the containment of {case_id}?", default=False):
            raise typer.Exit(1)
        try:
            outcomes = responder.rollback(case_id, clients, who=f"cli:{getpass.getuser()}")
        except (KeyError, ValueError) as exc:
            err.print(f"[red]{escape(str(exc).strip(chr(39)))}[/red]")
            raise typer.Exit(1) from None
    finally:
        if rehearsal is not None:
            rehearsal.stop()
    for o in outcomes:
        out.print(f"{o['name']}: {o['status']}  {o['target']}  {o.get('error') or ''}", highlight=False)
    if any(o["status"] in ("failed", "not_supported") for o in outcomes):
        raise typer.Exit(1)


def _rehearse_containment(responder, case_id: str, stand_ins) -> Any:
    """Clients of fresh stand-ins in the state the sandbox case left: seeded from its detection,
    then its plan's containment steps applied again (idempotent actions); nothing is recorded."""
    from cordon.clouds import clients_for, cloud_for_case
    from cordon.detections.model import Detection
    from cordon.respond import PlanStep, run_step

    case = responder.ledger.case(case_id)
    detection = Detection.model_validate_json(case["detection"])
    stand_in = stand_ins.for_provider(detection.provider)
    stand_in.seed_from_detection(detection)
    clients = clients_for(detection.provider, cloud_for_case(stand_in.cloud_params(), detection, case_id))
    plans = [r.payload for r in responder.ledger.records(case_id=case_id, kind_prefix="plan.created")]
    for step in plans[-1]["steps"] if plans else []:
        run_step(PlanStep.model_validate(step), detection, clients)
    err.print(f"sandbox: rehearsing the rollback of {case_id} in fresh local stand-ins", highlight=False)
    return clients


@app.command("actions")
def actions_list(output: Annotated[OutputFormat, typer.Option()] = OutputFormat.text) -> None:
    """Every action with its parameters and the cloud permissions it needs."""
    from cordon.action import all_actions

    acts = [cls.describe() for cls in all_actions().values()]
    if output is OutputFormat.json:
        print(json.dumps(acts, indent=2))
        return
    for a in sorted(acts, key=lambda a: a["name"]):
        out.print(f"[bold]{a['name']}[/bold] ({a['kind']}) permissions: {', '.join(a['permissions'])}"
                  f"{'  rollback' if a['rollback_supported'] else ''}")


@app.command()
def worker(name: Annotated[str, typer.Option(help="Deployment name.")] = "respond",
           sweep_every: Annotated[int, typer.Option(help="Also serve the approval sweeper (expiry, reminders, "
                                                    "escalation) every this many seconds; 0: do not.")] = 60,
           watch_every: Annotated[int, typer.Option(help="Also serve the watch after containment (the contained "
                                                    "credential verified again and searched for in the audit log, "
                                                    "for the playbook's `watch` window) every this many seconds; "
                                                    "0: do not.")] = 60) -> None:
    """Serve the respond flow (and the approval sweeper, and the watch) as Prefect deployments (needs PREFECT_API_URL).
    Blocks. In a multi-machine deployment use prefect.yaml and `prefect worker` instead (docs/deploy.md).
    Refuses to start (exit 1) while no Slack approvers are configured (approval.approvers in cordon.yaml)."""
    _prefect_defaults()
    _require_approvers()
    from cordon.flows.respond import serve

    serve(name, sweeper_interval=sweep_every or None, watch_interval=watch_every or None)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run Cordon's server: the detection webhook and the Slack interactivity endpoint."""
    _prefect_defaults()
    import uvicorn

    from cordon.config import ConfigError
    from cordon.playbooks.schema import PlaybookError
    from cordon.server.wiring import build_app
    from cordon.sigma import SigmaRuleError

    try:
        api = build_app()
    except (ConfigError, PlaybookError, SigmaRuleError, RuntimeError) as exc:
        # a misspelt key, no approvers, a bad playbook or rule, no signing secret: refuse to start
        for line in str(exc).splitlines():
            err.print(f"[red]configuration error:[/red] {escape(line)}", highlight=False)
        raise typer.Exit(1) from None
    from cordon.approvals.outbox import start_default_sender

    start_default_sender()  # updates a click left queued go from here at once, not on a worker's next poll
    uvicorn.run(api, host=host, port=port)


@app.command()
def permissions(
    document: Annotated[str, typer.Argument(help="Grant document to print (cordon permissions --list names "
                                            "them).", show_default=False)] = "",
    every: Annotated[bool, typer.Option("--all", help="Every registered action, not only those the "
                                        "playbooks in use reference.")] = False,
    listing: Annotated[bool, typer.Option("--list", help="List the grant documents and exit.")] = False,
) -> None:
    """Print a least-privilege grant generated from the actions' declared permissions (each provider
    says what it generates: an IAM policy, Graph permissions + an RBAC custom role, a custom role...)."""
    from cordon.config import load_config
    from cordon.permissions import documents, render_document

    docs = documents()
    if listing or not document:
        out.print("\n".join(docs), highlight=False)
        raise typer.Exit(0 if listing else 1)
    if document not in docs:
        err.print(f"[red]no grant document[/red] {escape(document)!r}: expected one of {', '.join(docs)}",
                  highlight=False)
        raise typer.Exit(1)
    print(render_document(load_config(), document, every=every), end="")


@app.command("slack-manifest")
def slack_manifest(base_url: Annotated[str, typer.Option(help="https URL where cordon serve is reachable.")]) -> None:
    """Print the Slack app manifest (YAML): bot scopes, /cordon command and interactivity URLs."""
    import yaml

    from cordon.permissions import slack_manifest as build

    try:
        print(yaml.safe_dump(build(base_url), sort_keys=False), end="")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--base-url") from None


@db_app.command("upgrade")
def db_upgrade(
    sql: Annotated[bool, typer.Option("--sql", help="Print the DDL from an empty database instead of running it.")]
    = False,
) -> None:
    """Upgrade the schema at CORDON_DATABASE_URL to the newest revision (run it as the schema
    owner when deploying; `Ledger` also upgrades on first use unless CORDON_DB_AUTO_UPGRADE=0).
    A database made by the pre-migration version is stamped at the baseline first."""
    from cordon.audit import migrations
    from cordon.audit.ledger import _make_engine, default_database_url

    url = default_database_url()
    if sql:
        migrations.upgrade_sql(url)
        return
    engine = _make_engine(url)
    before, after, stamped = migrations.upgrade(engine.execution_options(cordon_write=True))
    where = engine.url.render_as_string(hide_password=True)
    note = f" (pre-migration database stamped at {migrations.BASELINE_REVISION} first)" if stamped else ""
    out.print(f"schema at {after} (was {before or 'empty'}){note}: {where}")


@db_app.command("grants")
def db_grants(
    role: Annotated[str, typer.Option(help="The application's PostgreSQL role.")] = "cordon_app",
    schema: Annotated[str, typer.Option(help="Schema of Cordon's tables (printing only; --apply uses the "
                                              "connection's current_schema()).")] = "public",
    apply: Annotated[bool, typer.Option("--apply", help="Run the statements at CORDON_DATABASE_URL (as the "
                                                        "owner) instead of printing them.")] = False,
    create_role: Annotated[bool, typer.Option(help="Create the role (LOGIN, no password) if missing.")] = True,
) -> None:
    """Grants for the application role: INSERT and SELECT on the append-only tables (ledger,
    dead_letters, ledger_checkpoints), never UPDATE or DELETE (PostgreSQL)."""
    from cordon.audit.ledger import _make_engine, default_database_url
    from cordon.audit.migrations.grants import apply_grants, grants_sql

    try:
        statements = (apply_grants(_make_engine(default_database_url()), role, create_role=create_role) if apply
                      else grants_sql(role, schema, create_role=create_role))
    except ValueError as exc:
        err.print(f"[red]grants:[/red] {exc}")
        raise typer.Exit(2) from None
    for stmt in statements:
        print(stmt + ";")
    if apply:
        err.print(f"applied {len(statements)} statement(s) for role {role}")


def main() -> None:
    """The ``cordon`` console script: the Typer app, with the ledger's own errors (schema behind
    and not upgraded, a bad ``CORDON_LEDGER_KEY``) printed as one clear line and exit status 1
    instead of a traceback."""
    try:
        app()
    except Exception as exc:
        from cordon.audit.checkpoint import LedgerKeyError
        from cordon.audit.migrations import SchemaError
        from cordon.config import ConfigError

        if isinstance(exc, ConfigError):  # e.g. a misspelt key in cordon.yaml: one line per problem
            for line in str(exc).splitlines():
                err.print(f"[red]configuration error:[/red] {escape(line)}", highlight=False)
            sys.exit(1)
        if not isinstance(exc, SchemaError | LedgerKeyError):
            raise
        err.print(f"[red]ledger error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(1)


@sensor_app.command("rehearse")
def sensor_rehearse(name: Annotated[str, typer.Argument(help="The sensor (cordon sensor list).")],
             paths: Annotated[list[str], typer.Argument(help="Files of records to send through the source.")],
             approve: Annotated[str, typer.Option(help="console or auto")] = "auto",
             output: Annotated[str, typer.Option(help="text or json")] = "text") -> None:
    """Rehearse sensor NAME in the sandbox: start its cloud's stand-in, make the source there (a
    queue and bucket notification, a topic and subscription, a log), send PATH's records through
    its real transport, run one pass of the sensor, and answer its cases as `cordon respond
    --sandbox` does (same output)."""
    from cordon.clouds import clients_for
    from cordon.prefect_temp import start_early
    from cordon.sensors import get_sensor
    from cordon.sensors.runner import run_pass
    from cordon.sensors.store import SensorStore

    fmt = OutputFormat(output)
    _prefect_defaults()
    temp_server = start_early()  # the cases run in process: Prefect's temporary server boots meanwhile
    try:
        cls = get_sensor(name)
    except KeyError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc).strip(chr(39)))}", highlight=False)
        raise typer.Exit(1) from None
    inputs = []
    for p in paths:
        try:
            inputs.append((p, Path(p).read_bytes()))
        except OSError as exc:
            err.print(f"[red]cannot read {escape(p)}:[/red] {escape(exc.strerror or str(exc))}", highlight=False)
            raise typer.Exit(1) from None
    sb = _sandboxes()
    stand_in = sb.for_provider(cls.provider)
    try:
        settings = cls.settings_model.model_validate(cls.rehearse(stand_in, inputs))
    except (ValueError, NotImplementedError) as exc:
        err.print(f"[red]cannot rehearse {escape(name)}:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    responder = _responder()
    sensor = cls(settings, clients_for(cls.provider, stand_in.cloud_params()))
    errors = 0

    def answer(report: Any) -> list[dict[str, Any]]:
        nonlocal errors
        _print_intake(report, fmt)
        if temp_server is not None and report.cases:
            temp_server.wait_ready(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
        done = []
        for summary in responder.run_all(report, approval=approve, stand_ins=sb):
            errors += _print_run(summary, fmt)
            done.append(summary)
        return done

    try:
        result = run_pass(sensor, SensorStore(responder.ledger.engine), responder, answer)
    finally:
        sb.stop()
    if fmt is OutputFormat.text:
        err.print(escape(f"sensor {name}: read {result.read} ({result.duplicates} seen before, {result.rejected} "
                         f"rejected), {len(result.cases)} case(s), {result.dead_letters} record(s) dead-lettered. "
                         f"Ledger: {responder.ledger.url}"), highlight=False)
    if result.error:
        err.print(f"[red]the pass failed:[/red] {escape(result.error)}", highlight=False)
    raise typer.Exit(1 if result.error or errors else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
