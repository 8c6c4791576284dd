"""The team gateway, between the router's validation and its routing: store (SQLite, migrations), keys (teams
and hashed API keys), limits (rpm/tpm buckets, monthly ledger; pure), queue (weighted fair admission queue;
pure), usage (batched usage rows, reports), gateway (the request-path object that ties them together).
"""
