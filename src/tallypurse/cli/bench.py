"""`tallypurse bench`: benchmarks that print figures beside this machine's floor."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from tallypurse.card.card import Card
from tallypurse.core import cert, crypto
from tallypurse.core.messages import CardEvent
from tallypurse.core.protocol import CertRole

from .benchutil import ms, percentile, time_op, us

app = typer.Typer(
    help="Benchmarks; each prints its figures beside the floor measured in the same run.",
    no_args_is_help=True,
)

# ISO/IEC 14443-4 framing estimate: each I-block adds PCB + CRC (3 bytes); every byte
# costs 9 bits on air (8 data + parity); the minimum frame delay time at 13.56 MHz
# is about 86 us in each direction.
FRAME_OVERHEAD_BYTES = 3
BITS_PER_BYTE = 9
FDT_S = 86e-6


class CountingTransport:
    """Wraps a card: counts APDUs and bytes in each direction."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.exchanges: list[tuple[int, int]] = []

    def transmit(self, apdu: bytes) -> bytes:
        out = self.card.transmit(apdu)
        self.exchanges.append((len(apdu), len(out)))
        return out


def air_time(exchanges: list[tuple[int, int]], bit_rate: int) -> float:
    total = 0.0
    for c, r in exchanges:
        bits = (c + FRAME_OVERHEAD_BYTES + r + FRAME_OVERHEAD_BYTES) * BITS_PER_BYTE
        total += bits / bit_rate + 2 * FDT_S
    return total


@app.command("card")
def bench_card(
    taps: Annotated[int, typer.Option(help="Purchases to time.")] = 2000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """In-process purchase on the card emulator: APDUs, bytes, time, crypto, air time."""
    from tallypurse.lab import Lab

    if taps < 10:
        raise typer.BadParameter("at least 10 taps")
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab.create(Path(tmp))
        serial = bytes.fromhex("00000000000000b1")
        card, _ = lab.new_card(serial)
        sam = lab.new_sam(Path(tmp) / "sam.json", b"BENCH001")
        lab.load(card, 100_000)
        counting = CountingTransport(card)
        # One warm-up purchase fills the terminal's card-certificate cache.
        lab.purchase(counting, sam, 1)  # type: ignore[arg-type]
        counting.exchanges.clear()
        samples = []
        for i in range(taps):
            if i and i % 90_000 == 0:
                lab.load(card, 90_000)
            t0 = time.perf_counter()
            lab.purchase(counting, sam, 1)  # type: ignore[arg-type]
            samples.append(time.perf_counter() - t0)
        per_tap = counting.exchanges[: len(counting.exchanges) // taps]
        apdus = len(per_tap)
        bytes_out = sum(c for c, _ in per_tap)
        bytes_in = sum(r for _, r in per_tap)

        # Crypto operations alone.
        key = crypto.generate_private_key()
        pub = crypto.encode_public_key(key.public_key())
        msg = os.urandom(4 + CardEvent.size())  # a TAC's signed data
        sig = crypto.sign(key, msg)
        roots = lab.roots()
        term_cert = sam.certificate
        reps = 500
        t_sign = time_op(lambda: crypto.sign(key, msg), reps)
        t_verify = time_op(lambda: crypto.verify(pub, sig, msg), reps)
        t_cert = time_op(
            lambda: cert.verify(term_cert, roots, role=CertRole.TERMINAL, at=lab.now), reps
        )
        aes_key = os.urandom(16)
        t_cmac = time_op(lambda: crypto.aes_cmac(aes_key, msg), reps)
        sam.close()
    # The purchase's own crypto: card verifies the terminal certificate and the order
    # and signs the TAC; the SAM signs the order and verifies the TAC.
    floor = t_cert + 2 * t_verify + 2 * t_sign
    p50 = percentile(samples, 0.5)
    result: dict[str, Any] = {
        "taps": taps,
        "apdus_per_purchase": apdus,
        "bytes_to_card": bytes_out,
        "bytes_from_card": bytes_in,
        "purchase_p50_ms": ms(p50),
        "purchase_p99_ms": ms(percentile(samples, 0.99)),
        "purchase_max_ms": ms(max(samples)),
        "crypto_us": {
            "ecdsa_p256_sign": us(t_sign),
            "ecdsa_p256_verify": us(t_verify),
            "certificate_verify": us(t_cert),
            "aes_cmac": us(t_cmac),
        },
        "floor_ms": ms(floor),
        "ratio_p50_to_floor": round(p50 / floor, 2),
        "air_time_ms": {
            "106kbps": ms(air_time(per_tap, 106_000)),
            "424kbps": ms(air_time(per_tap, 424_000)),
        },
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"purchase on the card emulator, {taps} taps, in process")
    typer.echo(
        f"  APDUs per purchase     {apdus}  ({bytes_out} bytes to card, {bytes_in} from card)"
    )
    typer.echo(
        f"  time per purchase      p50 {result['purchase_p50_ms']} ms  "
        f"p99 {result['purchase_p99_ms']} ms  max {result['purchase_max_ms']} ms"
    )
    typer.echo(
        f"  floor (crypto alone)   {result['floor_ms']} ms  "
        f"(1 certificate + 2 verifies + 2 signs)   ratio p50/floor "
        f"{result['ratio_p50_to_floor']}x"
    )
    for name, value in result["crypto_us"].items():
        typer.echo(f"    {name:<22} {value} us")
    typer.echo(
        f"  estimated time on air  {result['air_time_ms']['106kbps']} ms at 106 kbit/s, "
        f"{result['air_time_ms']['424kbps']} ms at 424 kbit/s"
    )


# Benchmarks that live beside the commands they measure.
from .bench_credit import bench_credit  # noqa: E402
from .bench_host import bench_agent, bench_clearing  # noqa: E402
from .bench_pcsc import bench_pcsc  # noqa: E402
from .simulate import bench_simulate  # noqa: E402
from .terminal import bench_tap  # noqa: E402

app.command("tap")(bench_tap)
app.command("pcsc")(bench_pcsc)
app.command("clearing")(bench_clearing)
app.command("agent")(bench_agent)
app.command("credit")(bench_credit)
app.command("simulate")(bench_simulate)
