"""The head's small files under ~/.orchard, typed and written atomically with private modes: what bring-up, the
certificate authority and the router keep between runs."""
