"""The credit loop in the host: indicators from the host's rows, a score and a grade,
the grade's credit record, and that record written back to the cardholder's cards.

* **Scoring.** :mod:`tallypurse.host.credit_data` turns a cardholder's rows into
  indicators; the current model of the registry in the data directory
  (``<data dir>/credit-registry``; the built-in ``expert-v1`` while nothing is
  promoted) scores them. Every scoring is stored (``credit_decisions``): the
  indicators, score, model grade, reason codes, model version, the grade in
  force and why.
* **The grade in force** is, in this order: an operator's override while it
  lasts; during the first ``min_history_days`` of a cardholder (too little
  history to judge) the starting grade given at registration, unless the model
  grade is worse and there is adverse evidence (a failed collection, a debt in
  collection, a blacklisting); otherwise the model's grade.
* **Records.** The operator's policy (``<data dir>/credit-policy-<CUR>.toml`` or
  ``credit-policy.toml``; the shipped example when neither exists) turns the
  grade into terms, capped by its ``[caps]``. When a card's terms or grade
  differ from its last record, or that record expires within
  ``renew_before_days``, the host signs a new record (version + 1, host list
  key) carrying the online-account balance band and the outstanding debt, and
  publishes it as a CREDIT_RECORD write-back; an older one still pending is
  withdrawn. Card issuance uses the same policy (:meth:`HostCredit.initial_record`).
* **When.** The daily batch (:meth:`HostCredit.run`) scores every active
  cardholder once per day. Debt outcomes that must reach the card now (a failed
  collection, a debt repaid after its collection failed, a write-off, a
  default) re-score the cardholder at once, right after the transaction that
  decided them commits (:meth:`HostCredit.note_event`), so a failed collection
  downgrades the card's record before the next terminal sync. Routine
  settlements are re-scored by :meth:`HostCredit.catch_up` (``tallypurse host
  tick``), which keeps scoring off the agent-debit path; it also retries any
  re-scoring that failed (logged; the money path never fails because of it).

Locks: scoring a cardholder locks the cardholder row, then the cardholder's
cards (in card id order), and only then appends to the action list, the same
order as clearing (cards, then lists), so the two never wait on each other in
a cycle.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from tallypurse.core.errors import BadInput
from tallypurse.core.messages import CreditRecord
from tallypurse.core.money import MAX_MINOR, currency, format_minor
from tallypurse.core.protocol import TxType
from tallypurse.credit import (
    INDICATORS,
    NO_CREDIT,
    CreditPolicy,
    CreditTerms,
    Decision,
    Grade,
    Indicators,
    ModelRegistry,
    Scorecard,
    credit_record,
    default_policy,
    load_policy,
)
from tallypurse.credit.indicators import DAY, DEFAULT_WINDOW_DAYS
from tallypurse.credit.registry import RegistryError, UnknownModel
from tallypurse.host.credit_data import HolderInputs, load_inputs
from tallypurse.host.db.models import (
    Card,
    Cardholder,
    CreditDecision,
    CreditEvent,
    CreditOverride,
    CreditRecordRow,
    WriteBackAction,
)
from tallypurse.host.errors import CONFLICT, NOT_FOUND, VALIDATION, HostError
from tallypurse.host.tsm.personalise import signed_credit_record

from .common import log, log_event

MODEL_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

if TYPE_CHECKING:
    from tallypurse.host.service import Host

# Debt outcomes (credit event kinds, see agent.py) that re-score the cardholder: those
# that may have to change a card's record now (a failure, a default, a repayment after a
# failure) at once; routine settlements at the next catch-up (``tick``) or daily batch.
RESCORE_ON = frozenset({"debt_collection", "debt_settled_online", "debt_settled_bank",
                        "debt_repaid_load", "debt_written_off", "defaulted"})
AT_ONCE = frozenset({"debt_collection", "debt_repaid_load", "debt_written_off", "defaulted"})
CATCH_UP_S = 3 * DAY  # catch_up() looks this far back; the daily batch covers the rest
PENDING = "tallypurse.credit.pending"
LISTENING = "tallypurse.credit.listening"
GRADE_LETTERS = "-ABCDE"  # 0: no grade (no credit)
BATCH_CHUNK = 100


def letter(grade: int) -> str:
    return GRADE_LETTERS[grade] if 0 <= grade <= 5 else "?"


def _rank(grade: int) -> int:
    """Higher is worse; no grade (0) is worse than E."""
    return 6 if grade == 0 else grade


def _utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def end_of_day(day: dt.date) -> int:
    """The last second of ``day`` (UTC), Unix seconds."""
    return int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp()) - 1


@dataclass(frozen=True, slots=True)
class CreditSettings:
    min_history_days: int = 30  # before this, the starting grade holds (see the module doc)
    renew_before_days: int = 7  # renew a record this close to its expiry
    window_days: int = DEFAULT_WINDOW_DAYS
    registry_dir: Path | None = None  # default: <data dir>/credit-registry
    policy_dir: Path | None = None  # default: the data directory


@dataclass(frozen=True, slots=True)
class Published:
    card_id: str
    version: int
    grade: str
    per_tap_overdraft: int
    max_outstanding: int
    action_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """One scoring of one cardholder."""

    cardholder_id: str
    decision_id: int
    score: int
    model_grade: str
    grade: str
    previous_grade: str
    basis: str
    applied: bool
    published: tuple[Published, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"cardholder_id": self.cardholder_id, "decision_id": self.decision_id,
                "score": self.score, "model_grade": self.model_grade, "grade": self.grade,
                "previous_grade": self.previous_grade, "basis": self.basis,
                "applied": self.applied,
                "published": [_pub(p) for p in self.published]}


def _pub(p: Published) -> dict[str, Any]:
    return {"card_id": p.card_id, "version": p.version, "grade": p.grade,
            "per_tap_overdraft": p.per_tap_overdraft, "max_outstanding": p.max_outstanding,
            "action_id": p.action_id}


@dataclass(slots=True)
class RunReport:
    day: dt.date
    as_of: int
    model_version: str
    scored: int = 0
    skipped: int = 0  # already scored by the batch that day
    not_applied: int = 0  # a newer decision exists (a replayed past day)
    changed: list[dict[str, Any]] = field(default_factory=list)
    published: int = 0
    grades: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "as_of": self.as_of, "as_of_utc": _utc(self.as_of),
                "model_version": self.model_version, "scored": self.scored,
                "skipped": self.skipped, "not_applied": self.not_applied,
                "grade_changes": self.changed, "records_published": self.published,
                "grades": dict(sorted(self.grades.items()))}


@dataclass(frozen=True, slots=True)
class _Grants:
    starting: int | None
    override: CreditOverride | None  # the latest override or clear row


class HostCredit:
    def __init__(self, host: Host, settings: CreditSettings | None = None) -> None:
        self.host = host
        self.settings = settings or CreditSettings()
        self._scorecard: tuple[str, Scorecard] | None = None
        self._policies: dict[tuple[Path, int], CreditPolicy] = {}
        self._default_policy: CreditPolicy | None = None

    # --- model and policy ----------------------------------------------------------------------
    @property
    def registry_dir(self) -> Path:
        return self.settings.registry_dir or self.host.settings.data_dir / "credit-registry"

    def model_registry(self) -> ModelRegistry:
        return ModelRegistry(self.registry_dir)

    def scorecard(self) -> Scorecard:
        """The registry's current model (the built-in expert one until one is promoted)."""
        registry = self.model_registry()
        try:
            key = registry.current_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            key = ""
        if self._scorecard is None or self._scorecard[0] != key:
            self._scorecard = (key, registry.current())
        return self._scorecard[1]

    def policy(self, currency_code: str) -> CreditPolicy | None:
        """The operator's policy for a currency; None when there is none (no credit)."""
        folder = self.settings.policy_dir or self.host.settings.data_dir
        files = [folder / f"credit-policy-{currency_code}.toml", folder / "credit-policy.toml"]
        existing = [f for f in files if f.is_file()]
        for path in existing:
            key = (path, path.stat().st_mtime_ns)
            if key not in self._policies:
                self._policies[key] = load_policy(path)
            if self._policies[key].currency.code == currency_code:
                return self._policies[key]
        if not existing:
            if self._default_policy is None:
                self._default_policy = default_policy()
            if self._default_policy.currency.code == currency_code:
                return self._default_policy
        return None

    def terms(self, grade: int, currency_code: str) -> CreditTerms:
        policy = self.policy(currency_code)
        if policy is None or not 1 <= grade <= 5:
            return NO_CREDIT
        return policy.terms_for(Grade(grade))

    def grade_limits(self, currency_code: str = "EUR") -> dict[int, tuple[int, int, int]]:
        """Grade (0 none, 1..5 = A..E) -> (per-tap overdraft, maximum outstanding, debt
        slots) under this host's policy for a currency."""
        out = {0: (0, 0, 0)}
        for g in range(1, 6):
            t = self.terms(g, currency_code)
            out[g] = (t.per_tap_overdraft, t.max_outstanding, t.max_slots)
        return out

    def model_info(self) -> dict[str, Any]:
        """The model in use, where it comes from, and the policy files looked for."""
        registry = self.model_registry()
        sc = self.scorecard()
        folder = self.settings.policy_dir or self.host.settings.data_dir
        return {"version": sc.version, "kind": sc.spec.kind, "description": sc.spec.description,
                "built_in": not registry.current_file.exists(), "registry": str(registry.root),
                "grade_floors": dict(zip("ABCD", sc.spec.grade_floors, strict=True)),
                "policy_files": [str(folder / "credit-policy-<CUR>.toml"),
                                 str(folder / "credit-policy.toml")],
                "min_history_days": self.settings.min_history_days}

    def models(self) -> dict[str, Any]:
        """The registry's models (version, status, held-out metrics, last promotion), the
        current version and the last promotions."""
        registry = self.model_registry()
        try:
            return {"current": registry.current_version(), "registry": str(registry.root),
                    "models": registry.models(),
                    "promotions": [p.to_dict() for p in registry.history()][-20:]}
        except RegistryError as exc:
            raise HostError(CONFLICT, f"model registry: {exc.message}") from None

    def promote(self, version: str, *, by: str, reason: str, role: str = "operator",
                source: str = "") -> dict[str, Any]:
        """Make a candidate, an earlier model or the built-in one current, as
        ``tallypurse credit promote VERSION`` does (a version only, never a file); the
        promotion goes to the registry's trail and to the audit trail. Refused, changing
        nothing, for a malformed or unknown version or without who and why."""
        if not MODEL_VERSION.fullmatch(version) or version.endswith(".toml"):
            raise HostError(VALIDATION, "a model version is 1 to 64 letters, digits, '.', "
                                        "'-' or '_', not a file name")
        if not by.strip() or not reason.strip():
            raise HostError(VALIDATION, "say who promotes the model, and why")
        try:
            promotion = self.model_registry().promote(version, by=by.strip()[:100],
                                                      reason=reason.strip()[:500])
        except UnknownModel:
            raise HostError(NOT_FOUND, f"no candidate, promoted or built-in model {version!r}"
                            ) from None
        except BadInput as exc:  # the registry refuses, or the model's file does not load
            raise HostError(CONFLICT, exc.message) from None
        with self.host.uow() as uow:
            self.host.audit.append(
                uow.session, actor=promotion.by, role=role, action="credit_promote",
                target=promotion.version, reason=promotion.reason, outcome="done",
                detail=f"{promotion.previous} -> {promotion.version} "
                       f"(sha256 {promotion.sha256})",
                source=source or "host credit")
            uow.commit()
        log_event("credit_model_promoted", version=promotion.version,
                  previous=promotion.previous, by=promotion.by)
        return promotion.to_dict()

    def overrides(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        """Operator overrides, newest first (by default only those in force now)."""
        now = self.host.now()
        with self.host.uow() as uow:
            rows = list(uow.session.scalars(select(CreditOverride).where(
                CreditOverride.action != "start").order_by(CreditOverride.id)))
            uow.session.expunge_all()
        latest: dict[str, CreditOverride] = {}
        for row in rows:
            latest[row.cardholder_id] = row
        chosen = [r for r in (latest.values() if active_only else rows)
                  if not active_only or (r.action == "override"
                                         and (r.expires is None or r.expires > now))]
        return [{"cardholder_id": r.cardholder_id, "action": r.action,
                 "grade": letter(r.grade) if r.grade is not None else None, "reason": r.reason,
                 "by": r.actor, "at": r.created, "at_utc": _utc(r.created),
                 "expires": r.expires, "expires_utc": _utc(r.expires) if r.expires else None}
                for r in sorted(chosen, key=lambda r: -r.id)]

    # --- issuance ------------------------------------------------------------------------------
    def initial_record(self, serial: bytes, cardholder_id: str, currency_code: str,
                       now: int) -> CreditRecord | None:
        """Version 1 of a new card's credit record from its cardholder's grade in force,
        or None when that grade gives no credit."""
        with self.host.uow() as uow:
            holder = uow.session.get(Cardholder, cardholder_id)
            if holder is None:
                return None
            grade = holder.credit_grade
            inputs = load_inputs(uow.session, [holder.id], now,
                                 window_days=7).get(holder.id)
        policy = self.policy(currency_code)
        if policy is None or not 1 <= grade <= 4 or not policy.terms_for(Grade(grade)).has_credit:
            return None
        return credit_record(serial, Grade(grade), policy, version=1,
                             online_balance_minor=inputs.online_balance if inputs else 0,
                             outstanding_minor=min(inputs.outstanding if inputs else 0,
                                                   MAX_MINOR),
                             issued=now)

    def remember(self, session: Session, record: CreditRecord, *, decision_id: int | None = None,
                 action_id: str | None = None) -> None:
        """Keep a record given to a card (at personalisation or as a write-back)."""
        session.add(CreditRecordRow(
            card_id=record.card_id.hex(), version=record.version, grade=record.grade,
            per_tap_overdraft=record.per_tap_overdraft, max_outstanding=record.max_outstanding,
            max_slots=record.max_slots, allowed_types=record.allowed_types,
            balance_band=record.balance_band, outstanding_known=record.outstanding_known,
            issued=record.issued, expires=record.expires, record=record.to_bytes().hex(),
            decision_id=decision_id, action_id=action_id, created=self.host.now()))

    def record_start(self, session: Session, cardholder_id: str, grade: int,
                     actor: str = "registry") -> None:
        """The starting grade given at registration (holds for the first days)."""
        session.add(CreditOverride(cardholder_id=cardholder_id, action="start", grade=grade,
                                   reason="starting grade", actor=actor[:100],
                                   created=self.host.now()))

    # --- event-driven re-scoring -----------------------------------------------------------------
    def note_event(self, session: Session, cardholder_id: str | None, kind: str, *,
                   after_failure: bool = False) -> None:
        """A debt outcome was decided in ``session``. A failure, a default, or a repayment
        of a debt whose collection had failed re-scores its cardholder as soon as that
        transaction commits (once per cardholder and transaction; nothing on rollback).
        A routine settlement waits for :meth:`catch_up`, off the agent-debit path."""
        if cardholder_id is None or kind not in RESCORE_ON:
            return
        if kind not in AT_ONCE and not after_failure:
            return
        if not session.info.get(LISTENING):
            session.info[LISTENING] = True
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", self._after_rollback)
        session.info.setdefault(PENDING, {})[cardholder_id] = kind

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(PENDING, None)

    def _after_commit(self, session: Session) -> None:
        pending: dict[str, str] = session.info.pop(PENDING, None) or {}
        for holder_id, kind in sorted(pending.items()):
            try:
                self.rescore(holder_id, trigger=f"event:{kind}")
            except Exception:  # the outcome is committed; catch_up() retries
                log.exception(json.dumps({"event": "credit_rescore_failed",
                                          "cardholder": holder_id, "kind": kind}))

    def catch_up(self) -> list[Outcome]:
        """Re-score every cardholder with a debt outcome newer than their last decision
        (routine settlements, and any re-scoring that failed); run by ``tick``."""
        now = self.host.now()
        since = now - CATCH_UP_S
        last = (select(func.max(CreditDecision.as_of))
                .where(CreditDecision.cardholder_id == CreditEvent.cardholder_id)
                .scalar_subquery())
        with self.host.uow() as uow:
            ids = list(uow.session.scalars(
                select(CreditEvent.cardholder_id)
                .where(CreditEvent.created >= since, CreditEvent.cardholder_id.is_not(None),
                       CreditEvent.kind.in_(sorted(RESCORE_ON)))
                .group_by(CreditEvent.cardholder_id)
                .having(func.max(CreditEvent.created) > func.coalesce(last, -1))
                .order_by(CreditEvent.cardholder_id)))
        out = []
        for holder_id in ids:
            try:
                out.append(self.rescore(holder_id or "", trigger="event:catch-up"))
            except Exception:  # one cardholder's failure does not stop the others
                log.exception(json.dumps({"event": "credit_rescore_failed",
                                          "cardholder": holder_id, "kind": "catch-up"}))
        return out

    # --- scoring -------------------------------------------------------------------------------
    def rescore(self, ref: str, *, trigger: str = "manual") -> Outcome:
        """Score one cardholder (or a card's cardholder) now, apply the grade, publish."""
        holder_id, _ = self.resolve(ref)
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            holder = self._lock(s, [holder_id])[0]
            outcome = self._score(s, holder, now, trigger=trigger, apply=True)
            uow.commit()
        return outcome

    def run(self, day: dt.date | None = None) -> RunReport:
        """The daily batch: score every active cardholder as of the end of ``day`` (or
        now, whichever is earlier; default today), once per cardholder and day. A
        decision changes the grade in force only if no newer decision exists, so
        replaying a past day fills in history without undoing today's grades."""
        now = self.host.now()
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        if day is None:
            day = today
        if day > today:
            raise BadInput(f"{day} is in the future: a day's batch runs on or after that day")
        as_of = min(now, end_of_day(day))
        report = RunReport(day, as_of, self.scorecard().version)
        with self.host.uow() as uow:
            ids = list(uow.session.scalars(select(Cardholder.id).where(
                Cardholder.status == "active", Cardholder.created <= as_of)
                .order_by(Cardholder.id)))
        for i in range(0, len(ids), BATCH_CHUNK):
            self._run_chunk(ids[i:i + BATCH_CHUNK], day, as_of, report)
        log_event("credit_batch", **{k: v for k, v in report.to_json().items()
                                     if k != "grade_changes"})
        return report

    def _run_chunk(self, ids: list[str], day: dt.date, as_of: int, report: RunReport) -> None:
        with self.host.uow() as uow:
            s = uow.session
            holders = self._lock(s, ids)
            done = set(s.scalars(select(CreditDecision.cardholder_id).where(
                CreditDecision.cardholder_id.in_(ids), CreditDecision.batch_day == day)))
            latest: dict[str, int] = {h: int(t) for h, t in s.execute(
                select(CreditDecision.cardholder_id, func.max(CreditDecision.as_of))
                .where(CreditDecision.cardholder_id.in_(ids))
                .group_by(CreditDecision.cardholder_id))}
            todo = [h for h in holders if h.id not in done]
            report.skipped += len(holders) - len(todo)
            inputs = load_inputs(s, [h.id for h in todo], as_of,
                                 window_days=self.settings.window_days)
            grants = self._grants(s, [h.id for h in todo])
            cards = self._cards(s, [h.id for h in todo])
            for holder in todo:
                apply = as_of >= latest.get(holder.id, 0)
                out = self._decide(s, holder, inputs[holder.id], grants[holder.id],
                                   cards.get(holder.id, []), as_of, trigger="batch",
                                   batch_day=day, apply=apply)
                report.scored += 1
                report.not_applied += 0 if apply else 1
                report.grades[out.grade] = report.grades.get(out.grade, 0) + 1
                report.published += len(out.published)
                if out.applied and out.grade != out.previous_grade:
                    report.changed.append({"cardholder_id": holder.id,
                                           "from": out.previous_grade, "to": out.grade,
                                           "score": out.score, "basis": out.basis})
            uow.commit()

    def _lock(self, s: Session, ids: Sequence[str]) -> list[Cardholder]:
        """Lock cardholders, then their cards (both in id order): see the module doc."""
        stmt = select(Cardholder).where(Cardholder.id.in_(sorted(ids))).order_by(Cardholder.id)
        if self.host.db.postgres:
            stmt = stmt.with_for_update()
        holders = list(s.scalars(stmt))
        if len(holders) != len(set(ids)):
            missing = sorted(set(ids) - {h.id for h in holders})
            raise HostError(NOT_FOUND, f"no cardholder {missing[0]}")
        cards = select(Card).where(Card.cardholder_id.in_(sorted(ids))).order_by(Card.card_id)
        if self.host.db.postgres:
            s.execute(cards.with_for_update()).all()
        return holders

    def _cards(self, s: Session, ids: Sequence[str]) -> dict[str, list[Card]]:
        out: dict[str, list[Card]] = {}
        for card in s.scalars(select(Card).where(Card.cardholder_id.in_(list(ids)))
                              .order_by(Card.card_id)):
            out.setdefault(card.cardholder_id or "", []).append(card)
        return out

    def _grants(self, s: Session, ids: Sequence[str]) -> dict[str, _Grants]:
        starting: dict[str, int | None] = {}
        latest: dict[str, CreditOverride] = {}
        for row in s.scalars(select(CreditOverride).where(
                CreditOverride.cardholder_id.in_(list(ids))).order_by(CreditOverride.id)):
            if row.action == "start":
                starting[row.cardholder_id] = row.grade
            else:
                latest[row.cardholder_id] = row
        return {i: _Grants(starting.get(i), latest.get(i)) for i in ids}

    def _score(self, s: Session, holder: Cardholder, now: int, *, trigger: str,
               apply: bool) -> Outcome:
        inputs = load_inputs(s, [holder.id], now, window_days=self.settings.window_days)
        return self._decide(s, holder, inputs[holder.id], self._grants(s, [holder.id])[holder.id],
                            self._cards(s, [holder.id]).get(holder.id, []), now,
                            trigger=trigger, batch_day=None, apply=apply)

    def in_force(self, holder: Cardholder, grants: _Grants, indicators: Indicators,
                 model: Grade, at: int) -> tuple[int, str]:
        """(grade in force, basis): override, starting grade or the model's grade."""
        o = grants.override
        if (o is not None and o.action == "override" and o.grade is not None
                and (o.expires is None or o.expires > at)):
            return o.grade, "override"
        if indicators.tenure_days < self.settings.min_history_days:
            start = grants.starting if grants.starting is not None else holder.credit_grade
            adverse = (indicators.splits_failed or indicators.splits_in_collection
                       or indicators.blacklist_history)
            if adverse and _rank(int(model)) > _rank(start):
                return int(model), "model"
            return start, "starting"
        return int(model), "model"

    def _decide(self, s: Session, holder: Cardholder, inputs: HolderInputs, grants: _Grants,
                cards: list[Card], as_of: int, *, trigger: str, batch_day: dt.date | None,
                apply: bool) -> Outcome:
        if grants.starting is None:  # registered before the credit system: keep its grade
            self.record_start(s, holder.id, holder.credit_grade, actor="credit (first scoring)")
            grants = _Grants(holder.credit_grade, grants.override)
        indicators = inputs.indicators(as_of, self.settings.window_days)
        decision = self.scorecard().score(indicators)
        grade, basis = self.in_force(holder, grants, indicators, decision.grade, as_of)
        row = CreditDecision(
            cardholder_id=holder.id, as_of=as_of, batch_day=batch_day, trigger=trigger[:40],
            model_version=decision.model_version, score=decision.score,
            model_grade=int(decision.grade), grade=grade, basis=basis,
            reasons=json.dumps([{"code": r.code, "indicator": r.indicator, "points": r.points,
                                 "best_points": r.best_points} for r in decision.reasons]),
            indicators=json.dumps(indicators.to_dict(), sort_keys=True),
            online_balance=inputs.online_balance, outstanding=inputs.outstanding,
            created=self.host.now())
        s.add(row)
        s.flush()
        previous = holder.credit_grade
        published: tuple[Published, ...] = ()
        if apply:
            holder.credit_grade = grade
            published = tuple(self._refresh_cards(s, holder, cards, grade, inputs, row.id))
        if apply and (grade != previous or published):
            log_event("credit_grade", cardholder=holder.id, previous=letter(previous),
                      grade=letter(grade), basis=basis, score=decision.score,
                      model=decision.model_version, trigger=trigger,
                      published=[p.version for p in published])
        return Outcome(holder.id, row.id, decision.score, decision.grade.name, letter(grade),
                       letter(previous), basis, apply, published)

    def _refresh_cards(self, s: Session, holder: Cardholder, cards: list[Card], grade: int,
                       inputs: HolderInputs, decision_id: int) -> list[Published]:
        now = self.host.now()
        out = []
        for card in cards:
            if card.status != "active" or card.blacklisted:
                continue
            policy = self.policy(card.currency)
            if policy is None:
                log_event("credit_no_policy", card=card.card_id, currency=card.currency)
                continue
            record_grade = Grade(grade) if 1 <= grade <= 5 else Grade.E
            terms = policy.terms_for(record_grade)
            current = (s.get(CreditRecordRow, (card.card_id, card.credit_version))
                       if card.credit_version else None)
            if not self._needs_record(current, int(record_grade), terms, now):
                continue
            out.append(self._publish(s, card, record_grade, policy, inputs, decision_id, now))
        return out

    def _needs_record(self, current: CreditRecordRow | None, grade: int, terms: CreditTerms,
                      now: int) -> bool:
        if current is None:
            return terms.has_credit
        if (current.grade, current.per_tap_overdraft, current.max_outstanding,
                current.max_slots, current.allowed_types) != (
                grade, terms.per_tap_overdraft, terms.max_outstanding, terms.max_slots,
                terms.allowed_mask):
            return True
        return terms.has_credit and current.expires - now <= self.settings.renew_before_days * DAY

    def _publish(self, s: Session, card: Card, grade: Grade, policy: CreditPolicy,
                 inputs: HolderInputs, decision_id: int, now: int) -> Published:
        version = int(s.execute(
            update(Card).where(Card.card_id == card.card_id)
            .values(credit_version=Card.credit_version + 1).returning(Card.credit_version)
        ).scalar_one())
        card.credit_version = version
        record = credit_record(bytes.fromhex(card.card_id), grade, policy, version=version,
                               online_balance_minor=inputs.online_balance,
                               outstanding_minor=min(inputs.outstanding, MAX_MINOR), issued=now)
        for old in s.scalars(select(WriteBackAction).where(
                WriteBackAction.card_id == card.card_id, WriteBackAction.kind == "credit_record",
                WriteBackAction.status == "pending")):
            self.host.writebacks.withdraw(s, old, "superseded")
        action = self.host.writebacks.publish(s, card, "credit_record",
                                              signed_credit_record(self.host.keys, record))
        self.remember(s, record, decision_id=decision_id, action_id=action.action_id)
        log_event("credit_record_published", card=card.card_id, version=version,
                  grade=grade.name, per_tap=record.per_tap_overdraft,
                  max_outstanding=record.max_outstanding, action=action.action_id)
        return Published(card.card_id, version, grade.name, record.per_tap_overdraft,
                         record.max_outstanding, action.action_id)

    # --- overrides -----------------------------------------------------------------------------
    def override(self, ref: str, grade: Grade, *, reason: str, actor: str,
                 expires: int | None = None, role: str = "operator",
                 source: str = "") -> Outcome:
        """Set a cardholder's grade by hand (until ``expires``, or until cleared); the
        grade applies at once and is written back to the cards. Audited."""
        reason = reason.strip()
        if not reason:
            raise BadInput("an override needs a reason")
        if not actor.strip():
            raise BadInput("say who overrides")
        now = self.host.now()
        if expires is not None and expires <= now:
            raise BadInput("the override would expire before it starts")
        holder_id, _ = self.resolve(ref)
        detail = f"grade {grade.name}" + (f" until {_utc(expires)}" if expires else "")
        return self._grant(holder_id, CreditOverride(
            cardholder_id=holder_id, action="override", grade=int(grade), reason=reason[:500],
            actor=actor[:100], expires=expires, created=now), role, source, detail)

    def clear_override(self, ref: str, *, reason: str, actor: str, role: str = "operator",
                       source: str = "") -> Outcome:
        """End an override: the model (or starting) grade applies again at once."""
        if not reason.strip() or not actor.strip():
            raise BadInput("say who clears the override, and why")
        holder_id, _ = self.resolve(ref)
        return self._grant(holder_id, CreditOverride(
            cardholder_id=holder_id, action="clear", grade=None, reason=reason.strip()[:500],
            actor=actor[:100], expires=None, created=self.host.now()), role, source,
            "override cleared")

    def _grant(self, holder_id: str, row: CreditOverride, role: str, source: str,
               detail: str) -> Outcome:
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            holder = self._lock(s, [holder_id])[0]
            s.add(row)
            s.flush()
            outcome = self._score(s, holder, now, trigger=row.action, apply=True)
            # last in the transaction: it takes the audit chain's lock until the commit
            self.host.audit.append(s, actor=row.actor, role=role,
                                   action=f"credit_{row.action}", target=holder_id,
                                   reason=row.reason, outcome="done", detail=detail,
                                   source=source or "host credit")
            uow.commit()
        return outcome

    # --- reading -------------------------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[str, str | None]:
        """(cardholder id, card id or None) for a card id or a cardholder id."""
        with self.host.uow() as uow:
            s = uow.session
            card = s.get(Card, ref.lower()) if len(ref) == 16 else None
            if card is not None:
                if card.cardholder_id is None:
                    raise HostError(NOT_FOUND, f"card {card.card_id} has no cardholder")
                return card.cardholder_id, card.card_id
            if s.get(Cardholder, ref) is None:
                raise HostError(NOT_FOUND, f"no card or cardholder {ref}")
            return ref, None

    def explain(self, ref: str) -> dict[str, Any]:
        """Score a cardholder now, without storing anything: score, grades, each
        indicator's value and points, reason codes, model version, what would raise
        the grade, the override, and each card's current credit record."""
        holder_id, card_id = self.resolve(ref)
        now = self.host.now()
        with self.host.uow() as uow:
            s = uow.session
            holder = s.get(Cardholder, holder_id)
            assert holder is not None
            inputs = load_inputs(s, [holder_id], now, window_days=self.settings.window_days)
            grants = self._grants(s, [holder_id])[holder_id]
            if grants.starting is None:
                grants = _Grants(holder.credit_grade, grants.override)
            indicators = inputs[holder_id].indicators(now, self.settings.window_days)
            decision = self.scorecard().score(indicators)
            grade, basis = self.in_force(holder, grants, indicators, decision.grade, now)
            cards = []
            for card in self._cards(s, [holder_id]).get(holder_id, []):
                current = (s.get(CreditRecordRow, (card.card_id, card.credit_version))
                           if card.credit_version else None)
                pending = s.scalar(select(func.count()).select_from(WriteBackAction).where(
                    WriteBackAction.card_id == card.card_id,
                    WriteBackAction.kind == "credit_record",
                    WriteBackAction.status == "pending"))
                cards.append({"card_id": card.card_id, "status": card.status,
                              "blacklisted": card.blacklisted,
                              "credit_record": _record_json(current, card.currency),
                              "record_pending_on_action_list": bool(pending)})
            last = s.scalar(select(CreditDecision).where(CreditDecision.cardholder_id == holder_id)
                            .order_by(CreditDecision.as_of.desc(), CreditDecision.id.desc())
                            .limit(1))
            last_json = _decision_json(last) if last is not None else None
            o = grants.override
            override = None
            if o is not None and o.action == "override":
                override = {"grade": letter(o.grade or 0), "reason": o.reason, "by": o.actor,
                            "at": o.created, "at_utc": _utc(o.created), "expires": o.expires,
                            "expires_utc": _utc(o.expires) if o.expires else None,
                            "active": basis == "override"}
            thin_until = holder.created + self.settings.min_history_days * DAY
            terms = _terms_json(self.terms(grade, holder.currency), holder.currency)
        return {
            "cardholder_id": holder_id, "card_id": card_id, "as_of": now, "as_of_utc": _utc(now),
            **decision.to_dict(),
            "model_grade": decision.grade.name,
            "grade": letter(grade), "grade_number": grade, "basis": basis,
            "starting_grade": letter(grants.starting or 0),
            "starting_grade_until": thin_until if now < thin_until else None,
            "to_raise_the_grade": _raise(decision),
            "override": override,
            "online_balance": inputs[holder_id].online_balance,
            "outstanding": inputs[holder_id].outstanding,
            "terms": terms,
            "cards": cards,
            "last_decision": last_json,
        }

    def history(self, ref: str, limit: int = 20) -> dict[str, Any]:
        """Stored decisions (newest first) and grades set by hand."""
        holder_id, _ = self.resolve(ref)
        with self.host.uow() as uow:
            s = uow.session
            decisions = [_decision_json(d) for d in s.scalars(
                select(CreditDecision).where(CreditDecision.cardholder_id == holder_id)
                .order_by(CreditDecision.as_of.desc(), CreditDecision.id.desc()).limit(limit))]
            grants = [{"action": g.action, "grade": letter(g.grade) if g.grade is not None
                       else None, "reason": g.reason, "by": g.actor, "at": g.created,
                       "at_utc": _utc(g.created), "expires": g.expires}
                      for g in s.scalars(select(CreditOverride).where(
                          CreditOverride.cardholder_id == holder_id)
                          .order_by(CreditOverride.id.desc()).limit(limit))]
        return {"cardholder_id": holder_id, "decisions": decisions, "grades_set": grants}


def _raise(decision: Decision) -> dict[str, Any] | None:
    """What would lift the model's grade one step: the points missing, and the
    indicators that cost points (the gain if each were in its best bin)."""
    if decision.next_grade_at is None:
        return None
    need = decision.next_grade_at - decision.score
    levers = sorted((d for d in decision.details if d.points < d.best_points),
                    key=lambda d: (d.points - d.best_points, d.code))
    return {"next_grade": Grade(int(decision.grade) - 1).name, "at_score": decision.next_grade_at,
            "points_needed": need,
            "levers": [{"code": d.code, "indicator": d.name, "text": INDICATORS[d.name].reason,
                        "value": d.value, "gain": d.best_points - d.points,
                        "enough_alone": d.best_points - d.points >= need} for d in levers]}


def _terms_json(terms: CreditTerms, currency_code: str) -> dict[str, Any]:
    return {"per_tap_overdraft": terms.per_tap_overdraft, "max_outstanding": terms.max_outstanding,
            "max_slots": terms.max_slots,
            "allowed_types": sorted(t.name.lower() for t in terms.allowed_types),
            "currency": currency_code, "has_credit": terms.has_credit}


def _record_json(row: CreditRecordRow | None, currency_code: str) -> dict[str, Any] | None:
    if row is None:
        return None
    types = sorted(t.name.lower() for t in TxType if row.allowed_types & t.bit)
    return {"version": row.version, "grade": letter(row.grade),
            "per_tap_overdraft": row.per_tap_overdraft,
            "per_tap_overdraft_text": format_minor(row.per_tap_overdraft, currency(currency_code)),
            "max_outstanding": row.max_outstanding, "max_slots": row.max_slots,
            "allowed_types": types, "balance_band": row.balance_band,
            "outstanding_known": row.outstanding_known, "issued": row.issued,
            "expires": row.expires, "expires_utc": _utc(row.expires),
            "action_id": row.action_id}


def _decision_json(d: CreditDecision) -> dict[str, Any]:
    return {"id": d.id, "as_of": d.as_of, "as_of_utc": _utc(d.as_of),
            "batch_day": d.batch_day.isoformat() if d.batch_day else None, "trigger": d.trigger,
            "model_version": d.model_version, "score": d.score,
            "model_grade": letter(d.model_grade), "grade": letter(d.grade), "basis": d.basis,
            "reasons": json.loads(d.reasons), "indicators": json.loads(d.indicators),
            "online_balance": d.online_balance, "outstanding": d.outstanding}
