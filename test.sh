#!/usr/bin/env bash
# Runs kiln's whole test suite on a Debian machine, first installing the Debian packages the tests
# use (busybox-static for base images; skopeo, umoci and podman for interop; bzip2, xz-utils, zstd so
# tar can make the archives ADD must unpack; mmdebstrap for the demo's Python base; docker-registry
# and apache2-utils (htpasswd) for the registry tests; python3 drives the login prompt under a pty;
# netavark and aardvark-dns make bridge networks and answer names on them, with iptables and
# iproute2's ip, which the network tests also use to list rules and make an "outside"; containerd, which
# runs a saved image as Kubernetes nodes would; python3-venv for target/venv, where pip installs
# kubernetes-validate, which checks `stack convert`'s manifests against the Kubernetes API schemas;
# uidmap (newuidmap/newgidmap) and passt (pasta), which rootless kiln uses: the rootless test
# runs kiln as users it creates; runc, which podman runs the in-container build test with).
# Extra arguments go to `cargo test`. .ci/run calls this same script with KILN_REQUIRE_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")"
packages=(busybox-static skopeo umoci podman tar bzip2 xz-utils zstd mmdebstrap docker-registry apache2-utils python3
  netavark aardvark-dns iptables iproute2 containerd python3-venv uidmap passt runc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: these packages are missing: ${missing[*]}; install them as root (tests needing them will skip)" >&2
  else
    echo "test.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# pasta gives rootless containers outbound access through /dev/net/tun, which Debian's udev makes
# 0666; a machine without udev (a CI container) may have it 0600, root's only.
if [[ $(id -u) -eq 0 && -c /dev/net/tun && $(stat -c %a /dev/net/tun) != 666 ]]; then
  echo "test.sh: chmod 0666 /dev/net/tun (as Debian's udev does) so ordinary users' pasta can open it" >&2
  chmod 0666 /dev/net/tun
fi
if [[ ! -x target/venv/bin/kubernetes-validate ]]; then
  echo "test.sh: installing kubernetes-validate 1.37.0 into target/venv" >&2
  python3 -m venv target/venv && target/venv/bin/pip install -q kubernetes-validate==1.37.0 ||
    echo "test.sh: kubernetes-validate could not be installed: the Kubernetes manifest test will skip" >&2
fi
if ! ls target/debug/deps/it-* >/dev/null 2>&1; then
  echo "test.sh: compiling kiln and its tests (about 3 minutes on 2 cores the first time), then running them (about 1 minute)" >&2
fi
exec cargo test --workspace "$@"
