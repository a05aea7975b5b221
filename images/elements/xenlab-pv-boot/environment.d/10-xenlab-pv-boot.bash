# The labels guest.build gives the filesystems (mkfs.ext4 -L, mkswap -L) and the kernel command
# line pygrub boots with. pipeline/image.py passes the same values; these are the defaults.
export XENLAB_ROOT_LABEL=${XENLAB_ROOT_LABEL:-cloudimg-rootfs}
export XENLAB_SWAP_LABEL=${XENLAB_SWAP_LABEL:-xenswap}
export XENLAB_KERNEL_CMDLINE=${XENLAB_KERNEL_CMDLINE:-root=/dev/xvda2 ro console=hvc0}
