"""Where models run: hostsfile (the typed hosts file, `file:line` errors), sizing (model sizes and shapes),
plan (replicas and shard groups by memory; pure).
"""
