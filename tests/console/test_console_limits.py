"""The console's rate limit counts against the session's user, once the session is
valid; failed logins count against the address."""

from __future__ import annotations

from tallypurse.host.ratelimit import Limit, TokenBuckets

from .conftest import Small, console_for, logged_in


def test_a_console_user_is_limited_and_another_is_not(small: Small) -> None:
    for olga in logged_in(small.app, "olga"):
        small.host.limits.buckets["console"] = TokenBuckets(Limit(rate=0.001, burst=2))
        assert [olga.get("/cards").status_code for _ in range(2)] == [200, 200]
        refused = olga.get("/cards")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "Too many requests" in refused.text
        for arne in logged_in(small.app, "arne"):  # logging in spends arne's first token
            assert arne.get("/cards").status_code == 200


def test_failed_logins_count_against_the_address(small: Small) -> None:
    small.host.limits.buckets["address"] = TokenBuckets(Limit(rate=0.001, burst=4))
    for c in console_for(small.app):
        assert c.login("olga", "wrong password").status_code == 401  # form + post: 2 tokens
        assert c.login("olga", "wrong again!").status_code == 401
        refused = c.login("olga")  # even the right password: the address is spent
        assert refused.status_code == 429 and refused.json()["code"] == 2006
