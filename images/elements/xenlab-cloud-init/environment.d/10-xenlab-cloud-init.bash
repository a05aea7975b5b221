# No DHCP stanza for eth0 from the debootstrap element: the NoCloud seed configures the network.
export DIB_APT_MINIMAL_CREATE_INTERFACES=0
