"""The model registry: which scorecard is in use, which are candidates, who promoted what.

A registry is a directory::

    candidates/<version>.toml   fitted scorecards waiting for an operator
    models/<version>.toml       every scorecard ever promoted (kept, never changed)
    CURRENT                     "<version> <sha256 of its file>": the one in use
    promotions.jsonl            the audit trail: when, who, why, from what, to what
    .lock                       held while a promotion is written

Nothing is used until it is promoted; with nothing promoted the current model
is the built-in expert scorecard. Promoting an older version (or
``expert-v1``) rolls back to it. The file's hash in CURRENT means that a model
file edited after its promotion is refused rather than silently used.
:meth:`ModelRegistry.models` lists every model that can be made current, with
its status and the held-out metrics its fit recorded. Promotions are
serialised by a lock file (``.lock``), so two operators promoting at once
(the CLI and the host's API, or several host workers) each get one whole
entry in the trail.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tallypurse.core.errors import BadInput
from tallypurse.credit.scorecard import (
    DEFAULT_MODEL,
    Scorecard,
    builtin_scorecard,
    builtin_scorecard_text,
    load_scorecard,
    loads_scorecard,
)


class RegistryError(BadInput):
    """The registry refuses: unknown model, version clash, tampered file."""


class UnknownModel(RegistryError):
    """No candidate, promoted or built-in model has that version."""


# What a fitted model's [fit] table says of it (None where a model was not fitted).
METRICS = {"auc": "test_auc", "gini": "test_gini", "ks": "test_ks",
           "score_psi": "score_psi_vs_current", "grade_psi": "grade_psi_vs_current",
           "compared_with": "current_version", "compared_auc": "current_test_auc",
           "train_rows": "train_rows", "test_rows": "test_rows", "fitted": "created"}


@dataclass(frozen=True, slots=True)
class Promotion:
    at: str
    version: str
    previous: str
    by: str
    reason: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"at": self.at, "version": self.version, "previous": self.previous,
                "by": self.by, "reason": self.reason, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Candidate:
    version: str
    path: Path
    fit: dict[str, Any]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.candidates_dir = root / "candidates"
        self.models_dir = root / "models"
        self.current_file = root / "CURRENT"
        self.log_file = root / "promotions.jsonl"

    def _ensure(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: not a directory")
        self.candidates_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)

    # --- reading ------------------------------------------------------------------------------

    def current_version(self) -> str:
        return self._current()[0]

    def _current(self) -> tuple[str, str | None]:
        if not self.current_file.exists():
            return DEFAULT_MODEL, None
        parts = self.current_file.read_text(encoding="utf-8").split()
        if len(parts) != 2:
            raise RegistryError(f"{self.current_file}: damaged (want '<version> <sha256>')")
        return parts[0], parts[1]

    def current(self) -> Scorecard:
        """The scorecard in use: the last promoted one, or the built-in expert one."""
        version, digest = self._current()
        if digest is None:
            return builtin_scorecard()
        path = self.models_dir / f"{version}.toml"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RegistryError(f"{path}: current model unreadable: {exc.strerror}") from None
        if _sha(text) != digest:
            raise RegistryError(f"{path}: changed since it was promoted (hash mismatch); "
                                f"promote a new version instead of editing a promoted one")
        return loads_scorecard(text, str(path))

    def candidates(self) -> list[Candidate]:
        if not self.candidates_dir.is_dir():
            return []
        out = []
        for path in sorted(self.candidates_dir.glob("*.toml")):
            sc = load_scorecard(path)
            out.append(Candidate(sc.version, path, dict(sc.spec.fit)))
        return out

    def promoted(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.stem for p in self.models_dir.glob("*.toml"))

    def history(self) -> list[Promotion]:
        if not self.log_file.exists():
            return []
        return [Promotion(**json.loads(line))
                for line in self.log_file.read_text(encoding="utf-8").splitlines() if line]

    # --- writing ------------------------------------------------------------------------------

    def add_candidate(self, scorecard: Scorecard) -> Path:
        """File a fitted scorecard as a candidate (it is not used until promoted)."""
        self._ensure()
        text = scorecard.spec.to_toml()
        path = self.candidates_dir / f"{scorecard.version}.toml"
        for existing in (path, self.models_dir / path.name):
            if existing.exists() and existing.read_text(encoding="utf-8") != text:
                raise RegistryError(f"{existing}: version {scorecard.version} exists with "
                                    f"other content")
        _write_atomic(path, text)
        return path

    def _resolve(self, model: str) -> tuple[str, Path | None]:
        """(text, candidate path or None) of a model named by path or by version."""
        as_path = Path(model)
        if as_path.suffix == ".toml" or os.sep in model:
            try:
                return as_path.read_text(encoding="utf-8"), (
                    as_path if as_path.parent.resolve() == self.candidates_dir.resolve() else None
                )
            except OSError as exc:
                raise RegistryError(f"{model}: cannot read: {exc.strerror}") from None
        for folder in (self.candidates_dir, self.models_dir):
            path = folder / f"{model}.toml"
            if path.exists():
                return path.read_text(encoding="utf-8"), (
                    path if folder == self.candidates_dir else None
                )
        if model == DEFAULT_MODEL:
            return builtin_scorecard_text(), None
        raise UnknownModel(f"no candidate or promoted model {model!r} in {self.root}")

    def models(self) -> list[dict[str, Any]]:
        """Every model that can be made current: the built-in one, the promoted ones and
        the candidates, with ``status`` (current, candidate, promoted: an earlier one to
        roll back to, or built_in), kind, description, the held-out ``metrics`` its fit
        recorded (AUC, Gini, KS, PSI against the model current when it was fitted; None
        where unknown) and its last promotion."""
        current = self.current_version()
        last: dict[str, Promotion] = {p.version: p for p in self.history()}
        found: dict[str, tuple[str, Scorecard | None, str]] = {
            DEFAULT_MODEL: ("built_in", builtin_scorecard(), "")}
        folders = [(self.models_dir, "promoted"), (self.candidates_dir, "candidate")]
        for folder, status in folders:
            for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
                if path.stem in found and found[path.stem][0] != "built_in":
                    continue  # promoted before: the kept copy is the one that counts
                try:
                    sc: Scorecard | None = load_scorecard(path)
                    problem = ""
                except BadInput as exc:
                    sc, problem = None, exc.message
                found[path.stem] = (status, sc, problem)
        out = []
        for version in sorted(found, key=lambda v: (v != current, v)):
            status, sc, problem = found[version]
            fit = dict(sc.spec.fit) if sc is not None else {}
            p = last.get(version)
            out.append({
                "version": version, "status": "current" if version == current else status,
                "kind": sc.spec.kind if sc is not None else None,
                "description": sc.spec.description if sc is not None else "",
                "metrics": {k: fit.get(v) for k, v in METRICS.items()},
                "last_promoted": p.to_dict() if p is not None else None,
                "problem": problem})
        return out

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        with (self.root / ".lock").open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def promote(self, model: str, *, by: str, reason: str,
                now: dt.datetime | None = None) -> Promotion:
        """Make ``model`` (a file, or a candidate's or promoted model's version) current."""
        if not by.strip():
            raise RegistryError("say who promotes (by)")
        text, candidate_path = self._resolve(model)
        scorecard = loads_scorecard(text, model)  # validates
        with self._locked():
            return self._promote(text, candidate_path, scorecard, by=by, reason=reason,
                                 now=now)

    def _promote(self, text: str, candidate_path: Path | None, scorecard: Scorecard, *,
                 by: str, reason: str, now: dt.datetime | None) -> Promotion:
        version = scorecard.version
        if version == DEFAULT_MODEL and scorecard.spec != builtin_scorecard().spec:
            raise RegistryError(f"this model differs from the built-in {DEFAULT_MODEL}: "
                                f"give it a new model.version")
        kept = self.models_dir / f"{version}.toml"
        if kept.exists():
            if kept.read_text(encoding="utf-8") != text:
                raise RegistryError(f"version {version} was promoted before with other "
                                    f"content; give this model a new model.version")
        else:
            _write_atomic(kept, text)
        previous = self.current_version()
        digest = _sha(text)
        promotion = Promotion(
            at=(now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            version=version, previous=previous, by=by, reason=reason, sha256=digest,
        )
        with self.log_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(promotion.to_dict(), separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _write_atomic(self.current_file, f"{version} {digest}\n")
        if candidate_path is not None:
            candidate_path.unlink(missing_ok=True)
        return promotion

    def status(self) -> dict[str, Any]:
        current = self.current()
        return {
            "registry": str(self.root),
            "current": {"version": current.version, "kind": current.spec.kind,
                        "built_in": not self.current_file.exists()},
            "candidates": [{"version": c.version, "path": str(c.path),
                            "test_auc": c.fit.get("test_auc"),
                            "current_test_auc": c.fit.get("current_test_auc"),
                            "score_psi_vs_current": c.fit.get("score_psi_vs_current"),
                            "created": c.fit.get("created")}
                           for c in self.candidates()],
            "promoted": self.promoted(),
            "promotions": [p.to_dict() for p in self.history()],
        }
