"""docs/security.md names a test for every defence: those tests must exist. And one
defence checked over the whole source: secrets' digests are compared in constant time."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
SECRET_DIGEST = re.compile(r"(^|_)(mac|macs|cryptogram|kcv|tac)(_|$)", re.IGNORECASE)


def test_every_test_the_security_doc_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    references = REFERENCE.findall(text)
    assert len(references) >= 40
    missing = []
    for path, name in references:
        source = ROOT / path
        if not source.is_file() or not re.search(
            rf"^(async )?def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE
        ):
            missing.append(f"{path}::{name}")
    assert not missing, "docs/security.md names tests that do not exist: " + ", ".join(missing)


def test_every_test_reference_in_the_security_doc_is_complete() -> None:
    """A bare ``::test_x`` would escape the check above."""
    text = DOC.read_text(encoding="utf-8")
    assert not re.search(r"`::test_", text)


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def test_macs_and_cryptograms_are_never_compared_with_equals() -> None:
    """``==`` on a MAC, cryptogram, TAC or KCV leaks by timing how much of it matched;
    the code uses crypto.constant_time_equal (hmac.compare_digest) instead."""
    found = []
    for path in sorted((ROOT / "src" / "tallypurse").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            for side in (node.left, *node.comparators):
                if SECRET_DIGEST.search(_name(side)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "compare these with crypto.constant_time_equal:\n" + "\n".join(found)
