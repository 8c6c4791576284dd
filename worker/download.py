"""A hub model's files fetched before its engine starts: a phase of its own, with progress as bytes of the
total, never counted against the engine's ready deadline (a 70B model's first download takes far longer).

huggingface_hub's `snapshot_download` does the work (resumable, the hub's own cache, which vLLM and mlx-lm read
next); the files the engines load are the ones fetched. A local path, the bundled model or a hub model already
in the cache needs nothing. Fanning a model out over the lab instead of from the hub to every host is the model
store's job (cluster/), not this one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from worker import modelfiles

Report = Callable[[str], None]
Fetch = Callable[[Report], Awaitable[None]]  # runs the download, reporting progress as a line of text
WANTED = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]  # what the engines load


def is_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith(("/", "./", "../", "~"))


def hub_fetch(source: str) -> Fetch | None:
    """The download `source` needs on this host before an engine can load it; None if it needs none."""
    if not is_hub_id(source) or modelfiles.local_folder(source) is not None:
        return None

    async def fetch(report: Report) -> None:
        await download(source, report)

    return fetch


def progress(source: str, done: int, total: int) -> str:
    if not total:
        return f"downloading {source}: {done / 1e9:.2f} GB"
    return f"downloading {source}: {done / 1e9:.2f} of {total / 1e9:.2f} GB ({100 * done / total:.0f}%)"


def folder_bytes(folder: Path) -> int:
    """Bytes under `folder`, partial downloads included (the hub's cache writes `*.incomplete` files)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # renamed into place meanwhile
    return total


async def download(source: str, report: Report, interval_s: float = 1.0) -> None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    info = await asyncio.to_thread(HfApi().model_info, source, files_metadata=True)
    files = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in WANTED)]
    total = sum(s.size or 0 for s in files)
    blobs = Path(HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "blobs"
    task = asyncio.ensure_future(asyncio.to_thread(snapshot_download, source, revision=info.sha, allow_patterns=WANTED))
    while not task.done():
        report(progress(source, folder_bytes(blobs), total))
        await asyncio.wait({task}, timeout=interval_s)
    await task
    report(progress(source, total, total))
