#!/usr/bin/env bash
# Start a two-node Ray cluster on this (Linux) machine for development: a head node and a
# worker node, each its own `ray start --block` in its own process group, so that
# `cluster/local_down.sh` can stop exactly these processes and nothing else.
#
#   cluster/local_up.sh            # then: export RAY_AUTH_MODE=token RAY_ADDRESS=...
#   cluster/local_down.sh
#
# Why each node has its own --temp-dir outside the working tree: two nodes sharing
# one temp dir share one runtime-resources cache, and the second node deletes the
# working_dir a `ray job submit --working-dir .` unpacked for the first.
# Why RAY_AUTH_MODE=token: once ~/.ray/auth_token exists (the first local ray.init
# writes it), a head started by `ray start` turns token auth on, and every other
# node and client must then send the token too.
#
# Settings (environment):
#   LANDMARKS_RAY_DIR        state, logs, PIDs           (default /tmp/landmarks-ray)
#   LANDMARKS_RAY_PORT_BASE  first of the fixed ports     (default 23790; uses base..base+19
#                            and two worker-port ranges base+100..base+299)
#   LANDMARKS_RAY_NUM_CPUS   CPUs each node advertises   (default 1)
#   LANDMARKS_RAY_WORKER_GPUS GPUs of the worker node     (default: detected; the head gets 0)
#   LANDMARKS_RAY_OBJECT_STORE_BYTES  per node            (default 1 GiB)
#   LANDMARKS_RAY_START_TIMEOUT  seconds to wait per node (default 180)
#   RAY_BIN                  the `ray` executable         (default: .venv/bin/ray, else PATH)
set -euo pipefail
set +m  # no job control: `setsid` below must run in place, keeping the recorded pid

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_DIR="${LANDMARKS_RAY_DIR:-/tmp/landmarks-ray}"
PORT_BASE="${LANDMARKS_RAY_PORT_BASE:-23790}"
NUM_CPUS="${LANDMARKS_RAY_NUM_CPUS:-1}"
WORKER_GPUS="${LANDMARKS_RAY_WORKER_GPUS:-}"
OBJECT_STORE_BYTES="${LANDMARKS_RAY_OBJECT_STORE_BYTES:-1073741824}"
START_TIMEOUT="${LANDMARKS_RAY_START_TIMEOUT:-180}"

die() { echo "local_up: $*" >&2; exit 1; }

for value in "$PORT_BASE" "$NUM_CPUS" "$OBJECT_STORE_BYTES" "$START_TIMEOUT" ${WORKER_GPUS:+"$WORKER_GPUS"}; do
    [[ "$value" =~ ^[0-9]+$ ]] || die "expected a non-negative integer, got '$value' (check the LANDMARKS_RAY_* variables)"
done
(( PORT_BASE >= 1024 && PORT_BASE + 299 <= 65535 )) \
    || die "LANDMARKS_RAY_PORT_BASE=$PORT_BASE: ports base..base+299 must lie in 1024..65535"

if [[ -z "${RAY_BIN:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/ray" ]]; then
        RAY_BIN="$REPO/.venv/bin/ray"
    else
        RAY_BIN="$(command -v ray || true)"
    fi
fi
[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || die "no 'ray' executable found: install the project (pip install -e '.[dev]') or set RAY_BIN"

# The temp dirs must not live inside the working tree that `ray job submit --working-dir .` uploads.
refuse_inside_repo() {
    local root
    for root in "$REPO" "$(cd "$REPO" && pwd -P)"; do
        case "$1/" in
            "$root/"*) die "LANDMARKS_RAY_DIR=$1 is inside the repository; choose a directory outside it" ;;
        esac
    done
}
case "$BASE_DIR" in /*) ;; *) BASE_DIR="$PWD/$BASE_DIR" ;; esac
refuse_inside_repo "$BASE_DIR"          # before creating anything there
mkdir -p "$BASE_DIR"
BASE_DIR="$(cd "$BASE_DIR" && pwd -P)"
refuse_inside_repo "$BASE_DIR"          # and through symlinks
HEAD_DIR="$BASE_DIR/head"
WORKER_DIR="$BASE_DIR/worker"

# Jobs run `python ...` with the PATH of the node that runs them: make it the project's Python.
RAY_BIN_DIR="$(dirname "$RAY_BIN")"
export PATH="$RAY_BIN_DIR:$PATH"
export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0
# On SIGTERM a node first drains (so Serve can move replicas) for up to 30 s by default; a
# development cluster has nothing to move, and local_down should not wait for it.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-3}"

GCS_PORT=$PORT_BASE
DASHBOARD_PORT=$((PORT_BASE + 1))
CLIENT_PORT=$((PORT_BASE + 2))
GCS_ADDRESS="127.0.0.1:$GCS_PORT"
DASHBOARD_URL="http://127.0.0.1:$DASHBOARD_PORT"

# alive_group PIDFILE: some process of the recorded group is running (zombies do not count).
alive_group() {
    [[ -f "$1" ]] || return 1
    ps -e -o pgid=,stat= | awk -v g="$(cat "$1")" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

print_usage() {
    cat <<EOF

Ray cluster up: head + worker on this machine (logs in $BASE_DIR).
  dashboard:   $DASHBOARD_URL
  GCS address: $GCS_ADDRESS

Token auth is on; export these before using the cluster:
  export RAY_AUTH_MODE=token
  export RAY_ADDRESS=$GCS_ADDRESS

  ray status
  ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain_synthetic_cpu.yaml data.path=...
  python jobs/regress.py --config ...      # connects to this cluster through RAY_ADDRESS

Schedule work on one node with the custom resources {"head_node": 1} / {"worker_node": 1}.
Stop it with: cluster/local_down.sh
EOF
}

if alive_group "$BASE_DIR/head.pid" && alive_group "$BASE_DIR/worker.pid"; then
    echo "local_up: already running (process groups $(cat "$BASE_DIR/head.pid") and $(cat "$BASE_DIR/worker.pid"))"
    print_usage
    exit 0
fi
if alive_group "$BASE_DIR/head.pid" || alive_group "$BASE_DIR/worker.pid"; then
    die "a half-started cluster is running from $BASE_DIR; run cluster/local_down.sh first"
fi
rm -f "$BASE_DIR/head.pid" "$BASE_DIR/worker.pid"

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in $(seq "$PORT_BASE" $((PORT_BASE + 19))); do
    ! port_in_use "$port" || die "port $port is in use; set LANDMARKS_RAY_PORT_BASE to a free range"
done

# `ray start` in token mode needs the token to exist already; this creates ~/.ray/auth_token once.
"$RAY_BIN" get-auth-token --generate >/dev/null 2>&1 || die "could not create the Ray auth token (ray get-auth-token --generate)"

# start_node NAME PIDFILE ARGS...: `setsid` makes `ray start --block` the leader of a new
# process group that holds every process of that node, so down can signal the group.
start_node() {
    local name=$1 pidfile=$2
    shift 2
    setsid "$RAY_BIN" start --block "$@" >"$BASE_DIR/$name.log" 2>&1 < /dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    # setsid makes the process a group leader (pid == pgid) before it execs ray; it does so in
    # place because, without job control, the background job is not a group leader already.
    local pgid="" tries=0
    while (( tries < 50 )); do
        pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
        [[ -z "$pgid" || "$pgid" == "$pid" ]] && break
        sleep 0.1
        tries=$((tries + 1))
    done
    if [[ -n "$pgid" && "$pgid" != "$pid" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        die "$name node: ray start (pid $pid) did not become the leader of its own process group"
    fi
}

# wait_for_nodes N: until N nodes are alive, or the timeout, or a node's ray start exits.
wait_for_nodes() {
    local want=$1 deadline=$((SECONDS + START_TIMEOUT)) pidfile
    while (( SECONDS < deadline )); do
        for pidfile in "$BASE_DIR"/*.pid; do
            [[ -f "$pidfile" ]] || continue
            if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                local name; name="$(basename "$pidfile" .pid)"
                echo "local_up: the $name node exited; last lines of $BASE_DIR/$name.log:" >&2
                tail -n 30 "$BASE_DIR/$name.log" >&2 || true
                return 1
            fi
        done
        local alive
        alive="$("$RAY_BIN" list nodes --address "$DASHBOARD_URL" --filter "state=ALIVE" --format json 2>/dev/null \
                 | grep -o '"node_id"' | wc -l || true)"
        if (( alive >= want )); then
            return 0
        fi
        sleep 2
    done
    echo "local_up: $want node(s) not alive after ${START_TIMEOUT}s (logs in $BASE_DIR)" >&2
    return 1
}

fail() {
    echo "local_up: $*; stopping what was started" >&2
    "$REPO/cluster/local_down.sh" >&2 || true
    exit 1
}

echo "local_up: starting the head node (temp dir $HEAD_DIR)"
start_node head "$BASE_DIR/head.pid" \
    --head --temp-dir "$HEAD_DIR" \
    --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$CLIENT_PORT" \
    --node-manager-port $((PORT_BASE + 3)) --object-manager-port $((PORT_BASE + 4)) \
    --dashboard-agent-listen-port $((PORT_BASE + 5)) --dashboard-agent-grpc-port $((PORT_BASE + 6)) \
    --metrics-export-port $((PORT_BASE + 7)) --runtime-env-agent-port $((PORT_BASE + 8)) \
    --min-worker-port $((PORT_BASE + 100)) --max-worker-port $((PORT_BASE + 199)) \
    --num-cpus "$NUM_CPUS" --num-gpus 0 --object-store-memory "$OBJECT_STORE_BYTES" \
    --resources '{"head_node": 1}' --disable-usage-stats
wait_for_nodes 1 || fail "the head node did not come up"

echo "local_up: starting the worker node (temp dir $WORKER_DIR)"
start_node worker "$BASE_DIR/worker.pid" \
    --address "$GCS_ADDRESS" --temp-dir "$WORKER_DIR" \
    --node-manager-port $((PORT_BASE + 11)) --object-manager-port $((PORT_BASE + 12)) \
    --dashboard-agent-listen-port $((PORT_BASE + 13)) --dashboard-agent-grpc-port $((PORT_BASE + 14)) \
    --metrics-export-port $((PORT_BASE + 15)) --runtime-env-agent-port $((PORT_BASE + 16)) \
    --min-worker-port $((PORT_BASE + 200)) --max-worker-port $((PORT_BASE + 299)) \
    --num-cpus "$NUM_CPUS" ${WORKER_GPUS:+--num-gpus "$WORKER_GPUS"} --object-store-memory "$OBJECT_STORE_BYTES" \
    --resources '{"worker_node": 1}' --disable-usage-stats
wait_for_nodes 2 || fail "the worker node did not join"

print_usage
