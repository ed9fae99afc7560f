"""SSH to Compute Engine VMs through the gateway: listener, relay, upstream login, file-transfer observers."""
