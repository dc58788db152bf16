"""A day-end batch in canonical JSON, written field by field, is byte for byte what
``canonical`` makes of the dumped model (the payload hash and the SAM-signed bytes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tallypurse.core.hostapi import BatchUpload, JournalEntry, Totals, batch_json, canonical
from tallypurse.core.httpsig import batch_signed_bytes

hexes = st.binary(max_size=40).map(bytes.hex)
free_text = st.text(max_size=40)  # any string the models let through: quotes, controls, é, emoji
counters = st.integers(min_value=0, max_value=0xFFFFFFFF)
entries = st.builds(
    JournalEntry,
    seq=counters,
    kind=st.sampled_from(["debit", "cancel", "load", "online", "reversal", "writeback"]),
    time=st.integers(min_value=-(2**70), max_value=2**70),
    card_id=st.binary(min_size=8, max_size=8).map(bytes.hex),
    tx_type=free_text,
    amount=counters,
    split=counters,
    currency=st.sampled_from(["EUR", "CHF", "JPY"]),
    record=hexes,
    reference=free_text,
    prev_hash=hexes,
    entry_hash=hexes,
    sam_signature=hexes,
)
batches = st.builds(
    BatchUpload,
    batch_id=st.from_regex(r"\A[A-Za-z0-9._:-]{8,20}\Z"),
    terminal_id=st.binary(min_size=8, max_size=8).map(bytes.hex),
    entries=st.lists(entries, max_size=4),
    totals=st.dictionaries(free_text, st.builds(Totals, count=counters, amount=counters),
                           max_size=3),
    signature=hexes,
)


def _encodable(batch: BatchUpload) -> bool:
    try:
        canonical(batch.model_dump(mode="json"))
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 at all, either way
        return False
    return True


@settings(max_examples=300, deadline=None, derandomize=True)
@given(batches)
def test_batch_json_is_the_canonical_json_of_the_dumped_batch(batch: BatchUpload) -> None:
    if not _encodable(batch):
        return
    full, signed = batch_json(batch)
    assert full == canonical(batch.model_dump(mode="json"))
    assert signed == canonical(batch.model_dump(mode="json", exclude={"signature"}))
    assert batch_signed_bytes(batch) == signed


def test_batch_json_of_an_empty_batch_and_of_awkward_text() -> None:
    entry = JournalEntry(seq=1, kind="online", time=1_700_000_000, card_id="00" * 8,
                         tx_type="caf\u00e9\t\"q\"\\\x00\x1f\u2028", amount=5, split=0,
                         currency="EUR", reference="\U0001f600 ref", prev_hash="00" * 32,
                         entry_hash="11" * 32, sam_signature="22" * 4)
    for batch in (
        BatchUpload(batch_id="batch-0001", terminal_id="01" * 8, entries=[], totals={},
                    signature=""),
        BatchUpload(batch_id="batch-0002", terminal_id="01" * 8, entries=[entry, entry],
                    totals={"online": Totals(count=2, amount=10), "debit": Totals(count=0,
                                                                                 amount=0)},
                    signature="ab" * 64),
    ):
        full, signed = batch_json(batch)
        assert full == canonical(batch.model_dump(mode="json"))
        assert signed == canonical(batch.model_dump(mode="json", exclude={"signature"}))
