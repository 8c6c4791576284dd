"""Regenerate the Python for orchard.proto: `python -m proto.generate` (from the repository root).

`tests/unit/test_proto_current.py` proves the committed files equal a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("orchard_pb2.py", "orchard_pb2.pyi", "orchard_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Write the generated modules under out_root/proto/ and return their paths."""
    from grpc_tools import protoc  # grpcio-tools is pinned with grpcio in pyproject.toml

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / "proto" / "orchard.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/orchard.proto")
    return [out_root / "proto" / name for name in OUTPUTS]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    sys.exit(0)
