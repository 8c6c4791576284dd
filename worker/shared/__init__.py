"""What the head and the hosts share: the typed command lines of the agent and the router, the payloads that
cross SSH, the error table, engine endpoints, the state vocabulary, the TLS folder, the build identity, process
helpers, and the facts of model files. The head (cluster/) imports from worker/ only this package; it imports
nothing else of worker/ either, so a host's internals can change without the head noticing."""
