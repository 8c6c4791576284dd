"""What the head's model store and every host's share: a model revision's manifest, its folder's layout and
check record, the messages of a copy, and the file server peers pull from (the host's own copy process is
worker/store/, the head's store cluster/store/)."""
