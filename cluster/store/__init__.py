"""The model store on the head (issue 29, in progress): what a model's files are (a manifest with the hub's own
hashes), how each is verified, and which of them a host needs."""
