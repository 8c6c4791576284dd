"""One rank of a vLLM pipeline-parallel group over Ray, as the agent's engine process.

    python -m worker.engines.programs.vllm_group head --node-ip IP --ray-port P --size N [--python PY] \
        -- VLLM_SERVER_ARGS
    python -m worker.engines.programs.vllm_group member --node-ip IP --ray-port P --head IP0:P0 [--python PY]

`--python` is the engine's interpreter (on a Mac, vllm-metal's own venv, which holds vLLM and Ray); this
launcher runs from Orchard's.

vLLM's own runtime does the work, as vllm-metal documents it: every host joins one Ray cluster (`ray start`
with the resources the platform asks for), and rank 0 runs the OpenAI server with `--pipeline-parallel-size N
--distributed-executor-backend ray`. Orchard owns the Ray cluster's life: the head runs as a child of rank 0's
process and each member's `ray start --block` is the member's process, all in their agents' process groups, so
stopping or relaunching the group stops Ray with it (the head's session files go to a folder of its own).
Every port a node's Ray opens is pinned from its `--ray-port` (worker/shared/rayports.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from worker.shared.rayports import RayPorts, ray_ports

JOIN_TIMEOUT_S = 300.0


def ray_start(
    python: str, node_ip: str, resources: str, ports: RayPorts, *, join: str | None, temp_dir: str = ""
) -> list[str]:
    """`ray start` for the head (join None: its session files in temp_dir) or for a member joining `join`."""
    argv = [
        python,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--node-ip-address",
        node_ip,
        "--disable-usage-stats",
        "--resources",
        resources,
        *ports.start_args(head=join is None),
    ]
    if join is None:
        argv += ["--head", "--include-dashboard=false", "--temp-dir", temp_dir]
    else:
        argv += ["--address", join]
    return argv


_NODES = (
    "import json, sys, ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
    "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))\n"
)


def _wait_for_nodes(python: str, address: str, size: int, deadline: float, head: subprocess.Popen[bytes]) -> list[str]:
    """Poll the Ray cluster (with the engine's interpreter, which has Ray) until `size` nodes are alive."""
    while True:
        if head.poll() is not None:
            raise SystemExit(f"the Ray head exited with code {head.returncode} before the group formed")
        with contextlib.suppress(subprocess.TimeoutExpired):
            probe = subprocess.run([python, "-c", _NODES, address], capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                alive: list[str] = json.loads(probe.stdout.strip().splitlines()[-1])
                if len(alive) >= size:
                    return alive
        if time.monotonic() > deadline:
            raise SystemExit(f"ray cluster at {address}: fewer than {size} nodes joined within {JOIN_TIMEOUT_S:.0f}s")
        time.sleep(1.0)


def head(args: argparse.Namespace, vllm_args: list[str]) -> int:
    temp_dir = args.temp_dir or short_temp_dir()
    ports = ray_ports(args.ray_port)
    ray = subprocess.Popen(
        ray_start(args.python, args.node_ip, args.resources, ports, join=None, temp_dir=temp_dir),
        env={**os.environ, **ports.head_env()},
    )
    vllm: subprocess.Popen[bytes] | None = None

    def stop(*_: object) -> None:
        for proc in (vllm, ray):
            if proc is not None and proc.poll() is None:
                proc.terminate()

    def on_term(*_: object) -> None:
        stop()
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        address = f"{args.node_ip}:{args.ray_port}"
        nodes = _wait_for_nodes(args.python, address, args.size, time.monotonic() + JOIN_TIMEOUT_S, ray)
        print(f"ray cluster up: {len(nodes)} of {args.size} nodes ({', '.join(nodes)})", file=sys.stderr, flush=True)
        env = {**os.environ, "RAY_ADDRESS": address, "VLLM_HOST_IP": args.node_ip}
        vllm = subprocess.Popen([args.python, "-m", "vllm.entrypoints.openai.api_server", *vllm_args], env=env)
        return vllm.wait()
    finally:
        stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            ray.wait(timeout=20)
        shutil.rmtree(temp_dir, ignore_errors=True)


def short_temp_dir() -> str:
    """Ray's session folder: short, because its AF_UNIX socket paths must stay under 108 bytes (so in /tmp, not
    $TMPDIR on a Mac); made afresh, 0700, with a name no other user can predict and plant first."""
    return tempfile.mkdtemp(prefix="orchard-ray-", dir="/tmp")


def member(args: argparse.Namespace) -> int:
    # Ray takes a session folder only on the head; members use the session the head names.
    argv = ray_start(args.python, args.node_ip, args.resources, ray_ports(args.ray_port), join=args.head)
    os.execv(argv[0], argv)
    return 1  # not reached


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    vllm_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, vllm_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="python -m worker.engines.programs.vllm_group", description=__doc__)
    parser.add_argument("role", choices=("head", "member"))
    parser.add_argument("--node-ip", required=True, help="this host's address in the group")
    parser.add_argument("--ray-port", type=int, default=52100, help="this node's first Ray port (the head's GCS)")
    parser.add_argument("--head", help="member: the head's IP:PORT")
    parser.add_argument("--size", type=int, default=2, help="head: nodes to wait for")
    parser.add_argument("--resources", default="{}", help='Ray custom resources (vllm-metal: {"mlx": 1})')
    parser.add_argument("--temp-dir", help="head: Ray's session files (default: a new /tmp/orchard-ray-XXXXXXXX)")
    parser.add_argument("--python", default=sys.executable, help="the engine's interpreter (has vLLM and Ray)")
    args = parser.parse_args(argv)
    if args.role == "member" and not args.head:
        parser.error("member needs --head IP:PORT")
    sys.exit(head(args, vllm_args) if args.role == "head" else member(args))


if __name__ == "__main__":
    main()
