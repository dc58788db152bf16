"""The `tallypurse` command line."""

from __future__ import annotations

import typer

from . import bench, card, credit, demo, host, keys, phone, simulate, terminal
from . import console as console_cli

app = typer.Typer(
    help="tallypurse: offline-first prepaid-card payments (card, terminal, host).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(card.app, name="card")
app.add_typer(bench.app, name="bench")
app.add_typer(credit.app, name="credit")
# `tallypurse credit explain` reads the host's books: the same command as `host credit explain`.
credit.app.command("explain")(host.credit_explain)
app.add_typer(terminal.app, name="terminal")
app.add_typer(host.app, name="host")
host.app.add_typer(console_cli.app, name="user")  # tallypurse host user ...: console logins
app.add_typer(phone.app, name="phone")
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
