"""The head node: `cluster` (cli.py) and one package per box of the architecture.

bringup/ (start, reconcile and stop clusters) · placement/ (hosts file, model sizes, the plan) · router/ (the
OpenAI endpoint) · routing/ (pure worker choice) · bench/ (benchmarks). It may import worker/ (process helpers,
the bundled model) and proto/; neither imports it.
"""

import warnings

# asyncssh names cryptography's DSA types at import, which cryptography >= 47 deprecates: a warning about a key
# type Orchard never uses, printed on every `cluster` command (a user would read it as ours).
warnings.filterwarnings("ignore", message="DSA is deprecated", module="asyncssh")
