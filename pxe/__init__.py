"""PXE install of the host: boot tree, preseed and boot menus, proxyDHCP/DHCP + TFTP + HTTP servers."""
