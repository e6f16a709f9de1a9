#!/usr/bin/env bash
# Container start benchmark: `kiln run --rm base true` to exit, and a detached busybox httpd to
# the first byte of an HTTP response, beside podman (runc, netavark) and, when a dockerd is
# reachable (DOCKER_HOST), Docker, in the same run, with hyperfine. Not a test: run it by hand.
#
#   benches/run.sh              # RUNS=20 by default
#   DOCKER_HOST=unix:///run/bench-docker.sock benches/run.sh   # with a dockerd started by hand:
#     dockerd --data-root /var/tmp/dockerd -H unix:///run/bench-docker.sock --bip 10.98.0.1/24 &
#
# The comparisons: `true` with no network (kiln --network private, the peers --network none);
# `true` on the default bridge network (kiln's netavark setup against podman's netavark backend
# and Docker's libnetwork); a detached busybox httpd to its first HTTP answer through -p on the
# bridge (kiln's forwarder against podman's iptables DNAT and Docker's docker-proxy); then the
# requests per second wrk gets through that port, and from a second container on the bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
source benches/lib.sh
need run.sh podman runc hyperfine curl wrk nsenter:util-linux busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-run-bench.XXXXXX)
export KILN_ROOT=$work/kiln
# podman would raise RLIMIT_NOFILE and RLIMIT_NPROC above the hard limits these machines allow.
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc --network-backend netavark)
pr=(run --ulimit nofile=1024:20000 --ulimit nproc=4096:4096)
cleanup() {
  "$kiln" rm -f kb-web kb-cli >/dev/null 2>&1 || true
  "${pm[@]}" rm -f pb-web pb-cli >/dev/null 2>&1 || true
  [[ -n ${DOCKER_HOST:-} ]] && docker rm -f db-web db-cli >/dev/null 2>&1 || true
  "$kiln" system reset --force >/dev/null 2>&1 || true
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

# Requests per second through the published port, and from a second container on the same
# bridge network to the server's address (wrk runs in the client container's network namespace
# through nsenter). The last first-byte run left each server up only for the last peer: start
# them again, one at a time.
rps() { # name, CLI, its run command, the first-byte script, server and client container names
  local name=$1 cli=$2 run=$3 script=$4 srv=$5 cl=$6 r c ip pid
  sh "$script"
  r=$(wrk -t 2 -c 32 -d 5s "http://127.0.0.1:$port/" | awk '/Requests\/sec/ { print $2 }')
  $run -d --name "$cl" busybox-base sleep 600 >/dev/null
  ip=$($cli inspect -f '{{.NetworkSettings.IPAddress}}' "$srv")
  pid=$($cli inspect -f '{{.State.Pid}}' "$cl")
  c=$(nsenter -t "$pid" -n wrk -t 2 -c 32 -d 5s "http://$ip:$port/" | awk '/Requests\/sec/ { print $2 }')
  $cli rm -f "$srv" "$cl" >/dev/null 2>&1 || true
  echo "| requests/s through -p | $name | $r |"
  echo "| requests/s container to container | $name | $c |"
}
rps_lines=$(
  rps kiln "$kiln" "$kiln run" "${fb[0]}" kb-web kb-cli
  rps podman "${pm[*]}" "${pm[*]} ${pr[*]}" "${fb[1]}" pb-web pb-cli
  if $docker_ok; then rps docker docker "docker run" "${fb[2]}" db-web db-cli; fi
)
echo
echo "| measurement | command | mean | min |"
echo "|---|---|---|---|"
for f in true true-bridge first-byte; do
  awk -F, -v m="$f" 'NR > 1 { c = $1; gsub(/"/, "", c); split(c, w, " "); n = w[1]; sub(/.*\//, "", n);
    printf "| %s | %s | %.1f ms | %.1f ms |\n", m, n, $2 * 1000, $7 * 1000 }' "$results/$f.csv"
done
echo "$rps_lines"
