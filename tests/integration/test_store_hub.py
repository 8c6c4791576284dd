"""`cluster models pull org/name` through huggingface_hub's real code, against a small hub served here over
loopback (HF_ENDPOINT): the revision resolves to one commit, the files land in the store checked against the
hub's own hashes (an LFS file's sha256, a plain file's git blob sha1), and a file that does not match what the
hub publishes is downloaded again, then refused, naming it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import run_cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-model"


@dataclass
class Hub:
    files: dict[str, bytes]
    lfs: set[str]
    corrupt: set[str] = field(default_factory=set)  # served with other bytes than the hashes say
    url: str = ""
    downloads: int = 0

    def blob_id(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()

    def entry(self, path: str) -> dict[str, object]:
        data = self.files[path]
        lfs = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
        return {"size": len(data), "blobId": self.blob_id(path), **({"lfs": lfs} if path in self.lfs else {})}

    async def info(self, request: Request) -> Response:
        siblings = [{"rfilename": path, **self.entry(path)} for path in self.files]
        return JSONResponse({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False, "siblings": siblings})

    async def tree(self, request: Request) -> Response:
        listed = []
        for path in self.files:
            entry = self.entry(path)
            lfs = entry.get("lfs")
            listed.append(
                {
                    "type": "file",
                    "path": path,
                    "size": entry["size"],
                    "oid": entry["blobId"],
                    **(
                        {"lfs": {"oid": lfs["sha256"], "size": lfs["size"], "pointerSize": 130}}
                        if isinstance(lfs, dict)
                        else {}
                    ),
                }
            )
        return JSONResponse(listed)

    async def resolve(self, request: Request) -> Response:
        path = request.path_params["path"]
        if path not in self.files:
            return JSONResponse(
                {"error": "Entry not found"}, status_code=404, headers={"X-Error-Code": "EntryNotFound"}
            )
        data = self.files[path]
        etag = hashlib.sha256(data).hexdigest() if path in self.lfs else self.blob_id(path)
        body = (b"\x00" + data[1:]) if path in self.corrupt else data
        self.downloads += request.method == "GET"
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(len(body))}
        return Response(b"" if request.method == "HEAD" else body, headers=headers)


@pytest.fixture
def hub() -> Iterator[Hub]:
    config = json.dumps({"model_type": "llama", "num_hidden_layers": 2}).encode()
    served = Hub(
        {"config.json": config, "model.safetensors": os.urandom(300_000), "README.md": b"# not wanted"},
        lfs={"model.safetensors"},
    )
    app = Starlette(
        routes=[
            Route(f"/api/models/{REPO}/revision/{{rev:path}}", served.info),
            Route(f"/api/models/{REPO}/tree/{{rev:path}}", served.tree),
            Route(f"/{REPO}/resolve/{{rev}}/{{path:path}}", served.resolve, methods=["GET", "HEAD"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield served
    server.should_exit = True
    thread.join(timeout=5)


def pull(hub: Hub, home: Path, tmp_path: Path) -> tuple[int, str]:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = run_cli(["models", "pull", REPO, "--revision", "main"], home, timeout_s=120)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return result.returncode, result.stdout + result.stderr


def test_a_hub_model_is_pulled_at_one_commit_and_checked_by_the_hubs_hashes(hub: Hub, tmp_path: Path) -> None:
    code, said = pull(hub, tmp_path / "home", tmp_path)
    assert code == 0, said
    folder = tmp_path / "home" / "models" / "tiny-org--tiny-model" / COMMIT
    assert f"{REPO} @ {COMMIT}: 2 files" in said and "verified" in said
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model.safetensors",
    ]
    manifest = json.loads((folder / ".orchard" / "manifest.json").read_text())
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["model.safetensors"]["sha256"] == hashlib.sha256(hub.files["model.safetensors"]).hexdigest()
    assert by_path["config.json"]["git_sha1"] == hub.blob_id("config.json")
    listed = json.loads(run_cli(["models", "list", "--json"], tmp_path / "home").stdout)["models"]
    assert [(m["source"], m["revision"], m["verified"]) for m in listed] == [(REPO, COMMIT, True)]
    downloads = hub.downloads
    code, said = pull(hub, tmp_path / "home", tmp_path)  # "main" again: the store knows that commit by that name
    assert code == 0 and f"{REPO} @ {COMMIT}" in said and hub.downloads == downloads


def test_a_hub_file_that_does_not_match_its_published_hash_is_refused(hub: Hub, tmp_path: Path) -> None:
    hub.corrupt.add("model.safetensors")
    code, said = pull(hub, tmp_path / "home", tmp_path)
    assert code == 1
    assert "model.safetensors: content differs from the published hash (downloaded twice)" in said, said
