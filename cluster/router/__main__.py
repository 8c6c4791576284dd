"""Run the router: python -m cluster.router --listen 127.0.0.1:8000 --worker 127.0.0.1:50051 [...]

Its command line is `worker.shared.launch.RouterConfig`'s (the one owner); launchers build it with
`RouterConfig.command()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import create_ssl_context

from cluster.gateway.gateway import Gateway, refuse_open
from cluster.pki import pins
from cluster.placement import offers
from cluster.placement.offers import DemandCatalog
from cluster.router import handover
from cluster.router.app import create_app
from cluster.router.connections import guarded_protocol, tls_terminated
from cluster.router.demand import DemandManager
from cluster.router.logformat import JsonLines
from cluster.router.registry import Registry
from proto import orchard_pb2 as pb
from worker.shared import openfiles, tls
from worker.shared.launch import LaunchConfigError, RouterConfig, usage

log = logging.getLogger("orchard.router")


def gateway_for(config: RouterConfig, registry: Registry, demand: DemandManager | None = None) -> Gateway:
    """The gateway this router runs with; refuses (exit 2) to serve beyond loopback without keys."""
    db = Path(config.gateway_db).expanduser() if config.gateway_db else None
    if config.no_auth:
        log.warning("started with --no-auth: anyone who reaches %s may use every model", config.listen)
    if why := refuse_open(config.listen, config.loopback, config.no_auth, db):
        sys.stderr.write(f"python -m cluster.router: {why}\n")
        raise SystemExit(2)
    require = not config.loopback and not config.no_auth
    warm = demand.warm if demand else None
    return Gateway(
        db, registry.capacity, require_auth=require, max_queue=config.max_queue, open_ok=config.no_auth, warm=warm
    )


def main(argv: list[str] | None = None) -> None:
    try:
        config = RouterConfig.from_argv(sys.argv[1:] if argv is None else argv)
    except LaunchConfigError as exc:
        sys.stderr.write(f"{usage(RouterConfig)}python -m cluster.router: error: {exc}\n")
        raise SystemExit(2) from None
    logging.basicConfig(
        level=os.environ.get("ORCHARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine poll is noise
    if why := config.plaintext_refusal():
        sys.stderr.write(f"python -m cluster.router: {why}\n")
        raise SystemExit(2)
    try:
        catalog = offers.read(Path(config.demand).expanduser()) if config.demand else DemandCatalog()
    except ValueError as exc:
        sys.stderr.write(f"python -m cluster.router: {exc}\n")
        raise SystemExit(2) from None
    try:
        registry = Registry(
            list(config.workers),
            tls_dir=config.tls_path,
            close_grace_s=config.request_timeout_s,
            expected=config.models,
            offered=tuple(pb.ModelInfo(name=m.name, source=m.source, engine=m.engine) for m in catalog.models),
        )
        if config.tls_path is not None:
            tls.read_identity(config.tls_path)  # a missing or broken folder: say so now, not per worker
            pins.read(config.tls_path)  # a damaged pin record: never dial the lab unpinned
    except (tls.TlsError, pins.PinsError) as exc:
        sys.stderr.write(f"python -m cluster.router: {exc}\n")
        raise SystemExit(2) from None
    try:
        sock, taken = handover.listener(config.host, config.port, config.handover)
    except OSError as exc:
        sys.stderr.write(f"python -m cluster.router: cannot listen on {config.listen}: {exc.strerror}\n")
        raise SystemExit(1) from None
    demand = DemandManager(catalog, registry) if catalog.models else None
    gateway = gateway_for(config, registry, demand)
    if demand is not None:
        demand.waiting = gateway.admission.waiting
    app = create_app(registry, config, gateway, settle_s=SETTLE_S if taken else 0.0, demand=demand)
    connections = connection_cap(config)
    http: Any = guarded_protocol(connections)
    endpoint = endpoint_tls(config)
    if endpoint is not None:  # HTTPS: TLS terminated by our protocol, so handshakes count toward the cap
        http = tls_terminated(http, endpoint, connections)
    grace = max(1, round(config.shutdown_grace_s))
    server = _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=grace,
            http=http,
            # uvicorn's few lines go through our handlers: one format (and JSON with --log-format json)
            log_config=None,
        )
    )
    server.offer_at = Path(config.handover).expanduser() if config.handover else None
    server.endpoint = endpoint
    server.endpoint_files = (config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    server.took_over = taken
    server.run(sockets=[sock])


RESERVED_FDS = 64  # beside client connections: logs, the gateway's database, the hand-over socket, TLS files
FDS_PER_WORKER = 4  # its gRPC channel (and one being replaced after a rotation)
CERTIFICATE_CHECK_S = 2.0
SSL_CIPHERS = "TLSv1"  # uvicorn's default: OpenSSL's TLS 1.x suites
SETTLE_S = 10.0  # a router taking over waits at most this long to know the agents before it accepts


def endpoint_tls(config: RouterConfig) -> ssl.SSLContext | None:
    """The endpoint's TLS context (HTTPS), as uvicorn would make it; exits 2 naming the file it cannot load."""
    if not (config.tls_cert and config.tls_key):
        return None
    try:
        return create_ssl_context(
            config.tls_cert, config.tls_key, None, ssl.PROTOCOL_TLS_SERVER, ssl.CERT_NONE, None, SSL_CIPHERS
        )
    except (OSError, ssl.SSLError) as exc:
        sys.stderr.write(
            f"python -m cluster.router: the endpoint's certificate {config.tls_cert} or key "
            f"{config.tls_key} cannot be loaded: {exc}\n"
        )
        raise SystemExit(2) from None


def connection_cap(config: RouterConfig) -> int:
    """Raise the open-file limit as far as allowed; the client connections that then fit (at most the config's)."""
    limits = openfiles.raise_limit()
    cap = openfiles.cap(config.max_connections, limits, RESERVED_FDS + FDS_PER_WORKER * len(config.workers))
    log.info("%s: at most %d client connections", limits.describe(), cap)
    if cap < config.max_connections:
        log.warning(
            "--max-connections %d does not fit the open-file limit: %d apply (raise the hard limit: "
            "`ulimit -Hn`, launchd's HardResourceLimits, systemd's LimitNOFILE)",
            config.max_connections,
            cap,
        )
    return cap


class _Server(uvicorn.Server):
    offer_at: Path | None = None
    took_over = False
    endpoint: ssl.SSLContext | None = None  # HTTPS
    endpoint_files: tuple[str, str] | None = None  # its certificate and key, reloaded when replaced
    _reloader: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve, then offer the socket to the next router: at once for a router that started afresh; one that
        took over is published by the hand-over once it is confirmed (cluster.bringup.rollout)."""
        await super().startup(sockets)
        if self.started and not self.should_exit and self.offer_at is not None and sockets:
            handover.offer(self.offer_at, sockets[0], publish=not self.took_over)
        if self.endpoint_files is not None and self.endpoint is not None:
            self._reloader = asyncio.create_task(_reload_certificate(self.endpoint, *self.endpoint_files))


async def _reload_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    """A replaced certificate (`cluster certs rotate`, an operator's renewal) is served to new connections."""

    def stamp() -> tuple[float, ...]:
        try:
            return tuple(os.stat(p).st_mtime for p in (cert, key))
        except OSError:
            return ()

    seen = stamp()
    while True:
        await asyncio.sleep(CERTIFICATE_CHECK_S)
        now = stamp()
        if not now or now == seen:
            continue
        seen = now  # files are replaced whole (renamed into place): one attempt per change
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("endpoint certificate changed but cannot be loaded (%s); serving the previous one", exc)
            continue
        log.info("endpoint certificate reloaded: new connections get the new one")


if __name__ == "__main__":
    main()
