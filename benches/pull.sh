#!/usr/bin/env bash
# Pull of a rebuilt image when the previous version is local: bytes moved and time, kiln beside
# skopeo and podman in the same run, against the local registry (Debian's docker-registry).
# The image is the build benchmark's (5,000 small files and one 50 MiB file of random bytes in
# one COPY layer, zstd:chunked as kiln builds it). Two rebuilds are pushed as v2 and v3:
#
#   small   one small file changed (v1 -> v2)
#   big     the 50 MiB file rewritten (v1 -> v3)
#
# Each tool starts every round from a store holding v1 only (copied, not timed) and pulls the
# rebuild: kiln (partial pull: the metadata, then the frames no local layer holds), podman 4.3
# (skips layers it has; this one is new to it), and `skopeo copy` to an OCI layout that already
# holds v1 (it skips blobs the layout has). Bytes are what the registry sent (the loopback
# interface's received bytes during the command, HTTP framing included). Median of ROUNDS
# (default 5). Writes a table (stdout) and $OUT/pull.json (OUT defaults to benches/results).
# Not a test: run it by hand on an idle machine, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
results_setup 5
need pull.sh docker-registry skopeo podman runc curl zstd busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-pull-bench.XXXXXX)
port=$((20000 + RANDOM % 20000))
cleanup() {
  pkill -f "docker-registry serve $work/registry.yml" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
start_registry "$work" "$port"

echo "pull.sh: preparing in $work ..." >&2
ctx=$work/ctx
make_context "$ctx"
img=127.0.0.1:$port/bench/app
export KILN_ROOT=$work/builder
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
"$kiln" build -q -t "$img:v1" "$ctx" >/dev/null
"$kiln" push "$img:v1" >/dev/null
echo changed >>"$ctx/d3/e3/f3"
"$kiln" build -q -t "$img:v2" "$ctx" >/dev/null
"$kiln" push "$img:v2" >/dev/null
head -c 50M /dev/urandom >"$ctx/big.bin"
"$kiln" build -q -t "$img:v3" "$ctx" >/dev/null
"$kiln" push "$img:v3" >/dev/null
unset KILN_ROOT

# Stores holding v1 only, one per tool, copied before each timed pull.
"$kiln" --root "$work/kiln-v1" pull "$img:v1" >/dev/null
pm=(podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc --storage-driver overlay)
"${pm[@]}" pull -q --tls-verify=false "$img:v1" >/dev/null
cp -a "$work/podman" "$work/podman-v1"
skopeo copy -q --src-tls-verify=false "docker://$img:v1" "oci:$work/skopeo-v1:v1"

rx() { awk '/^ *lo:/ { print $2 }' /proc/net/dev; }
: >"$work/times"
# measure SCENARIO TOOL COMMAND...: appends "scenario tool ms bytes".
measure() {
  local scenario=$1 tool=$2 a b s e
  shift 2
  sync
  a=$(rx)
  s=$(date +%s%N)
  "$@" >/dev/null 2>&1
  e=$(date +%s%N)
  b=$(rx)
  echo "$scenario $tool $(((e - s) / 1000000)) $((b - a))" >>"$work/times"
}
for round in $(seq "$rounds"); do
  for tag in v2 v3; do
    scenario=$([[ $tag == v2 ]] && echo small || echo big)
    rm -rf "$work/k" "$work/s" && cp -a "$work/kiln-v1" "$work/k" && cp -a "$work/skopeo-v1" "$work/s"
    "${pm[@]}" rmi -f "$img:$tag" >/dev/null 2>&1 || true
    "${pm[@]}" image prune -f >/dev/null 2>&1 || true
    measure "$scenario" kiln "$kiln" --root "$work/k" pull "$img:$tag"
    measure "$scenario" skopeo skopeo copy -q --src-tls-verify=false "docker://$img:$tag" "oci:$work/s:$tag"
    measure "$scenario" podman "${pm[@]}" pull -q --tls-verify=false "$img:$tag"
  done
done

# The COPY layer of each rebuild: its size, its metadata, and the changed file's frames.
python3 - "$work" "$img" <<'PY' >"$work/facts"
import json, os, struct, sys
work, img = sys.argv[1:3]
root = os.path.join(work, "builder")
index = json.load(open(os.path.join(root, "index.json")))
def blob(d):
    return os.path.join(root, "blobs/sha256", d.split(":")[1])
facts = {}
for tag, path in (("v2", "app/d3/e3/f3"), ("v3", "app/big.bin")):
    ref = img + ":" + tag
    m = next(x for x in index["manifests"] if x["annotations"]["org.opencontainers.image.ref.name"] == ref)
    man = json.load(open(blob(m["digest"])))
    layer = max(man["layers"], key=lambda l: l["size"])
    size = layer["size"]
    off = int(layer["annotations"]["io.github.containers.zstd-chunked.manifest-position"].split(":")[0])
    meta = size - (off - 8)
    with open(blob(layer["digest"]), "rb") as f:
        f.seek(off)
        toc_len = int(layer["annotations"]["io.github.containers.zstd-chunked.manifest-position"].split(":")[1])
        import subprocess
        toc = json.loads(subprocess.run(["zstd", "-dc"], input=f.read(toc_len), capture_output=True).stdout)
    e = next(x for x in toc["entries"] if x["name"] == path)
    facts[tag] = {"layer": size, "metadata": meta, "frames": e["endOffset"] - e["offset"]}
print(json.dumps(facts))
PY
python3 - "$work/times" "$work/facts" "$out/pull.json" <<'PY'
import json, statistics, sys
times, facts, dest = sys.argv[1:4]
facts = json.load(open(facts))
rows = {}
for line in open(times):
    s, t, ms, b = line.split()
    rows.setdefault((s, t), []).append((int(ms), int(b)))
res = {"scenarios": []}
print("| pull of the rebuild, v1 local (median of %d) | kiln | skopeo copy | podman pull | ideal (metadata + changed frames) |" % len(rows[("small", "kiln")]))
print("|---|---|---|---|---|")
for s, tag, what in (("small", "v2", "one small file changed"), ("big", "v3", "the 50 MiB file rewritten")):
    f = facts[tag]
    ideal = f["metadata"] + f["frames"]
    cell = {}
    for t in ("kiln", "skopeo", "podman"):
        ms = statistics.median(x[0] for x in rows[(s, t)])
        b = statistics.median(x[1] for x in rows[(s, t)])
        cell[t] = (ms, b)
    print("| %s (layer %.1f MB) | %d ms, %.2f MB | %d ms, %.2f MB | %d ms, %.2f MB | %.2f MB (%.3f MB metadata) |" % (
        what, f["layer"] / 1e6, cell["kiln"][0], cell["kiln"][1] / 1e6, cell["skopeo"][0], cell["skopeo"][1] / 1e6,
        cell["podman"][0], cell["podman"][1] / 1e6, ideal / 1e6, f["metadata"] / 1e6))
    res["scenarios"].append({"name": s, "facts": f, "median_ms_bytes": cell})
json.dump(res, open(dest, "w"), indent=1)
PY
