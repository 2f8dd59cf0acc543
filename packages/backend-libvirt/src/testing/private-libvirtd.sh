#!/bin/bash
# A private libvirtd for tests: private-libvirtd.sh SANDBOX [TCPPORT]
# Runs libvirtd in its own mount namespace with overlays on /etc, /run and /var whose upper layers
# are in SANDBOX, so nothing is written outside it. Replaces itself with libvirtd (same pid).
set -eu
SB=$1
PORT=${2:-}
mkdir -p "$SB/sock" "$SB/log"
for d in etc run var; do mkdir -p "$SB/ov/$d/upper" "$SB/ov/$d/work"; done
# Where QEMU's monitor sockets live are plain bind mounts, not overlays: a socket bound through one
# overlay mount cannot be connected to through the next one (a restarted libvirtd has a new namespace).
mkdir -p "$SB/lib" "$SB/rundir"
cat > "$SB/libvirtd.conf" <<CONF
unix_sock_dir = "$SB/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$SB/log/libvirtd.log"
CONF
listen=()
if [ -n "$PORT" ]; then
  cat >> "$SB/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
tcp_port = "$PORT"
listen_addr = "127.0.0.1"
auth_tcp = "none"
CONF
  listen=(--listen)
fi
export SB
exec unshare -m --propagation private /bin/bash -c '
set -eu
for d in etc run var; do
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$SB/ov/$d/upper,workdir=$SB/ov/$d/work" "/$d"
done
mkdir -p /var/lib/libvirt /run/libvirt
mount --bind "$SB/lib" /var/lib/libvirt
mount --bind "$SB/rundir" /run/libvirt
getent passwd libvirt-qemu >/dev/null || useradd -r -U -M -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt/qemu /var/cache/libvirt
cat > /etc/libvirt/qemu.conf <<QEMU
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
QEMU
exec libvirtd "$@" --config "$SB/libvirtd.conf" --pid-file "$SB/libvirtd.pid"
' private-libvirtd "${listen[@]}"
