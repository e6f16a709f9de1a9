# Shared by the benchmark scripts: sourced from the repository root.

# need SCRIPT TOOL...: installs the Debian packages of the missing tools (TOOL is a binary, or
# BINARY:PACKAGE when they differ) as root; without root, names them and exits.
need() {
  local script=$1 tool bin pkg
  local missing=()
  shift
  for tool in "$@"; do
    bin=${tool%%:*}
    pkg=${tool##*:}
    command -v "$bin" >/dev/null || [[ -x /bin/$bin ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "$script: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# results_setup DEFAULT_ROUNDS: sets $rounds (ROUNDS, else the default) and $out (OUT, else
# benches/results), and makes $out.
results_setup() {
  rounds=${ROUNDS:-$1}
  out=${OUT:-$PWD/benches/results}
  mkdir -p "$out"
}

# build_kiln: a release build of kiln; sets $kiln to it.
build_kiln() {
  cargo build --release -q
  kiln=$PWD/target/release/kiln
}

# make_context DIR: the build benchmark's context: 5,000 files of 1-4 KiB in nested directories,
# one 50 MiB file, and the Dockerfile (FROM busybox-base, WORKDIR, COPY . /app, RUN, ENV,
# EXPOSE, CMD).
make_context() {
  local ctx=$1 i d
  mkdir -p "$ctx"
  for i in $(seq 0 4999); do
    d=$ctx/d$((i % 50))/e$((i % 7))
    [[ -d $d ]] || mkdir -p "$d"
    head -c $((1024 + (i * 7919) % 3072)) /dev/urandom >"$d/f$i"
  done
  head -c 50M /dev/urandom >"$ctx/big.bin"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM busybox-base
WORKDIR /app
COPY . /app
RUN find /app -type f | wc -l > /count
ENV NAME World
EXPOSE 80
CMD ["sh","-c","echo hi"]
DOCKERFILE
}

# start_registry DIR PORT: Debian's docker-registry on 127.0.0.1:PORT, storing under
# DIR/registry (its config is DIR/registry.yml); returns once it answers.
start_registry() {
  cat >"$1/registry.yml" <<CONFIG
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $1/registry
http:
  addr: 127.0.0.1:$2
CONFIG
  docker-registry serve "$1/registry.yml" >/dev/null 2>&1 &
  until curl -s "http://127.0.0.1:$2/v2/" >/dev/null; do sleep 0.02; done
}
