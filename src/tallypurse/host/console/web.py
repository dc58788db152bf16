"""The operator console: server-rendered pages (Jinja2), HTMX for partial updates,
Chart.js for charts, all served by the host itself (``/console``; no CDN).

Roles: an operator acts; an auditor reads everything and changes nothing; a
merchant sees its own terminals and settlements. Every action (and every
action a role is refused) is written to the audit log with who, when and
why. Pages keep working without JavaScript: forms post and redirect, HTMX
only makes it smoother (``hx-boost``, live card search, refreshing numbers).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from html import escape
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.middleware.sessions import SessionMiddleware

from tallypurse.core.errors import TallypurseError
from tallypurse.core.money import currency as lookup_currency
from tallypurse.core.money import format_minor
from tallypurse.credit import Grade
from tallypurse.host import errors as E
from tallypurse.host.api.auth import Role
from tallypurse.host.errors import HostError
from tallypurse.host.ratelimit import RateLimited
from tallypurse.host.service import Host

from . import audit, views
from .security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    Anyone,
    Csrf,
    LoginRequired,
    Operator,
    Reader,
    Refused,
    csrf_token,
    flash,
    host_of,
    session_secret,
    start_session,
    take_flashes,
)
from .users import User, active_user, authenticate

HERE = Path(__file__).parent

CARD_STATUSES = {"blocked": "card.block", "lost": "card.block", "stolen": "card.block",
                 "active": "card.unblock"}


# --- templates -----------------------------------------------------------------------------------
def _money(minor: int | None, code: str = "EUR") -> str:
    if minor is None:
        return "—"
    try:
        return format_minor(int(minor), lookup_currency(code))
    except TallypurseError:
        return f"{minor} {code}"


def _when(unix: int | None) -> str:
    if unix is None:
        return "never"
    return dt.datetime.fromtimestamp(int(unix), dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(seconds: int | None) -> str:
    if seconds is None:
        return "never"
    s = abs(int(seconds))
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if s >= size:
            text = f"{s // size} {unit}"
            break
    else:
        text = f"{s} s"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(("html",), default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = _money
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.globals["CSRF_FIELD"] = CSRF_FIELD
    env.globals["CSRF_HEADER"] = CSRF_HEADER
    return env


NAV: list[tuple[str, str, tuple[Role, ...]]] = [
    ("Dashboard", "/", (Role.OPERATOR, Role.AUDITOR)),
    ("Cards", "/cards", (Role.OPERATOR, Role.AUDITOR)),
    ("Terminals", "/terminals", (Role.OPERATOR, Role.AUDITOR, Role.MERCHANT)),
    ("Merchants", "/merchants", (Role.OPERATOR, Role.AUDITOR, Role.MERCHANT)),
    ("Settlement", "/settlement", (Role.OPERATOR, Role.AUDITOR)),
    ("Credit", "/credit", (Role.OPERATOR, Role.AUDITOR)),
    ("Lists", "/lists", (Role.OPERATOR, Role.AUDITOR)),
    ("Audit trail", "/audit", (Role.OPERATOR, Role.AUDITOR)),
]


class Pages:
    def __init__(self) -> None:
        self.env = environment()

    def render(self, request: Request, name: str, user: User | None, *, status: int = 200,
               **context: Any) -> HTMLResponse:
        host = host_of(request)
        root = request.scope.get("root_path", "")
        nav = [(label, root + path) for label, path, roles in NAV
               if user is not None and user.role in roles]
        if user is not None and user.role == Role.MERCHANT:
            nav = [(label if label != "Merchants" else "Settlement", url) for label, url in nav]
        body = self.env.get_template(name).render(
            request=request, user=user, root=root, nav=nav, path=request.url.path,
            csrf=csrf_token(request), flashes=take_flashes(request), now=host.now(),
            **context)
        return HTMLResponse(body, status_code=status)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _redirect(request: Request, path: str) -> Response:
    return RedirectResponse(request.scope.get("root_path", "") + path, status_code=303)


def _safe_next(target: str) -> str:
    """Only a path inside the console, never another site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise HostError(E.VALIDATION, f"not a day (YYYY-MM-DD): {text!r}") from None


def _source(request: Request) -> str:
    return f"console {request.client.host}" if request.client else "console"


# --- the app -------------------------------------------------------------------------------
def create_console(host: Host, *, https_only: bool | None = None) -> FastAPI:
    """The console as an ASGI app; the host API mounts it at ``/console``."""
    app = FastAPI(title="tallypurse console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.host = host
    pages = Pages()
    if https_only is None:
        https_only = host.settings.public_url.startswith("https://")
    app.add_middleware(SessionMiddleware, secret_key=session_secret(host),
                       session_cookie=SESSION_COOKIE, max_age=SESSION_MAX_AGE,
                       same_site="strict", https_only=https_only)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def _headers(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        h = response.headers
        h.setdefault("Content-Security-Policy",
                     "default-src 'self'; script-src 'self'; style-src 'self'; "
                     "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                     "form-action 'self'; base-uri 'none'")
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "same-origin")
        h.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith(request.scope.get("root_path", "") + "/static/"):
            h.setdefault("Cache-Control", "no-store")
        return response

    # --- errors -----------------------------------------------------------------------------------
    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _: LoginRequired) -> Response:
        root = request.scope.get("root_path", "")
        here = request.url.path[len(root):] or "/"
        target = f"{root}/login?next={quote(here)}"
        if _is_htmx(request):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    # Handlers run on the event loop: their database work goes to the thread pool.
    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        def work() -> Response:
            if request.method == "POST":
                route = request.scope.get("route")
                audit.record(host, actor=exc.user.username if exc.user else "(no session)",
                             role=exc.user.role.value if exc.user else "",
                             action=getattr(route, "name", None) or request.url.path,
                             target=str(request.path_params.get("card_id")
                                        or request.path_params.get("terminal_id") or ""),
                             outcome="refused", detail=exc.why, source=_source(request))
            return pages.render(request, "error.html", exc.user, status=403,
                                title="Not allowed", message=exc.why)

        return await run_in_threadpool(work)

    @app.exception_handler(TallypurseError)
    async def _error(request: Request, exc: TallypurseError) -> Response:
        status, title = 400, "Bad request"
        if isinstance(exc, HostError):
            status, title = exc.what.status, exc.what.title
            if exc.what == E.UNKNOWN_CARD:
                status = 404
        if isinstance(exc, RateLimited):  # no page to render: the user is the one too quick
            return HTMLResponse(f"<p>{escape(title)}: {escape(exc.message)}</p>",
                                status_code=status,
                                headers={"Retry-After": str(exc.retry_after)})
        return await run_in_threadpool(lambda: pages.render(
            request, "error.html", _user_or_none(request), status=status, title=title,
            message=exc.message))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors())
        return await run_in_threadpool(lambda: pages.render(
            request, "error.html", _user_or_none(request), status=422,
            title="Invalid request", message=f"check: {fields}"))

    def _user_or_none(request: Request) -> User | None:
        name = request.session.get("user") if "session" in request.scope else None
        return active_user(host, name) if isinstance(name, str) else None

    def act(request: Request, user: User, action: str, target: str, reason: str,
            do: Callable[[], str], back: str, *, audited_by_service: bool = False) -> Response:
        """Run an operator action: refuse it without a reason, audit it either way
        (a service that audits its own successes, in its own transaction, says so)."""
        reason = reason.strip()
        if len(reason) < 3:
            audit.record(host, actor=user.username, role=user.role.value, action=action,
                         target=target, outcome="failed", detail="no reason given",
                         source=_source(request))
            flash(request, "error", "Say why (a reason of a few words): it goes in the audit log.")
            return _redirect(request, back)
        try:
            done = do()
        except TallypurseError as exc:
            message = exc.message
            audit.record(host, actor=user.username, role=user.role.value, action=action,
                         target=target, reason=reason, outcome="failed", detail=message,
                         source=_source(request))
            flash(request, "error", f"Not done: {message}")
            return _redirect(request, back)
        if not audited_by_service:
            audit.record(host, actor=user.username, role=user.role.value, action=action,
                         target=target, reason=reason, outcome="done", detail=done,
                         source=_source(request))
        flash(request, "ok", done)
        return _redirect(request, back)

    def download(request: Request, user: User, action: str, target: str, body: bytes | str,
                 media_type: str, filename: str) -> Response:
        audit.record(host, actor=user.username, role=user.role.value, action=action,
                     target=target, outcome="done", detail=filename, source=_source(request))
        return Response(body, media_type=media_type, headers={
            "Content-Disposition": f'attachment; filename="{filename}"'})

    # --- login ------------------------------------------------------------------------------------
    @app.get("/login", name="login.form")
    def login_form(request: Request, next: str = "/") -> Response:
        return pages.render(request, "login.html", None, next=_safe_next(next), error="")

    @app.post("/login", name="login")
    def login(request: Request, _: Csrf, username: Annotated[str, Form(max_length=64)],
              password: Annotated[str, Form(max_length=1024)],
              next: Annotated[str, Form()] = "/") -> Response:
        user = authenticate(host, username, password)
        if user is None:
            audit.record(host, actor=username.strip().lower()[:64], role="", action="login",
                         outcome="refused", detail="wrong username or password",
                         source=_source(request))
            return pages.render(request, "login.html", None, status=401, next=_safe_next(next),
                                error="Wrong username or password.")
        start_session(request, user)
        audit.record(host, actor=user.username, role=user.role.value, action="login",
                     source=_source(request))
        target = _safe_next(next)
        if user.role == Role.MERCHANT and target == "/":
            target = f"/merchants/{user.merchant_id}"
        return _redirect(request, target)

    @app.post("/logout", name="logout")
    def logout(request: Request, user: Anyone, _: Csrf) -> Response:
        audit.record(host, actor=user.username, role=user.role.value, action="logout",
                     source=_source(request))
        request.session.clear()
        return _redirect(request, "/login")

    # --- dashboard --------------------------------------------------------------------------------
    @app.get("/", name="dashboard")
    def dashboard(request: Request, user: Anyone, currency: str | None = None) -> Response:
        if user.role == Role.MERCHANT:
            return _redirect(request, f"/merchants/{user.merchant_id}")
        data = views.dashboard(host, currency)
        return pages.render(request, "dashboard.html", user, d=data, chart=data.chart())

    # --- cards ------------------------------------------------------------------------------------
    @app.get("/cards", name="cards")
    def cards(request: Request, user: Reader,
              q: Annotated[str, Query(max_length=100)] = "") -> Response:
        return pages.render(request, "cards.html", user, q=q,
                            rows=views.search_cards(host, q))

    @app.get("/cards/{card_id}", name="card")
    def card(request: Request, user: Reader, card_id: str) -> Response:
        page = views.card_page(host, card_id.lower())
        explanation, note = (views.credit_explanation(host, page.card.card_id)
                             if page.holder is not None else (None, ""))
        return pages.render(request, "card.html", user, c=page, chain=page.chain(),
                            x=explanation, x_note=note, tx_type_name=views.tx_type_name)

    @app.post("/cards/{card_id}/status", name="card.status")
    def card_status(request: Request, user: Operator, _: Csrf, card_id: str,
                    status: Annotated[str, Form()],
                    reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        action = CARD_STATUSES.get(status, "card.status")

        def do() -> str:
            host.registry.set_card_status(card_id, status, reason=reason.strip())
            return (f"Card {card_id} is active again and off the blacklist."
                    if status == "active" else
                    f"Card {card_id} is {status} and on the blacklist.")

        return act(request, user, action, card_id, reason, do, f"/cards/{card_id}")

    @app.post("/cards/{card_id}/replace", name="card.replace")
    def card_replace(request: Request, user: Operator, _: Csrf, card_id: str,
                     new_card_id: Annotated[str, Form()],
                     reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        def do() -> str:
            moved = host.registry.replace_card(card_id, new_card_id.strip().lower())
            with host.uow() as uow:
                cur = host.registry.card(uow.session, card_id).currency
            return (f"Card {card_id} replaced by {new_card_id}; {_money(moved, cur)} moved to "
                    "the cardholder's online account.")

        return act(request, user, "card.replace", card_id, reason, do, f"/cards/{card_id}")

    @app.post("/cards/{card_id}/credit-override", name="credit.override")
    def credit_override(request: Request, user: Operator, _: Csrf, card_id: str,
                        grade: Annotated[str, Form(max_length=5)],
                        days: Annotated[int, Form(ge=0, le=366)] = 0,
                        reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        """Set the cardholder's grade by hand (``clear`` ends an override). The credit
        service writes the audit entry itself, in the same transaction."""
        def do() -> str:
            if grade == "clear":
                out = host.credit.clear_override(card_id, reason=reason, actor=user.username,
                                                 role=user.role.value, source=_source(request))
                return f"Override cleared: grade {out.grade} ({out.basis}) applies again."
            expires = host.now() + days * 86_400 if days else None
            out = host.credit.override(card_id, Grade.parse(grade), reason=reason,
                                       actor=user.username, expires=expires,
                                       role=user.role.value, source=_source(request))
            return (f"Grade {out.grade} set by hand"
                    f"{f' for {days} days' if days else ''}; new credit records: "
                    f"{len(out.published)}.")

        return act(request, user, "credit_override" if grade != "clear" else "credit_clear",
                   card_id, reason, do, f"/cards/{card_id}", audited_by_service=True)

    # --- terminals --------------------------------------------------------------------------------
    @app.get("/terminals", name="terminals")
    def terminals(request: Request, user: Anyone) -> Response:
        scope = user.merchant_id if user.role == Role.MERCHANT else None
        host.lists.publish()
        with host.uow() as uow:
            heads = {n: host.lists.head(uow.session, n) for n in ("blacklist", "actions")}
            params = host.tms.parameters(uow.session).parameters.version
        return pages.render(request, "terminals.html", user, rows=host.tms.terminals(scope),
                            heads=heads, params_version=params,
                            names=views.merchant_names(host))

    @app.post("/terminals/{terminal_id}/revoke", name="terminal.revoke")
    def terminal_revoke(request: Request, user: Operator, _: Csrf, terminal_id: str,
                        reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        def do() -> str:
            host.tms.revoke(terminal_id, reason.strip())
            return f"Terminal {terminal_id} is revoked: the host refuses its requests."

        return act(request, user, "terminal.revoke", terminal_id, reason, do, "/terminals")

    # --- merchants and settlement -----------------------------------------------------------------
    def merchant_scope(user: User, merchant_id: str) -> None:
        if user.role == Role.MERCHANT and merchant_id != user.merchant_id:
            raise Refused(user, "a merchant sees only its own data")

    @app.get("/merchants", name="merchants")
    def merchants(request: Request, user: Anyone) -> Response:
        if user.role == Role.MERCHANT:
            return _redirect(request, f"/merchants/{user.merchant_id}")
        return pages.render(request, "merchants.html", user, rows=views.merchants(host))

    @app.get("/merchants/{merchant_id}", name="merchant")
    def merchant(request: Request, user: Anyone, merchant_id: str) -> Response:
        merchant_scope(user, merchant_id)
        found = views.merchants(host, merchant_id)
        if not found:
            raise HostError(E.NOT_FOUND, f"no merchant {merchant_id}")
        return pages.render(
            request, "merchant.html", user, merchant=found[0],
            settlements=list(reversed(host.settlement.settlements(merchant_id=merchant_id))),
            unsettled=views.unsettled(host, merchant_id),
            terminals=host.tms.terminals(merchant_id))

    @app.get("/merchants/{merchant_id}/settlements.csv", name="merchant.csv")
    def merchant_csv(request: Request, user: Anyone, merchant_id: str) -> Response:
        merchant_scope(user, merchant_id)
        rows = host.settlement.settlements(merchant_id=merchant_id)
        return download(request, user, "download.settlement_csv", merchant_id,
                        host.settlement.report_csv(rows), "text/csv",
                        f"settlements-{merchant_id}.csv")

    @app.get("/settlement", name="settlement")
    def settlement(request: Request, user: Reader) -> Response:
        return pages.render(request, "settlement.html", user, days=views.settlement_days(host),
                            files=views.payment_files(host),
                            today=views.day_of(host.now()).isoformat())

    @app.get("/settlement/{day}.csv", name="settlement.csv")
    def settlement_csv(request: Request, user: Reader, day: str) -> Response:
        rows = host.settlement.settlements(day=_day(day))
        return download(request, user, "download.settlement_csv", day,
                        host.settlement.report_csv(rows), "text/csv", f"settlement-{day}.csv")

    @app.post("/settlement/run", name="settlement.run")
    def settlement_run(request: Request, user: Operator, _: Csrf, day: Annotated[str, Form()],
                       reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        def do() -> str:
            done = host.settlement.run(_day(day))
            return (f"Settled {len(done)} merchant(s) for {day}." if done
                    else f"Nothing left to settle for {day}.")

        return act(request, user, "settlement.run", day, reason, do, "/settlement")

    @app.post("/settlement/payout-file", name="settlement.payout_file")
    def payout_file(request: Request, user: Operator, _: Csrf, day: Annotated[str, Form()],
                    currency: Annotated[str, Form(max_length=3)] = "EUR",
                    reason: Annotated[str, Form(max_length=500)] = "") -> Response:
        def do() -> str:
            xml = host.settlement.payout_file(_day(day), currency.upper())
            if xml is None:
                raise HostError(E.NOT_FOUND, f"no settlement of {day} waits for a payout file")
            return f"Payout file (pain.001) for {day} created; download it below."

        return act(request, user, "settlement.payout_file", day, reason, do, "/settlement")

    @app.get("/files/{file_id}", name="file")
    def payment_file(request: Request, user: Reader, file_id: int) -> Response:
        pf, xml = views.payment_file(host, file_id)
        return download(request, user, "download.payment_file", pf.message_id, xml,
                        "application/xml", f"{pf.kind}-{pf.business_day}-{pf.message_id}.xml")

    # --- credit, lists, audit ---------------------------------------------------------------------
    @app.get("/credit", name="credit")
    def credit(request: Request, user: Reader) -> Response:
        page = views.credit_page(host)
        return pages.render(request, "credit.html", user, p=page, chart=page.chart())

    @app.get("/lists", name="lists")
    def lists(request: Request, user: Reader) -> Response:
        return pages.render(request, "lists.html", user, p=views.lists_page(host),
                            names=views.merchant_names(host))

    @app.get("/audit", name="audit")
    def audit_trail(request: Request, user: Reader, before: int | None = None,
                    actor: Annotated[str, Query(max_length=64)] = "",
                    action: Annotated[str, Query(max_length=48)] = "",
                    target: Annotated[str, Query(max_length=64)] = "") -> Response:
        rows = audit.entries(host, limit=100, before=before, actor=actor, action=action,
                             target=target)
        return pages.render(request, "audit.html", user, rows=rows, actor=actor, action=action,
                            target=target)

    return app
