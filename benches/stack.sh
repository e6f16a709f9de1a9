#!/usr/bin/env bash
# Services and stacks benchmark, beside the peers in the same run. Not a test: run it by hand.
#
#   benches/stack.sh            # RUNS=5 by default
#
# 1. A stack of 5 busybox httpd replicas (0.1 CPU and 50 MB each) from nothing to every replica
#    serving: kiln `stack deploy` (one published port, round robin) until 5 hostnames have
#    answered on it; docker compose v2 (Debian trixie's 2.26, unpacked privately, against
#    Debian's dockerd 20.10) `up -d` of the same service with the ports 4301-4305 (compose has no
#    balancer: replicas of a fixed port collide), and podman-compose 1.0 (bookworm) with a port
#    of its own per replica, until each answers; Docker swarm `stack deploy` until `docker service ls` says 5/5 (its routing mesh
#    needs IPVS, which this kernel lacks, so its port never answers here).
# 2. A rolling update (start-first) of 3 replicas under a loop of requests: time and failures.
# 3. Requests per second (wrk, 32 connections) through the replicated port against one replica
#    reached directly on its bridge address.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
source benches/lib.sh
need stack.sh dockerd:docker.io podman podman-compose curl wrk busybox:busybox-static
[[ -x /usr/libexec/podman/catatonit ]] || need stack.sh catatonit-for-podman-init:catatonit
build_kiln
work=$(mktemp -d /var/tmp/kiln-stack-bench.XXXXXX)
export KILN_ROOT=$work/kiln

# docker compose v2 from trixie, unpacked privately.
cv2=/var/tmp/kiln-compose-v2/root/usr/libexec/docker/cli-plugins/docker-compose
if [[ ! -x $cv2 ]]; then
  w=/var/tmp/kiln-compose-v2
  mkdir -p "$w/apt/lists/partial" "$w/apt/cache/archives/partial" "$w/debs" "$w/root"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$w/apt/sources.list"
  o=(-o Dir::Etc::SourceList="$w/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$w/apt/lists" -o Dir::Cache="$w/apt/cache" -o APT::Get::List-Cleanup=0)
  apt-get "${o[@]}" update -qq
  (cd "$w/debs" && apt-get "${o[@]}" download docker-compose 2>/dev/null)
  dpkg-deb -x "$w"/debs/docker-compose_*.deb "$w/root"
fi

# A private dockerd (its own data, sockets and bridge).
export DOCKER_HOST=unix://$work/docker.sock
dockerd --data-root "$work/docker" --exec-root "/run/kiln-stack-bench" -H "$DOCKER_HOST" \
  --pidfile "$work/dockerd.pid" --bip 10.96.0.1/24 >"$work/dockerd.log" 2>&1 &
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc --network-backend netavark)
# podman would raise RLIMIT_NOFILE and RLIMIT_NPROC above the hard limits these machines allow.
pca=(--podman-args="--root $work/podman --runroot $work/podman-run --runtime runc --network-backend netavark"
  --podman-run-args="--ulimit nofile=1024:20000 --ulimit nproc=4096:4096")
cleanup() {
  mkdir -p /var/tmp/kiln-stack-bench-logs && cp "$work"/*.log /var/tmp/kiln-stack-bench-logs/ 2>/dev/null || true
  "$kiln" system reset --force >/dev/null 2>&1 || true
  docker swarm leave --force >/dev/null 2>&1 || true
  [[ -f $work/dockerd.pid ]] && kill "$(cat "$work/dockerd.pid")" 2>/dev/null || true
  (cd "$work/pc" 2>/dev/null && podman-compose -p pc "${pca[@]}" down >/dev/null 2>&1) || true
  "${pm[@]}" rm -af >/dev/null 2>&1 || true
  sleep 3
  grep -e "$work" -e /run/kiln-stack-bench /proc/mounts | awk '{ print $2 }' | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$work" /run/kiln-stack-bench
}
trap cleanup EXIT
for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done

fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
ctx=$work/ctx
mkdir -p "$ctx"
for v in 1 2; do
  printf 'FROM busybox-base\nRUN echo v%s > /version\nCMD ["sh", "-c", "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 80 -h /w"]\n' "$v" >"$ctx/Dockerfile"
  "$kiln" build -q -t "web:v$v" "$ctx" >/dev/null
done
"$kiln" save --format docker web:v1 web:v2 | docker load -q >/dev/null
"$kiln" save --format docker web:v1 web:v2 | "${pm[@]}" load -q >/dev/null

now() { date +%s%N; }
ms() { echo $((($(now) - $1) / 1000000)); }
# served PORT N: waits until N hostnames answered on PORT (or, with PORT a-b, N of its ports);
# gives up after 60 s, saying so.
served() {
  local seen="" start
  start=$(now)
  while :; do
    if (($(ms "$start") > 60000)); then
      echo "stack.sh: port $1 never had $2 answering (logs in /var/tmp/kiln-stack-bench-logs)" >&2
      return 1
    fi
    if [[ $1 == *-* ]]; then
      local ok=0 p
      local ports
      if [[ $1 == podman-* ]]; then # every port podman published
        ports=$("${pm[@]}" ps --format '{{.Ports}}' | sed -n 's/.*:\([0-9]*\)->.*/\1/p')
      else
        ports=$(seq "${1%-*}" "${1#*-}")
      fi
      for p in $ports; do curl -sf -m 1 "localhost:$p/" >/dev/null && ok=$((ok + 1)); done
      ((ok >= $2)) && return
    else
      seen=$(printf '%s\n%s\n' "$seen" "$(curl -sf -m 1 "localhost:$1/" || true)" | sort -u | sed '/^$/d')
      (($(wc -l <<<"$seen") >= $2)) && return
    fi
    sleep 0.02
  done
}
file() { # PORT-SPEC REPLICAS ORDER
  cat <<EOF
services:
  web:
    image: web:v1
    init: true
    deploy:
      replicas: $2
      resources:
        limits:
          cpus: "0.1"
          memory: 50M
      update_config:
        order: $3
    ports:
      - "$1"
EOF
}
mkdir -p "$work/k" "$work/dc" "$work/pc" "$work/sw"
file 4300:80 5 start-first >"$work/k/stack.yml"
file 4301-4305:80 5 start-first >"$work/dc/compose.yaml"
# podman-compose 1.0 hands a port range to every replica, which podman refuses: each replica
# publishes 80 on a port of its own.
file 80 5 start-first >"$work/pc/compose.yaml"
file 4310:80 5 start-first >"$work/sw/stack.yml"

declare -A total
for i in $(seq "$runs"); do
  t=$(now); "$kiln" stack deploy -c "$work/k/stack.yml" kb >>"$work/kiln.log" 2>&1; served 4300 5; total[kiln]+=" $(ms "$t")"
  "$kiln" stack rm kb >>"$work/kiln.log" 2>&1
  t=$(now); (cd "$work/dc" && "$cv2" -p dc up -d >>"$work/compose.log" 2>&1); served 4301-4305 5; total[compose]+=" $(ms "$t")"
  (cd "$work/dc" && "$cv2" -p dc down -t 1 >>"$work/compose.log" 2>&1)
  t=$(now); (cd "$work/pc" && podman-compose -p pc "${pca[@]}" up -d >>"$work/podman-compose.log" 2>&1); served podman-all 5; total[podman_compose]+=" $(ms "$t")"
  (cd "$work/pc" && podman-compose -p pc "${pca[@]}" down -t 1 >>"$work/podman-compose.log" 2>&1)
done
docker swarm init --advertise-addr 127.0.0.1 >/dev/null
replicas() { # SERVICE N/N: waits until swarm says so (60 s at most)
  local start
  start=$(now)
  until docker service ls --filter "name=$1" --format '{{.Replicas}}' | grep -q "^$2"; do
    (($(ms "$start") < 60000)) || { echo "stack.sh: swarm service $1 never reached $2" >&2; return 1; }
    sleep 0.05
  done
}
# One run: on this machine Docker 20.10's later deploys fail now and then ("failed to create new
# osl sandbox": its load-balancer namespace of the removed stack, without IPVS).
t=$(now); docker stack deploy -c "$work/sw/stack.yml" sw >>"$work/swarm.log" 2>&1
if replicas sw_web 5/5; then total[swarm]=" $(ms "$t")"; else total[swarm]=" -1"; fi
docker stack rm sw >/dev/null
while docker ps -q | grep -q . || docker network ls -q --filter name=sw_default | grep -q .; do sleep 0.2; done
sleep 5
mean() { awk '{ s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.0f ms (runs:%s)", s / NF, $0 }' <<<"$1"; }

# Rolling update of 3 replicas, start-first, under a loop of requests.
file 4300:80 3 start-first >"$work/k/stack.yml"
"$kiln" stack deploy -c "$work/k/stack.yml" --detach=false kb >/dev/null 2>&1
upd() { # IMAGE
  local ok=0 bad=0 t
  (while :; do if curl -sf -m 5 -o /dev/null localhost:4300/; then echo ok; else echo bad; fi; done >"$work/loop") &
  local loop=$!
  sleep 0.3
  t=$(now); "$kiln" service update --image "$1" kb_web >/dev/null 2>&1; local took; took=$(ms "$t")
  sleep 0.3; kill "$loop"; wait "$loop" 2>/dev/null || true
  ok=$(grep -c ok "$work/loop" || true); bad=$(grep -c bad "$work/loop" || true)
  echo "$took ms, $ok requests, $bad failed"
}
u1=$(upd web:v2); u2=$(upd web:v1)
file 4310:80 3 start-first >"$work/sw/three.yml"
# The last `stack rm` goes on in the background (its network): deploy once it is gone.
swu=failed
if docker stack deploy -c "$work/sw/three.yml" sw >>"$work/swarm.log" 2>&1 && replicas sw_web 3/3; then
  t=$(now); docker service update -q --image web:v2 --update-order start-first --update-monitor 0s sw_web >/dev/null 2>&1; swu=$(ms "$t")
fi

# Requests per second: through the balancer, and one replica direct; with the file's limits
# (0.1 CPU each: the replicas add up), and without (what the balancer itself costs).
rate() { wrk -t 2 -c 32 -d 5s "$1" | awk '/Requests\/sec/ { print $2 }'; }
first_ip() { "$kiln" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$("$kiln" ps -q --filter "name=$1" | head -1)"; }
lb=$(rate http://127.0.0.1:4300/)
direct=$(rate "http://$(first_ip kb_web):80/")
file 4320:80 3 start-first | sed '/resources:/,/memory:/d' >"$work/k/free.yml"
"$kiln" stack deploy -c "$work/k/free.yml" --detach=false kf >/dev/null 2>&1
lb_free=$(rate http://127.0.0.1:4320/)
direct_free=$(rate "http://$(first_ip kf_web):80/")

echo
echo "| measurement | kiln | docker compose 2.26 | podman-compose 1.0 | Docker 20.10 swarm |"
echo "|---|---|---|---|---|"
echo "| 5 replicas, deploy to all serving | $(mean "${total[kiln]}") | $(mean "${total[compose]}") | $(mean "${total[podman_compose]}")  | $(mean "${total[swarm]}") to 5/5 running (no ingress here) |"
echo "| rolling update of 3 (start-first) | $u1; back: $u2 | - | - | $swu ms (--update-monitor 0s) |"
echo "| requests/s, 3 replicas (0.1 CPU each) behind the port | $lb (one replica direct: $direct) | - | - | - |"
echo "| requests/s, 3 replicas (no limits) behind the port | $lb_free (one replica direct: $direct_free) | - | - | - |"
