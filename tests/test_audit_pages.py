"""The managers' audit pages, served by Cordon's real server (``build_app``) under uvicorn on
127.0.0.1, read in a real headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright)
and over HTTP.

The ledger holds one case answered by the real respond flow (Prefect's temporary server, the AWS
sandbox: moto over HTTP) and four written through the Ledger API with known approval times and an
attacker-chosen user agent full of markup.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cordon.audit.ledger import Ledger
from cordon.audit.query import CaseFilter, case_summary, format_seconds, list_cases, metrics
from cordon.audit.report import artifact_key
from cordon.server.pages import PageAuth, audit_pages, hash_password, parse_users
from tests.helpers import config_with_approvers
from tests.test_audit_query import EVIL_UA, seed_case

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHROMIUM = os.environ.get("CORDON_TEST_CHROMIUM", "/usr/bin/chromium")
USER, PASSWORD = "alice", "correct horse battery staple"
PROXY_SECRET = "s3cret-shared-with-the-proxy-0123456789"


def _chromium_missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


needs_chromium = pytest.mark.skipif(_chromium_missing() is not None, reason=str(_chromium_missing()))


@contextlib.contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Server:
    """uvicorn serving ``app`` in a thread on 127.0.0.1 (run in a copy of the current context,
    so Prefect's temporary settings hold there too)."""

    def __init__(self, app: FastAPI):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        ctx = contextvars.copy_context()
        self.thread = threading.Thread(target=ctx.run, args=(self.server.run,), kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, aws_sandbox):
    """The ledger (one real flow case + four seeded), and Cordon's server on it."""
    from prefect.testing.utilities import prefect_test_harness

    from cordon.engine import Responder
    from cordon.server.wiring import build_app

    tmp = tmp_path_factory.mktemp("pages")
    url = f"sqlite:///{tmp}/ledger.db"
    users = f"{USER}:{hash_password(PASSWORD)} bob:{hash_password('another one')}"
    # build_app serves the Slack path too, which needs approvers configured
    with _env(CORDON_DATABASE_URL=url, CORDON_AUDIT_USERS=users, CORDON_AUDIT_PROXY_SECRET=PROXY_SECRET,
              PREFECT_SERVER_ANALYTICS_ENABLED="false", CORDON_CONFIG=str(config_with_approvers(tmp))), \
            prefect_test_harness(server_startup_timeout=180):
        ledger = Ledger(url)
        aws_sandbox.reset()
        responder = Responder(ledger=ledger)
        report = responder.intake([EXAMPLES / "cloudtrail-create-access-key.json"])
        (real,) = list(responder.run_all(report, approval="auto", stand_ins=aws_sandbox))
        assert real["status"] == "contained", real
        seeded = [
            seed_case(ledger, actor="mallory", target="build-bot", key_id="AKIAEXAMPLE0000001", tta=95.0,
                      user_agent=EVIL_UA),
            seed_case(ledger, actor="eve", target="deploy", key_id="AKIAEXAMPLE0000002", decision="deny", tta=30.0,
                      playbook="aws-login-profile"),
            seed_case(ledger, provider="gcp", account="proj-blue", actor="trudy", target="sa-1",
                      key_id="projects/proj-blue/serviceAccounts/sa-1/keys/k1", decision="expired", tta=3600.0,
                      playbook="gcp-sa-key-created"),
            seed_case(ledger, account="444455556666", actor="mallory", target="ci", key_id="AKIAEXAMPLE0000004",
                      tta=10.0),
        ]
        # an incident of two seeded cases (the Ledger's own API, as Responder.correlate calls it)
        incident_key = "aws|444455556666|arn:aws:iam::444455556666:user/mallory|AKIAEXAMPLEMALLORY01"
        incident_id = ledger.assign_incident(seeded[3].case_id, incident_key, window_seconds=900,
                                             actor={"user": {"uid": "arn:aws:iam::444455556666:user/mallory"}},
                                             provider="aws").incident_id
        ledger.assign_incident(seeded[1].case_id, incident_key, window_seconds=900)
        app = build_app(signing_secret="test-signing-secret", ledger=ledger)
        with Server(app) as server:
            yield {"url": server.url, "ledger": ledger, "real": real, "seeded": seeded, "app": app,
                   "incident": incident_id}


def _page_paths(app: FastAPI, case_id: str, incident_id: str) -> list[str]:
    """Every GET route the audit router added, with the case and incident IDs filled in."""
    def walk(routes):
        for r in routes:
            # FastAPI >= 0.15x keeps an included router as one entry holding the original router
            inner = getattr(r, "original_router", None)
            yield from walk(inner.routes) if inner is not None else [getattr(r, "path", "")]

    paths = sorted({p for p in walk(app.routes) if p.startswith("/audit")})
    assert {"/audit", "/audit/cases", "/audit/cases/{case_id}", "/audit/approvals", "/audit/metrics",
            "/audit/incidents", "/audit/incidents/{incident_id}", "/audit/static/cordon.css"} <= set(paths)
    return [p.replace("{case_id}", case_id).replace("{incident_id}", incident_id) for p in paths]


def test_every_page_refuses_unauthenticated_requests(site):
    case_id = site["real"]["case_id"]
    paths = _page_paths(site["app"], case_id, site["incident"]) + [f"/audit/cases/{case_id}?format=print"]
    with httpx.Client(base_url=site["url"]) as http:
        for i, path in enumerate(paths):
            r = http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
            assert case_id not in r.text
            # wrong passwords from a different client address each time (uvicorn trusts X-Forwarded-For
            # from 127.0.0.1): one address guessing on would be answered 429 (tests/test_abuse.py)
            away = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
            assert http.get(path, auth=(USER, "wrong password"), headers=away).status_code == 401, path
            assert http.get(path, auth=("mallory", PASSWORD), headers=away).status_code == 401, path
            assert http.get(path, headers={"X-Cordon-User": "alice"}).status_code == 401, path  # no secret
            bad_proxy = {"X-Cordon-User": "alice", "X-Cordon-Proxy-Secret": "guess"}
            assert http.get(path, headers=bad_proxy).status_code == 403, path
            ok = http.get(path, auth=(USER, PASSWORD), follow_redirects=True)
            assert ok.status_code == 200, (path, ok.text[:300])
            proxied = {"X-Cordon-User": "carol@example.com", "X-Cordon-Proxy-Secret": PROXY_SECRET}
            assert http.get(path, headers=proxied, follow_redirects=True).status_code == 200, path
        # read-only: no method but GET (and HEAD) is routed
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert http.request(method, f"/audit/cases/{case_id}", auth=(USER, PASSWORD)).status_code == 405


def test_pages_are_closed_when_no_viewer_is_configured(site):
    app = FastAPI()
    app.include_router(audit_pages(site["ledger"], PageAuth()))
    with TestClient(app) as client:
        for path in ("/audit/cases", "/audit/metrics", "/audit/static/cordon.css"):
            r = client.get(path, auth=(USER, PASSWORD))
            assert r.status_code == 403 and "disabled" in r.text
    with pytest.raises(ValueError, match="entry 1"):
        parse_users("alice:plaintext-password")
    with pytest.raises(ValueError, match="CORDON_AUDIT_PROXY_SECRET"):
        PageAuth(proxy_secret="short")


def test_bad_filters_answer_400_naming_the_field(site):
    with httpx.Client(base_url=site["url"], auth=(USER, PASSWORD)) as http:
        r = http.get("/audit/cases", params={"since": "last tuesday"})
        assert r.status_code == 400 and "since:" in r.text
        r = http.get("/audit/metrics", params={"decision": "<b>maybe</b>"})
        assert r.status_code == 400 and "decision:" in r.text and "<b>maybe</b>" not in r.text
        assert http.get("/audit/cases/case-nope").status_code == 404
        assert http.get(f"/audit/cases/{site['real']['case_id']}", params={"format": "pdf"}).status_code == 400
        r = http.get("/audit/cases")
        assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"


def test_metrics_count_automatic_approvals_apart_and_chart_the_months_without_javascript(site):
    """The real case was approved by ``--approve auto``, the seeded ones by people in Slack (95 s and
    10 s): the automatic one is its own count and adds no 0-second time to approve."""
    ledger = site["ledger"]
    m = metrics(ledger)
    assert (m.overall.approved, m.overall.auto_approved) == (2, 1)
    assert m.overall.tta_median == pytest.approx(52.5) and m.overall.tta_p95 == pytest.approx(95.0)
    with httpx.Client(base_url=site["url"], auth=(USER, PASSWORD)) as http:
        r = http.get("/audit/metrics")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert "approved by a person" in html and "approved automatically" in html
    overall = html.split('id="overall"', 1)[1].split("</table>", 1)[0]
    assert '<td class="num approved">2</td><td class="num auto">1</td>' in overall
    # the chart: inline SVG drawn on the server, one bar per month and series with a figure, no script
    svg = html.split('<svg id="month-chart"', 1)[1].split("</svg>", 1)[0]
    assert "<script" not in html and " on" not in svg.split(">", 1)[0]
    for f in m.by_month:
        for key in ("tta_median", "ttc_median"):
            value = getattr(f, key)
            bars = [b for b in svg.split("<rect ")[1:] if f'data-month="{f.group}"' in b and f'"{key}"' in b]
            assert len(bars) == (value is not None), (f.group, key)
            if value is not None:
                assert f'data-seconds="{value:.3f}"' in bars[0] and format_seconds(value) in bars[0]


def test_long_ids_wrap_at_their_separators_in_the_cases_table(site):
    with httpx.Client(base_url=site["url"], auth=(USER, PASSWORD)) as http:
        html = http.get("/audit/cases").text
        css = http.get("/audit/static/cordon.css").text
    real = case_summary(site["ledger"], site["real"]["case_id"])
    assert real.target.startswith("arn:aws:iam::")
    wrapped = real.target.replace("/", "/<wbr>").replace(":", ":<wbr>")
    assert f'<td class="id">{wrapped}</td>' in html
    assert "td.id { overflow-wrap: anywhere; min-width: 14ch; }" in css
    assert ">automatic</td>" in html  # the auto-approved case's time to approve


def test_the_chart_and_the_breakable_filter_escape_what_they_are_given():
    from cordon.audit.query import Figures
    from cordon.server.charts import month_chart
    from cordon.server.pages import breakable

    svg = str(month_chart([Figures("<script>alert(1)</script>", 1, 1, 1, 30.0, 30.0, 14400.0, 14400.0)]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and svg.count("<rect class=\"bar\"") == 2
    assert " h<" in svg  # a 4-hour figure puts the axis in hours
    assert "No approved or contained case" in str(month_chart([Figures("2026-01", 3)]))
    assert str(breakable("arn:aws:iam::1:user/<b>")) == "arn:<wbr>aws:<wbr>iam:<wbr>:<wbr>1:<wbr>user/<wbr>&lt;b&gt;"
    assert str(breakable(None)) == "-"


def settled_content(page, attempts: int = 20) -> str:
    """``page.content()`` once the page has stopped navigating: after a refused navigation
    Chromium moves to its error page, and reading the content mid-move raises."""
    from playwright.sync_api import Error as BrowserError

    for _ in range(attempts):
        try:
            page.wait_for_load_state("load")
            return page.content()
        except BrowserError as exc:
            if "navigating" not in str(exc):
                raise
    return page.content()


def shoot(page, name: str) -> None:
    """With ``CORDON_SCREENSHOTS=<dir>``, save a full-page PNG of what the browser shows, to look at."""
    where = os.environ.get("CORDON_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(where) / f"{name}.png"), full_page=True)


@needs_chromium
def test_managers_read_the_pages_in_a_real_browser(site):
    from playwright.sync_api import sync_playwright

    ledger = site["ledger"]
    a = site["seeded"][0]
    real_id = site["real"]["case_id"]
    dialogs: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # no login: refused, nothing of the ledger shown
            # (headless Chromium has no login prompt: without credentials it fails the navigation)
            from playwright.sync_api import Error as BrowserError

            for creds in (None, {"username": USER, "password": "wrong"}):
                anon = browser.new_context(http_credentials=creds)
                page = anon.new_page()
                try:
                    nav = page.goto(f"{site['url']}/audit/cases/{real_id}")
                    assert nav.status == 401
                except BrowserError as exc:  # no credentials at all: Chromium gives up on the challenge
                    assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
                assert real_id not in settled_content(page)
                resp = page.request.get(f"{site['url']}/audit/cases/{real_id}")
                assert resp.status == 401 and real_id not in resp.text()
                assert resp.headers["www-authenticate"].startswith("Basic")
                anon.close()

            ctx = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
            page = ctx.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            resp = page.goto(f"{site['url']}/audit")
            assert resp.status == 200 and page.url.endswith("/audit/cases")
            assert page.locator("#viewer").inner_text() == USER
            rows = page.locator("#cases tbody tr.case")
            expected = [s.case_id for s in list_cases(ledger)]
            assert [rows.nth(i).get_attribute("data-case") for i in range(rows.count())] == expected
            assert real_id in expected and len(expected) == 5
            shoot(page, "cases")

            # the figures in the list are the ledger's
            row = page.locator(f'#cases tr[data-case="{a.case_id}"]')
            assert row.locator("td.tta").inner_text() == "1 min 35 s"
            assert row.locator("td.ttc").inner_text() == format_seconds(case_summary(ledger, a.case_id).time_to_contain)

            # filter with the form: provider gcp -> only the GCP case
            page.select_option("select[name=provider]", "gcp")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**/audit/cases?**provider=gcp**")
            assert [r.get_attribute("data-case") for r in page.locator("#cases tbody tr.case").all()] == \
                [site["seeded"][2].case_id]

            # open a case: figures, approval with approver, the attacker's user agent shown as text
            page.goto(f"{site['url']}/audit/cases")
            page.click(f"text={a.case_id}")
            page.wait_for_url(f"**/audit/cases/{a.case_id}")
            assert page.locator("#tta").inner_text() == "1 min 35 s"
            assert page.locator("#ttc").inner_text() == format_seconds(case_summary(ledger, a.case_id).time_to_contain)
            assert page.locator("#user-agent").inner_text() == EVIL_UA
            assert page.locator("img").count() == 0 and page.locator("main script").count() == 0
            approval = page.locator("#approvals tbody tr").first.inner_text()
            assert "slack:U0APPROVER" in approval and "Alice Approver" in approval and "T0WORKSPACE" in approval
            kinds = [e.get_attribute("data-kind") for e in page.locator("#timeline tr.entry").all()]
            assert kinds == [r.kind for r in a.records]
            shoot(page, "case")

            # the real flow's case: its timeline as the respond flow wrote it
            page.goto(f"{site['url']}/audit/cases/{real_id}")
            timeline_text = page.locator("#timeline").inner_text()
            for kind in ("detection.received", "case.opened", "guard.passed", "plan.created", "approval.asked",
                         "approval.given", "action.contained", "verify.held", "case.closed"):
                assert kind in timeline_text, kind
            assert "status=Active → after status=Inactive" in timeline_text
            real = case_summary(ledger, real_id)
            # approved by --approve auto: no time to approve (not a 0-second approval)
            assert real.approved_automatically and real.time_to_approve is None
            assert page.locator("#tta").inner_text() == "automatic (--approve auto)"
            assert page.locator("#ttc").inner_text() == format_seconds(real.time_to_contain) != "-"

            # the printable report: print CSS hides navigation; Chromium makes a PDF of it
            page.click("#print-link")
            page.wait_for_url("**format=print")
            page.emulate_media(media="print")
            assert page.locator("header.top").count() == 0
            assert page.locator("#timeline").is_visible() and page.locator("#figures").is_visible()
            assert page.locator("details").first.is_hidden()
            pdf = page.pdf(format="A4")
            assert pdf.startswith(b"%PDF") and len(pdf) > 5000
            page.emulate_media(media="screen")

            # time to approve / contain per month and per playbook
            page.goto(f"{site['url']}/audit/metrics")
            m = metrics(ledger)
            for f in m.by_playbook:
                cells = page.locator(f'#by-playbook tr[data-group="{f.group}"] td').all_inner_texts()
                assert cells[:5] == [f.group, str(f.cases), str(f.approved), str(f.auto_approved), str(f.contained)]
                assert cells[5:] == [format_seconds(v) for v in (f.tta_median, f.tta_p95, f.ttc_median, f.ttc_p95)]
            month = page.locator("#by-month tbody tr").first.locator("td").all_inner_texts()
            assert month[1] == "5"
            shoot(page, "metrics")

            # every decision with its approver
            page.goto(f"{site['url']}/audit/approvals?decision=deny")
            assert page.locator("#approvals tbody tr").count() == 1
            assert site["seeded"][1].case_id in page.locator("#approvals").inner_text()
            ctx.close()
        finally:
            browser.close()
    assert dialogs == []  # no script ran from the ledger's content
    assert list_cases(ledger, CaseFilter.parse(provider="gcp"))[0].case_id == site["seeded"][2].case_id


@needs_chromium
def test_managers_follow_an_incident_in_a_real_browser(site):
    """From the incidents list to the incident, to one of its cases, and from that case to the
    other case of its incident: links only, no script."""
    from playwright.sync_api import sync_playwright

    ledger, incident_id = site["ledger"], site["incident"]
    a, b = site["seeded"][3].case_id, site["seeded"][1].case_id
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            ctx = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
            page = ctx.new_page()
            page.goto(f"{site['url']}/audit/cases")
            page.click("header.top nav >> text=Incidents")
            page.wait_for_url("**/audit/incidents")
            listed = [r.get_attribute("data-incident") for r in page.locator("#incidents tbody tr.incident").all()]
            assert incident_id in listed and len(listed) == len(ledger.incidents())
            page.locator(f'#incidents tr[data-incident="{incident_id}"] td').first.locator("a").click()
            page.wait_for_url(f"**/audit/incidents/{incident_id}")
            rows = page.locator("#incident-cases tbody tr.incident-case")
            assert [r.get_attribute("data-case") for r in rows.all()] == [a, b]
            assert rows.nth(0).locator("td").nth(1).inner_text() == "lead"
            assert rows.nth(1).locator("td").nth(3).inner_text() == "denied"
            shoot(page, "incident")
            page.click(f"#incident-cases >> text={b}")
            page.wait_for_url(f"**/audit/cases/{b}")
            assert page.locator("#incident-link").inner_text() == incident_id
            shoot(page, "case-in-incident")
            assert page.locator("#incident-cases tr.incident-case").get_attribute("data-case") == a
            page.click("#lead-link")
            page.wait_for_url(f"**/audit/cases/{a}")
            assert "this case leads it" in page.locator("#incident").inner_text()
            assert page.locator("main script").count() == 0
            ctx.close()
        finally:
            browser.close()


def test_the_respond_run_carries_its_timeline_as_a_prefect_artifact(site):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    case_id = site["real"]["case_id"]
    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=[artifact_key(case_id)])
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=key))
    assert arts, f"no artifact {artifact_key(case_id)}"
    md = arts[0].data
    assert arts[0].type == "markdown" and f"# Cordon case {case_id}" in md
    assert str(arts[0].flow_run_id) == site["real"]["flow_run_id"]
    for kind in ("detection.received", "approval.given", "action.contained", "verify.held"):
        assert kind.replace("_", "\\_") in md or kind in md, kind
