"""A model's files on one host of the lab: the store folder's layout, its verified copies, a server peers pull
from, and the process the head runs over SSH to bring a host's copy to one revision (`python -m worker.store.sync`).
The head's own store uses the same folder layout (cluster/store/)."""
