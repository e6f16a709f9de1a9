#!/usr/bin/env bash
# The end-to-end benchmark, in one command: kiln beside every peer installed here, in the same
# run, interleaved (each round runs every tool once per scenario), median of ROUNDS (default 5):
#
#   cold build, no-op rebuild, rebuild after one small file changed   kiln, buildah, podman, docker
#   run --rm IMAGE true, to exit                                       kiln, podman, docker
#   save to an archive                                                 kiln, podman, docker
#   push and pull, cold, to a local registry (docker-registry)         kiln, skopeo copy
#
# Peers: buildah and podman (runc; these machines' hybrid cgroups stop crun, and podman needs
# its ulimits kept under the hard limits), Docker with BuildKit when a dockerd answers at
# DOCKER_HOST (the client is $DOCKER, default docker; it needs BuildKit built in or buildx). The context: 5,000 files of 1-4 KiB in nested directories plus one 50 MiB file;
# the Dockerfile: FROM busybox-base, WORKDIR /app, COPY . /app, RUN find /app -type f | wc -l
# > /count, ENV NAME World, EXPOSE 80, CMD.
#
# Before each timed command the page cache is synced (not timed), so no tool pays for the
# previous one's writeback.
#
# Writes a table (stdout), $OUT/e2e.json and $OUT/e2e.svg (a bar chart); OUT defaults to
# benches/results. Not a test: run it by hand on an idle machine, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
results_setup 5
need e2e.sh buildah podman runc skopeo docker-registry curl busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-e2e.XXXXXX)
docker=${DOCKER:-docker}
docker_ok=false
if [[ -n ${DOCKER_HOST:-} ]] && "$docker" info >/dev/null 2>&1; then docker_ok=true; fi
port=$((20000 + RANDOM % 20000))
cleanup() {
  pkill -f "docker-registry serve $work/registry.yml" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "e2e.sh: preparing in $work ..." >&2
ctx=$work/ctx
make_context "$ctx"
export KILN_ROOT=$work/kiln-base
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
"$kiln" save -o "$work/base.tar" busybox-base
unset KILN_ROOT
# One fresh store per round, made now: deleting a store right before the cold build would have
# ext4 skip over thousands of just-freed inodes on every create (its allocator avoids reusing an
# inode within ~30 s of its deletion), a cost the peers, which keep their stores, never pay.
for round in $(seq "$rounds"); do cp -a "$work/kiln-base" "$work/kiln-$round"; done
b=(buildah --root "$work/buildah" --runroot "$work/buildah-run")
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc)
pmu=(--ulimit nofile=1024:20000 --ulimit nproc=4096:4096)
"${b[@]}" pull -q "oci-archive:$work/base.tar" >/dev/null
"${b[@]}" tag "$("${b[@]}" images -q | head -1)" busybox-base
"${pm[@]}" load -q -i "$work/base.tar" >/dev/null
if $docker_ok; then "$kiln" --root "$work/kiln-base" save --format docker busybox-base | "$docker" load -q >/dev/null; fi
restart_registry() {
  pkill -f "docker-registry serve $work/registry.yml" 2>/dev/null || true
  sleep 0.1
  rm -rf "$work/registry"
  start_registry "$work" "$port"
}

: >"$work/times"
# measure SCENARIO TOOL COMMAND...: appends "scenario tool ms".
measure() {
  local scenario=$1 tool=$2
  shift 2
  local t0 t1
  # Every tool starts with nothing of the previous one's writes pending: without this, whoever
  # runs right after a tool that left hundreds of MB dirty pays for that writeback in its own
  # fsyncs. (No pause after it: waking an idle VM costs a short command more than it saves.)
  sync
  # bash's clock, not a `date` process: its fork would be timed too.
  t0=${EPOCHREALTIME/./}
  if ! "$@" >/dev/null 2>"$work/err"; then
    echo "e2e.sh: $tool failed at $scenario: $*" >&2
    tail -3 "$work/err" >&2
    return 0
  fi
  t1=${EPOCHREALTIME/./}
  echo "$scenario $tool $(((t1 - t0) / 1000))" >>"$work/times"
}
touch_one() { echo "change $RANDOM" >>"$ctx/d1/e1/f1"; }

for round in $(seq "$rounds"); do
  echo "e2e.sh: round $round/$rounds" >&2
  k=("$kiln" --root "$work/kiln-$round")
  # cold
  measure cold kiln "${k[@]}" build -q -t bench "$ctx"
  measure cold buildah "${b[@]}" bud --runtime runc --layers --no-cache -q -t bench "$ctx"
  measure cold podman "${pm[@]}" build "${pmu[@]}" --layers --no-cache -q -t bench "$ctx"
  $docker_ok && measure cold docker env DOCKER_BUILDKIT=1 "$docker" build --network host --no-cache -q -t bench "$ctx"
  # no-op
  measure noop kiln "${k[@]}" build -q -t bench "$ctx"
  measure noop buildah "${b[@]}" bud --runtime runc --layers -q -t bench "$ctx"
  measure noop podman "${pm[@]}" build "${pmu[@]}" --layers -q -t bench "$ctx"
  $docker_ok && measure noop docker env DOCKER_BUILDKIT=1 "$docker" build --network host -q -t bench "$ctx"
  # one file changed (each tool sees its own change)
  touch_one; measure one-file kiln "${k[@]}" build -q -t bench "$ctx"
  touch_one; measure one-file buildah "${b[@]}" bud --runtime runc --layers -q -t bench "$ctx"
  touch_one; measure one-file podman "${pm[@]}" build "${pmu[@]}" --layers -q -t bench "$ctx"
  if $docker_ok; then touch_one; measure one-file docker env DOCKER_BUILDKIT=1 "$docker" build --network host -q -t bench "$ctx"; fi
  # run to exit
  measure run kiln "${k[@]}" run --rm --network none busybox-base true
  measure run podman "${pm[@]}" run "${pmu[@]}" --rm --network none busybox-base true
  $docker_ok && measure run docker "$docker" run --rm --network none busybox-base true
  # save: a docker-archive each (podman's and Docker's default format)
  measure save kiln "${k[@]}" save --format docker -o "$work/k.tar" bench
  measure save podman "${pm[@]}" save -o "$work/p.tar" bench
  $docker_ok && measure save docker "$docker" save -o "$work/d.tar" bench
  rm -f "$work/k.tar" "$work/p.tar" "$work/d.tar"
  # push and pull, cold
  "${k[@]}" tag bench "127.0.0.1:$port/bench/image:1"
  rm -rf "$work/layout" && mkdir -p "$work/layout"
  "${k[@]}" save --compression zstd -o "$work/image.tar" "127.0.0.1:$port/bench/image:1"
  tar -C "$work/layout" -xf "$work/image.tar"
  restart_registry
  measure push kiln "${k[@]}" push "127.0.0.1:$port/bench/image:1"
  restart_registry
  measure push skopeo skopeo copy -q --dest-tls-verify=false "oci:$work/layout:1" "docker://127.0.0.1:$port/bench/image:1"
  rm -rf "$work/pulled" "$work/skopeo-dest"
  measure pull kiln "$kiln" --root "$work/pulled" pull "127.0.0.1:$port/bench/image:1"
  measure pull skopeo skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$port/bench/image:1" "oci:$work/skopeo-dest:1"
done

# Medians, ratios, JSON, SVG.
awk -v json="$out/e2e.json" -v svg="$out/e2e.svg" '
  { t[$1 " " $2] = t[$1 " " $2] " " $3; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
    if (!(($1, $2) in tools)) { tools[$1, $2] = 1; tl[$1] = tl[$1] " " $2 } }
  function median(s,   a, m, i, j, x) {
    m = split(s, a, " ")
    for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    goal["cold"] = 0.5; goal["noop"] = 0.1; goal["one-file"] = 0.25; goal["run"] = 0.2; goal["save"] = 0.5; goal["push"] = 1.0; goal["pull"] = 1.0
    printf "| scenario | kiln | best peer | kiln/best peer | goal | all (median ms) |\n|---|---|---|---|---|---|\n"
    printf "{\n  \"scenarios\": [\n" > json
    for (i = 1; i <= n; i++) {
      s = order[i]; km = median(t[s " kiln"]); best = ""; bm = 0; all = ""
      m = split(tl[s], names, " ")
      printf "    {\"name\": \"%s\", \"goal\": %s, \"medians_ms\": {", s, goal[s] > json
      for (j = 1; j <= m; j++) {
        v = median(t[s " " names[j]]); med[s, names[j]] = v
        printf "%s\"%s\": %s", (j > 1 ? ", " : ""), names[j], v > json
        all = all sprintf("%s %s=%s", (j > 1 ? "," : ""), names[j], v)
        if (names[j] != "kiln" && (best == "" || v < bm)) { best = names[j]; bm = v }
      }
      ratio = (bm > 0) ? km / bm : 0
      printf "}, \"best_peer\": \"%s\", \"ratio\": %.3f}%s\n", best, ratio, (i < n ? "," : "") > json
      printf "| %s | %s ms | %s %s ms | %.3f | <= %s |%s |\n", s, km, best, bm, ratio, goal[s], all
    }
    printf "  ]\n}\n" > json
    # A bar chart: one group per scenario, bars scaled to the group maximum, values labelled.
    W = 900; H = 60 + n * 110
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H > svg
    printf "<text x=\"10\" y=\"24\" font-size=\"16\">kiln beside its peers (median ms, shorter is faster)</text>\n" > svg
    col["kiln"] = "#d9480f"; col["buildah"] = "#1c7ed6"; col["podman"] = "#7048e8"; col["docker"] = "#0ca678"; col["skopeo"] = "#868e96"
    for (i = 1; i <= n; i++) {
      s = order[i]; y0 = 50 + (i - 1) * 110; mx = 0
      m = split(tl[s], names, " ")
      for (j = 1; j <= m; j++) if (med[s, names[j]] > mx) mx = med[s, names[j]]
      printf "<text x=\"10\" y=\"%d\" font-weight=\"bold\">%s</text>\n", y0 + 14, s > svg
      for (j = 1; j <= m; j++) {
        v = med[s, names[j]]; w = (mx > 0) ? 600 * v / mx : 0; y = y0 + 20 + (j - 1) * 20
        c = (names[j] in col) ? col[names[j]] : "#495057"
        printf "<text x=\"10\" y=\"%d\">%s</text><rect x=\"90\" y=\"%d\" width=\"%.1f\" height=\"15\" fill=\"%s\"/><text x=\"%.1f\" y=\"%d\">%s ms</text>\n", y + 12, names[j], y, (w < 1 ? 1 : w), c, 95 + w, y + 12, v > svg
      }
    }
    printf "</svg>\n" > svg
  }' "$work/times"
echo
echo "wrote $out/e2e.json and $out/e2e.svg"
