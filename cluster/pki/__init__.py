"""The cluster's public-key infrastructure on the head: its certificate authority, the certificates it issues,
and the pin record that names the one certificate the router accepts from each lab agent. Bring-up issues over
SSH; the router renews over gRPC; both use this package and nothing else of each other."""
