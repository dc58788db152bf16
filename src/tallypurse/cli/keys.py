"""``tallypurse keys``: the operator's keystore and its key ceremonies.

A keystore is a directory (the software keystore, ``keystore.json``) or a
PKCS#11 token named by a URI,
``pkcs11:module=/usr/lib/softhsm/libsofthsm2.so;token=tallypurse;pin-source=env:HSM_PIN``.

Secrets are never printed: AES keys show as their key check value (KCV), EC
keys as the fingerprint of their public key. Every ceremony (``init``,
``generate``, ``rotate``, ``revoke``, ``backup``, ``restore``) takes
``--operator`` (who) and ``--reason`` (why), appends a record to the
hash-chained ceremony log (``ceremony.log`` beside ``keystore.json``, or
``--ceremony-log PATH``, required for a token) and has ``--dry-run``, which
prints what would happen and changes nothing. ``verify-log`` checks the chain.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from tallypurse.core import crypto
from tallypurse.core.cert import KeyRef
from tallypurse.core.errors import DecodeError, TallypurseError
from tallypurse.keystore import locate, shares
from tallypurse.keystore.base import (
    HOST_KEYS,
    ISSUER_ROOT,
    KEY_SPECS,
    MASTER_KEYS,
    KeyInfo,
    KeyKind,
    ManagedKeyStore,
)
from tallypurse.keystore.ceremony import CeremonyLog
from tallypurse.keystore.software import KEYSTORE_FILE

PASSPHRASE_ENV = "TALLYPURSE_KEYSTORE_PASSPHRASE"
CEREMONY_LOG_ENV = "TALLYPURSE_CEREMONY_LOG"
EXIT_ERROR = 2

app = typer.Typer(
    help="The operator's keystore (issuer root, host keys, master keys) and its key ceremonies.",
    no_args_is_help=True,
)

KeystoreOption = Annotated[
    str,
    typer.Option(
        "--keystore",
        help="Directory that holds keystore.json, or a PKCS#11 URI "
        "(pkcs11:module=PATH;token=LABEL;pin-source=env:VAR).",
        show_default=False,
    ),
]
OperatorOption = Annotated[
    str, typer.Option("--operator", help="Who runs the ceremony (recorded in the log).")
]
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why the ceremony is run (recorded in the log).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print what would happen; change nothing.")
]
LogOption = Annotated[
    Path | None,
    typer.Option(
        "--ceremony-log",
        help="The ceremony log (default: ceremony.log beside keystore.json; "
        f"${CEREMONY_LOG_ENV}; required for a PKCS#11 token).",
        dir_okay=False,
        show_default=False,
    ),
]


# --- Plumbing ------------------------------------------------------------------------------


def passphrase_from_env_or_prompt(confirm: bool) -> str:
    """The keystore passphrase: $TALLYPURSE_KEYSTORE_PASSPHRASE if set and non-empty,
    otherwise a hidden prompt (typed twice when ``confirm``)."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    value: str = typer.prompt(
        "Keystore passphrase",
        hide_input=True,
        confirmation_prompt=confirm,
    )
    return value


def _pin_prompt() -> str:
    value: str = typer.prompt("Token PIN", hide_input=True)
    return value


def fail(message: str) -> NoReturn:
    """Print one line to stderr and exit with code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _open(spec: str, *, allow_empty: bool = False) -> ManagedKeyStore:
    try:
        return locate.open_keystore(
            spec,
            passphrase=lambda: passphrase_from_env_or_prompt(confirm=False),
            pin=_pin_prompt,
            allow_empty=allow_empty,
        )
    except TallypurseError as exc:
        fail(exc.message)


def _log_for(spec: str, given: Path | None) -> CeremonyLog:
    path = given
    if path is None and os.environ.get(CEREMONY_LOG_ENV):
        path = Path(os.environ[CEREMONY_LOG_ENV])
    if path is None:
        path = locate.default_ceremony_log(spec)
    if path is None:
        fail("a PKCS#11 keystore needs --ceremony-log PATH (or $TALLYPURSE_CEREMONY_LOG)")
    return CeremonyLog(path)


def _check_log(log: CeremonyLog) -> None:
    """Refuse to start a ceremony on a broken log (nothing changes before this)."""
    try:
        log.verify()
    except TallypurseError as exc:
        fail(f"{exc.message}; no ceremony runs on a broken log")


def _record(
    log: CeremonyLog,
    ceremony: str,
    operator: str,
    reason: str,
    details: dict[str, Any],
    now: int,
) -> None:
    try:
        record = log.append(
            ceremony=ceremony, operator=operator, reason=reason, details=details, now=now
        )
    except TallypurseError as exc:
        fail(f"the {ceremony} was done but could not be logged: {exc.message}")
    typer.echo(f"logged as record {record['seq']} of {log.path} (hash {record['hash'][:16]})")


def _check_who(operator: str, reason: str) -> None:
    for what, value in (("--operator", operator), ("--reason", reason)):
        if not value.strip() or len(value) > 200 or any(ord(c) < 0x20 for c in value):
            fail(f"{what} must be one non-empty line of at most 200 characters")


def _id_of(info: KeyInfo) -> str:
    if info.kcv is not None:
        return f"kcv {info.kcv.hex().upper()}"
    assert info.fingerprint is not None
    return f"fingerprint {info.fingerprint.hex()}"


def _public_id(info: KeyInfo) -> dict[str, str]:
    if info.kcv is not None:
        return {"kcv": info.kcv.hex()}
    assert info.fingerprint is not None
    return {"fingerprint": info.fingerprint.hex()}


def _date(seconds: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _line(info: KeyInfo, current: bool) -> str:
    mark = "*" if current else " "
    out = (
        f"{mark} {info.ref!s:<24} {info.kind!s:<8} {_id_of(info):<30} created {_date(info.created)}"
    )
    if info.revoked is not None:
        out += f"  REVOKED {_date(info.revoked)}"
    return out


def _as_json(info: KeyInfo, current: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ref": str(info.ref),
        "name": info.ref.name,
        "version": info.ref.version,
        "kind": str(info.kind),
        "created": info.created,
        "current": current,
        "revoked": info.revoked,
    }
    if info.kcv is not None:
        out["kcv"] = info.kcv.hex()
    if info.public_key is not None and info.fingerprint is not None:
        out["public_key"] = info.public_key.hex()
        out["fingerprint"] = info.fingerprint.hex()
    if info.certificate is not None:
        out["certificate"] = info.certificate.encode().hex()
        out["authority"] = str(info.certificate.authority)
        out["not_before"] = info.certificate.not_before
        out["not_after"] = info.certificate.not_after
    return out


def _print_keys(store: ManagedKeyStore) -> None:
    for info in store.infos():
        typer.echo(_line(info, store.current(info.ref.name) == info.ref))


def _parse_ref(store: ManagedKeyStore, text: str) -> KeyRef:
    """``name/version``, or a bare name for its current version."""
    try:
        if "/" in text:
            ref = KeyRef.decode(text.encode("ascii", "replace"))
            store.info(ref)
            return ref
        return store.current(text)
    except (DecodeError, TallypurseError) as exc:
        fail(exc.message)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except TallypurseError as exc:
        fail(exc.message)


# --- Commands -------------------------------------------------------------------------------


@app.command("init")
def init(
    keystore: KeystoreOption,
    operator: Annotated[
        str | None,
        typer.Option("--operator", help="Who runs the ceremony (default: the login name)."),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded in the ceremony log).")
    ] = "keystore created",
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Create a keystore with a fresh issuer root, host keys and master keys."""
    who = operator if operator is not None else getpass.getuser()
    _check_who(who, reason)
    pkcs11 = locate.is_pkcs11(keystore)
    if not pkcs11 and (Path(keystore) / KEYSTORE_FILE).exists():
        fail(f"a keystore already exists at {Path(keystore) / KEYSTORE_FILE}")
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    names = (ISSUER_ROOT, *HOST_KEYS, *MASTER_KEYS)
    if dry_run:
        typer.echo(f"dry run: would create a keystore at {_display(keystore)} with:")
        for name in names:
            typer.echo(f"  {name}/1 {KEY_SPECS[name].kind}")
        typer.echo(f"dry run: would append an 'init' record to {log.path}; nothing changed")
        return
    now = int(time.time())
    try:
        store = locate.create_keystore(
            keystore,
            now=now,
            passphrase=lambda: passphrase_from_env_or_prompt(confirm=True),
            pin=_pin_prompt,
        )
    except TallypurseError as exc:
        fail(exc.message)
    with store:
        typer.echo(f"created keystore {_display(store.location)}")
        _print_keys(store)
        details = {
            "keystore": store.location,
            "keys": {str(i.ref): _public_id(i) for i in store.infos()},
        }
    _record(log, "init", who, reason, details, now)


def _display(spec: str) -> str:
    """A keystore name safe to print (a literal PIN in a URI is hidden)."""
    if locate.is_pkcs11(spec):
        return re.sub(r"pin-value=[^;&?]*", "pin-value=***", spec)
    return str(Path(spec) / KEYSTORE_FILE)


@app.command("list")
def list_keys(
    keystore: KeystoreOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every key version with its KCV or public-key fingerprint (never a secret).

    Revoked versions are marked REVOKED."""
    with _open(keystore) as store:
        if as_json:
            keys = [_as_json(i, store.current(i.ref.name) == i.ref) for i in store.infos()]
            location = (
                str(Path(keystore) / KEYSTORE_FILE)
                if not locate.is_pkcs11(keystore)
                else store.location
            )
            typer.echo(json.dumps({"keystore": location, "keys": keys}, indent=2))
        else:
            _print_keys(store)


@app.command("generate")
def generate(
    name: Annotated[str, typer.Argument(help=f"Key name: {', '.join(KEY_SPECS)}.")],
    keystore: KeystoreOption,
    operator: OperatorOption,
    reason: ReasonOption,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Generate the first version of a named key the keystore lacks.

    Prints its KCV or public-key fingerprint for the witnesses."""
    _check_who(operator, reason)
    if name not in KEY_SPECS:
        fail(f"unknown key {name!r} (known: {', '.join(KEY_SPECS)})")
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    with _open(keystore, allow_empty=True) as store:
        held = [r for r in store.refs() if r.name == name]
        if held:
            fail(f"the keystore already holds {held[-1]}; use 'rotate {name}' for a new version")
        spec = KEY_SPECS[name]
        if spec.kind == KeyKind.EC_P256 and name != ISSUER_ROOT:
            if not any(r.name == ISSUER_ROOT for r in store.refs()):
                fail(f"{name} is certified by {ISSUER_ROOT}: generate {ISSUER_ROOT} first")
        if dry_run:
            typer.echo(
                f"dry run: would generate {name}/1 ({KEY_SPECS[name].kind}) in "
                f"{_display(keystore)} and log it in {log.path}; nothing changed"
            )
            return
        now = int(time.time())
        ref = _run(lambda: store.generate(name, now=now))
        info = store.info(ref)
        typer.echo(f"generated {ref} {info.kind} {_id_of(info)}")
    _record(
        log,
        "generate",
        operator,
        reason,
        {"keystore": store.location, "key": str(ref), **_public_id(info)},
        now,
    )


@app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="The key to rotate.")],
    keystore: KeystoreOption,
    operator: OperatorOption,
    reason: ReasonOption,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Create a new version of a key; older versions stay usable.

    Cards and terminals keyed with an older version keep working until re-keyed;
    new work uses the new version."""
    _check_who(operator, reason)
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    with _open(keystore) as store:
        previous = _parse_ref(store, name)
        if dry_run:
            new = KeyRef(previous.name, previous.version + 1)
            typer.echo(
                f"dry run: would create {new} ({store.info(previous).kind}); {previous} "
                f"would stay usable; would log it in {log.path}; nothing changed"
            )
            return
        now = int(time.time())
        ref = _run(lambda: store.rotate(previous.name, now=now))
        info = store.info(ref)
        typer.echo(
            f"rotated {previous.name}: {ref} {_id_of(info)} is current; {previous} stays usable"
        )
    details = {
        "keystore": store.location,
        "key": str(ref),
        "previous": str(previous),
        **_public_id(info),
    }
    _record(log, "rotate", operator, reason, details, now)


@app.command("revoke")
def revoke(
    ref_text: Annotated[str, typer.Argument(metavar="REF", help="The key version, name/version.")],
    keystore: KeystoreOption,
    operator: OperatorOption,
    reason: ReasonOption,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Revoke a key version: listed as REVOKED, never used again.

    A revoked version neither signs nor diversifies. The current version cannot be
    revoked: rotate first."""
    _check_who(operator, reason)
    if "/" not in ref_text:
        fail("give the version to revoke as name/version")
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    with _open(keystore) as store:
        ref = _parse_ref(store, ref_text)
        info = store.info(ref)
        if info.revoked is not None:
            fail(f"{ref} is already revoked")
        if store.current(ref.name) == ref:
            fail(f"{ref} is the current version of {ref.name}; rotate {ref.name} first")
        if dry_run:
            typer.echo(
                f"dry run: would revoke {ref} ({_id_of(info)}) and log it in "
                f"{log.path}; nothing changed"
            )
            return
        now = int(time.time())
        _run(lambda: store.revoke(ref, now=now))
        typer.echo(f"revoked {ref} ({_id_of(info)})")
    _record(
        log,
        "revoke",
        operator,
        reason,
        {"keystore": store.location, "key": str(ref), **_public_id(info)},
        now,
    )


def _parse_split(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-?\s*of\s*-?\s*(\d+)\s*", text)
    if match is None:
        fail(f"--split must look like 3-of-5, not {text!r}")
    return int(match[1]), int(match[2])


@app.command("backup")
def backup(
    key: Annotated[str, typer.Argument(help="The AES master key: name (current) or name/version.")],
    keystore: KeystoreOption,
    operator: OperatorOption,
    reason: ReasonOption,
    split: Annotated[str, typer.Option("--split", help="M-of-N, for example 3-of-5.")],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the share files.", file_okay=False)
    ],
    custodian: Annotated[
        list[str] | None,
        typer.Option("--custodian", help="A custodian's name; give it N times, in order."),
    ] = None,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Split a master key M-of-N (Shamir) into one share file per custodian.

    Each file carries its own check value and the master's KCV."""
    _check_who(operator, reason)
    threshold, total = _parse_split(split)
    names = custodian or [f"custodian-{i}" for i in range(1, total + 1)]
    if len(names) != total:
        fail(f"--split {threshold}-of-{total} needs {total} --custodian names, got {len(names)}")
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    with _open(keystore) as store:
        ref = _parse_ref(store, key)
        info = store.info(ref)
        if info.kind != KeyKind.AES_128:
            fail(f"{ref} is {info.kind}; only AES master keys are backed up by splitting")
        now = int(time.time())
        parts = _run(
            lambda: shares.split(
                ref, store.export_master(ref), threshold=threshold, custodians=names, now=now
            )
        )
    existing = [out / p.filename() for p in parts if (out / p.filename()).exists()]
    if existing:
        fail(f"{existing[0]} already exists; refusing to overwrite a share")
    if dry_run:
        typer.echo(f"dry run: would split {ref} ({_id_of(info)}) {threshold}-of-{total} into:")
        for p in parts:
            typer.echo(f"  {out / p.filename()}  for {p.custodian}")
        typer.echo(f"dry run: would log it in {log.path}; nothing changed")
        return
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in parts:
            fd = os.open(out / p.filename(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(p.to_json(), indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        fail(f"cannot write share files in {out}: {exc.strerror or exc}")
    typer.echo(f"split {ref} ({_id_of(info)}) {threshold}-of-{total}:")
    for p in parts:
        typer.echo(
            f"  share {p.index} for {p.custodian}: {out / p.filename()} "
            f"(share kcv {p.share_kcv.hex().upper()})"
        )
    details = {
        "keystore": store.location,
        "key": str(ref),
        "kcv": info.kcv.hex() if info.kcv else None,
        "split": parts[0].split.hex(),
        "threshold": threshold,
        "shares": total,
        "custodians": {p.custodian: p.share_kcv.hex() for p in parts},
    }
    _record(log, "backup", operator, reason, details, now)


@app.command("check-share")
def check_share(
    share: Annotated[Path, typer.Argument(help="A share file.", dir_okay=False)],
) -> None:
    """Check a share file (for its custodian) and print what it is a share of.

    The output reveals nothing of the key."""
    part = _run(lambda: shares.read(share))
    typer.echo(
        f"share {part.index} of {part.total} (any {part.threshold} rebuild) of {part.key}, "
        f"for {part.custodian}: share kcv {part.share_kcv.hex().upper()}, "
        f"key kcv {part.key_kcv.hex().upper()}: OK"
    )


@app.command("restore")
def restore(
    share_files: Annotated[list[Path], typer.Argument(metavar="SHARE...", help="M share files.")],
    keystore: KeystoreOption,
    operator: OperatorOption,
    reason: ReasonOption,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Rebuild a master key from M shares, check its KCV and import it.

    The keystore (a directory or a token) must lack that version; if it holds it
    already, the ceremony only checks that it is the same key."""
    _check_who(operator, reason)
    parts: list[shares.Share] = []
    for path in share_files:
        try:
            parts.append(shares.read(path))
        except TallypurseError as exc:
            fail(exc.message)
    ref, key = _run(lambda: shares.combine(parts))
    kcv = parts[0].key_kcv
    log = _log_for(keystore, ceremony_log)
    _check_log(log)
    with _open(keystore, allow_empty=True) as store:
        held = ref in store.refs()
        if held:
            mine = store.info(ref).kcv
            if mine is None or not crypto.constant_time_equal(mine, kcv):
                fail(f"the keystore holds a different {ref}; refusing to restore over it")
            result = "verified"
        else:
            result = "imported"
        if dry_run:
            what = "confirm the keystore's copy of" if held else "import"
            typer.echo(
                f"dry run: the shares rebuild {ref} (kcv {kcv.hex().upper()}); would "
                f"{what} it and log it in {log.path}; nothing changed"
            )
            return
        now = int(time.time())
        if not held:
            _run(lambda: store.import_master(ref, key, now=now))
            typer.echo(f"restored {ref} (kcv {kcv.hex().upper()}) into {store.location}")
        else:
            typer.echo(f"the keystore's {ref} matches the shares (kcv {kcv.hex().upper()})")
    details = {
        "keystore": store.location,
        "key": str(ref),
        "kcv": kcv.hex(),
        "result": result,
        "custodians": sorted(p.custodian for p in parts),
    }
    _record(log, "restore", operator, reason, details, now)


@app.command("verify-log")
def verify_log(
    keystore: Annotated[
        str | None, typer.Option("--keystore", help="Directory of the keystore.")
    ] = None,
    ceremony_log: LogOption = None,
    expect_head: Annotated[
        str | None,
        typer.Option("--expect-head", help="A head hash written down at an earlier ceremony."),
    ] = None,
) -> None:
    """Check the ceremony log's hash chain; print the number of records and the head."""
    if keystore is None and ceremony_log is None and not os.environ.get(CEREMONY_LOG_ENV):
        fail("give --keystore DIR or --ceremony-log PATH")
    log = _log_for(keystore or "", ceremony_log)
    if not log.path.exists():
        fail(f"no ceremony log at {log.path}")
    check = _run(lambda: log.verify(expect_head=expect_head))
    typer.echo(f"{log.path}: {check.records} records, chain intact, head {check.head}")


# --- Ceremonies that reach the host's cards and terminals ------------------------------------

HostDbOption = Annotated[
    str | None,
    typer.Option("--db", help="The host's database URL (default: SQLite in --data-dir).",
                 show_default=False),
]
HostDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="The host's data directory (its keystore is in "
                 "DATA_DIR/keystore) [default: ./tallypurse-host].", file_okay=False,
                 show_default=False),
]


def _host_log(db: str | None, data_dir: Path | None, given: Path | None) -> CeremonyLog:
    """The ceremony log of the host's keystore (or ``--ceremony-log``)."""
    from .host import settings

    return _log_for(str(settings(db, data_dir).keystore_dir), given)


@app.command("rekey-card")
def rekey_card(
    card_file: Annotated[
        Path, typer.Option("--card-file", help="The card (card emulator file).", dir_okay=False)
    ],
    operator: OperatorOption,
    reason: ReasonOption,
    db: HostDbOption = None,
    data_dir: HostDirOption = None,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Re-key a card after a rotation, through the TSM (PUT KEY, STORE DATA).

    Brings the card's issuer-domain and operator-domain keys, its purse APP key, its
    issuer root and certificate, and its credit record's signature to the keystore's
    current versions; afterwards the old versions no longer open the card."""
    from tallypurse.card.card import Card

    from .host import audited, opened

    _check_who(operator, reason)
    if not card_file.is_file():
        fail(f"no card file {card_file}")
    log = _host_log(db, data_dir, ceremony_log)
    _check_log(log)
    with opened(db, data_dir) as host:
        card = Card.open(card_file)
        card.power_up()
        plan = _run(lambda: host.registry.rekey_card(card, dry_run=True))
        card_id = plan.before.card_id.hex()
        if not plan.needed:
            typer.echo(f"card {card_id} already holds the current keys; nothing to do")
            return
        if dry_run:
            typer.echo(f"dry run: would re-key card {card_id}:")
            for step in plan.steps:
                typer.echo(f"  {step}")
            typer.echo(f"dry run: would log it in {log.path}; nothing changed")
            return
        now = int(time.time())
        with audited(host, "card.rekey", card_id, reason=reason, by=operator) as detail:
            plan = _run(lambda: host.registry.rekey_card(card))
            detail.extend(plan.steps)
    typer.echo(f"re-keyed card {card_id}:")
    for step in plan.steps:
        typer.echo(f"  {step}")
    _record(log, "rekey-card", operator, reason, plan.to_json(), now)


@app.command("revoke-terminal")
def revoke_terminal(
    terminal_id: Annotated[str, typer.Argument(metavar="TERMINAL", help="The terminal id.")],
    operator: OperatorOption,
    reason: ReasonOption,
    db: HostDbOption = None,
    data_dir: HostDirOption = None,
    dry_run: DryRunOption = False,
    ceremony_log: LogOption = None,
) -> None:
    """Revoke a terminal at the host: every request it signs is refused from now on.

    Logged in the ceremony log of the host's keystore and in the operator audit log."""
    from .host import audited, opened

    _check_who(operator, reason)
    log = _host_log(db, data_dir, ceremony_log)
    _check_log(log)
    with opened(db, data_dir) as host:
        status = {t.terminal_id: t for t in host.tms.terminals()}.get(terminal_id)
        if status is None:
            fail(f"no terminal {terminal_id}")
        if status.status == "revoked":
            fail(f"terminal {terminal_id} is already revoked")
        if dry_run:
            typer.echo(
                f"dry run: would revoke terminal {terminal_id} (merchant {status.merchant_id}, "
                f"{status.status}) and log it in {log.path}; nothing changed"
            )
            return
        now = int(time.time())
        with audited(host, "terminal.revoke", terminal_id, reason=reason, by=operator):
            _run(lambda: host.tms.revoke(terminal_id, reason))
    typer.echo(f"revoked terminal {terminal_id} (merchant {status.merchant_id})")
    _record(log, "revoke-terminal", operator, reason,
            {"terminal": terminal_id, "merchant": status.merchant_id,
             "previous_status": status.status}, now)
