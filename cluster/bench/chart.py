"""The routing benchmark's PNG: per workload, TTFT p50/p90/p99 and output tokens/s for each policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class ChartRow(Protocol):
    """What the chart reads of one benchmark row (cluster.bench.routing.PolicyResult)."""

    @property
    def workload(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def ttft_p50_ms(self) -> float: ...
    @property
    def ttft_p90_ms(self) -> float: ...
    @property
    def ttft_p99_ms(self) -> float: ...
    @property
    def output_tok_s(self) -> float: ...
    @property
    def prefix_hit_rate(self) -> float: ...


def write_chart(rows: Sequence[ChartRow], path: Path, title: str) -> Path | None:
    """Write the chart; None when matplotlib is not installed (it is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    workloads = list(dict.fromkeys(r.workload for r in rows))
    fig, axes = plt.subplots(2, len(workloads), figsize=(5 * len(workloads), 7), squeeze=False)
    for column, workload in enumerate(workloads):
        mine = [r for r in rows if r.workload == workload]
        labels = [r.policy for r in mine]
        ttft, rate = axes[0][column], axes[1][column]
        width = 0.27
        for offset, (name, values) in enumerate(
            (
                ("p50", [r.ttft_p50_ms for r in mine]),
                ("p90", [r.ttft_p90_ms for r in mine]),
                ("p99", [r.ttft_p99_ms for r in mine]),
            )
        ):
            ttft.bar([i + (offset - 1) * width for i in range(len(mine))], values, width, label=name)
        ttft.set_xticks(range(len(mine)), labels)
        ttft.set_title(f"{workload}: time to first token")
        ttft.set_ylabel("ms")
        ttft.legend()
        rate.bar(range(len(mine)), [r.output_tok_s for r in mine], color="tab:green")
        rate.set_xticks(range(len(mine)), labels)
        rate.set_title(f"{workload}: output tokens/s")
        for index, r in enumerate(mine):
            rate.annotate(f"hit {r.prefix_hit_rate:.2f}", (index, r.output_tok_s), ha="center", va="bottom")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
