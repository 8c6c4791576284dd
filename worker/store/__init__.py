"""A host's side of the model store: the process the head runs over SSH to bring this host's copy of one model
revision to what it asks (`python -m worker.store.sync`), and the verified, resumable pull of one file. The
layout and messages it shares with the head are in worker/shared/store/."""
