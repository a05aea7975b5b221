"""fleet.*: the same xenlab tasks on several Xen hosts over SSH (Fabric)."""
