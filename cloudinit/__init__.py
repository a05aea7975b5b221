"""NoCloud seeds for guests: meta-data, user-data, network-config v2, and the 'cidata' ISO."""
