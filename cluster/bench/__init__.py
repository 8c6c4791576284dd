"""Benchmarks that print figures (not tests): `python -m cluster.bench overhead|decide|routing|latency|calibrate`.

client (timed SSE reader, percentiles, engine URL) · overhead · decide · routing (+ workloads, chart) ·
latency · calibrate. They launch clusters through cluster/bringup like `cluster up` does.
"""
