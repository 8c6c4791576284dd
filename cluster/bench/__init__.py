"""Benchmarks that print figures (not tests): `python -m cluster.bench overhead|decide|routing|latency|calibrate|
fairness|gateway|chaos`.

client (timed SSE reader, percentiles, engine URL) · overhead · decide · routing (+ workloads, chart) ·
latency · calibrate · fairness · gateway · chaos (+ chaos_tally, its pure arithmetic; netlab, the namespace lab
of SSH hosts). They launch clusters through cluster/bringup like `cluster up` does.
"""
