from __future__ import annotations

from .world import World


def test_a_terminal_enrols_and_a_card_loads_and_pays(world: World) -> None:
    holder = world.cardholder(funds=10_000)
    card = world.card(holder)
    world.load(card, 5_000)
    debit = world.purchase(card, 1_200)
    ack = world.upload(debit)
    print(ack)
    print(world.host.reports.audit())
