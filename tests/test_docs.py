"""The README and docs/*.md against the code as it is: every test they cite exists, every
file they name is there, every link lands on a heading, every `tallypurse` command and
option they show exists, and the host API page names every route of the OpenAPI document
and every problem code of the host."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from tallypurse.cli.main import app as cli_app
from tallypurse.host import errors as host_errors
from tallypurse.host.api.app import create_app
from tallypurse.host.config import HostSettings
from tallypurse.host.db.engine import Database
from tallypurse.host.db.migrate import upgrade
from tallypurse.host.service import Host
from tallypurse.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_REF = re.compile(r"(tests/[\w/.-]+\.py)::(test_\w+)")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:src|tests|docs|tools|fuzz|\.ci)/[\w/.-]*\w)")
LINK = re.compile(r"\]\(([^)#\s]*)(#[^)\s]*)?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _name(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def test_every_cited_test_exists() -> None:
    missing = []
    for doc in DOCS:
        for path, name in TEST_REF.findall(_text(doc)):
            source = ROOT / path
            if not source.is_file() or not re.search(
                rf"^(async )?def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE
            ):
                missing.append(f"{_name(doc)}: {path}::{name}")
    assert not missing, "docs cite tests that do not exist:\n" + "\n".join(missing)


def test_every_cited_file_exists() -> None:
    missing = [f"{_name(doc)}: {path}" for doc in DOCS
               for path in sorted(set(REPO_PATH.findall(_text(doc))))
               if not (ROOT / path).exists() and not (ROOT / "src" / "tallypurse" / path).exists()]
    assert not missing, "docs name files that do not exist:\n" + "\n".join(missing)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_docs_lands() -> None:
    broken = []
    for doc in DOCS:
        for target, anchor in LINK.findall(_text(doc)):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            dest = (doc.parent / target) if target else doc
            if not dest.exists():
                broken.append(f"{_name(doc)}: {target}")
                continue
            if anchor and dest.suffix == ".md":
                headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", _text(dest), re.M)}
                if anchor[1:] not in headings:
                    broken.append(f"{_name(doc)}: {target}{anchor}")
    assert not broken, "links that land nowhere:\n" + "\n".join(broken)


def _code(text: str) -> Iterator[str]:
    """Code blocks and inline code, continuation lines joined."""
    for block in FENCE.findall(text):
        yield from re.sub(r"\\\n\s*", " ", block).splitlines()
    yield from SPAN.findall(FENCE.sub("", text))


def _resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    command: Any = typer.main.get_command(cli_app)
    path: list[str] = []
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        sub = command.commands.get(words[0])
        if sub is None:
            break
        command, path, words = sub, [*path, words[0]], words[1:]
    return command, path, words


def test_every_command_and_option_the_docs_show_exists() -> None:
    wrong = set()
    for doc in DOCS:
        for line in _code(_text(doc)):
            for m in re.finditer(r"(?:^|[\s;&|(])tallypurse ((?:[a-z][\w-]*)[^#|`]*)", line):
                words = m.group(1).split()
                command, path, rest = _resolve(words)
                if hasattr(command, "commands"):
                    if rest and re.fullmatch(r"[a-z][\w-]*", rest[0]):
                        named = " ".join(words[:len(path) + 1])
                        wrong.add(f"{_name(doc)}: no command `tallypurse {named}`")
                    continue
                options = {"--help"}
                for param in command.params:
                    options.update(param.opts)
                    options.update(param.secondary_opts)
                for word in rest:
                    option = word.split("=")[0].strip("[](),.;:'\"")
                    if re.fullmatch(r"--[a-z][\w-]*", option) and option not in options:
                        wrong.add(f"{_name(doc)}: `tallypurse {' '.join(path)}` has no {option}")
    assert not wrong, "docs show commands or options that do not exist:\n" + "\n".join(
        sorted(wrong))


@pytest.fixture
def openapi(tmp_path: Path, lab: Lab) -> Iterator[dict[str, Any]]:
    db = Database.connect(f"sqlite:///{tmp_path / 'host.db'}")
    upgrade(db)
    try:
        yield create_app(Host(db, lab.keystore, settings=HostSettings(data_dir=tmp_path))).openapi()
    finally:
        db.dispose()


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_the_host_api_page_names_every_route(openapi: dict[str, Any]) -> None:
    text = _text(ROOT / "docs" / "host-api.md")
    named = {(m, _template(p)) for m, p in re.findall(r"`(GET|POST) (/[^`\[\s]*)", text)}
    bare = {_template(p) for p in re.findall(r"`(/[^`\[\s]*)`", text)}
    terminal = set(re.findall(r"^\| `([\w/-]+)` \|", text, re.MULTILINE))
    routes = [(method.upper(), path) for path, ops in openapi["paths"].items() for method in ops]
    assert len(routes) > 40
    missing = []
    for method, path in routes:
        if path.startswith("/v1/terminal/"):
            found = method == "POST" and path.removeprefix("/v1/terminal/") in terminal
        else:
            found = (method, _template(path)) in named or (
                method == "GET" and _template(path) in bare)
        if not found:
            missing.append(f"{method} {path}")
    assert not missing, "docs/host-api.md does not name these routes:\n" + "\n".join(missing)


def test_the_host_api_page_lists_every_problem_code() -> None:
    text = _text(ROOT / "docs" / "host-api.md")
    table = text[text.index("## Problems"):]
    listed = {int(c) for row in re.findall(r"^\| ([\d, ]+) \|", table, re.MULTILINE)
              for c in row.split(",")}
    codes = {v.code for v in vars(host_errors).values() if isinstance(v, host_errors.Code)}
    assert len(codes) > 30
    assert not codes - listed, f"docs/host-api.md lacks problem codes {sorted(codes - listed)}"
