"""`cluster install`'s pure parts: finding a Python on a host, the pip steps, the head's record of hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.bringup import install
from cluster.bringup.remote import shell_path
from cluster.placement import hostsfile
from cluster.state import records

# What the probe prints on a Mac reached over SSH (Apple's /usr/bin/python3 is 3.9 from the Command Line
# Tools; Homebrew's is not on a non-interactive PATH but is found by its absolute path). The line format is
# the probe's own: executable|version|venv available.
MAC = """\
/opt/homebrew/bin/python3.12|3.12.8|1
/usr/bin/python3|3.9.6|1
"""


def test_a_mac_gets_homebrews_python_not_apples_39() -> None:
    chosen = install.choose_python(install.parse_probe(MAC))
    assert chosen.path == "/opt/homebrew/bin/python3.12" and chosen.version == (3, 12, 8)


def test_no_usable_python_names_everything_found_and_how_to_get_one() -> None:
    found = install.parse_probe("/usr/bin/python3|3.9.6|1\n/usr/bin/python3.11|3.11.2|0\n/x/broken|?|0\n")
    with pytest.raises(install.InstallError) as caught:
        install.choose_python(found)
    message = str(caught.value)
    assert "/usr/bin/python3 3.9.6" in message and "/usr/bin/python3.11 3.11.2 (no venv module)" in message
    assert "/x/broken ?" in message and "brew install python@3.12" in message and "python3-venv" in message


def test_the_probe_runs_in_a_posix_shell_and_finds_this_python(tmp_path: Path) -> None:
    out = subprocess.run(
        ["sh", "-c", install.probe_script(str(tmp_path))], capture_output=True, text=True, timeout=60
    ).stdout
    found = install.parse_probe(out)
    assert found, out
    chosen = install.choose_python(found)
    assert chosen.version[:2] >= (3, 11) and Path(chosen.path).exists()
    version = subprocess.run(
        [chosen.path, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, timeout=60
    ).stdout
    assert version.strip() == str(chosen.version[:2])  # the probe reported what the interpreter is


def test_the_probe_finds_every_3x_even_a_release_newer_than_orchard_knows(tmp_path: Path) -> None:
    """Homebrew moves to each new Python: a host whose only Python is a 3.14 (or a 3.19) is still found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for minor in (14, 19):  # stand-ins answer the probe as that interpreter would
        fake = bin_dir / f"python3.{minor}"
        fake.write_text(f'#!/bin/sh\necho "{fake}|3.{minor}.0|1"\n')
        fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["/bin/sh", "-c", install.probe_script(str(tmp_path / "orchard"))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    ).stdout
    versions = {f.version[:2] for f in install.parse_probe(out)}
    assert {(3, 14), (3, 19)} <= versions


def test_the_python_install_brings_is_probed_first(tmp_path: Path) -> None:
    brought = tmp_path / "orchard" / "python" / "bin" / "python3"
    brought.parent.mkdir(parents=True)
    brought.write_text(f'#!/bin/sh\necho "{brought}|3.12.9|1"\n')
    brought.chmod(0o755)
    env = {"PATH": "/nowhere", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["/bin/sh", "-c", install.probe_script(str(tmp_path / "orchard"))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    ).stdout
    assert install.choose_python(install.parse_probe(out)).path == str(brought)


def test_the_newest_known_python_is_preferred_and_a_newer_one_taken_when_alone() -> None:
    found = install.parse_probe("/a/python3.11|3.11.9|1\n/b/python3.13|3.13.1|1\n/c/python3.14|3.14.0|1\n")
    assert install.choose_python(found).path == "/b/python3.13"
    assert install.choose_python(install.parse_probe("/c/python3.14|3.14.0|1\n")).path == "/c/python3.14"


def test_uv_is_taken_from_the_wheelhouse_for_the_hosts_os_and_cpu() -> None:
    linux = "uv-0.9.5-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    musl = Path("/w/uv-0.9.5-py3-none-musllinux_1_1_x86_64.whl")  # first: a glibc host must not take it
    house = (Path("/w/uv-0.9.5-py3-none-macosx_11_0_arm64.whl"), musl, Path("/w") / linux, Path("/w/other.whl"))
    options = install.InstallOptions(wheelhouse=house)
    assert options.uv_wheel("darwin", "arm64") == house[0]
    assert options.uv_wheel("linux", "x86_64") == house[2]
    assert options.uv_wheel("linux", "aarch64") is None and install.InstallOptions().uv_wheel("darwin", "arm64") is None


def test_each_host_takes_the_wheelhouses_python_archive_for_its_os_and_cpu() -> None:
    mac = Path("/w/cpython-3.12.8+20250106-aarch64-apple-darwin-install_only.tar.gz")
    linux = Path("/w/cpython-3.12.8+20250106-x86_64-unknown-linux-gnu-install_only.tar.gz")
    options = install.InstallOptions(archives=(linux, mac))
    assert options.archive_for("darwin", "arm64") == mac and options.archive_for("linux", "x86_64") == linux
    assert options.archive_for("linux", "aarch64") is None
    given = install.InstallOptions(python_archive=Path("/a.tar.gz"), archives=(linux, mac))
    assert given.archive_for("darwin", "arm64") == Path("/a.tar.gz")  # the one given serves every host


def test_a_python_archive_unpacks_under_orchard_dir_and_is_removed(tmp_path: Path) -> None:
    import tarfile

    source = tmp_path / "src" / "python" / "bin"
    source.mkdir(parents=True)
    (source / "python3").write_text("#!/bin/sh\n")
    folder = tmp_path / "Orchard Lab"  # orchard_dir may hold a space: the archive, not a neighbour, is removed
    (tmp_path / "Orchard").write_text("a neighbour")
    archive = folder / "python-archive.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "python", arcname="python")
    script = install.bring_from_archive(str(folder), str(archive))
    subprocess.run(script, shell=True, check=True, timeout=60)
    assert (folder / "python" / "bin" / "python3").is_file() and not archive.exists()
    assert (tmp_path / "Orchard").read_text() == "a neighbour"


def test_pip_installs_dependencies_then_forces_this_exact_build() -> None:
    online = install.pip_commands("/v/bin/python", "/w/orchard-0.1.0-py3-none-any.whl", "mlx", None)
    assert online[0].endswith("'/w/orchard-0.1.0-py3-none-any.whl[mlx]'") and "--no-index" not in online[0]
    assert "--no-deps --force-reinstall /w/orchard-0.1.0-py3-none-any.whl" in online[1]
    offline = install.pip_commands("/v/bin/python", "/w/o.whl", "", "/w")
    assert all("--no-index --find-links /w" in c for c in offline) and offline[0].endswith("/w/o.whl")


def test_vllm_metal_is_installed_by_its_own_installer_then_given_ray(tmp_path: Path) -> None:
    first, second = install.vllm_metal_commands()
    assert first.startswith("/bin/sh -c ") and install.VLLM_METAL_INSTALLER in first
    assert second.startswith('"$HOME/.venv-vllm-metal/bin/python" -m pip install') and "ray" in second
    # A failed download stops the step (a `curl | bash` pipe would run nothing and succeed): a fake curl fails.
    (tmp_path / "curl").write_text("#!/bin/sh\necho 'curl: (6) Could not resolve host' >&2\nexit 6\n")
    (tmp_path / "curl").chmod(0o755)
    (tmp_path / "bash").write_text('#!/bin/sh\necho ran > "$HOME/ran"\n')
    (tmp_path / "bash").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["sh", "-c", first], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 6 and "Could not resolve host" in done.stderr and not (tmp_path / "ran").exists()


def test_the_recorded_interpreter_fills_in_only_hosts_that_name_none(tmp_path: Path) -> None:
    spec = hostsfile.ClusterSpec.model_validate(
        {
            "hosts": [{"address": "10.0.0.1", "name": "a"}, {"address": "10.0.0.2", "name": "b", "python": "/p"}],
            "models": [{"name": "m", "source": "m"}],
        }
    )
    record = install.InstalledHost(python="/home/lab/.orchard/venv/bin/python", version="0.1.0", build="x", at=0)
    records.write(install.installed_path(tmp_path), install.Installed(hosts={"a": record, "b": record}))
    merged = install.with_installed(spec, tmp_path)
    assert [h.python for h in merged.hosts] == ["/home/lab/.orchard/venv/bin/python", "/p"]
    assert [h.python for h in install.with_installed(spec, tmp_path / "none").hosts] == [None, "/p"]


def test_a_tilde_path_is_left_for_the_remote_shell_to_expand() -> None:
    assert shell_path("~/venv/bin/python") == '"$HOME"/venv/bin/python'
    assert shell_path("/opt/my python/bin/python") == "'/opt/my python/bin/python'"
    home = subprocess.run(["sh", "-c", f"printf %s {shell_path('~/a b')}"], capture_output=True, text=True).stdout
    assert home == str(Path.home() / "a b")


def test_facts_look_for_vllm_at_the_hosts_engine_python(tmp_path: Path) -> None:
    from worker import daemon

    python = tmp_path / "venv-vllm-metal" / "bin" / "python"
    assert daemon.facts(str(python)).engines["vllm"] is False
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert daemon.facts(str(python)).engines["vllm"] is True


def test_the_build_root_is_the_checkout_holding_the_three_packages() -> None:
    """`cluster install` builds the head's wheel from here (worker/shared/build.py moved one level down once:
    the root must not follow a module's own folder)."""
    from worker.shared import build

    assert (build.ROOT / "pyproject.toml").is_file()
    assert all((build.ROOT / package / "__init__.py").is_file() for package in build.PACKAGES)
