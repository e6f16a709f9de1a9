#!/usr/bin/env bash
# Registry benchmark: push and pull (cold: an empty registry / an empty store) of a ~65 MB
# two-layer image to the local registry server (Debian's docker-registry), beside `skopeo copy`
# of the same blobs in the same run, with hyperfine. Not a test: run it by hand.
#
#   benches/registry.sh          # RUNS=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
source benches/lib.sh
need registry.sh docker-registry skopeo hyperfine busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-registry-bench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/config.yml" <<CONFIG
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
CONFIG
cat >"$work/restart.sh" <<SCRIPT
#!/bin/sh
pkill -f "docker-registry serve $work/config.yml" 2>/dev/null
rm -rf $work/registry
docker-registry serve $work/config.yml >/dev/null 2>&1 &
until curl -s http://127.0.0.1:$port/v2/ >/dev/null; do sleep 0.02; done
SCRIPT
chmod +x "$work/restart.sh"
cleanup() { pkill -f "docker-registry serve $work/config.yml" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

export KILN_ROOT=$work/kiln
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
mkdir -p "$work/ctx"
head -c 32M /dev/urandom >"$work/ctx/one.bin"
printf 'FROM busybox-base\nCOPY one.bin /one.bin\nRUN head -c 33554432 /dev/urandom > /two.bin\n' >"$work/ctx/Dockerfile"
"$kiln" build -q -t "127.0.0.1:$port/bench/image:1" "$work/ctx" >/dev/null
"$kiln" save --compression zstd -o "$work/image.tar" "127.0.0.1:$port/bench/image:1"
mkdir -p "$work/layout" && tar -C "$work/layout" -xf "$work/image.tar"
"$work/restart.sh"

results=$work/results
mkdir -p "$results"
hyperfine --style basic -N --runs "$runs" --export-csv "$results/push.csv" \
  --prepare "$work/restart.sh" \
  "$kiln push 127.0.0.1:$port/bench/image:1" \
  "skopeo copy -q --dest-tls-verify=false oci:$work/layout:1 docker://127.0.0.1:$port/bench/image:1" >&2
"$kiln" push "127.0.0.1:$port/bench/image:1" >/dev/null
hyperfine --style basic -N --runs "$runs" --export-csv "$results/pull.csv" \
  --prepare "rm -rf $work/pulled $work/skopeo-dest" \
  "$kiln --root $work/pulled pull 127.0.0.1:$port/bench/image:1" \
  "skopeo copy -q --src-tls-verify=false docker://127.0.0.1:$port/bench/image:1 oci:$work/skopeo-dest:1" >&2

echo
echo "| what | kiln | skopeo copy | kiln/skopeo |"
echo "|---|---|---|---|"
for f in push pull; do
  awk -F, -v w="$f" 'NR == 2 { k = $2 } NR == 3 { s = $2 }
    END { printf "| %s (cold, ~65 MB, 2 layers) | %.0f ms | %.0f ms | %.2f |\n", w, k * 1000, s * 1000, k / s }' "$results/$f.csv"
done
