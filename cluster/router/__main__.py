"""Run the router: python -m cluster.router --listen 127.0.0.1:8000 --worker 127.0.0.1:50051 [...]

Its command line is `proto.launch.RouterConfig`'s (the one owner); launchers build it with `RouterConfig.command()`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import uvicorn

from cluster.gateway.gateway import Gateway, refuse_open
from cluster.router.app import create_app
from cluster.router.registry import Registry
from proto.launch import LaunchConfigError, RouterConfig, usage

log = logging.getLogger("orchard.router")


def gateway_for(config: RouterConfig, registry: Registry) -> Gateway:
    """The gateway this router runs with; refuses (exit 2) to serve beyond loopback without keys."""
    db = Path(config.gateway_db).expanduser() if config.gateway_db else None
    if config.no_auth:
        log.warning("started with --no-auth: anyone who reaches %s may use every model", config.listen)
    if why := refuse_open(config.listen, config.loopback, config.no_auth, db):
        sys.stderr.write(f"python -m cluster.router: {why}\n")
        raise SystemExit(2)
    require = not config.loopback and not config.no_auth
    return Gateway(db, registry.capacity, require_auth=require, max_queue=config.max_queue, open_ok=config.no_auth)


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
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine poll is noise
    registry = Registry(list(config.workers))
    app = create_app(registry, config, gateway_for(config, registry))
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
