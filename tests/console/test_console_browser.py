"""The console in a real browser: Playwright drives Debian's Chromium against the host
served by uvicorn on 127.0.0.1, with real card-signed traffic behind it (seed.py).

Each role logs in and does its work: the operator reads the dashboard's numbers, blocks
a card and finds it on the blacklist, settles the day and downloads the pain.001; the
auditor reads everything and is refused an action; the merchant downloads its own
settlements and is refused everyone else's. Screenshots go to artifacts/screenshots/.

Chromium comes from the system (``apt-get install chromium``; .ci/run installs it):
without it these tests skip, except under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from host.world import Clock
from tallypurse.host.api import create_app
from tallypurse.host.console import audit
from tallypurse.lab import Lab

from .seed import PASSWORD, Seeded, new_host, seed

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artifacts" / "screenshots"
# TALLYPURSE_DOCS_SCREENSHOT=1 also writes the README's picture (docs/console.png).
DOCS_SHOT = ROOT / "docs" / "console.png"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = (f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install chromium; "
               ".ci/run does) to run the console's browser tests")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class Live:
    def __init__(self, seeded: Seeded, url: str) -> None:
        self.seeded = seeded
        self.url = url
        self.host = seeded.host


@pytest.fixture(scope="module")
def live(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A seeded host of its own (these tests act on it), served by uvicorn on loopback."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("console-live")
    clock = Clock(lab.now + 3600)
    host = new_host(lab, tmp, clock)
    seeded = seed(host, lab, clock, tmp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(host), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield Live(seeded, f"http://127.0.0.1:{port}/console")
    server.should_exit = True
    thread.join(10)
    sock.close()
    seeded.close()
    host.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000},
                                  accept_downloads=True)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    # Script errors and CSP refusals; a 401/403/404 a test asks for is not an error here.
    pg.on("console", lambda m: errors.append(m.text)
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    pg.on("response", lambda r: errors.append(f"{r.status} {r.url}")
          if "/static/" in r.url and r.status != 200 else None)
    pg.on("dialog", lambda d: d.accept())  # hx-confirm before destructive actions
    yield pg
    context.close()
    assert errors == [], errors  # no script error, no CSP violation


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def login(page: Any, live: Live, username: str, password: str = PASSWORD) -> None:
    page.goto(live.url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d} EUR"


def charts_drawn(page: Any) -> int:
    return int(page.evaluate(
        "Array.from(document.querySelectorAll('canvas[data-chart]'))"
        ".filter(c => window.Chart && window.Chart.getChart(c)).length"))


def test_a_wrong_password_keeps_the_door_shut(page: Any, live: Live) -> None:
    login(page, live, "olga", "not the password")
    assert "Wrong username or password" in page.inner_text("main")
    page.goto(live.url + "/")
    assert page.url.startswith(live.url + "/login")


def test_the_operator_reads_the_day_blocks_a_card_and_pays_the_merchants(
        page: Any, live: Live) -> None:
    x = live.seeded.expected
    login(page, live, "olga")
    assert page.url == live.url + "/"
    for channel in ("offline", "split", "online"):
        assert page.inner_text(f"[data-testid=today-{channel}-count]") == str(
            x[f"{channel}_count"])
        assert page.inner_text(f"[data-testid=today-{channel}-amount]") == money(
            x[f"{channel}_amount"])
    assert page.inner_text("[data-testid=clones]") == "1"
    assert page.inner_text("[data-testid=old-gaps]") == "1"
    assert live.seeded.stale_terminal in page.inner_text("[data-testid=stale]")
    expect(page.locator("canvas[data-rendered]")).to_have_count(2)
    assert charts_drawn(page) == 2
    shot(page, "operator-dashboard")
    if os.environ.get("TALLYPURSE_DOCS_SCREENSHOT"):
        page.screenshot(path=str(DOCS_SHOT), full_page=False)

    # Find Ada's card by typing (HTMX live search), open it, block it.
    card_id = live.seeded.cards["ada"]
    page.click("nav >> text=Cards")
    # HTMX binds the search box when the page has loaded: typing earlier is not heard
    page.wait_for_url("**/cards")
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => window.htmx !== undefined && document.readyState === 'complete'")
    # wait for the search's own answer (however slow a loaded machine makes it), and say
    # what it was if it was not the results
    with page.expect_response(lambda r: "/cards?" in r.url and "q=lovelace" in r.url,
                              timeout=30_000) as searched:
        page.fill("input[name=q]", "lovelace")
    assert searched.value.status == 200, (searched.value.status, searched.value.text()[:300])
    results = page.locator("#card-results")
    expect(results).not_to_contain_text(live.seeded.cards["anon"])  # HTMX swapped them
    expect(results).to_contain_text(card_id)
    assert "q=lovelace" in page.url  # hx-push-url
    page.click(f"#card-results >> text={card_id}")
    page.wait_for_url(f"**/cards/{card_id}")
    assert "active" in page.inner_text("[data-testid=card-state]")
    expect(page.locator("canvas[data-rendered]")).to_have_count(1)
    shot(page, "operator-card")
    form = page.locator("[data-testid=block-form]")
    form.locator("select[name=status]").select_option("stolen")
    form.locator("input[name=reason]").fill("cardholder called: stolen at the station")
    form.locator("button").click()
    page.wait_for_selector(".flash-ok")
    assert "is stolen and on the blacklist" in page.inner_text(".flash-ok")
    assert "blacklisted" in page.inner_text("[data-testid=card-state]")

    page.click("nav >> text=Lists")
    page.wait_for_url("**/lists")
    latest = page.locator("[data-testid=blacklist] tbody tr").first.inner_text()
    assert card_id in latest and "add" in latest and "cardholder called" in latest
    assert page.inner_text("[data-testid=blacklist-size]") == "2"  # the clone and Ada's
    shot(page, "operator-lists")

    # Settle today and download the payout file for the bank.
    page.click("nav >> text=Settlement")
    page.wait_for_url("**/settlement")
    settle = page.locator("[data-testid=settle-form]")
    settle.locator("input[name=reason]").fill("end of day")
    settle.locator("button").click()
    page.wait_for_selector(".flash-ok")
    assert "Settled 2 merchant(s)" in page.inner_text(".flash-ok")
    payout = page.locator("[data-testid=payout-form]")
    payout.locator("input[name=reason]").fill("send to the bank")
    payout.locator("button").click()
    page.wait_for_selector(".flash-ok >> text=Payout file")
    with page.expect_download() as info:
        page.locator("[data-testid=file-pain\\.001]").first.click()
    download = info.value
    saved = SHOTS.parent / "downloads" / download.suggested_filename
    download.save_as(str(saved))
    xml = saved.read_text()
    assert download.suggested_filename.startswith("pain.001-")
    assert "urn:iso:std:iso:20022:tech:xsd:pain.001" in xml
    assert "DE89370400440532013000" in xml and "GB82WEST12345698765432" in xml
    shot(page, "operator-settlement")

    page.click("nav >> text=Audit trail")
    page.wait_for_url("**/audit")
    trail = page.inner_text("[data-testid=audit]")
    for action in ("card.block", "settlement.run", "settlement.payout_file",
                   "download.payment_file", "login"):
        assert action in trail
    shot(page, "operator-audit")


def test_the_auditor_reads_everything_and_is_refused_any_change(page: Any, live: Live) -> None:
    login(page, live, "arne")
    assert page.inner_text("[data-testid=role]").startswith("auditor")
    assert page.inner_text("[data-testid=today-split-count]") == str(
        live.seeded.expected["split_count"])
    for nav in ("Terminals", "Merchants", "Settlement", "Credit", "Lists", "Audit trail"):
        page.click(f"nav >> text={nav}")
        page.wait_for_load_state("networkidle")
        assert page.locator("h1").first.inner_text()
        assert page.locator("form.action").count() == 0, nav  # no action forms at all
    page.click("nav >> text=Credit")
    page.wait_for_load_state("networkidle")
    assert page.inner_text("[data-testid=model-version]")
    shot(page, "auditor-credit")

    card_id = live.seeded.cards["bob"]
    page.goto(f"{live.url}/cards/{card_id}")
    assert page.locator("[data-testid=block-form]").count() == 0
    shot(page, "auditor-card")
    # Forge the operator's form from the auditor's session: refused and audited.
    token = page.get_attribute("input[name=csrf_token]", "value")
    answer = page.request.post(f"{live.url}/cards/{card_id}/status", form={
        "csrf_token": token, "status": "blocked", "reason": "an auditor trying"})
    assert answer.status == 403 and "may not do this" in answer.text()
    page.reload()
    assert "blacklisted" not in page.inner_text("[data-testid=card-state]")
    refused = [e for e in audit.entries(live.host, actor="arne") if e.outcome == "refused"]
    assert refused and refused[0].action == "card.status" and refused[0].target == card_id


def test_the_merchant_sees_its_own_settlements_and_nothing_else(page: Any, live: Live) -> None:
    login(page, live, "mia")
    assert page.url == live.url + "/merchants/m_canteen"
    assert "Canteen" in page.inner_text("h1")
    assert page.locator("[data-testid=merchant-settlements] tbody tr").count() >= 1
    with page.expect_download() as info:
        page.click("[data-testid=settlement-csv]")
    csv = Path(info.value.path()).read_text()
    rows = csv.strip().splitlines()
    assert rows[0].startswith("merchant_id,business_day") and len(rows) >= 2
    assert all(r.startswith("m_canteen,") for r in rows[1:])
    nav = page.inner_text("header nav")
    assert "Cards" not in nav and "Audit" not in nav and "Dashboard" not in nav
    shot(page, "merchant-settlement")

    page.click("nav >> text=Terminals")
    page.wait_for_url("**/terminals")
    table = page.inner_text("[data-testid=terminals]")
    assert live.seeded.canteen.terminal_id in table
    assert live.seeded.kiosk.terminal_id not in table
    assert page.locator("form.action").count() == 0

    for path in ("/merchants/m_kiosk", "/cards", f"/cards/{live.seeded.cards['ada']}",
                 "/settlement", "/audit"):
        response = page.goto(live.url + path)
        assert response is not None and response.status == 403, path
        assert "may not do this" in page.inner_text("[data-testid=error-message]") or (
            "only its own" in page.inner_text("[data-testid=error-message]"))
    shot(page, "merchant-refused")
