"""List entries are written unnumbered by their writers and numbered after commit by the
publisher: a terminal that synced "since N" never later meets a new entry numbered N or
below, nothing is skipped or numbered twice, and an entry waits at most until the next read."""

from __future__ import annotations

import dataclasses
import threading

import sqlalchemy as sa

from tallypurse.core.hostapi import SignedList, SyncRequest
from tallypurse.host.db.engine import AFTER_COMMIT
from tallypurse.host.db.models import ListEntry, ListHead
from tallypurse.host.lists import ACTIONS, BLACKLIST, ListName

from .world import World

WRITERS = 4
TRANSACTIONS = 25  # per writer
READERS = 3


def entry(name: ListName, writer: int, txn: int, i: int) -> dict[str, object]:
    card = f"{writer:08x}{txn:06x}{i:02x}"
    if name == BLACKLIST:
        return {"card_id": card, "op": "add", "reason": f"w{writer}-{txn}-{i}"}
    return {"card_id": card, "op": "add", "action_id": f"w{writer}-{txn}-{i}", "kind": "block",
            "seq": i + 1, "sealed": "00"}


def ids_of(name: ListName, signed: SignedList) -> list[str]:
    if name == BLACKLIST:
        return [e.reason for e in signed.blacklist]
    return [e.action_id for e in signed.actions]


def sync(world: World, blacklist: int, actions: int):
    return world.host.tms.sync(world.tid, SyncRequest(
        blacklist_version=blacklist, actions_version=actions, parameters_version=1))


def numbered(world: World) -> dict[str, list[int | None]]:
    with world.host.uow() as uow:
        rows = uow.session.execute(sa.select(ListEntry.list_name, ListEntry.version)
                                   .order_by(ListEntry.id)).all()
    out: dict[str, list[int | None]] = {BLACKLIST: [], ACTIONS: []}
    for name, version in rows:
        out[name].append(version)
    return out


def test_concurrent_writers_and_readers_never_see_a_version_twice_or_late(world: World) -> None:
    host = world.host
    host.settings = dataclasses.replace(host.settings, list_delta_max=1_000_000)
    written: dict[str, list[str]] = {BLACKLIST: [], ACTIONS: []}
    errors: list[BaseException] = []
    done = threading.Event()
    start = threading.Barrier(WRITERS + READERS)
    lock = threading.Lock()

    def writer(w: int) -> None:
        try:
            start.wait()
            for t in range(TRANSACTIONS):
                name = (ACTIONS, BLACKLIST)[(w + t) % 2]
                batch = [entry(name, w, t, i) for i in range(1 + t % 3)]
                with host.uow() as uow:
                    host.lists.append(uow.session, name, batch)
                    if t % 5 == 4:  # a rolled-back writer leaves nothing behind
                        continue
                    uow.commit()
                with lock:
                    written[name] += [str(e.get("action_id") or e["reason"]) for e in batch]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader(got: dict[str, list[str]]) -> None:
        since = {BLACKLIST: 0, ACTIONS: 0}
        try:
            start.wait()
            last = False
            while not last:
                last = done.is_set()  # one more read once every writer has finished
                answer = sync(world, since[BLACKLIST], since[ACTIONS])
                for name, signed in ((BLACKLIST, answer.blacklist), (ACTIONS, answer.actions)):
                    if signed is None:
                        continue
                    # A delta starts exactly where this terminal is and moves forward.
                    assert not signed.full
                    assert signed.from_version == since[name] < signed.to_version
                    got_ids = ids_of(name, signed)
                    assert len(got_ids) == signed.to_version - signed.from_version
                    got[name] += got_ids
                    since[name] = signed.to_version
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[dict[str, list[str]]] = [{BLACKLIST: [], ACTIONS: []} for _ in range(READERS)]
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(seen[r],)) for r in range(READERS)]
    for t in threads:
        t.start()
    for t in threads[:WRITERS]:
        t.join()
    done.set()
    for t in threads[WRITERS:]:
        t.join()
    assert not errors, errors[0]

    final = sync(world, 0, 0)
    for name, signed in ((BLACKLIST, final.blacklist), (ACTIONS, final.actions)):
        assert signed is not None
        everything = ids_of(name, signed)
        # Every committed entry once, none of the rolled-back ones.
        assert sorted(everything) == sorted(written[name])
        assert len(set(everything)) == len(everything)
        # What each terminal put together delta by delta is the list itself, in order:
        # no entry was numbered below a version a terminal had already passed.
        for got in seen:
            assert got[name] == everything
    versions = numbered(world)
    with host.uow() as uow:
        heads = dict(uow.session.execute(sa.select(ListHead.name, ListHead.version)).all())
    for name in (BLACKLIST, ACTIONS):
        assert sorted(v for v in versions[name] if v is not None) == list(
            range(1, len(written[name]) + 1))
        assert None not in versions[name]
        assert heads[name] == len(written[name])


def test_an_entry_whose_publisher_was_skipped_is_numbered_by_the_next_read(world: World) -> None:
    host = world.host
    with host.uow() as uow:
        host.lists.append(uow.session, ACTIONS, [entry(ACTIONS, 1, 1, 0)])
        uow.commit()
    assert numbered(world)[ACTIONS] == [1]
    with host.uow() as uow:
        host.lists.append(uow.session, ACTIONS, [entry(ACTIONS, 1, 2, 0), entry(ACTIONS, 1, 2, 1)])
        uow.session.info.pop(AFTER_COMMIT)  # as when another publisher held the head
        uow.commit()
    # Committed and durable, but on no list yet: the head has not moved.
    assert numbered(world)[ACTIONS] == [1, None, None]
    with host.uow() as uow:
        assert host.lists.head(uow.session, ACTIONS) == 1
    answer = sync(world, 0, 1)
    assert answer.actions is not None
    assert (answer.actions.from_version, answer.actions.to_version) == (1, 3)
    assert ids_of(ACTIONS, answer.actions) == ["w1-2-0", "w1-2-1"]  # in the order written
    assert numbered(world)[ACTIONS] == [1, 2, 3]
    assert sync(world, 0, 3).actions is None


def test_a_writer_that_rolls_back_leaves_no_entry_and_publishing_nothing_changes_nothing(
        world: World) -> None:
    host = world.host
    with host.uow() as uow:
        host.lists.append(uow.session, BLACKLIST, [entry(BLACKLIST, 2, 1, 0)])
    assert numbered(world)[BLACKLIST] == []
    assert host.lists.publish() == {}
    with host.uow() as uow:
        assert host.lists.head(uow.session, BLACKLIST) == 0
