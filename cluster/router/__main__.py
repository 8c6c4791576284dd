"""Run the router: python -m cluster.router --listen 127.0.0.1:8000 --worker 127.0.0.1:50051 [...]"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from cluster.router.app import RouterSettings, create_app
from cluster.router.registry import Registry
from cluster.scheduler import POLICIES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cluster.router")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT for the OpenAI endpoint")
    parser.add_argument("--worker", action="append", required=True, help="agent gRPC address (repeat)")
    parser.add_argument("--max-body-bytes", type=int, default=RouterSettings.max_body_bytes)
    parser.add_argument("--policy", choices=POLICIES, default=RouterSettings.policy, help="routing policy")
    parser.add_argument(
        "--model-policy",
        action="append",
        default=[],
        metavar="MODEL=POLICY",
        help="routing policy for one model (repeat)",
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen {args.listen!r}: expected HOST:PORT")
    logging.basicConfig(
        level=os.environ.get("ORCHARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine poll is noise
    overrides = []
    for item in args.model_policy:
        model, sep, policy = item.rpartition("=")
        if not sep or not model or policy not in POLICIES:
            parser.error(f"--model-policy {item!r}: expected MODEL=POLICY with POLICY one of {', '.join(POLICIES)}")
        overrides.append((model, policy))
    settings = RouterSettings(policy=args.policy, model_policies=tuple(overrides), max_body_bytes=args.max_body_bytes)
    app = create_app(Registry(args.worker), settings)
    uvicorn.run(app, host=host, port=int(port), log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
