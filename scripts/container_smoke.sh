#!/usr/bin/env bash
# `make container-test`: build the images from the Dockerfile and run the real docker-compose.yml
# on podman, as an operator would, on a machine without a Docker engine.
#
#   1. installs what it needs from Debian when missing (buildah, podman, runc, catatonit,
#      mmdebstrap, docker-compose, CNI's dnsname plugin);
#   2. builds the serving and training images with `podman build --format docker` (HEALTHCHECK
#      survives) from the real base image when it can be pulled, otherwise from a local bookworm
#      base made with `mmdebstrap --variant=minbase` (said in the log, and labelled
#      localhost/d2l-standin/...); pip inside the build uses the host's pip configuration
#      (`pip config list`), bind-mounted read-only with the local folders it names;
#   3. checks the images (size, uid, HEALTHCHECK, no training stack in the serving image);
#   4. runs docker-compose.yml through `podman system service` with Debian's docker-compose:
#      train completes, server healthy, a Predict call from the host, Prometheus up == 1 with
#      the rules loaded, the loadtest profile passes, the server drains and exits 0, `down -v`;
#   5. stops every process it started and removes its storage (KEEP_IMAGES=1 keeps it).
#
# Everything lives under one temporary directory (its own storage root, network configs and
# socket); published ports bind 127.0.0.1 only. Without root or apt-get it skips, except under
# CI=true, where anything missing is a failure. Environment: KEEP_IMAGES=1, SERVING_MAX_MB
# (default 400), CONTAINER_TEST_TMP (parent of the temporary directory, default /tmp),
# STANDIN_BASE_TAR (keep the mmdebstrap tarball there and reuse it on the next run).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-.venv/bin/python}
SERVING_MAX_MB=${SERVING_MAX_MB:-400}
PYTHON_IMAGE=python:3.11-slim-bookworm # the Dockerfile's default base
STANDIN=localhost/d2l-standin
T0=$(date +%s)

log() { printf '[container-test +%3ds] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
skip() {
  if [ "${CI:-}" = true ]; then die "$* (CI=true: a missing tool is a failure)"; fi
  log "SKIP: $*"
  exit 0
}

# --- 1. tools -------------------------------------------------------------------------------
declare -A PACKAGE_OF=(
  [buildah]=buildah [podman]=podman [runc]=runc [catatonit]=catatonit
  [mmdebstrap]=mmdebstrap [docker-compose]=docker-compose [curl]=curl
)
missing=()
for cmd in "${!PACKAGE_OF[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${PACKAGE_OF[$cmd]}")
done
# CNI's dnsname plugin lets compose services find each other by name (server:8001).
[ -x /usr/lib/cni/dnsname ] || missing+=(golang-github-containernetworking-plugin-dnsname)
[ "$(id -u)" = 0 ] || skip "needs root (podman with a private storage root under $(id -un))"
[ -x "$PY" ] || skip "$PY missing (make venv)"
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "missing ${missing[*]} and no apt-get"
  log "installing from Debian: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "buildah $(buildah --version | cut -d' ' -f3), $(podman --version), $(docker-compose --version)"

# --- private engine state -------------------------------------------------------------------
WORK=$(mktemp -d "${CONTAINER_TEST_TMP:-/tmp}/d2l-container-test.XXXXXX")
mkdir -p "$WORK"/{root,run,tmp,cni,build}
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf CONTAINERS_CONF=$WORK/containers.conf
cat >"$CONTAINERS_STORAGE_CONF" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/root"
runroot = "$WORK/run"
EOF
# runc (crun fails on this cgroup setup), catatonit for `init: true`, no systemd (cgroupfs,
# file events), and explicit rlimits: podman raises them past the host's limits otherwise, and
# runc then fails (seen here: nofile equal to the shell's limit and nproc above 32768 failed).
limit() { local half=$(($1 / 2)); echo $((half < 16384 ? half : 16384)); }
NOFILE=$(limit "$(ulimit -Hn)") NPROC=$(limit "$(ulimit -Hu)")
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC") # builds need them
cat >"$CONTAINERS_CONF" <<EOF
[containers]
init_path = "/usr/bin/catatonit"
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
log_driver = "k8s-file"
[network]
network_backend = "cni"
network_config_dir = "$WORK/cni"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/events.log"
tmp_dir = "$WORK/tmp"
EOF
PODMAN=(podman --root "$WORK/root" --runroot "$WORK/run")
SOCKET=$WORK/podman.sock
export DOCKER_HOST=unix://$SOCKET
PROJECT=d2lsmoke$$
SERVICE_PID="" BRIDGE=""
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml)

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export D2LSERVE_PUBLISH_ADDRESS=127.0.0.1 D2LSERVE_AUTH_TOKEN=
D2LSERVE_GRPC_PORT=$(free_port) D2LSERVE_METRICS_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port) GRAFANA_PORT=$(free_port)
export D2LSERVE_GRPC_PORT D2LSERVE_METRICS_PORT PROMETHEUS_PORT GRAFANA_PORT

cleanup() {
  local status=$?
  set +e
  if [ -n "$SERVICE_PID" ]; then
    "${COMPOSE[@]}" --profile loadtest down -v --remove-orphans >"$WORK/down.log" 2>&1
    kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
  fi
  "${PODMAN[@]}" rm -af >/dev/null 2>&1
  # CNI keeps state outside the storage root: the network's address leases, and firewall
  # rules for its bridge (dnsname's DNS rule, the isolation rules) left when the network goes.
  rm -rf "/var/lib/cni/networks/${PROJECT}_default"
  if [ -n "$BRIDGE" ] && ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    iptables -S | grep -E -- "-[io] $BRIDGE( |$)" | sed 's/^-A /-D /' | while read -r rule; do
      eval "iptables $rule"
    done
  fi
  if [ "${KEEP_IMAGES:-0}" = 1 ]; then
    log "images kept: podman --root $WORK/root --runroot $WORK/run images" \
      "(CONTAINERS_CONF=$CONTAINERS_CONF)"
  else
    "${PODMAN[@]}" system reset -f >/dev/null 2>&1
    rm -rf "$WORK"
  fi
  log "done (exit $status) in $(($(date +%s) - T0)) s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- pip's configuration for the builds ------------------------------------------------------
# The host's effective settings (files and PIP_* variables) as one pip.conf, and every local
# path they name (find-links folders, file:// indexes, constraints, certificates), all
# bind-mounted read-only at the same place (a file:// index with its parent folder, where its
# pages point): no index host is written anywhere in the repository.
BUILD_MOUNTS=(-v "$WORK/build/pip.conf:/etc/pip.conf:ro")
while IFS= read -r path; do
  BUILD_MOUNTS+=(-v "$path:$path:ro")
done < <(python3 -m pip config list 2>/dev/null | python3 -c '
import os, re, sys
settings = {}  # later lines (PIP_* variables, ":env:") win, as in pip
for line in sys.stdin:
    key, _, value = line.strip().partition("=")
    if value:
        settings[key.split(".", 1)[1]] = value.strip("\x27\"")
with open(sys.argv[1], "w") as out:
    out.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
paths = set()
for word in (word for value in settings.values() for word in value.split()):
    if word.startswith("file://"):  # a local index: its pages link to files beside it
        word = os.path.dirname(word[len("file://"):].rstrip("/"))
    if word.startswith("/") and os.path.exists(word):
        paths.add(os.path.normpath(word))
print("\n".join(p for p in sorted(paths) if not any(p.startswith(q + "/") for q in paths)))
' "$WORK/build/pip.conf")
log "pip configuration for the builds: $(grep -c = "$WORK/build/pip.conf") settings," \
  "$((${#BUILD_MOUNTS[@]} / 2 - 1)) local paths mounted"

# --- 2. base images --------------------------------------------------------------------------
pullable() { timeout 120 "${PODMAN[@]}" pull -q "$1" >/dev/null 2>&1; }
BUILD_ARGS=()
if pullable "$PYTHON_IMAGE"; then
  log "base: $PYTHON_IMAGE (pulled)"
  BASE_KIND=real
  BASE_IMAGE=$PYTHON_IMAGE
else
  log "base: $PYTHON_IMAGE cannot be pulled; making a stand-in with mmdebstrap --variant=minbase"
  # Debian's python3.11 lives in /usr/bin; python:3.11-slim has `python` in /usr/local/bin,
  # which the Dockerfile calls, so the stand-in links it there.
  standin=$STANDIN/python:3.11-bookworm
  # The host's Debian mirror (a bookworm host: the stand-in is bookworm, like python:3.11-slim).
  APT_SOURCES=/etc/apt/sources.list.d/debian.sources
  [ -s "$APT_SOURCES" ] || APT_SOURCES=/etc/apt/sources.list
  base_tar=${STANDIN_BASE_TAR:-$WORK/base.tar}
  [ -s "$base_tar" ] && log "reusing $base_tar" || mmdebstrap --variant=minbase --include=python3.11,python3.11-venv,ca-certificates \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='ln -s /usr/bin/python3.11 "$1/usr/local/bin/python"' \
    --customize-hook='ln -s /usr/bin/python3.11 "$1/usr/local/bin/python3"' \
    bookworm "$base_tar" - <"$APT_SOURCES" >"$WORK/mmdebstrap.log" 2>&1 \
    || { tail -20 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
  "${PODMAN[@]}" import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change 'LABEL io.d2lserve.stand-in="mmdebstrap bookworm minbase + python3.11 (for python:3.11-slim-bookworm)"' \
    "$base_tar" "$standin" >/dev/null
  rm -f "$WORK/base.tar"
  BUILD_ARGS+=(--build-arg "PYTHON_IMAGE=$standin")
  BASE_KIND=stand-in
  BASE_IMAGE=$standin
fi

build() { # target tag
  log "building --target $1 -> $2"
  "${PODMAN[@]}" build --format docker --network host "${ULIMITS[@]}" --target "$1" -t "$2" \
    "${BUILD_ARGS[@]}" "${BUILD_MOUNTS[@]}" . >"$WORK/build-$1.log" 2>&1 \
    || { tail -40 "$WORK/build-$1.log" >&2; die "build of $1 failed (log above)"; }
}
build serving-cpu d2l-serve:cpu
build training d2l-serve:train
if pullable nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 && [ "$BASE_KIND" = real ]; then
  build serving-cuda d2l-serve:cuda
else
  log "serving-cuda not built: its CUDA base (or python:3.11-slim to copy CPython from) cannot be pulled"
fi

# --- 3. the images ---------------------------------------------------------------------------
mb() { "${PODMAN[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1e6}'; }
SERVING_MB=$(mb d2l-serve:cpu) TRAIN_MB=$(mb d2l-serve:train)
log "sizes (uncompressed, base: $BASE_KIND): d2l-serve:cpu ${SERVING_MB} MB, d2l-serve:train ${TRAIN_MB} MB"
[ "$SERVING_MB" -le "$SERVING_MAX_MB" ] || die "serving image ${SERVING_MB} MB > ${SERVING_MAX_MB} MB"
for image in d2l-serve:cpu d2l-serve:train; do
  user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = 10001:10001 ] || die "$image runs as '$user', expected 10001:10001"
done
check=$("${PODMAN[@]}" image inspect --format '{{json .Config.Healthcheck.Test}}' d2l-serve:cpu)
case $check in *serving.healthcheck*) ;; *) die "d2l-serve:cpu has no gRPC HEALTHCHECK: $check" ;; esac
RUN=("${PODMAN[@]}" run --rm --read-only --network none --no-healthcheck)
"${RUN[@]}" d2l-serve:cpu python -c '
import importlib.util, sys
found = [m for m in ("torch", "torchvision", "onnx", "onnxscript", "sklearn", "matplotlib")
         if importlib.util.find_spec(m)]
sys.exit(f"training stack in the serving image: {found}" if found else 0)' \
  || die "the serving image carries the training stack"
"${RUN[@]}" d2l-serve:cpu python -m serving --help >/dev/null || die "python -m serving --help"

# --- 4. the compose stack --------------------------------------------------------------------
if pullable prom/prometheus:v3.5.0; then
  export PROMETHEUS_IMAGE=prom/prometheus:v3.5.0
else
  # The real program: Debian's prometheus, in the local base, started as prom/prometheus is.
  export PROMETHEUS_IMAGE=$STANDIN/prometheus:debian
  log "prometheus: image cannot be pulled; stand-in $PROMETHEUS_IMAGE (Debian's prometheus)"
  "${PODMAN[@]}" build --format docker --network host "${ULIMITS[@]}" -t "$PROMETHEUS_IMAGE" \
    -f - "$WORK" >"$WORK/build-prometheus.log" 2>&1 <<EOF || { tail -20 "$WORK/build-prometheus.log" >&2; die "prometheus stand-in"; }
FROM $BASE_IMAGE
LABEL io.d2lserve.stand-in="Debian's prometheus for prom/prometheus (not the image)"
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
fi
if pullable grafana/grafana:12.2.0; then
  export GRAFANA_IMAGE=grafana/grafana:12.2.0
else
  # Not Grafana: proves only that compose starts the service with its provisioning folders and
  # dashboard mounted where Grafana reads them, on its port, behind its healthcheck.
  export GRAFANA_IMAGE=$STANDIN/grafana:placeholder
  log "grafana: image cannot be pulled; stand-in $GRAFANA_IMAGE (checks its mounts, answers /api/health; not Grafana)"
  "${PODMAN[@]}" build --format docker --network host "${ULIMITS[@]}" -t "$GRAFANA_IMAGE" -f - "$WORK" \
    >"$WORK/build-grafana.log" 2>&1 <<EOF || { tail -20 "$WORK/build-grafana.log" >&2; die "grafana stand-in"; }
FROM $BASE_IMAGE
LABEL io.d2lserve.stand-in="placeholder for grafana/grafana: mounts + /api/health only"
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /srv/api && echo '{"database":"ok"}' >/srv/api/health
USER nobody
CMD ["sh", "-c", "test -f /etc/grafana/provisioning/datasources/prometheus.yml && test -f /var/lib/grafana/dashboards/d2lserve.json && exec python3 -m http.server 3000 --directory /srv"]
EOF
fi

log "starting podman system service on $SOCKET"
"${PODMAN[@]}" system service --time=0 "unix://$SOCKET" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.2; done
[ -S "$SOCKET" ] || die "podman system service did not start"

log "compose up (train runs to completion first)"
"${COMPOSE[@]}" up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "compose up"; }
cid() { "${COMPOSE[@]}" ps -q "$1"; }
BRIDGE=$(python3 -c 'import json, sys
print(next(p["bridge"] for p in json.load(open(sys.argv[1]))["plugins"] if "bridge" in p))' \
  "$WORK/cni/${PROJECT}_default.conflist" 2>/dev/null) || true
train_exit=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$(cid train)")
[ "$train_exit" = 0 ] || { "${PODMAN[@]}" logs "$(cid train)" | tail -30 >&2; die "train exited $train_exit"; }
log "train exited 0: $("${PODMAN[@]}" logs "$(cid train)" 2>&1 | grep -ciE 'version|export') lines about exports"

# Without systemd nothing runs the healthchecks, so run them here (compose's
# `condition: service_healthy` reads the status they leave).
healthy() { # service seconds
  local deadline=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    "${PODMAN[@]}" healthcheck run "$(cid "$1")" >/dev/null 2>&1 && return 0
    sleep 3
  done
  return 1
}
healthy server 180 || { "${PODMAN[@]}" logs "$(cid server)" | tail -30 >&2; die "server never healthy"; }
log "server healthy (gRPC health: SERVING)"
for service in prometheus grafana; do
  healthy "$service" 60 || { "${PODMAN[@]}" logs "$(cid "$service")" | tail -20 >&2; die "$service never healthy"; }
done
log "prometheus and grafana healthy"

# The user's call from the host: list the models, classify with softmax and mlp, regress.
PYTHONPATH=$REPO "$PY" scripts/demo_call.py --target "127.0.0.1:$D2LSERVE_GRPC_PORT" >"$WORK/predict.log" 2>&1 \
  || { cat "$WORK/predict.log" >&2; die "Predict from the host failed"; }
log "Predict from the host: $(grep -c 'top-3' "$WORK/predict.log") classified rows, $(grep -c '^model ' "$WORK/predict.log") models listed"

# Prometheus scrapes the server (up == 1) and loaded every rule in deploy/prometheus.
"$PY" - "$PROMETHEUS_PORT" <<'EOF' || die "Prometheus checks failed"
import json, sys, time, urllib.parse, urllib.request
from pathlib import Path

import yaml

base = f"http://127.0.0.1:{sys.argv[1]}/api/v1"
get = lambda path: json.load(urllib.request.urlopen(base + path, timeout=5))["data"]
query = "/query?query=" + urllib.parse.quote('up{job="d2lserve"}')
deadline = time.monotonic() + 60
while (up := get(query)["result"]) == [] or up[0]["value"][1] != "1":
    if time.monotonic() > deadline:
        sys.exit(f"up{{job=\"d2lserve\"}} never 1: {up}")
    time.sleep(2)
loaded = sum(len(g["rules"]) for g in get("/rules")["groups"])
config = yaml.safe_load(Path("deploy/prometheus/prometheus.yml").read_text())
expected = sum(
    len(group["rules"])
    for name in config["rule_files"]
    for group in yaml.safe_load((Path("deploy/prometheus") / name).read_text())["groups"]
)
if loaded != expected or not loaded:
    sys.exit(f"{loaded} rules loaded; deploy/prometheus defines {expected}")
print(f"prometheus: up{{job=\"d2lserve\"}} == 1, {loaded} rules loaded", file=sys.stderr)
EOF

log "loadtest profile"
"${COMPOSE[@]}" --profile loadtest run --rm -T loadtest >"$WORK/loadtest.log" 2>&1 \
  || { tail -30 "$WORK/loadtest.log" >&2; die "loadtest profile failed"; }
tail -5 "$WORK/loadtest.log" >&2

log "stopping: the server drains and exits 0"
"${COMPOSE[@]}" stop >"$WORK/stop.log" 2>&1 || die "compose stop"
server_exit=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$(cid server)")
[ "$server_exit" = 0 ] || die "server exited $server_exit after SIGTERM"
"${COMPOSE[@]}" --profile loadtest down -v --remove-orphans >"$WORK/down.log" 2>&1 || die "down -v"
left=$("${PODMAN[@]}" ps -aq | wc -l) volumes=$("${PODMAN[@]}" volume ls -q | wc -l)
[ "$left" = 0 ] && [ "$volumes" = 0 ] || die "after down -v: $left containers, $volumes volumes left"
kill "$SERVICE_PID" && wait "$SERVICE_PID" 2>/dev/null || true
SERVICE_PID=""
log "OK: images built ($BASE_KIND base; serving ${SERVING_MB} MB, training ${TRAIN_MB} MB)," \
  "train -> server healthy -> Predict -> Prometheus up/rules -> loadtest -> down -v"
