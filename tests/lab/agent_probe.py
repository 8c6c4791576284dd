"""Run in another host's namespace: which clients an agent lets in, and whether its engine's port answers at all.

    python -m tests.lab.agent_probe AGENT_ADDRESS ROUTER_TLS_DIR STRANGER_TLS_DIR ENGINE_ADDRESS

Prints one JSON object: each attempt → "accepted: WORKER" or "refused: CODE" (the engine: "connected" or why not).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from pathlib import Path

import grpc

from proto import orchard_pb2 as pb
from proto import orchard_pb2_grpc as pb_grpc
from worker.shared import tls


def info(channel: grpc.Channel) -> str:
    """An agent's answer to Info on this channel: "accepted: WORKER" or "refused: CODE"."""
    with channel:
        try:
            reply = pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=5)
        except grpc.RpcError as exc:
            return f"refused: {exc.code().name}"
    return f"accepted: {reply.worker_id}"


def served_certificate(address: str, ca: Path, identity: Path | None = None) -> bytes:
    """The certificate (DER) a TLS server presents to a new connection; `identity`: a client certificate to show
    (an agent asks for one)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca))
    if identity is not None:
        context.load_cert_chain(identity)
        context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as wrapped:
            return wrapped.getpeercert(binary_form=True) or b""


def _connect(address: str) -> str:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return "connected"
    except OSError as exc:
        return type(exc).__name__


def main(argv: list[str]) -> None:
    agent, router, stranger, engine = argv
    print(
        json.dumps(
            {
                "plaintext": info(grpc.insecure_channel(agent)),
                "another CA": info(tls.blocking_channel(agent, Path(stranger))),
                "the router's certificate": info(tls.blocking_channel(agent, Path(router))),
                "engine port": _connect(engine),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
