"""The model store on the head: models pulled once from the hub or imported from a folder (catalog), and put on
the lab's hosts over the lab network (fanout: who pulls what from whom, pure; push: the copies over SSH)."""
