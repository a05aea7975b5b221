#!/bin/sh
# Draw docs/lab.dot and docs/lab.svg from a live stand-in of the default site, as root:
# three network namespaces (the upstream router, the host, guest-01 on a vif-like veth),
# `invoke host.network` to make the bridge, a ping so the host has seen the guest, then
# `invoke host.diagram` reads it all back. Nothing outside the namespaces and a temporary
# directory is touched; everything is removed at the end.
#
#   docs/make-diagram.sh [OUTDIR]     (default: docs/; tests/test_docs.py checks it is current)
#
# MACs are fixed so that the drawing only changes when xenlab does: the uplink and router in
# qemu's 52:54:00 block, the vif as Xen's netback sets it, the guest's as xenlab derives it.
set -eu
cd "$(dirname "$0")/.."
out=$(realpath "${1:-docs}")
invoke=".venv/bin/invoke"
python=".venv/bin/python"

tag=$$
router="xl-doc-router-$tag"
host="xl-doc-host-$tag"
guest="xl-doc-guest-$tag"
tmp=$(mktemp -d)
cleanup() {
    for ns in "$guest" "$host" "$router"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

for ns in "$router" "$host" "$guest"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done

# router r-up (198.51.100.1/30) -- eth0 (198.51.100.2/30) host; the /28 routed to the host.
ip -n "$router" link add r-up address 52:54:00:0a:00:01 type veth peer name eth0 \
    address 52:54:00:0a:00:02 netns "$host"
ip -n "$router" addr add 198.51.100.1/30 dev r-up
ip -n "$router" link set r-up up
ip -n "$router" route add 192.0.2.0/28 via 198.51.100.2
ip -n "$host" addr add 198.51.100.2/30 dev eth0
ip -n "$host" link set eth0 up
ip -n "$host" route add default via 198.51.100.1

# The default site as it is (invoke.yaml: 192.0.2.0/28, xenbr0 192.0.2.1, guest-01 at .2).
mkdir -p "$tmp/root/etc/xen/auto"
$invoke host.network --netns "$host" --root "$tmp/root" >/dev/null

# guest-01 as Xen attaches it: eth0 with its derived MAC, vif1.0 on the bridge, autostart linked.
mac=$($python -c 'from pipeline.mac import derive; print(derive("guest-01"))')
ip -n "$guest" link add eth0 address "$mac" type veth peer name vif1.0 \
    address fe:ff:ff:ff:ff:ff netns "$host"
ip -n "$host" link set vif1.0 master xenbr0 up
ip -n "$guest" addr add 192.0.2.2/28 dev eth0
ip -n "$guest" link set eth0 up
ip -n "$guest" route add default via 192.0.2.1
echo "vif = ['ip=192.0.2.2,mac=$mac,bridge=xenbr0']" >"$tmp/root/etc/xen/guest-01.cfg"
ln -s ../guest-01.cfg "$tmp/root/etc/xen/auto/guest-01.cfg"

# The router reaches the guest through the host: ARP and the bridge learn who is where.
ip netns exec "$router" ping -c1 -W5 192.0.2.2 >/dev/null
# The kernel reports a link's operational state up to a second after traffic flows: wait for it.
for _ in 1 2 3 4 5 6 7 8 9 10; do
    ip -n "$host" -br link | grep -Eq '^(eth0|vif1\.0|xenbr0)[@ ].* (DOWN|UNKNOWN|LOWERLAYERDOWN) ' || break
    sleep 1
done

for file in lab.dot lab.svg; do
    $invoke host.diagram --netns "$host" --root "$tmp/root" --output "$out/$file"
done
