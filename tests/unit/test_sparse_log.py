"""A log line that repeats per request is written at most once per interval and key, saying how many it stands for."""

from __future__ import annotations

import logging

import pytest

from cluster.router import logformat


def test_one_line_per_key_and_interval_counting_the_rest(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(logformat.time, "monotonic", lambda: clock[0])
    sparse = logformat.Sparse(logging.getLogger("test.sparse"), every_s=10.0)
    with caplog.at_level(logging.WARNING, logger="test.sparse"):
        for _ in range(5):
            sparse.warning("UNAVAILABLE", "worker call failed: %s", "UNAVAILABLE")
        sparse.warning("DEADLINE_EXCEEDED", "worker call failed: %s", "DEADLINE_EXCEEDED")
        clock[0] += 10.0
        sparse.warning("UNAVAILABLE", "worker call failed: %s", "UNAVAILABLE")
    assert [r.getMessage() for r in caplog.records] == [
        "worker call failed: UNAVAILABLE",
        "worker call failed: DEADLINE_EXCEEDED",
        "worker call failed: UNAVAILABLE (and 4 more like it)",
    ]
