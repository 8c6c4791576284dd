"""Where the `cluster` commands print: stdout for results, stderr for errors."""

from __future__ import annotations

import sys

from rich.console import Console

# No hard line breaks in messages; tables piped to a file or a log get room instead of an 80-column wrap.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
