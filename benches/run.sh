#!/usr/bin/env bash
# Container start benchmark: `kiln run --rm base true` to exit, and a detached busybox httpd to
# the first byte of an HTTP response, beside podman (runc) and, when a dockerd is reachable
# (DOCKER_HOST), Docker, in the same run, with hyperfine. Not a test: run it by hand.
#
#   benches/run.sh              # RUNS=20 by default
#
# Three comparisons: `true` with no network (kiln --network private, the peers --network none);
# `true` on the default bridge network (kiln's netavark setup against podman's netavark backend);
# a detached busybox httpd to its first HTTP answer through -p on the bridge (kiln's forwarder
# against podman's iptables DNAT), and then the requests per second wrk gets through that port.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
source benches/lib.sh
need run.sh podman runc hyperfine curl wrk busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-run-bench.XXXXXX)
export KILN_ROOT=$work/kiln
# podman would raise RLIMIT_NOFILE and RLIMIT_NPROC above the hard limits these machines allow.
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc --network-backend netavark)
pr=(run --ulimit nofile=1024:20000 --ulimit nproc=4096:4096)
cleanup() {
  "$kiln" rm -f kb-web >/dev/null 2>&1 || true
  "${pm[@]}" rm -f pb-web >/dev/null 2>&1 || true
  [[ -n ${DOCKER_HOST:-} ]] && docker rm -f db-web >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
"$kiln" save -o "$work/base.tar" busybox-base
"${pm[@]}" load -q -i "$work/base.tar" >/dev/null
docker_ok=false
if [[ -n ${DOCKER_HOST:-} ]] && docker info >/dev/null 2>&1; then
  "$kiln" save --format docker busybox-base | docker load -q >/dev/null
  docker_ok=true
fi

results=$work/results
mkdir -p "$results"
cmds=("$kiln run --rm --network private busybox-base true" "${pm[*]} ${pr[*]} --rm --network none busybox-base true")
$docker_ok && cmds+=("docker run --rm --network none busybox-base true")
hyperfine --style basic -N --warmup 3 --runs "$runs" --export-csv "$results/true.csv" "${cmds[@]}" >&2
cmds=("$kiln run --rm busybox-base true" "${pm[*]} ${pr[*]} --rm busybox-base true")
$docker_ok && cmds+=("docker run --rm busybox-base true")
hyperfine --style basic -N --warmup 3 --runs "$runs" --export-csv "$results/true-bridge.csv" "${cmds[@]}" >&2

port=18123
serve='mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p '$port' -h /w'
first_byte() { # name, start command, remove command
  cat >"$work/$1.sh" <<SCRIPT
#!/bin/sh
$3 >/dev/null 2>&1
$2 >/dev/null
until curl -sf http://127.0.0.1:$port/ >/dev/null; do :; done
SCRIPT
  chmod +x "$work/$1.sh"
  echo "$work/$1.sh"
}
fb=("$(first_byte kiln "$kiln run -d --name kb-web -p 127.0.0.1:$port:$port busybox-base sh -c '$serve'" "$kiln rm -f kb-web")"
  "$(first_byte podman "${pm[*]} ${pr[*]} -d --name pb-web -p 127.0.0.1:$port:$port busybox-base sh -c '$serve'" "${pm[*]} rm -f pb-web")")
$docker_ok && fb+=("$(first_byte docker "docker run -d --name db-web -p 127.0.0.1:$port:$port busybox-base sh -c '$serve'" "docker rm -f db-web")")
hyperfine --style basic -N --runs "$((runs / 2))" --export-csv "$results/first-byte.csv" "${fb[@]}" >&2

# Requests per second through the published port (the last first-byte run left each server up
# only for the last peer: start them again, one at a time).
rps() { # name, the first-byte script (removes, starts, waits for the server), remove command
  sh "$2"
  local r
  r=$(wrk -t 2 -c 32 -d 5s "http://127.0.0.1:$port/" | awk '/Requests\/sec/ { print $2 }')
  sh -c "$3" >/dev/null 2>&1 || true
  echo "| requests/s through -p | $1 | $r |"
}
rps_lines=$(
  rps kiln "${fb[0]}" "$kiln rm -f kb-web"
  rps podman "${fb[1]}" "${pm[*]} rm -f pb-web"
  if $docker_ok; then rps docker "${fb[2]}" "docker rm -f db-web"; fi
)

echo
echo "| measurement | command | mean | min |"
echo "|---|---|---|---|"
for f in true true-bridge first-byte; do
  awk -F, -v m="$f" 'NR > 1 { c = $1; gsub(/"/, "", c); split(c, w, " "); n = w[1]; sub(/.*\//, "", n);
    printf "| %s | %s | %.1f ms | %.1f ms |\n", m, n, $2 * 1000, $7 * 1000 }' "$results/$f.csv"
done
echo "$rps_lines"
