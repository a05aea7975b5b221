"""The core every folder uses: config model, runner (dry-run, --root, rollback), errors, console,
units, MACs, subnets, checksums, apt sources, chroot helpers, and the CLIs of xl and LVM."""
