import cProfile, pstats, time
from .world import World

def test_probe(world: World) -> None:
    if not world.host.db.postgres:
        return
    cards = [world.card() for _ in range(20)]
    for c in cards:
        world.load(c, 100_000)
    events = [world.purchase(c, 1) for _ in range(50) for c in cards]
    batch = world.batch([world.entry(e) for e in events])
    pr = cProfile.Profile()
    pr.enable()
    t = time.perf_counter()
    ack = world.host.clearing.upload(world.tid, batch)
    dt = time.perf_counter() - t
    pr.disable()
    print(f"\ncleared {len(ack.accepted)} in {dt:.3f}s")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(35)
