#!/usr/bin/env bash
# Rootless and in-container build benchmark, all in the same run (hyperfine): kiln as root, kiln
# as an ordinary user (rootless), rootless `buildah bud --layers` and `podman build --layers` as
# that user, and kiln with --isolation=none inside a kiln container with Docker's default
# capabilities (cold only: a throwaway container starts from nothing). Not a test: run it by
# hand, as root, on an idle machine. It creates the user kiln-bench (with subordinate ranges)
# and removes it at the end.
#
#   benches/rootless.sh          # RUNS=5 by default
#
# Context and scenarios as benches/build.sh (5,000 small files and a 50 MiB file; cold, no-op,
# one file changed). Goal: rootless kiln at most 1.3x root kiln.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-5}
source benches/lib.sh
need rootless.sh buildah podman runc hyperfine newuidmap:uidmap pasta:passt busybox:busybox-static
build_kiln
user=kiln-bench
work=$(mktemp -d /var/tmp/kiln-rootless.XXXXXX)
chmod 755 "$work"
cleanup() {
  # The root store's default network has a bridge: reset, not just removed.
  if [[ -x $work/bin/kiln && -d $work/kiln ]]; then
    "$work/bin/kiln" --root "$work/kiln" system reset -f >/dev/null 2>&1 || true
  fi
  pkill -KILL -u "$user" 2>/dev/null || true
  sleep 0.3
  userdel -r "$user" 2>/dev/null || true
  rm -rf "$work" "/tmp/kiln-$uid"
}
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/sh "$user"
uid=$(id -u "$user")
trap cleanup EXIT
mkdir -p "$work/bin"
install -m 755 "$kiln" "$work/bin/kiln"
kiln=$work/bin/kiln
# Both sides start through the same launcher (setpriv, no PAM session), so only kiln differs.
as_user() { echo "setpriv --reuid=$user --regid=$user --init-groups env -i HOME=/home/$user PATH=/usr/bin:/bin:/usr/sbin:/sbin $*"; }
as_root() { echo "setpriv --reuid=0 --regid=0 --init-groups env -i HOME=/root PATH=/usr/bin:/bin:/usr/sbin:/sbin $*"; }

echo "generating the context in $work/ctx ..." >&2
ctx=$work/ctx
make_context "$ctx"
chmod -R a+rX "$ctx"
export KILN_ROOT=$work/kiln-base
fixtures/busybox/make-base.sh busybox-base "$kiln" >/dev/null
"$kiln" save -o "$work/base.tar" busybox-base
unset KILN_ROOT
chmod 644 "$work/base.tar"
eval "$(as_user "$kiln") load -i $work/base.tar" >/dev/null
eval "$(as_user buildah) pull -q oci-archive:$work/base.tar" >/dev/null
eval "$(as_user buildah) tag \$($(as_user buildah) images -q | head -1) busybox-base"

results=$work/results
mkdir -p "$results"
# Every timed command starts with the page cache synced, so none pays for the previous one's
# writeback (a build writes ~70 MB).
hf() { # name, prepare command, then hyperfine arguments
  local name=$1 prep=$2
  shift 2
  hyperfine --style basic --runs "$runs" --export-csv "$results/$name.csv" --prepare "$prep; sync" "$@" >&2
}

kr="$(as_root "$kiln") --root $work/kiln build -q -t bench $ctx"
ku="$(as_user "$kiln") build -q -t bench $ctx"
bu="$(as_user buildah) bud --runtime runc --layers -q -t bench $ctx"
pu="$(as_user podman) build --runtime runc --layers -q -t bench $ctx"
hf root-cold "rm -rf $work/kiln && cp -a $work/kiln-base $work/kiln" "$kr"
hf user-cold "$(as_user "$kiln") system reset -f >/dev/null; $(as_user "$kiln") load -i $work/base.tar >/dev/null" "$ku"
hf buildah-cold true "${bu/--layers/--layers --no-cache}"
hf podman-cold true "${pu/--layers/--layers --no-cache}"
for s in noop one; do
  prep=true
  [[ $s == one ]] && prep="echo change >> $ctx/d1/e1/f1"
  hf root-$s "$prep" --warmup 1 "$kr"
  hf user-$s "$prep" --warmup 1 "$ku"
  hf buildah-$s "$prep" --warmup 1 "$bu"
  hf podman-$s "$prep" --warmup 1 "$pu"
done
# In a kiln container, Docker's default capabilities: no namespaces, so RUN runs in place.
# The container: busybox with the kiln binary's shared libraries.
r=$work/runner
mkdir -p "$r/bin" "$r/etc" "$r/tmp"
cp /bin/busybox "$r/bin/"
for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -s busybox "$r/bin/$a"; done
for l in $(ldd "$kiln" | grep -o '/[^ ]*'); do mkdir -p "$r$(dirname "$l")"; cp -L "$l" "$r$l"; done
tar -C "$r" -czf "$work/runner.tgz" .
"$kiln" --root "$work/kiln" import "$work/runner.tgz" runner >/dev/null
hf inplace-cold true "$kiln --root $work/kiln run --rm -e container=kiln -v $kiln:/usr/local/bin/kiln:ro -v $ctx:/ctx:ro -v $work/base.tar:/base.tar:ro runner sh -c 'kiln load -i /base.tar >/dev/null 2>&1; kiln build -q --isolation=none -t bench /ctx'"

mean() { awk -F, 'NR == 2 { printf "%.4f", $2 }' "$results/$1.csv"; }
echo
echo "| scenario | kiln root | kiln rootless | rootless/root | buildah rootless | podman rootless |"
echo "|---|---|---|---|---|---|"
for s in cold noop one; do
  awk -v n="$s" -v r="$(mean root-$s)" -v u="$(mean user-$s)" -v b="$(mean buildah-$s)" -v p="$(mean podman-$s)" 'BEGIN {
    printf "| %s | %.1f ms | %.1f ms | %.2f | %.1f ms | %.1f ms |\n", n, r * 1000, u * 1000, u / r, b * 1000, p * 1000 }'
done
awk -v i="$(mean inplace-cold)" -v r="$(mean root-cold)" 'BEGIN {
  printf "\nin a kiln container, --isolation=none, cold (with the container start and the base load): %.1f ms (root cold: %.1f ms)\n", i * 1000, r * 1000 }'
