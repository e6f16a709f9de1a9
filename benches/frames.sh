#!/usr/bin/env bash
# What zstd:chunked layers cost and save against single-stream zstd (`--compression zstd:plain`),
# kiln against itself, interleaved in the same run, median of ROUNDS (default 7):
#
#   cold       a build into a store holding only the base
#   one-file   one small file changed, the previous build in the same store (the chunked build
#              copies the unchanged frames of its previous layer)
#
# on two contexts of the same shape (5,000 files of 1-4 KiB and one 50 MiB file, the build
# benchmark's Dockerfile): "random", the build benchmark's (bytes zstd cannot shrink), and "text"
# (text-like bytes that compress about 2.5:1). Prints a table; writes $OUT/frames.json (OUT
# defaults to benches/results). Not a test: run it by hand on an idle machine, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
results_setup 7
need frames.sh busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-frames.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "frames.sh: preparing in $work ..." >&2
make_context "$work/random"
# The same tree with text-like content.
python3 - "$work/random" "$work/text" <<'PY'
import os, random, shutil, sys
src, dst = sys.argv[1:3]
random.seed(7)
words = [b"layer ", b"kiln ", b"image ", b"build\n", b"cache ", b'{"k": ', b"42}, ", b"digest ", b"\t"]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += random.getrandbits(64).to_bytes(8, "little") if random.random() < 0.15 else random.choice(words)
    return bytes(out[:n])
for root, dirs, files in os.walk(src):
    rel = os.path.relpath(root, src)
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for f in files:
        s = os.path.join(root, f)
        d = os.path.join(dst, rel, f)
        if f == "Dockerfile":
            shutil.copy(s, d)
        else:
            open(d, "wb").write(text(os.path.getsize(s)))
PY
export KILN_ROOT=$work/base
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
unset KILN_ROOT
: >"$work/times"
# build CONTEXT MODE SCENARIO STORE
build() {
  local s e
  sync
  s=$(date +%s%N)
  "$kiln" --root "$4" build -q --compression "$2" -t bench "$work/$1" >/dev/null
  e=$(date +%s%N)
  echo "$1 $3 $2 $(((e - s) / 1000000))" >>"$work/times"
}
for ctx in random text; do
  for mode in zstd zstd:plain; do
    cp -a "$work/base" "$work/warm-$ctx-${mode/:/-}"
    "$kiln" --root "$work/warm-$ctx-${mode/:/-}" build -q --compression "$mode" -t bench "$work/$ctx" >/dev/null
  done
done
for round in $(seq "$rounds"); do
  echo "frames.sh: round $round/$rounds" >&2
  for ctx in random text; do
    for mode in zstd zstd:plain; do
      rm -rf "$work/cold" && cp -a "$work/base" "$work/cold"
      build "$ctx" "$mode" cold "$work/cold"
    done
    echo "$round" >>"$work/$ctx/d3/e3/f3"
    for mode in zstd zstd:plain; do
      build "$ctx" "$mode" one-file "$work/warm-$ctx-${mode/:/-}"
    done
  done
done
python3 - "$work/times" "$out/frames.json" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    ctx, scen, mode, ms = line.split()
    rows.setdefault((ctx, scen, mode), []).append(int(ms))
res = []
print("| build (2 cores, median ms) | zstd:chunked | zstd:plain | chunked / plain |")
print("|---|---|---|---|")
for ctx in ("random", "text"):
    for scen in ("cold", "one-file"):
        c = statistics.median(rows[(ctx, scen, "zstd")])
        p = statistics.median(rows[(ctx, scen, "zstd:plain")])
        print("| %s, %s content | %d | %d | %.2f |" % (scen, ctx, c, p, c / p))
        res.append({"context": ctx, "scenario": scen, "chunked_ms": c, "plain_ms": p})
json.dump(res, open(sys.argv[2], "w"), indent=1)
PY
