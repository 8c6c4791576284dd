"""One host: the agent (`orchard-worker`) that supervises one engine and serves the Worker gRPC service.

agent (wiring) · daemon (detached start/stop/status over SSH) · service (gRPC) · relay (engine streams) ·
supervisor (engine lifecycle) · group (shard-group membership) · hostinfo · metrics (engine load) · procs
(child processes) · models (model sources, the bundled model) · engines/ (adapters and the programs they
launch). It imports only proto/ and itself, so a Mac runs it without the head's code.
"""
