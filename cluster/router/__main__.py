"""Run the router: python -m cluster.router --listen 127.0.0.1:8000 --worker 127.0.0.1:50051 [...]

Its command line is `proto.launch.RouterConfig`'s (the one owner); launchers build it with `RouterConfig.command()`.
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from cluster.router.app import create_app
from cluster.router.registry import Registry
from proto.launch import LaunchConfigError, RouterConfig, usage


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
    app = create_app(Registry(list(config.workers)), config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
