"""The `sim` engine (see worker/sim/server.py)."""
