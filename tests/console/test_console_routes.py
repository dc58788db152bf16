"""The console's routes through the real ASGI app (the host API with the console mounted):
logins, what each role may see and do, CSRF, the audit trail, and the numbers the
pages show for real card-signed traffic (seed.py)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from tallypurse.host.console import audit
from tallypurse.host.console.security import SESSION_COOKIE
from tallypurse.host.console.users import authenticate, create_user, set_status
from tallypurse.host.db.models import AuditRecord, Card
from tallypurse.host.lists import BLACKLIST

from .conftest import Console, Small, console_for, logged_in
from .seed import PASSWORD, Seeded

CONSOLE = Path(__file__).resolve().parents[2] / "src/tallypurse/host/console"


def text_of(html: str, name: str) -> str:
    """The text of the element with ``data-testid="name"`` (tags stripped)."""
    found = re.search(rf'data-testid="{re.escape(name)}"[^>]*>(.*?)</', html, re.S)
    assert found, f"no data-testid {name}"
    return re.sub(r"<[^>]+>", "", found.group(1)).strip()


def audit_rows(small: Small, **filters: str) -> list[audit.AuditEntry]:
    return audit.entries(small.host, **filters)  # type: ignore[arg-type]


# --- logging in ----------------------------------------------------------------------------------
def test_every_page_sends_a_stranger_to_the_login(anon: Console) -> None:
    for path in ("/", "/cards", "/terminals", "/settlement", "/audit", "/merchants/m_canteen"):
        r = anon.get(path, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/console/login?next=")
    r = anon.get("/cards", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 204 and r.headers["HX-Redirect"] == "/console/login?next=/cards"


def test_a_wrong_password_is_refused_and_audited(anon: Console, seeded: Seeded) -> None:
    r = anon.login("olga", "not the password")
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = anon.login("nobody", "not the password")
    assert r.status_code == 401
    refused = audit.entries(seeded.host, action="login")
    assert [(e.actor, e.outcome) for e in refused[:2]] == [("nobody", "refused"),
                                                            ("olga", "refused")]


def test_login_goes_back_where_it_was_asked_but_never_off_the_console(anon: Console) -> None:
    anon.get("/login?next=/terminals")
    r = anon.post("/login", {"username": "arne", "password": PASSWORD, "next": "/terminals"},
                  follow_redirects=False)
    assert r.headers["location"] == "/console/terminals"
    for evil in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        anon.get("/login")  # a login starts a new session with a new CSRF token
        r = anon.post("/login", {"username": "arne", "password": PASSWORD, "next": evil},
                      follow_redirects=False)
        assert r.headers["location"] == "/console/", evil


def test_the_session_cookie_is_signed_http_only_and_same_site_strict(anon: Console) -> None:
    r = anon.login("olga")
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    forged = anon.client.cookies.get(SESSION_COOKIE, "")[:-4] + "AAAA"
    anon.client.cookies.set(SESSION_COOKIE, forged)
    assert anon.get("/", follow_redirects=False).status_code == 303  # back to the login


def test_pages_carry_a_content_security_policy_without_inline_scripts(anon: Console) -> None:
    anon.login("olga")
    r = anon.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script(?![^>]*(src=|application/json))", r.text)
    assert not re.search(r"\son[a-z]+=", r.text)  # no inline event handlers


def test_a_disabled_user_is_out_at_the_next_click(small: Small) -> None:
    for c in logged_in(small.app, "arne"):
        assert c.get("/", follow_redirects=False).status_code == 200
        set_status(small.host, "arne", "disabled")
        assert c.get("/", follow_redirects=False).status_code == 303
        assert authenticate(small.host, "arne", PASSWORD) is None


def test_users_need_a_valid_name_role_and_a_long_password(small: Small) -> None:
    from tallypurse.core.errors import BadInput

    with pytest.raises(BadInput):
        create_user(small.host, "x", PASSWORD, "operator")
    with pytest.raises(BadInput):
        create_user(small.host, "carl", "short", "operator")
    with pytest.raises(BadInput):
        create_user(small.host, "carl", PASSWORD, "merchant")  # which merchant?
    with pytest.raises(BadInput):
        create_user(small.host, "carl", PASSWORD, "auditor", merchant_id="m_canteen")
    carl = create_user(small.host, "carl", PASSWORD, "auditor")
    assert authenticate(small.host, "CARL ", PASSWORD) == authenticate(small.host, "carl",
                                                                       PASSWORD)
    assert carl.role == "auditor"


# --- what each role sees -------------------------------------------------------------------------
EXPECTED = {  # path -> status for operator, auditor, merchant (of m_canteen)
    "/": (200, 200, 303),
    "/cards": (200, 200, 403),
    "/cards/{ada}": (200, 200, 403),
    "/terminals": (200, 200, 200),
    "/merchants": (200, 200, 303),
    "/merchants/m_canteen": (200, 200, 200),
    "/merchants/m_kiosk": (200, 200, 403),
    "/merchants/m_canteen/settlements.csv": (200, 200, 200),
    "/merchants/m_kiosk/settlements.csv": (200, 200, 403),
    "/settlement": (200, 200, 403),
    "/settlement/2026-01-01.csv": (200, 200, 403),
    "/credit": (200, 200, 403),
    "/lists": (200, 200, 403),
    "/audit": (200, 200, 403),
}


def test_each_role_sees_what_it_may_and_no_more(each_role: Console, seeded: Seeded) -> None:
    role = ["operator", "auditor", "merchant"].index(text_of(each_role.get("/").text, "role")
                                                     .split()[0])
    for path, statuses in EXPECTED.items():
        r = each_role.get(path.format(**seeded.cards), follow_redirects=False)
        assert r.status_code == statuses[role], (path, r.status_code)
        if r.status_code == 303:
            assert r.headers["location"] == "/console/merchants/m_canteen"


def test_a_merchant_sees_only_its_own_terminals(seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in logged_in(seeded_app, "mia"):
        html = c.get("/terminals").text
        assert seeded.canteen.terminal_id in html
        assert seeded.kiosk.terminal_id not in html and seeded.stale_terminal not in html
        csv = c.get("/merchants/m_canteen/settlements.csv").text
        assert csv.splitlines()[0].startswith("merchant_id,business_day")
        assert all(line.startswith("m_canteen,") for line in csv.splitlines()[1:])


# --- the numbers ---------------------------------------------------------------------------------
def test_the_dashboard_shows_what_the_cards_and_terminals_did(
        seeded: Seeded, seeded_app: FastAPI) -> None:
    x = seeded.expected
    for c in logged_in(seeded_app, "arne"):
        html = c.get("/").text
        for channel in ("offline", "split", "online"):
            assert text_of(html, f"today-{channel}-count") == str(x[f"{channel}_count"])
            assert text_of(html, f"today-{channel}-amount") == (
                f"{x[f'{channel}_amount'] // 100}.{x[f'{channel}_amount'] % 100:02d} EUR")
        assert text_of(html, "clones") == str(x["clones"])
        assert text_of(html, "broken-chains") == "0"
        assert text_of(html, "old-gaps") == str(x["old_gaps"])
        assert seeded.stale_terminal in html
        debts = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.split('data-testid="debts"')[1]
                                           .split("</table>")[0]))
        assert "collected online 1 5.50 EUR" in debts
        assert "failed, in collection 1 3.00 EUR" in debts
        assert 'data-chart="chart-volume"' in html and 'id="chart-volume"' in html


def test_a_card_page_shows_its_chain_debts_and_lists(seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in logged_in(seeded_app, "olga"):
        victim = c.get(f"/cards/{seeded.cards['victim']}").text
        assert "cloned" in text_of(victim, "card-state") and "blacklisted" in victim
        assert "Conflicting events" in victim
        assert "on it since version" in victim
        bob = c.get(f"/cards/{seeded.cards['bob']}").text
        assert "st-collection" in bob.split('data-testid="card-debts"')[1]
        ada = c.get(f"/cards/{seeded.cards['ada']}").text
        assert "st-settled" in ada.split('data-testid="card-debts"')[1]
        assert '"after": [' in ada  # the balance chain's points for the chart
        assert 'data-testid="block-form"' in ada
        anon = c.get(f"/cards/{seeded.cards['anon']}").text
        assert "Missing events between" in anon  # the gap left open on day 0
        assert c.get("/cards/00000000000000ff").status_code == 404


def test_card_search_finds_by_card_id_and_by_cardholder_name(
        seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in logged_in(seeded_app, "arne"):
        ada = seeded.cards["ada"]
        html = c.get(f"/cards?q={ada[:14]}").text
        assert ada in text_of(html, "card-results") or ada in html
        by_name = c.get("/cards?q=lovelace").text
        assert ada in by_name and seeded.cards["anon"] not in by_name


def test_lists_show_versions_sizes_and_the_terminals_behind(
        seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in logged_in(seeded_app, "arne"):
        html = c.get("/lists").text
        assert text_of(html, "blacklist-size") == "1"  # the clone
        behind = html.split('data-testid="behind"')[1].split("</table>")[0]
        assert seeded.kiosk.terminal_id in behind
        assert seeded.canteen.terminal_id not in behind  # it synced


def test_settlement_and_credit_pages_show_the_stored_days_and_grades(
        seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in logged_in(seeded_app, "arne"):
        html = c.get("/settlement").text
        assert "2026-01-01" in html.split('data-testid="settlement-days"')[1]
        assert 'data-testid="settle-form"' not in html  # an auditor gets no action forms
        credit = c.get("/credit").text
        assert text_of(credit, "model-version")
        assert 'data-chart="chart-grades"' in credit


# --- acting --------------------------------------------------------------------------------------
def blacklisted(small: Small) -> list[str]:
    with small.host.uow() as uow:
        return [e.card_id for e in small.host.lists.snapshot(uow.session, BLACKLIST).blacklist]


def test_an_operator_blocks_and_unblocks_a_card_and_both_are_audited(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        c.get(f"/cards/{small.card_id}")
        r = c.post(f"/cards/{small.card_id}/status",
                   {"status": "stolen", "reason": "reported stolen by phone"})
        assert r.status_code == 200 and "is stolen and on the blacklist" in r.text
        assert blacklisted(small) == [small.card_id]
        r = c.post(f"/cards/{small.card_id}/status", {"status": "active", "reason": "found"})
        assert "active again" in r.text and blacklisted(small) == []
    rows = audit_rows(small, target=small.card_id)
    assert [(e.action, e.actor, e.reason, e.outcome) for e in rows] == [
        ("card.unblock", "olga", "found", "done"),
        ("card.block", "olga", "reported stolen by phone", "done")]


def test_an_action_without_a_reason_is_not_done_but_audited(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        c.get(f"/cards/{small.card_id}")
        r = c.post(f"/cards/{small.card_id}/status", {"status": "blocked", "reason": " "})
        assert "Say why" in r.text
    assert blacklisted(small) == []
    [row] = audit_rows(small, target=small.card_id)
    assert (row.action, row.outcome, row.detail) == ("card.block", "failed", "no reason given")


@pytest.mark.parametrize("who", ["arne", "mia"])
def test_auditors_and_merchants_are_refused_every_action_and_it_is_audited(
        small: Small, who: str) -> None:
    actions = [(f"/cards/{small.card_id}/status", {"status": "blocked", "reason": "try"}),
               (f"/cards/{small.card_id}/replace", {"new_card_id": small.spare_id,
                                                    "reason": "try"}),
               (f"/cards/{small.card_id}/credit-override", {"grade": "A", "reason": "try"}),
               (f"/terminals/{small.terminal_id}/revoke", {"reason": "try"}),
               ("/settlement/run", {"day": "2026-01-01", "reason": "try"}),
               ("/settlement/payout-file", {"day": "2026-01-01", "reason": "try"})]
    for c in logged_in(small.app, who):
        for path, form in actions:
            r = c.post(path, form)
            assert r.status_code == 403, path
            assert "may not do this" in r.text
    assert blacklisted(small) == []
    assert small.host.tms.terminals()[0].status == "active"
    refused = [e for e in audit_rows(small) if e.outcome == "refused"]
    assert len(refused) == len(actions) and {e.actor for e in refused} == {who}


def test_a_post_without_the_right_csrf_token_changes_nothing(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        form = {"status": "blocked", "reason": "a forged form"}
        assert c.post(f"/cards/{small.card_id}/status", form, csrf=False).status_code == 403
        bad = {**form, "csrf_token": "x" * 43}
        assert c.post(f"/cards/{small.card_id}/status", bad, csrf=False).status_code == 403
        headers = {"X-CSRF-Token": c.csrf}  # what HTMX sends
        r = c.client.post(f"/console/cards/{small.card_id}/status", data=form, headers=headers)
        assert r.status_code == 200
    assert blacklisted(small) == [small.card_id]
    refused = [e.detail for e in audit_rows(small) if e.outcome == "refused"]
    assert len(refused) == 2 and all("CSRF" in d for d in refused)


def test_an_operator_replaces_a_lost_card(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        c.get(f"/cards/{small.card_id}")
        c.post(f"/cards/{small.card_id}/status", {"status": "lost", "reason": "lost on a bus"})
        page = c.get(f"/cards/{small.card_id}").text
        assert small.spare_id in page.split('data-testid="replace-form"')[1]
        r = c.post(f"/cards/{small.card_id}/replace",
                   {"new_card_id": small.spare_id, "reason": "replacement sent"})
        assert f"replaced by {small.spare_id}" in r.text
    with small.host.uow() as uow:
        old = uow.session.get(Card, small.card_id)
        assert old is not None and old.status == "replaced" and old.replaced_by == small.spare_id


def test_an_operator_revokes_a_terminal(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        c.get("/terminals")
        r = c.post(f"/terminals/{small.terminal_id}/revoke", {"reason": "stolen from the shop"})
        assert "is revoked" in r.text
    assert small.host.tms.terminals()[0].status == "revoked"
    [row] = audit_rows(small, action="terminal.revoke")
    assert row.reason == "stolen from the shop" and row.target == small.terminal_id


def test_an_operator_settles_the_day_and_downloads_the_pain001(small: Small) -> None:
    today = small.host.now()
    import datetime as dt

    day = dt.datetime.fromtimestamp(today, dt.UTC).date().isoformat()
    for c in logged_in(small.app, "olga"):
        c.get("/settlement")
        r = c.post("/settlement/run", {"day": day, "reason": "end of day"})
        assert "Settled 1 merchant(s)" in r.text
        r = c.post("/settlement/payout-file", {"day": day, "reason": "send to the bank"})
        assert "Payout file (pain.001)" in r.text
        file_id = re.search(r'href="/console/files/(\d+)"', r.text)
        assert file_id is not None
        xml = c.get(f"/files/{file_id.group(1)}")
        assert xml.headers["content-type"].startswith("application/xml")
        assert "attachment" in xml.headers["content-disposition"]
        assert "urn:iso:std:iso:20022:tech:xsd:pain.001" in xml.text
        # 25.00 less the 1.5 % fee (0.375, rounded half up to 0.38)
        assert "<InstdAmt Ccy=\"EUR\">24.62</InstdAmt>" in xml.text
        again = c.post("/settlement/payout-file", {"day": day, "reason": "again"})
        assert "Not done" in again.text  # each settlement goes in one file only
    actions = [(e.action, e.outcome) for e in audit_rows(small)][:4]
    assert actions == [("settlement.payout_file", "failed"), ("download.payment_file", "done"),
                       ("settlement.payout_file", "done"), ("settlement.run", "done")]


def test_an_operator_overrides_a_grade_and_the_credit_service_audits_it(small: Small) -> None:
    for c in logged_in(small.app, "olga"):
        c.get(f"/cards/{small.card_id}")
        r = c.post(f"/cards/{small.card_id}/credit-override",
                   {"grade": "D", "days": "30", "reason": "hardship agreement"})
        assert r.status_code == 200
        assert "Grade D set by hand for 30 days" in r.text, re.findall(
            r'class="flash[^"]*"[^>]*>([^<]*)', r.text)
    rows = [e for e in audit_rows(small) if e.action.startswith("credit")]
    assert [(e.action, e.actor, e.reason) for e in rows] == [
        ("credit_override", "olga", "hardship agreement")]


# --- the audit log and the vendored files --------------------------------------------------------
def test_the_audit_log_refuses_changes_and_deletions(small: Small) -> None:
    audit.record(small.host, actor="olga", role="operator", action="card.block", target="x")
    for statement in (sa.update(AuditRecord).values(reason="nothing happened"),
                      sa.delete(AuditRecord)):
        with small.host.uow() as uow, pytest.raises(sa.exc.DBAPIError):
            uow.session.execute(statement)
    assert len(audit.entries(small.host)) == 1


def test_the_vendored_scripts_are_the_recorded_npm_files_and_are_served(anon: Console) -> None:
    readme = (CONSOLE / "static/vendor/README.md").read_text()
    base = (CONSOLE / "templates/base.html").read_text()
    files = re.findall(r"\| `([\w.-]+\.js)` \|.*\| `([0-9a-f]{64})` \|", readme)
    assert len(files) == 2
    for name, digest in files:
        data = (CONSOLE / "static/vendor" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
        assert f"/static/vendor/{name}" in base
        r = anon.get(f"/static/vendor/{name}")
        assert r.status_code == 200 and r.content == data


def test_console_templates_and_static_files_ship_in_the_wheel() -> None:
    """The wheel takes the whole package directory (hatchling): nothing in it is ignored."""
    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    for path in CONSOLE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert not any(path.match(p.strip("/")) for p in ignored if p), path


def test_the_console_answers_beside_the_api(seeded: Seeded, seeded_app: FastAPI) -> None:
    for c in console_for(seeded_app):
        assert c.client.get("/health").json() == {"status": "ok"}
        assert c.get("/login").status_code == 200
        assert c.client.get("/console", follow_redirects=False).status_code in (307, 308)
