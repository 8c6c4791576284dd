"""The wire contract between router and agents: orchard.proto, the Python generated from it and its generator
(`python -m proto.generate`; a test checks it is current). Hand-written code shared by head and hosts lives in
worker/shared/. Imports nothing of ours."""
