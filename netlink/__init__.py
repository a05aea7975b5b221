"""The host's network over netlink (pyroute2), its persistence (netplan, sysctl.d) and read-out."""
