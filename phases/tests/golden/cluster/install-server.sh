#!/bin/sh
# sim:k3s-install role=server version=v1.31.4+k3s1
set -eu
trap '' HUP PIPE
R="${CZ_NODE_ROOT:-}"
mkdir -p "$R/var/lib/catalyst"
exec 9>"$R/var/lib/catalyst/k3s-install.lock"
flock 9
if [ -f "$R/var/lib/catalyst/k3s-v1.31.4+k3s1.installed" ]; then echo 'k3s v1.31.4+k3s1 is already installed'; exit 0; fi
log="$R/var/lib/catalyst/k3s-install.log"
if ! { install -D -m 0755 "$R/var/lib/catalyst/artifacts/k3s" "$R/usr/local/bin/k3s" && \
INSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_VERSION='v1.31.4+k3s1' INSTALL_K3S_EXEC='server' INSTALL_K3S_BIN_DIR="$R/usr/local/bin" sh "$R/var/lib/catalyst/artifacts/install.sh"; } >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  exit 1
fi
touch "$R/var/lib/catalyst/k3s-v1.31.4+k3s1.installed"
