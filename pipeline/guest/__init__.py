"""A guest's steps: checks, volumes, the golden image, its /etc/xen cfg, and build, which runs them."""
