"""Read-only views of the live lab: read (what is there), diagram, report."""
