"""The `cluster` command, one module per command group; cluster/cli.py assembles them."""
