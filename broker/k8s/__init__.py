"""The Kubernetes API listener: kubectl exec/attach and read-only API calls through the broker."""
