"""The head node: `cluster` (cli.py) and one package per box of the architecture.

bringup/ (start, reconcile and stop clusters) · placement/ (hosts file, model sizes, the plan) · router/ (the
OpenAI endpoint) · routing/ (pure worker choice) · bench/ (benchmarks). It may import worker/ (process helpers,
the bundled model) and proto/; neither imports it.
"""
