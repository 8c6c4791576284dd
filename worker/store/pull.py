"""One file copied into a host's model folder from its sources, resumable and verified: the bytes land in
`.orchard/partial/<path>`, hashed as they arrive (a resumed copy hashes what it kept first); the file is renamed
into place only when its size and hash are the published ones. A broken connection resumes from the next source;
a copy whose hash differs is thrown away and copied again from the next source, then refused, naming the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from worker.shared.store.folder import ModelFolder
from worker.shared.store.manifest import Digest, ModelFile

ATTEMPTS = 4  # per file, over its sources (the last is tried again)
CONNECT_S, READ_S = 10.0, 60.0  # a peer waits up to serve.STALL_S for its own copy to grow


class CopyFailed(Exception):
    """The file could not be brought here; the message names it and says why."""


@dataclass
class Pulled:
    recopied: bool  # a first copy failed its hash


async def pull(
    client: httpx.AsyncClient,
    folder: ModelFolder,
    file: ModelFile,
    sources: tuple[str, ...],
    token: str,
    grew: Callable[[int], None],
) -> Pulled:
    """Bring `file` here from `sources` (base URLs, best first); `grew(n)` after each n bytes written."""
    if not sources:
        raise CopyFailed(f"{file.path}: no source to copy it from")
    partial = folder.partial(file)
    partial.parent.mkdir(parents=True, exist_ok=True)
    mismatches, last_error = 0, ""
    for attempt in range(ATTEMPTS):
        source = sources[min(attempt, len(sources) - 1)]
        try:
            digest = await _fetch(client, partial, file, f"{source}/m/{quote(file.path)}", token, grew)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            last_error = f"from {source}: {type(exc).__name__}: {exc}".rstrip(": ")
            continue
        if partial.stat().st_size < file.size:
            last_error = f"{source} ended the copy early"
            continue
        if digest.matches():
            target = folder.path / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
            folder.record(file)
            return Pulled(recopied=mismatches > 0)
        mismatches += 1
        partial.unlink()
        last_error = "content differs from the published hash"
        if mismatches == 2:
            break
    raise CopyFailed(f"{file.path}: {last_error}" + (" (copied twice)" if mismatches == 2 else ""))


async def _fetch(
    client: httpx.AsyncClient,
    partial: Path,
    file: ModelFile,
    url: str,
    token: str,
    grew: Callable[[int], None],
) -> Digest:
    """Append to `partial` from where it ends to the file's size, hashing as it writes; the whole file's hash."""
    digest = file.digest()
    with open(partial, "ab") as out:  # noqa: ASYNC230 - this process does only this copy; peers are served by a thread
        start = out.tell()
        if start > file.size:  # longer than the file: not a copy of it
            out.truncate(0)
            start = 0
        digest.feed(partial, start)  # what an interrupted copy kept
        if start == file.size:
            return digest
        headers = {"Authorization": f"Bearer {token}", "Range": f"bytes={start}-"}
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code not in (200, 206):
                raise httpx.HTTPStatusError(
                    f"{response.status_code} from {url}", request=response.request, response=response
                )
            if response.status_code == 200 and start:  # the source ignored the range
                out.truncate(0)
                digest = file.digest()
            async for chunk in response.aiter_raw():
                out.write(chunk)
                digest.update(chunk)
                grew(len(chunk))
    return digest
