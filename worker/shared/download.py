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
import importlib.util
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from worker.shared import modelfiles

FETCHING_DETAIL = "fetching the model's files"  # the engine's detail as a fetch begins; then `progress` lines
Report = Callable[[str], None]
Fetch = Callable[[Report], Awaitable[None]]  # runs the download, reporting progress as a line of text
HUB_TIMEOUT_S = 30.0  # for the hub's answer about a model (not for the download)
WANTED = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]  # what the engines load


def hub_fetch(source: str) -> Fetch | None:
    """The fetch a hub model gets before its engine starts (it completes a partial copy, and is quick when the
    copy is whole); None for a path or the bundled model, or where huggingface_hub is not installed (the engine
    then downloads on its own, within its ready deadline)."""
    if not modelfiles.is_hub_id(source) or importlib.util.find_spec("huggingface_hub") is None:
        return None

    async def fetch(report: Report) -> None:
        await download(source, report)

    return fetch


def fetching(detail: str) -> bool:
    """An engine's detail says its model's files are on their way (not that their download failed)."""
    return detail.startswith(("downloading ", FETCHING_DETAIL))


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
    """The files of `source` the engines load, into the hub's cache; offline, a cached copy is taken as it is."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = await asyncio.to_thread(HfApi().model_info, source, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except Exception:  # offline (HF_HUB_OFFLINE, no route) or the hub refused: a cached copy serves as it is
        if modelfiles.local_folder(source) is not None:
            report(f"hub not reachable: {source} as cached")
            return
        raise
    files = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in WANTED)]
    total = sum(s.size or 0 for s in files)
    blobs = modelfiles.hub_cache() / f"models--{source.replace('/', '--')}" / "blobs"
    task = asyncio.ensure_future(asyncio.to_thread(snapshot_download, source, revision=info.sha, allow_patterns=WANTED))
    while not task.done():
        report(progress(source, folder_bytes(blobs), total))
        await asyncio.wait({task}, timeout=interval_s)
    await task
    report(progress(source, total, total))
