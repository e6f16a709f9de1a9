#!/usr/bin/env bash
# Container start benchmark: `kiln run --rm base true` to exit, and a detached busybox httpd to
# the first byte of an HTTP response, beside podman (runc) and, when a dockerd is reachable
# (DOCKER_HOST), Docker, in the same run, with hyperfine. Not a test: run it by hand.
#
#   benches/run.sh              # RUNS=20 by default
#
# podman and Docker run with --network none for `true` (kiln's default private namespace with
# loopback is the same thing). For the first byte, kiln publishes the port with -p (its own
# forwarder); the peers use --network host, because their bridge networking (netavark,
# docker0 + iptables) is not available on these machines, so their figure has no forwarding.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
source benches/lib.sh
need run.sh podman runc hyperfine curl busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-run-bench.XXXXXX)
export KILN_ROOT=$work/kiln
# podman would raise RLIMIT_NOFILE and RLIMIT_NPROC above the hard limits these machines allow.
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc)
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
cmds=("$kiln run --rm busybox-base true" "${pm[*]} ${pr[*]} --rm --network none busybox-base true")
$docker_ok && cmds+=("docker run --rm --network none busybox-base true")
hyperfine --style basic -N --warmup 3 --runs "$runs" --export-csv "$results/true.csv" "${cmds[@]}" >&2

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
  "$(first_byte podman "${pm[*]} ${pr[*]} -d --name pb-web --network host busybox-base sh -c '$serve'" "${pm[*]} rm -f pb-web")")
$docker_ok && fb+=("$(first_byte docker "docker run -d --name db-web --network host busybox-base sh -c '$serve'" "docker rm -f db-web")")
hyperfine --style basic -N --runs "$((runs / 2))" --export-csv "$results/first-byte.csv" "${fb[@]}" >&2

echo
echo "| measurement | command | mean | min |"
echo "|---|---|---|---|"
for f in true first-byte; do
  awk -F, -v m="$f" 'NR > 1 { c = $1; gsub(/"/, "", c); split(c, w, " "); n = w[1]; sub(/.*\//, "", n);
    printf "| %s | %s | %.1f ms | %.1f ms |\n", m, n, $2 * 1000, $7 * 1000 }' "$results/$f.csv"
done
