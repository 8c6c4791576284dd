"""The contract between head and hosts: orchard.proto (+ generated, `python -m proto.generate`), launch
(the agent's and the router's typed command lines), states (the engine-state vocabulary), errors (how an
engine error crosses gRPC), daemon (what `worker.daemon` answers over SSH). Imports nothing of ours.
"""
