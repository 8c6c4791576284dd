"""The router: one OpenAI-compatible endpoint in front of the worker agents.

app (routes and the request pipeline) · intake (read, validate, describe for routing) · forwarding (pick,
Generate, retry, relay) · registry (live worker state fed by Watch) · rows (what /orchard/workers answers) ·
validation, errors (OpenAI's shapes) · metrics (Prometheus).
"""
