"""The host's steps, one module per host task: network, storage, xen, check."""
