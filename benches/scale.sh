#!/usr/bin/env bash
# How kiln's costs grow (issue: scale), beside Docker/BuildKit where it does the same work and a
# dockerd answers at DOCKER_HOST (the client is $DOCKER, default docker), in the same run:
#
#   context files  5k / 20k / 80k    cold build, no-op rebuild, one file changed   kiln, docker
#   layers         10 / 100 / 500    build (cold), run --rm to exit                kiln, docker
#   tags           100 / 1k / 10k    tag, images, rmi (one tag each)                kiln
#   store          10k images, 100k cache entries, 1M blobs: images, ps, cache ls,  kiln
#                  system df, tag, rmi; cache prune of 1k and 10k entries; system
#                  prune of 100 and 1,000 untagged images
#   containers     50 / 500          run -d (each), ps, rm -f (each)                kiln
#
# Context files are 1-100 lines of text in 200x13 directories (generated, never committed).
# Tags past the first few are made by writing the store's refs table directly (python3's
# sqlite3; 10,000 `kiln tag` calls would take minutes), then index.json is rewritten by the
# first timed `kiln tag`. Containers run `sleep` with --network none (the default bridge's
# per-container setup is measured by run.sh). Medians of ROUNDS (default 5) for the repeated
# commands; SIZES_FILES, SIZES_LAYERS, SIZES_TAGS, SIZES_CONTAINERS override the sizes, and
# STORE_IMAGES, STORE_CACHE, STORE_BLOBS the big store's; an empty value skips a group.
#
# Writes a table (stdout), $OUT/scale.json and $OUT/scale.svg (benches/scale-chart.py: how each
# cost grows, log-log, kiln beside Docker); OUT defaults to benches/results. Not a test:
# run it by hand on an idle machine, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
results_setup 5
need scale.sh python3 busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-scale.XXXXXX)
docker=${DOCKER:-docker}
docker_ok=false
if [[ -n ${DOCKER_HOST:-} ]] && "$docker" info >/dev/null 2>&1; then docker_ok=true; fi
cleanup() {
  "$kiln" --root "$work/store" rm -f $("$kiln" --root "$work/store" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
export KILN_ROOT=$work/store
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
if $docker_ok; then "$kiln" save --format docker busybox-base | "$docker" load -q >/dev/null; fi

: >"$work/times"
# timed GROUP SIZE WHAT TOOL COMMAND...: appends "group size what tool ms".
timed() {
  local group=$1 size=$2 what=$3 tool=$4
  shift 4
  sync
  local t0=${EPOCHREALTIME/./}
  if ! "$@" >/dev/null 2>"$work/err"; then
    echo "scale.sh: $tool failed at $group $size $what: $(tail -1 "$work/err")" >&2
    echo "$group $size $what $tool fail" >>"$work/times"
    return 0
  fi
  local t1=${EPOCHREALTIME/./}
  echo "$group $size $what $tool $(((t1 - t0) / 1000))" >>"$work/times"
}

# context DIR N: N small text files in 200x13 directories, and the Dockerfile.
context() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = f"{root}/d{i % 200}/e{i % 13}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i}", "w") as f:
        f.write(f"{i}\n" * (1 + i % 100))
with open(f"{root}/Dockerfile", "w") as f:
    f.write("FROM busybox-base\nWORKDIR /app\nCOPY . /app\nRUN ls /app | wc -l > /count\nCMD [\"sh\"]\n")
PY
}

for n in ${SIZES_FILES-5000 20000 80000}; do
  echo "scale.sh: context of $n files" >&2
  ctx=$work/ctx-$n
  context "$ctx" "$n"
  timed files "$n" cold kiln "$kiln" build -q -t files "$ctx"
  $docker_ok && timed files "$n" cold docker env DOCKER_BUILDKIT=1 "$docker" build --network host --no-cache -q -t files "$ctx"
  # Each tool's no-op follows its own build of the context as it is now (the other tool's
  # change would otherwise make it a rebuild).
  for r in $(seq "$rounds"); do
    echo "change $r" >>"$ctx/d1/e1/f1"
    timed files "$n" one-file kiln "$kiln" build -q -t files "$ctx"
    timed files "$n" no-op kiln "$kiln" build -q -t files "$ctx"
    if $docker_ok; then
      echo "change $r" >>"$ctx/d2/e2/f2"
      timed files "$n" one-file docker env DOCKER_BUILDKIT=1 "$docker" build --network host -q -t files "$ctx"
      timed files "$n" no-op docker env DOCKER_BUILDKIT=1 "$docker" build --network host -q -t files "$ctx"
    fi
  done
  rm -rf "$ctx"
done

for n in ${SIZES_LAYERS-10 100 500}; do
  echo "scale.sh: $n layers" >&2
  ctx=$work/layers-$n
  mkdir -p "$ctx"
  {
    echo "FROM busybox-base"
    for i in $(seq $((n - 1))); do echo "x$i" >"$ctx/f$i"; echo "COPY f$i /f$i"; done
    echo "RUN echo $n > /f$n"
  } >"$ctx/Dockerfile"
  timed layers "$n" build kiln "$kiln" build -q -t "layers$n" "$ctx"
  $docker_ok && timed layers "$n" build docker env DOCKER_BUILDKIT=1 "$docker" build --network host --no-cache -q -t "layers$n" "$ctx"
  for r in $(seq "$rounds"); do
    timed layers "$n" run kiln "$kiln" run --rm --network none "layers$n" true
    $docker_ok && timed layers "$n" run docker "$docker" run --rm --network none "layers$n" true
  done
done

for n in ${SIZES_TAGS-100 1000 10000}; do
  echo "scale.sh: $n tags" >&2
  python3 - "$work/store/kiln.db" "$n" <<'PY'
import sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
m = c.execute("SELECT manifest FROM refs WHERE name LIKE '%busybox-base%'").fetchone()[0]
c.execute("DELETE FROM refs WHERE name LIKE 'docker.io/scale/%'")
c.executemany("INSERT INTO refs(name, manifest, updated) VALUES (?, ?, ?)",
              [(f"docker.io/scale/t{i}:latest", m, int(time.time())) for i in range(n)])
# A refs change index.json has not seen: the next kiln tag regenerates it whole.
c.execute("UPDATE counters SET value = value + 1 WHERE name = 'refs'")
c.commit()
PY
  "$kiln" tag busybox-base scale/warm:1 >/dev/null
  for r in $(seq "$rounds"); do
    timed tags "$n" tag kiln "$kiln" tag busybox-base "scale/new:$r"
    timed tags "$n" images kiln "$kiln" images
    timed tags "$n" rmi kiln "$kiln" rmi "scale/new:$r"
  done
  # index.json lists every tag (the timed commands spliced a file of this size).
  python3 -c 'import json, sys; n = len(json.load(open(sys.argv[1]))["manifests"]); sys.exit(n < int(sys.argv[2]))' "$work/store/index.json" "$n" ||
    { echo "scale.sh: index.json does not list the $n tags" >&2; exit 1; }
done

# A big store: STORE_IMAGES images of (STORE_BLOBS / STORE_IMAGES - 2) layers each, one tag
# each, and STORE_CACHE step-cache entries on those layers, written straight into a fresh store's
# tables and blob files (tiny blobs: these commands read rows, not layers).
if [[ -n ${STORE_IMAGES-10000} ]]; then
  ni=${STORE_IMAGES:-10000} nc=${STORE_CACHE:-100000} nb=${STORE_BLOBS:-1000000}
  echo "scale.sh: a store of $ni images, $nc cache entries, $nb blobs" >&2
  big=$work/big
  KILN_ROOT=$big "$kiln" images >/dev/null
  python3 - "$big" "$ni" "$nc" "$nb" <<'PY'
import hashlib, json, os, sqlite3, sys, time
root, n_images, n_cache, n_blobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
layers_per = max(1, (n_blobs - 2 * n_images) // n_images)
bdir = f"{root}/blobs/sha256"
db = sqlite3.connect(f"{root}/kiln.db")
db.execute("PRAGMA synchronous=OFF")
now = int(time.time())
def blob(data, mt):
    h = hashlib.sha256(data).hexdigest()
    with open(f"{bdir}/{h}", "wb") as f:
        f.write(data)
    return "sha256:" + h
blobs, layers, images, il, refs, cache = [], [], [], [], [], []
all_layers = []
for i in range(n_images):
    ls = []
    for j in range(layers_per):
        data = f"layer {i} {j}\n".encode()
        d = blob(data, "")
        ls.append((d, len(data)))
        blobs.append((d, len(data), "application/vnd.oci.image.layer.v1.tar+zstd", now))
        layers.append((d, d, "application/vnd.oci.image.layer.v1.tar+zstd", len(data), len(data)))
    all_layers.extend(ls)
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                      "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [d for d, _ in ls]}}).encode()
    c = blob(cfg, "")
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": d, "size": s} for d, s in ls]}).encode()
    m = blob(man, "")
    blobs.append((c, len(cfg), "application/vnd.oci.image.config.v1+json", now))
    blobs.append((m, len(man), "application/vnd.oci.image.manifest.v1+json", now))
    images.append((m, c, "application/vnd.oci.image.manifest.v1+json", now, now, sum(s for _, s in ls)))
    il.extend((m, j, d) for j, (d, _) in enumerate(ls))
    refs.append((f"docker.io/store/i{i}:latest", m, now))
for k in range(n_cache):
    d = all_layers[k % len(all_layers)][0]
    key = hashlib.blake2b(f"key {k}".encode(), digest_size=32).hexdigest()
    parent = hashlib.blake2b(f"parent {k}".encode(), digest_size=32).hexdigest()
    cache.append((key, f"slot{k % 5000}", parent, d, None, f"RUN echo {k}", "{}", now - k, now - k, 0, all_layers[k % len(all_layers)][1]))
db.executemany("INSERT OR IGNORE INTO blobs(digest, size, media_type, created) VALUES (?,?,?,?)", blobs)
db.executemany("INSERT OR IGNORE INTO layers(digest, diff_id, media_type, size, uncompressed_size) VALUES (?,?,?,?,?)", layers)
db.executemany("INSERT INTO images(manifest, config, media_type, created, added, size) VALUES (?,?,?,?,?,?)", images)
db.executemany("INSERT INTO image_layers(manifest, idx, layer) VALUES (?,?,?)", il)
db.executemany("INSERT INTO refs(name, manifest, updated) VALUES (?,?,?)", refs)
db.executemany("INSERT INTO step_cache(key, slot, parent, layer, chain_id, instruction, inputs, created, last_used, hits, layer_size) VALUES (?,?,?,?,?,?,?,?,?,?,?)", cache)
# A refs change index.json has not seen: the next kiln tag regenerates it whole.
db.execute("UPDATE counters SET value = value + 1 WHERE name = 'refs'")
db.commit()
print(f"{len(images)} images, {len(blobs)} blobs, {len(cache)} cache entries", file=sys.stderr)
PY
  bk() { KILN_ROOT=$big "$kiln" "$@"; }
  bk tag store/i0 store/warm:1 >/dev/null
  python3 -c 'import json, sys; n = len(json.load(open(sys.argv[1]))["manifests"]); sys.exit(n < int(sys.argv[2]))' "$big/index.json" "$ni" ||
    { echo "scale.sh: index.json does not list the $ni tags" >&2; exit 1; }
  for r in $(seq "$rounds"); do
    for c in images ps "cache ls" "system df"; do
      timed store "$ni" "${c// /-}" kiln bk $c
    done
    timed store "$ni" tag kiln bk tag store/i1 "store/new:$r"
    timed store "$ni" rmi-tag kiln bk rmi "store/new:$r"
    # The image's last tag: the image goes, and GC runs.
    timed store "$ni" rmi-image kiln bk rmi "store/i$((r + 1))"
  done
  # Pruning: the oldest 1,000 entries, then the next 10,000 (last used one second apart).
  timed store "$ni" cache-prune-1000 kiln bk cache prune -a --filter "until=$((nc - 1000))s"
  timed store "$ni" cache-prune-10000 kiln bk cache prune -a --filter "until=$((nc - 11000))s"
  # 100, then 1,000 images untagged (their refs rows removed) and pruned.
  for d in 100 1000; do
    python3 - "$big/kiln.db" "$d" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute("SELECT name FROM refs WHERE name LIKE 'docker.io/store/i%' ORDER BY name DESC LIMIT ?", (int(sys.argv[2]),)).fetchall()
c.executemany("DELETE FROM refs WHERE name = ?", rows)
c.execute("UPDATE counters SET value = value + 1 WHERE name = 'refs'")
c.commit()
PY
    timed store "$ni" "system-prune-$d" kiln bk system prune -f
  done
fi

for n in ${SIZES_CONTAINERS-50 500}; do
  echo "scale.sh: $n containers" >&2
  t0=${EPOCHREALTIME/./}
  for i in $(seq "$n"); do "$kiln" run -d --network none busybox-base sleep 100000 >/dev/null; done
  t1=${EPOCHREALTIME/./}
  echo "containers $n run-d-each kiln $(((t1 - t0) / 1000 / n))" >>"$work/times"
  # kiln's own processes (the supervisors), PSS per container.
  pss=$(for p in $(pgrep -f "__kiln-" || true); do awk '/^Pss:/ {s += $2} END {print s + 0}' "/proc/$p/smaps_rollup" 2>/dev/null || true; done | awk '{s += $1} END {print s + 0}')
  echo "containers $n pss-kib-each kiln $((pss / n))" >>"$work/times"
  for r in $(seq "$rounds"); do timed containers "$n" ps kiln "$kiln" ps; done
  t0=${EPOCHREALTIME/./}
  "$kiln" rm -f $("$kiln" ps -aq) >/dev/null
  t1=${EPOCHREALTIME/./}
  echo "containers $n rm-f-each kiln $(((t1 - t0) / 1000 / n))" >>"$work/times"
done

# Medians per (group, size, what, tool); a failure shows as "fails".
awk -v json="$out/scale.json" '
  { k = $1 " " $2 " " $3 " " $4; if (!(k in v)) order[++n] = k; v[k] = v[k] " " $5 }
  function median(s,   a, m, i, j, x) {
    m = split(s, a, " ")
    for (i = 1; i <= m; i++) if (a[i] == "fail") return "fails"
    for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
    return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
  }
  END {
    printf "| group | size | what | tool | median |\n|---|---|---|---|---|\n"
    printf "{\n  \"results\": [\n" > json
    for (i = 1; i <= n; i++) {
      split(order[i], f, " "); m = median(v[order[i]])
      unit = (f[3] ~ /pss/) ? " KiB" : " ms"
      printf "| %s | %s | %s | %s | %s%s |\n", f[1], f[2], f[3], f[4], m, (m == "fails" ? "" : unit)
      printf "    {\"group\": \"%s\", \"size\": %s, \"what\": \"%s\", \"tool\": \"%s\", \"median\": %s}%s\n", f[1], f[2], f[3], f[4], (m == "fails" ? "null" : m), (i < n ? "," : "") > json
    }
    printf "  ]\n}\n" > json
  }' "$work/times"
python3 benches/scale-chart.py "$out/scale.json" "$out/scale.svg" >/dev/null
echo
echo "wrote $out/scale.json and $out/scale.svg"
