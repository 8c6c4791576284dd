"""The committed generated code equals a fresh generation from proto/orchard.proto."""

from __future__ import annotations

from pathlib import Path

from proto.generate import OUTPUTS, ROOT, generate


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    for path in fresh:
        committed = ROOT / "proto" / path.name
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run python -m proto.generate"
    assert {p.name for p in fresh} == set(OUTPUTS)
