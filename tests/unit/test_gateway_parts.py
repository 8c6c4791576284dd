"""The gateway's pure parts on plain data: buckets and quotas, the fair queue, the schema's migrations."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from cluster.gateway import keys, store
from cluster.gateway.limits import Headroom, Limiter, Refused, Subject, duration
from cluster.gateway.queue import Admission, Capacity, FairQueue, QueueFull

KEY = Subject("key", "k1", rpm=2, tpm=1000, monthly_tokens=None)
TEAM = Subject("team", "ml", rpm=None, tpm=None, monthly_tokens=5000)


def test_requests_per_minute_refuse_the_third_request_and_say_when_to_retry() -> None:
    limiter = Limiter()
    first = limiter.admit([KEY], 10, now=0.0, month_end=1e9)
    assert isinstance(first, Headroom) and first.requests == (2, 1, pytest.approx(30.0))
    assert isinstance(limiter.admit([KEY], 10, now=0.0, month_end=1e9), Headroom)
    refused = limiter.admit([KEY], 10, now=1.0, month_end=1e9)
    assert isinstance(refused, Refused) and "requests per minute (rpm) of key 'k1': 2" in refused.limit
    assert refused.retry_after_s == pytest.approx(29.0)  # one request refills every 30 s
    assert isinstance(limiter.admit([KEY], 10, now=30.0, month_end=1e9), Headroom)


def test_tokens_are_reserved_then_settled_to_the_engines_count() -> None:
    limiter = Limiter()
    limiter.admit([KEY], 900, now=0.0, month_end=1e9)
    assert isinstance(limiter.admit([KEY], 200, now=0.0, month_end=1e9), Refused)  # 100 left of 1000
    limiter.settle([KEY], reserved=900, used=150, now=0.0)  # the engine used far less than reserved
    assert isinstance(limiter.admit([KEY], 200, now=0.0, month_end=1e9), Headroom)


def test_the_monthly_quota_counts_use_and_reservations_and_waits_for_the_month_end() -> None:
    limiter = Limiter()
    limiter.ledger.used[("team", "ml")] = 4900
    refused = limiter.admit([TEAM], 200, now=100.0, month_end=1000.0)
    assert isinstance(refused, Refused) and "monthly token quota of team 'ml': 5000" in refused.limit
    assert refused.retry_after_s == 900.0
    assert isinstance(limiter.admit([TEAM], 100, now=100.0, month_end=1000.0), Headroom)


def test_a_refusal_takes_nothing_from_the_other_limits() -> None:
    limiter = Limiter()
    tight = Subject("team", "t", rpm=1, tpm=None, monthly_tokens=None)
    limiter.admit([KEY, tight], 1, now=0.0, month_end=1e9)
    assert isinstance(limiter.admit([KEY, tight], 1, now=0.0, month_end=1e9), Refused)
    headroom = limiter.admit([KEY], 1, now=0.0, month_end=1e9)  # the key's bucket lost only the first
    assert isinstance(headroom, Headroom) and headroom.requests is not None and headroom.requests[1] == 0


def test_rate_limit_headers_use_openais_names_and_reset_format() -> None:
    headers = Headroom(requests=(60, 59, 1.0), tokens=(1000, 990, 0.6)).headers()
    assert headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "990",
        "x-ratelimit-reset-tokens": "600ms",
    }
    assert duration(360) == "6m0s" and Headroom().headers() == {}


def test_fair_queue_serves_a_quiet_team_before_a_busy_teams_backlog() -> None:
    queue: FairQueue[str] = FairQueue(limit=100)
    for i in range(10):
        queue.push("a", 1.0, 1.0, f"a{i}")
    assert queue.pop() == "a0"
    queue.push("b", 1.0, 1.0, "b0")
    assert [queue.pop(), queue.pop()] == ["b0", "a1"]  # b's first request starts at the current virtual time


def test_fair_queue_shares_by_weight_when_both_are_backlogged() -> None:
    queue: FairQueue[str] = FairQueue(limit=1000)
    for _ in range(300):
        queue.push("heavy", 2.0, 1.0, "heavy")
        queue.push("light", 1.0, 1.0, "light")
    served = [queue.pop() for _ in range(300)]
    assert served.count("heavy") == 200 and served.count("light") == 100


def test_fair_queue_is_bounded_and_forgets_waiters_that_left() -> None:
    queue: FairQueue[str] = FairQueue(limit=2)
    first = queue.push("a", 1.0, 1.0, "x")
    queue.push("a", 1.0, 1.0, "y")
    with pytest.raises(QueueFull):
        queue.push("b", 1.0, 1.0, "z")
    queue.remove(first)
    assert len(queue) == 1 and queue.pop() == "y" and queue.pop() is None


async def test_admission_lets_requests_through_as_slots_free() -> None:
    admission = Admission(capacity=lambda model: Capacity(1), max_queue=4)
    await admission.acquire("m", "a", 1.0, 1.0, timeout_s=1)
    waiter = asyncio.create_task(admission.acquire("m", "a", 1.0, 1.0, timeout_s=5))
    await asyncio.sleep(0.05)
    assert not waiter.done() and admission.waiting("m") == 1
    admission.release("m", "a")
    await asyncio.wait_for(waiter, 1)
    with pytest.raises(TimeoutError):
        await admission.acquire("m", "b", 1.0, 1.0, timeout_s=0.05)
    assert admission.waiting("m") == 0 and admission.active("m") == 1  # the timed-out waiter left the queue


async def test_a_spare_slot_goes_to_a_team_below_its_share_never_to_a_team_alone() -> None:
    admission = Admission(capacity=lambda model: Capacity(slots=2, spare=1), max_queue=8)
    for _ in range(2):
        await admission.acquire("m", "heavy", 1.0, 1.0, timeout_s=1)
    heavy_third = asyncio.create_task(admission.acquire("m", "heavy", 1.0, 1.0, timeout_s=5))
    await asyncio.sleep(0.02)
    assert not heavy_third.done()  # alone, heavy holds its whole share: it waits for a slot, no spare
    await admission.acquire("m", "light", 1.0, 1.0, timeout_s=0.05)  # below its share (1 of 2): lent at once
    assert admission.active("m") == 3
    light_second = asyncio.create_task(admission.acquire("m", "light", 1.0, 1.0, timeout_s=5))
    await asyncio.sleep(0.02)
    assert not light_second.done()  # the spare is taken; light now queues like anyone
    admission.release("m", "heavy")  # 2 in flight again: nothing goes past the slots
    assert admission.active("m") == 2 and admission.waiting("m") == 2
    admission.release("m", "light")  # 1 in flight: the fair queue's next gets the slot
    await asyncio.sleep(0)
    assert admission.active("m") == 2 and admission.waiting("m") == 1
    for task in (heavy_third, light_second):
        task.cancel()
    await asyncio.gather(heavy_third, light_second, return_exceptions=True)


async def test_the_share_that_decides_lending_is_weighted() -> None:
    admission = Admission(capacity=lambda model: Capacity(slots=3, spare=1), max_queue=8)
    for _ in range(3):
        await admission.acquire("m", "a", 1.0, 1.0, timeout_s=1)
    with pytest.raises(TimeoutError):  # weight 0.2 against 1: share 0.5 of a slot, less than one request
        await admission.acquire("m", "b", 0.2, 1.0, timeout_s=0.05)
    await admission.acquire("m", "b", 1.0, 1.0, timeout_s=0.05)  # weight 1: share 1.5, lent


def test_a_database_made_by_the_first_schema_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with store.connect(path, upgrade_to=1) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 1
        old.execute("INSERT INTO teams (name, created) VALUES ('ml', 0)")
        old.execute(
            "INSERT INTO keys (id, hash, team, admin, created) VALUES ('key_1', ?, 'ml', 1, 0)",
            (keys.hash_secret("sk-orch-old"),),
        )
    with store.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        key = keys.load_snapshot(conn).find("sk-orch-old")
        assert key is not None and key.admin and key.last_used is None
        assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keys_are_stored_hashed_and_found_only_by_their_secret(tmp_path: Path) -> None:
    with store.connect(tmp_path / "gateway.db") as conn:
        key, secret = keys.create_key(conn, "ml", keys.Limits(rpm=5), admin=False, expires=None, weight=2.0)
        assert secret.startswith("sk-orch-") and len(secret) >= 8 + 32
        dump = "\n".join(conn.iterdump())
        assert secret not in dump and key.hash in dump
        snapshot = keys.load_snapshot(conn)
        assert snapshot.find(secret) == key and snapshot.find(secret + "x") is None
        assert snapshot.teams["ml"].weight == 2.0
        keys.revoke_key(conn, key.id)
        found = keys.load_snapshot(conn).find(secret)
        assert found is not None and not found.usable(now=0.0)
        with pytest.raises(keys.KeyError_, match="no key with id"):
            keys.revoke_key(conn, "key_nope")


async def test_the_gateway_refuses_a_missing_unknown_or_expired_key_with_401(tmp_path: Path) -> None:
    from cluster.gateway.gateway import Ask, Gateway, Refusal

    now = [1_000.0]
    with store.connect(tmp_path / "gateway.db") as conn:
        _, secret = keys.create_key(conn, "ml", keys.Limits(), admin=False, expires=1_500.0)
    db = tmp_path / "gateway.db"
    gateway = Gateway(db, capacity=lambda model: Capacity(4), require_auth=False, clock=lambda: now[0])
    await gateway.start()
    try:
        key = gateway.authenticate(f"Bearer {secret}")
        granted = await gateway.admit(Ask("r1", "m", prompt_chars=40, max_tokens=8), key, timeout_s=1)
        assert granted.team == "ml" and granted.reserved == 18
        for authorization, why in ((None, "didn't provide"), ("Bearer sk-orch-nope", "not known")):
            with pytest.raises(Refusal, match=why) as caught:
                gateway.authenticate(authorization)
            assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
        now[0] = 2_000.0
        with pytest.raises(Refusal, match="expired"):
            gateway.authenticate(f"Bearer {secret}")
    finally:
        await gateway.stop()


def test_a_request_larger_than_its_tpm_reservation_pays_for_what_it_used() -> None:
    limiter = Limiter()
    tight = Subject("key", "k", rpm=None, tpm=1000, monthly_tokens=None)
    limiter.admit([tight], 100_000, now=0.0, month_end=1e9)  # takes the whole bucket (1000), reserves 100k
    limiter.settle([tight], reserved=100_000, used=4_000, now=0.0)  # used 4x the bucket: it owes 3000
    refused = limiter.admit([tight], 10, now=60.0, month_end=1e9)  # one minute refills 1000: still short
    assert isinstance(refused, Refused) and refused.code == "rate_limit_exceeded"


def test_a_spent_monthly_quota_is_openais_insufficient_quota() -> None:
    limiter = Limiter()
    refused = limiter.admit([TEAM], 6000, now=0.0, month_end=10.0)
    assert isinstance(refused, Refused) and refused.code == "insufficient_quota"


async def test_waiters_are_told_at_once_when_the_last_worker_goes() -> None:
    from cluster.gateway.queue import NoCapacity

    capacity = [1]
    admission = Admission(capacity=lambda model: Capacity(capacity[0]), max_queue=4)
    await admission.acquire("m", "a", 1.0, 1.0, timeout_s=1)
    waiter = asyncio.create_task(admission.acquire("m", "b", 1.0, 1.0, timeout_s=30))
    await asyncio.sleep(0.05)
    capacity[0] = 0
    admission.dispatch_all()
    with pytest.raises(NoCapacity):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(NoCapacity):
        await admission.acquire("m", "c", 1.0, 1.0, timeout_s=1)


def test_two_processes_opening_a_new_database_at_once_both_get_the_schema(tmp_path: Path) -> None:
    import threading

    path, errors = tmp_path / "gateway.db", []

    def open_it() -> None:
        try:
            store.connect(path).close()
        except Exception as exc:  # what the race used to raise: "table teams already exists"
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with store.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
