"""One model revision's folder, on the head's store and on every host alike:

    <root>/<slug>/<revision>/             the files, as the engines load them (the engine gets this path)
    <root>/<slug>/<revision>/.orchard/    manifest.json, verified.json, partial/<path> (copies under way)

`verified.json` remembers each file's hash by its size and mtime, so a re-run hashes nothing that did not change,
and a file written since (a corruption, a half copy) is hashed again. Engines never look into dot folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from worker.shared.store.manifest import META, Manifest, ModelFile, folder_name


def slug(source: str) -> str:
    """A source as one folder name: `org/name` → `org--name` (ValueError for one that is no name)."""
    return folder_name(source.strip("/").replace("/", "--"))


class ModelFolder:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, root: Path, source: str, revision: str) -> ModelFolder:
        return cls(root / slug(source) / revision)

    @property
    def meta(self) -> Path:
        return self.path / META

    def partial(self, file: ModelFile) -> Path:
        return self.meta / "partial" / file.path

    def manifest(self) -> Manifest | None:
        try:
            return Manifest.model_validate_json((self.meta / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        self.meta.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.meta / "manifest.json", manifest.model_dump_json(indent=2))

    def _cache(self) -> dict[str, list[object]]:
        try:
            loaded = json.loads((self.meta / "verified.json").read_text())
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def verified(self, file: ModelFile, *, rehash: bool = True) -> bool:
        """This folder holds `file` as published: by the record of its last check when its size and mtime are
        unchanged, else by hashing it again (`rehash` false: only by the record)."""
        path = self.path / file.path
        try:
            stat = path.stat()
        except FileNotFoundError:
            return False
        if stat.st_size != file.size:
            return False
        digest = file.digest()
        if self._cache().get(file.path) == [stat.st_size, stat.st_mtime_ns, digest.expected]:
            return True
        if not rehash:
            return False
        digest.feed(path)
        if not digest.matches():
            return False
        self.record(file)
        return True

    def record(self, file: ModelFile) -> None:
        """Note that `file` was checked, as it is now."""
        stat = (self.path / file.path).stat()
        cache = self._cache()
        cache[file.path] = [stat.st_size, stat.st_mtime_ns, file.digest().expected]
        self.meta.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.meta / "verified.json", json.dumps(cache, indent=1, sort_keys=True))

    def complete(self, manifest: Manifest, wanted: list[str] | None = None) -> bool:
        """Every wanted file (all by default) verified by its record, nothing hashed."""
        paths = set(wanted) if wanted is not None else {f.path for f in manifest.files}
        return all(self.verified(f, rehash=False) for f in manifest.files if f.path in paths)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file() and not p.is_symlink())


def free_bytes(path: Path) -> int:
    """Free disk where `path` is, or would be (its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text + "\n")
    os.replace(staging, path)
