#!/usr/bin/env bash
# End-to-end build benchmark: kiln beside `buildah bud --layers` (runc) on the same context, in
# the same run, measured with hyperfine. Not a test: run it by hand on an idle machine.
#
#   benches/build.sh            # RUNS=5 by default
#
# Context: 5,000 small files (1-4 KiB) in nested directories plus one 50 MiB file. Dockerfile:
# FROM <busybox base>, WORKDIR /app, COPY . /app, RUN find /app -type f | wc -l > /count,
# ENV NAME World, EXPOSE 80, CMD ["sh","-c","echo hi"]. Scenarios:
#   cold     kiln: a fresh store holding only the base (empty step and stat caches);
#            buildah: --no-cache
#   no-op    rebuild with nothing changed
#   one-file append a line to one small file, rebuild
# Goals (kiln/buildah): cold <= 0.4, no-op <= 0.02 (and under 20 ms), one-file <= 0.2.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}

source benches/lib.sh
need build.sh buildah runc hyperfine busybox:busybox-static
build_kiln
work=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "generating the context in $work/ctx ..." >&2
ctx=$work/ctx
make_context "$ctx"

echo "making the base image ..." >&2
export KILN_ROOT=$work/kiln-base
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
"$kiln" save -o "$work/base.tar" busybox-base
unset KILN_ROOT
b=(buildah --root "$work/buildah" --runroot "$work/buildah-run")
"${b[@]}" pull -q "oci-archive:$work/base.tar" >/dev/null
"${b[@]}" tag "$("${b[@]}" images -q | head -1)" busybox-base
bud="${b[*]} bud --runtime runc --layers -q -t bench $ctx"

results=$work/results
mkdir -p "$results"
hf() { # name, then hyperfine arguments
  local name=$1
  shift
  hyperfine --style basic --runs "$runs" --export-csv "$results/$name.csv" "$@" >&2
}

# cold
hf kiln-cold --prepare "rm -rf $work/kiln && cp -a $work/kiln-base $work/kiln" \
  "$kiln --root $work/kiln build -q -t bench $ctx"
hf buildah-cold "${bud/--layers/--layers --no-cache}"
# no-op (the cold runs left warm caches)
hf kiln-noop --warmup 1 "$kiln --root $work/kiln build -q -t bench $ctx"
hf buildah-noop --warmup 1 "$bud"
# one file changed
hf kiln-one --prepare "echo change >> $ctx/d1/e1/f1" "$kiln --root $work/kiln build -q -t bench $ctx"
hf buildah-one --prepare "echo change >> $ctx/d1/e1/f1" "$bud"

mean() { awk -F, 'NR == 2 { printf "%.4f", $2 }' "$results/$1.csv"; }
echo
echo "| scenario | kiln | buildah bud --layers | kiln/buildah | goal |"
echo "|---|---|---|---|---|"
for s in cold:0.4 noop:0.02 one:0.2; do
  name=${s%%:*}
  goal=${s##*:}
  k=$(mean "kiln-$name")
  bb=$(mean "buildah-$name")
  awk -v n="$name" -v k="$k" -v b="$bb" -v g="$goal" 'BEGIN {
    printf "| %s | %.1f ms | %.1f ms | %.3f | <= %s |\n", n, k * 1000, b * 1000, k / b, g }'
done
