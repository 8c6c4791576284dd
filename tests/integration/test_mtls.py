"""Mutual TLS between router and agent, real processes on loopback: who an agent lets in, which agent the router
trusts, and certificates rotated under load with no request failing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from cluster.bringup import certs
from cluster.pki import authority, pins
from cluster.placement.hostsfile import HostSpec
from cluster.router.connections import HEADER_TIMEOUT_S as HANDSHAKE_TIMEOUT_S
from cluster.router.rows import Reachability, WorkerRow
from cluster.state import records
from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from tests.conftest import (
    REPO,
    SIM_MODEL,
    Cluster,
    agent_config,
    free_port,
    run_cli,
    start_cluster,
    stop_cluster,
    wait_until,
    workers,
)
from tests.lab.agent_probe import info, served_certificate
from worker.shared import tls
from worker.shared.launch import ENVELOPE_BYTES, AgentConfig
from worker.shared.states import EngineState


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    """The local cluster's layout: a CA in `home`, the agent and the router each with their own identity."""
    home = tmp_path_factory.mktemp("mtls-home")
    certs.local_identities(home)
    options = (("decode-ms-per-token", "20"), ("seed", "7"))
    agent = agent_config(
        "sim", SIM_MODEL, home / "logs", sim_options=options, tls_dir=str(authority.tls_folder(home, certs.LOCAL_AGENT))
    )
    cluster = start_cluster(home, [agent], tls_dir=str(authority.tls_folder(home, certs.ROUTER)))
    yield cluster, home
    stop_cluster(cluster)


def _info(address: str, channel: grpc.Channel) -> str:
    return info(channel)


def _stranger(folder: Path, names: tuple[str, ...] = ("orchard-router",)) -> Path:
    """An identity from another CA, laid out like ours."""
    other = authority.create(authority.now_utc(), "someone else's CA")
    authority.write_identity(folder, other, authority.issue(other, "intruder", names, authority.now_utc()))
    return folder


def test_the_agent_admits_only_clients_with_a_certificate_from_its_cluster_ca(
    secured: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, home = secured
    address = cluster.agent_address
    router = authority.tls_folder(home, certs.ROUTER)
    no_client_cert = grpc.ssl_channel_credentials(tls.read_identity(router).ca)
    outcomes = {
        "plaintext": _info(address, grpc.insecure_channel(address)),
        "TLS without a client certificate": _info(address, grpc.secure_channel(address, no_client_cert)),
        "another CA's certificate": _info(address, tls.blocking_channel(address, _stranger(tmp_path / "other"))),
        "the router's certificate": _info(address, tls.blocking_channel(address, router)),
    }
    assert outcomes == {
        "plaintext": "refused: UNAVAILABLE",
        "TLS without a client certificate": "refused: UNAVAILABLE",
        "another CA's certificate": "refused: UNAVAILABLE",
        "the router's certificate": f"accepted: {cluster.agents[0].worker_id}",
    }


def test_only_the_router_may_generate_or_drain_other_cluster_certificates_may_watch(
    secured: tuple[Cluster, Path], tmp_path: Path
) -> None:
    cluster, home = secured
    ca = authority.load(home)
    assert ca is not None
    peer = tmp_path / "peer"  # what a shard-group peer (or an agent set up by hand) holds
    authority.write_identity(peer, ca, authority.issue(ca, "orchard agent h9", ("10.9.9.9",), authority.now_utc()))
    address = cluster.agent_address
    assert _info(address, tls.blocking_channel(address, peer)).startswith("accepted")
    with tls.blocking_channel(address, peer) as channel:
        stub = pb_grpc.WorkerStub(channel)
        assert next(iter(stub.Watch(pb.WatchRequest(interval_seconds=0.1), timeout=5))).state
        request = pb.GenerateRequest(
            request_id="x",
            endpoint=pb.ENDPOINT_COMPLETIONS,
            body=json.dumps({"model": SIM_MODEL, "prompt": "hi"}).encode(),
        )
        for call in (
            lambda: list(stub.Generate(request, timeout=5)),
            lambda: stub.Drain(pb.DrainRequest(draining=True), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert not cluster_workers_draining(cluster)


def cluster_workers_draining(cluster: Cluster) -> bool:
    return any(row.draining for row in workers(cluster.url))


def test_the_router_refuses_an_agent_whose_certificate_names_another_address(
    secured: tuple[Cluster, Path], tmp_path: Path
) -> None:
    _, home = secured
    ca = authority.load(home)
    assert ca is not None
    elsewhere = tmp_path / "elsewhere"  # issued by our CA, but for another host
    authority.write_identity(elsewhere, ca, authority.issue(ca, "h9", ("10.9.9.9", "h9"), authority.now_utc()))
    server = grpc.server(ThreadPoolExecutor(2))
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(elsewhere))
    server.start()
    try:
        router = authority.tls_folder(home, certs.ROUTER)
        assert _info(f"127.0.0.1:{port}", tls.blocking_channel(f"127.0.0.1:{port}", router)) == "refused: UNAVAILABLE"
    finally:
        server.stop(None)


def test_requests_pass_through_mutual_tls(secured: tuple[Cluster, Path]) -> None:
    cluster, _ = secured
    body = {"model": SIM_MODEL, "prompt": "hello", "max_tokens": 3}
    response = httpx.post(cluster.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3


def _served_certificate(address: str, client: Path) -> bytes:
    return served_certificate(address, client / tls.CA_FILE, client / tls.IDENTITY_FILE)


def _keep_streaming(url: str, stop: threading.Event, outcomes: list[str]) -> None:
    body = {"model": SIM_MODEL, "prompt": "rotate under me", "max_tokens": 30, "stream": True}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            try:
                with client.stream("POST", url + "/v1/completions", json=body) as response:
                    lines = [line for line in response.iter_lines() if line.startswith("data:")]
                chunks = [json.loads(line[5:]) for line in lines[:-1]]
                ok = response.status_code == 200 and lines[-1:] == ["data: [DONE]"] and bool(chunks)
                ok = ok and "error" not in chunks[-1]
                outcomes.append("ok" if ok else f"{response.status_code}: {lines[-2:]}")
            except Exception as exc:  # anything at all is a failed request, recorded, never a silent thread death
                outcomes.append(f"{type(exc).__name__}: {exc!r}")


def test_certificates_rotate_under_16_streams_with_no_failed_request(secured: tuple[Cluster, Path]) -> None:
    cluster, home = secured
    router = authority.tls_folder(home, certs.ROUTER)
    served_before = _served_certificate(cluster.agent_address, router)
    stop, outcomes = threading.Event(), list[str]()
    streams = [threading.Thread(target=_keep_streaming, args=(cluster.url, stop, outcomes)) for _ in range(16)]
    for thread in streams:
        thread.start()
    time.sleep(2.0)
    renewed = certs.local_identities(home, renew=True)
    log = cluster.log_dir / "router.log"
    wait_until(lambda: "TLS identity renewed" in log.read_text(), 10, "the router to use its new certificate")
    time.sleep(3.0)  # streams keep going on the new connections
    stop.set()
    for thread in streams:
        thread.join(timeout=60)
    failed = [o for o in outcomes if o != "ok"]
    print(f"\nrotation under 16 streams: {len(outcomes)} requests, {len(failed)} failed")
    assert renewed == [certs.ROUTER, certs.LOCAL_AGENT]
    assert len(outcomes) >= 32 and failed == []
    served_after = _served_certificate(cluster.agent_address, router)  # signed by the same CA: trusted as before
    assert served_after != served_before
    assert served_after == _der(authority.tls_folder(home, certs.LOCAL_AGENT))


def _endpoint_certificate(port: int, ca: Path) -> bytes:
    return served_certificate(f"127.0.0.1:{port}", ca)


def _der(folder: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return authority.certificate_of((folder / tls.IDENTITY_FILE).read_bytes()).public_bytes(Encoding.DER)


def test_an_agent_without_its_certificates_says_which_file(tmp_path: Path) -> None:
    config = agent_config("sim", SIM_MODEL, tmp_path / "logs", tls_dir=str(tmp_path / "missing"))
    result = subprocess.run(config.command(), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode != 0 and f"{tmp_path / 'missing'}/ca.pem" in result.stderr
    assert "cluster certs init" in result.stderr and "Traceback" not in result.stderr


def test_the_endpoint_serves_https_with_a_certificate_from_the_cluster_ca(tmp_path: Path) -> None:
    port = free_port()
    try:
        up = run_cli(
            ["up", "--engine", "sim", "--model", SIM_MODEL, "--port", str(port), "--tls", "--detach"],
            tmp_path,
            timeout_s=120,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        ca = tmp_path / "ca" / "ca.pem"
        assert f"clients trust {ca}" in up.stdout and f"--cacert {ca} https://127.0.0.1:{port}" in up.stdout
        client = openai.OpenAI(
            base_url=f"https://localhost:{port}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(ca))),
        )
        answer = client.completions.create(model=SIM_MODEL, prompt="hello", max_tokens=3)
        assert answer.usage is not None and answer.usage.completion_tokens == 3
        with socket.create_connection(("127.0.0.1", port)) as silent:  # it never starts its TLS handshake
            silent.settimeout(HANDSHAKE_TIMEOUT_S + 10)
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert silent.recv(1) == b""  # dropped by the router
            assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S + 3
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted without the CA
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP is not spoken there
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        status = run_cli(["status"], tmp_path, timeout_s=60)  # the head's own commands trust the CA
        assert status.returncode == 0 and "endpoint 20" in status.stdout, status.stdout + status.stderr
        before = _endpoint_certificate(port, ca)
        rotated = run_cli(["certs", "rotate"], tmp_path, timeout_s=60)
        assert rotated.returncode == 0 and "new endpoint certificate" in rotated.stdout, rotated.stderr
        wait_until(lambda: _endpoint_certificate(port, ca) != before, 10, "the router to serve its new certificate")
        assert client.completions.create(model=SIM_MODEL, prompt="again", max_tokens=2).usage is not None
        started = time.monotonic()  # the client's idle TLS connection is still open: it must not hold the router
        assert run_cli(["down"], tmp_path, timeout_s=60).returncode == 0
        assert time.monotonic() - started < 15  # not the 30 s a polite TLS close waits for an idle client
    finally:
        run_cli(["down"], tmp_path, timeout_s=60)


def test_the_agent_refuses_a_body_larger_than_the_router_accepts(secured: tuple[Cluster, Path]) -> None:
    cluster, home = secured
    router = authority.tls_folder(home, certs.ROUTER)
    limit = cluster.agents[0].max_body_bytes
    assert limit == cluster.router.max_body_bytes  # one limit, at both ends

    def generate(size: int) -> str:  # the prompt's characters; the JSON around it adds a few dozen bytes
        body = json.dumps({"model": SIM_MODEL, "prompt": "x" * size, "max_tokens": 1}).encode()
        request = pb.GenerateRequest(request_id="big", endpoint=pb.ENDPOINT_COMPLETIONS, body=body)
        with tls.blocking_channel(cluster.agent_address, router) as channel:
            try:
                list(pb_grpc.WorkerStub(channel).Generate(request, timeout=30))
            except grpc.RpcError as exc:
                return exc.code().name
        return "answered"

    assert generate(limit + ENVELOPE_BYTES) == "RESOURCE_EXHAUSTED"  # refused by gRPC before it is read
    assert generate(limit) == "INVALID_ARGUMENT"  # past the router's limit: the agent's own 413
    assert generate(1000) == "answered"


def test_certs_issue_makes_a_folder_for_an_agent_run_by_hand(tmp_path: Path) -> None:
    result = run_cli(
        ["certs", "issue", "mac1", "--address", "10.0.0.2", "--out", str(tmp_path / "mac1")],
        tmp_path / "home",
        timeout_s=60,
    )
    assert result.returncode == 0, result.stderr
    identity = tls.read_identity(tmp_path / "mac1")
    assert authority.names_of(authority.certificate_of(identity.chain)) == ["10.0.0.2", "mac1"]
    assert identity.ca == (tmp_path / "home" / "ca" / "ca.pem").read_bytes()
    assert (tmp_path / "mac1" / "identity.pem").stat().st_mode & 0o077 == 0


def test_the_heads_own_commands_trust_an_operators_certificate_as_given(tmp_path: Path) -> None:
    """An operator's endpoint certificate names the lab's public name, not the loopback address `cluster status`
    dials, and may come from a CA the system does not know: the head trusts that very certificate."""
    import http.server

    theirs = authority.create(authority.now_utc(), "the university's CA")
    identity = authority.issue(theirs, "orchard.lab.example", ("orchard.lab.example",), authority.now_utc())
    (tmp_path / "endpoint.pem").write_bytes(identity)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "endpoint.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    home = tmp_path / "home"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, verify=authority.trust(home), timeout=5)  # not pinned yet: not trusted
    threading.Thread(target=server.handle_request, daemon=True).start()
    chain = identity[identity.index(b"-----BEGIN CERTIFICATE-----") :]  # the operator's tls_cert: no root CA in it
    records.write_private(authority.pinned_endpoint(home), chain)  # as `cluster up` pins it
    assert httpx.get(url, verify=authority.trust(home), timeout=5).status_code in (200, 404)
    server.server_close()


def _chain(identity: bytes) -> str:
    return tls.split_identity(identity)[1].decode()


def _names_served(address: str, router: Path) -> list[str]:
    from cryptography import x509

    return authority.names_of(x509.load_der_x509_certificate(_served_certificate(address, router)))


def test_the_router_renews_a_pinned_agent_under_load_an_older_key_is_refused_and_a_revoked_one_too(
    tmp_path: Path,
) -> None:
    """A lab agent's short-lived certificate, pinned: the router renews it with the CA when it falls due (no SSH,
    no person) while 8 streams run; the agent's older key then no longer passes, and a revoked pin none does."""
    home = tmp_path / "home"
    certs.local_identities(home)
    ca, router = authority.load(home), authority.tls_folder(home, certs.ROUTER)
    assert ca is not None
    agent = agent_config(
        "sim",
        SIM_MODEL,
        tmp_path / "logs",
        sim_options=(("decode-ms-per-token", "20"),),
        tls_dir=str(tmp_path / "agent-tls"),
    )
    host = HostSpec(address="127.0.0.1", agent_port=int(agent.listen.rpartition(":")[2]), name="h1")
    first = pins.new_name()
    # a 10-minute certificate (valid from 5 minutes before its issue) issued 140 s ago: due at half its life,
    # about 10 s from now, while the streams run; still valid when its key is tried again below
    issued = authority.now_utc() - dt.timedelta(seconds=140)
    old = authority.issue(ca, "orchard agent h1", ("127.0.0.1", "h1", first), issued, life=dt.timedelta(minutes=10))
    authority.write_identity(tmp_path / "agent-tls", ca, old)
    with pins.editing(router) as book:
        book.agents[host.agent_address] = pins.Pin(label="h1", name=first, certificate=_chain(old))
    cluster = start_cluster(home, [agent], tls_dir=str(router), ca_dir=str(authority.ca_folder(home)))
    try:
        stop, outcomes = threading.Event(), list[str]()
        streams = [threading.Thread(target=_keep_streaming, args=(cluster.url, stop, outcomes)) for _ in range(8)]
        for thread in streams:
            thread.start()
        wait_until(lambda: pins.read(router).agents[host.agent_address].name != first, 60, "the router to renew")
        during = len(outcomes)
        time.sleep(3.0)  # streams keep going on the channel dialled by the new pin
        stop.set()
        for thread in streams:
            thread.join(timeout=60)
        failed = [o for o in outcomes if o != "ok"]
        print(f"\nrenewal under 8 streams: {len(outcomes)} requests ({during} before it), {len(failed)} failed")
        assert failed == [] and len(outcomes) > during
        held = pins.read(router).agents[host.agent_address]
        assert _names_served(cluster.agent_address, router) == ["127.0.0.1", "h1", first, held.name]
        assert held.certificate.encode() == tls.read_identity(tmp_path / "agent-tls").chain
        log = (cluster.log_dir / "router.log").read_text()
        assert "certificate renewed, valid until" in log and "pinned to its newest certificate" in log

        renewed = (tmp_path / "agent-tls" / tls.IDENTITY_FILE).read_bytes()
        _restart_agent(cluster, agent, lambda: records.write_private(tmp_path / "agent-tls" / tls.IDENTITY_FILE, old))
        row = _unreachable(cluster, "not the certificate last issued to it", "the router to refuse the older key")
        print(f"an older key, still valid: {row.detail}")

        _restart_agent(
            cluster, agent, lambda: records.write_private(tmp_path / "agent-tls" / tls.IDENTITY_FILE, renewed)
        )
        wait_until(lambda: [r.state for r in workers(cluster.url)] == [EngineState.READY], 30, "the agent again")
        asyncio.run(certs.revoke(home, host))
        row = _unreachable(cluster, "certificate revoked", "the router to refuse a revoked certificate")
        print(f"revoked: {row.detail}")
        body = {"model": SIM_MODEL, "prompt": "hello", "max_tokens": 3}
        assert httpx.post(cluster.url + "/v1/completions", json=body, timeout=30).status_code == 503
    finally:
        stop_cluster(cluster)


def _restart_agent(cluster: Cluster, agent: AgentConfig, meanwhile: Callable[[], None]) -> None:
    child = next(c for c in cluster.fleet.children if c.name == "agent")
    cluster.fleet.stop(child)
    meanwhile()
    cluster.fleet.start_agent(agent)


def _unreachable(cluster: Cluster, because: str, what: str) -> WorkerRow:
    def refused() -> WorkerRow | None:
        rows = workers(cluster.url)
        return rows[0] if rows and rows[0].state is Reachability.UNREACHABLE and because in rows[0].detail else None

    row: WorkerRow = wait_until(refused, 30, what)
    return row
