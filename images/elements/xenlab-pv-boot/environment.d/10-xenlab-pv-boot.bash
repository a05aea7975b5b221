# The labels of the guest's filesystems (the image's /etc/fstab names them; guest.build reads
# them from there for mkfs.ext4 -L and mkswap -L) and the kernel command line pygrub boots with.
# Written here only: pipeline/guest/image.py reads this file (plain `export NAME=VALUE` lines,
# literal values), and these are part of the image's cache key as every element file is.
export XENLAB_ROOT_LABEL=cloudimg-rootfs
export XENLAB_SWAP_LABEL=xenswap
export XENLAB_KERNEL_CMDLINE="root=/dev/xvda2 ro console=hvc0"
