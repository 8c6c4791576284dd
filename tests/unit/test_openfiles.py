"""Raising the open-file limit at start, on macOS and Linux, against the limits each reports (passed in)."""

from __future__ import annotations

import resource

import pytest

from worker.shared import openfiles

INF = resource.RLIM_INFINITY


def _system(soft: int, hard: int, refuses_above: int | None = None) -> tuple[list[int], object, object]:
    """getrlimit/setrlimit of a kernel with these limits; `refuses_above`: its per-process cap."""
    asked: list[int] = []
    now = [soft]

    def get(_: int) -> tuple[int, int]:
        return now[0], hard

    def set_(_: int, limits: tuple[int, int]) -> None:
        asked.append(limits[0])
        if refuses_above is not None and limits[0] > refuses_above:
            raise ValueError("not allowed to raise maximum limit")
        now[0] = limits[0]

    return asked, get, set_


@pytest.mark.parametrize(
    ("platform", "soft", "hard", "cap", "asked", "got"),
    [
        ("darwin", 256, INF, None, [10240], 10240),  # launchd's default: unlimited hard, OPEN_MAX taken
        ("darwin", 256, INF, 4096, [10240], 256),  # a kernel capped below OPEN_MAX: nothing raised, said so
        ("darwin", 256, 100_000, 49152, [81920, 10240], 10240),  # above maxfilesperproc refused: OPEN_MAX then
        ("darwin", 256, 1024, None, [1024], 1024),
        ("linux", 1024, 524288, None, [524288], 524288),  # systemd's hard default
        ("linux", 1024, INF, None, [1 << 20], 1 << 20),
        ("linux", 256, 256, None, [], 256),  # `ulimit -n 256` (hard too): nothing to raise
        ("linux", 4096, 1024 * 1024, None, [1 << 20], 1 << 20),
    ],
)
def test_the_soft_limit_is_raised_as_far_as_the_system_allows(
    platform: str, soft: int, hard: int, cap: int | None, asked: list[int], got: int
) -> None:
    calls, get, set_ = _system(soft, hard, cap)
    limits = openfiles.raise_limit(platform, get, set_)
    assert calls == asked and (limits.before, limits.soft, limits.hard) == (soft, got, hard)
    assert ("not raised" in limits.describe()) == (got == soft)


def test_what_fits_beside_the_reserved_descriptors() -> None:
    limits = openfiles.OpenFiles(before=256, soft=256, hard=256)
    assert openfiles.cap(1024, limits, 68) == 188  # the router's cap under `ulimit -n 256`, one worker
    assert openfiles.cap(100, openfiles.OpenFiles(256, 10240, INF), 68) == 100  # the config's, when it fits
    assert openfiles.cap(1024, openfiles.OpenFiles(32, 32, 32), 68) == 1  # never zero
