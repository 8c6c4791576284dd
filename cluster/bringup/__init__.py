"""Bringing clusters up and down: fleet (agents + router as local child processes, wait until ready, stop),
local (the embedded default cluster of `cluster up`), lab (`cluster up hosts.toml` over SSH), remote (one
host over SSH), units (launchd/systemd units), records (what was started, under ~/.orchard).
"""
