#!/usr/bin/env bash
# Stop the development cluster started by cluster/local_up.sh: exactly the process
# groups whose ids it recorded (worker first, then head), SIGTERM first and SIGKILL
# for whatever is still there after a grace period. Never `ray stop`, which would
# also stop every other Ray instance of this user on the machine.
#
# Settings (environment): LANDMARKS_RAY_DIR (default /tmp/landmarks-ray),
# LANDMARKS_RAY_STOP_GRACE seconds before SIGKILL (default 30).
set -euo pipefail

BASE_DIR="${LANDMARKS_RAY_DIR:-/tmp/landmarks-ray}"
GRACE="${LANDMARKS_RAY_STOP_GRACE:-30}"
[[ "$GRACE" =~ ^[0-9]+$ ]] || { echo "local_down: LANDMARKS_RAY_STOP_GRACE must be an integer, got '$GRACE'" >&2; exit 1; }

# group_alive PGID: some process of the group is running; zombies (exited, not yet
# reaped by their parent) do not count, they hold no resources.
group_alive() {
    ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

stop_group() {
    local name=$1 pidfile="$BASE_DIR/$1.pid"
    if [[ ! -f "$pidfile" ]]; then
        return 0
    fi
    local pgid
    pgid="$(cat "$pidfile")"
    if ! [[ "$pgid" =~ ^[0-9]+$ ]] || (( pgid <= 1 )); then
        echo "local_down: ignoring $pidfile: '$pgid' is not a process group id" >&2
        rm -f "$pidfile"
        return 0
    fi
    if group_alive "$pgid"; then
        echo "local_down: stopping the $name node (process group $pgid)"
        kill -TERM -- "-$pgid" 2>/dev/null || true
        local deadline=$((SECONDS + GRACE))
        while group_alive "$pgid" && (( SECONDS < deadline )); do
            sleep 0.5
        done
        if group_alive "$pgid"; then
            echo "local_down: the $name node ignored SIGTERM for ${GRACE}s; sending SIGKILL"
            kill -KILL -- "-$pgid" 2>/dev/null || true
            sleep 0.5
        fi
        if group_alive "$pgid"; then
            echo "local_down: process group $pgid survived SIGKILL" >&2
            return 1
        fi
    fi
    rm -f "$pidfile"
}

status=0
stop_group worker || status=1
stop_group head || status=1
if (( status == 0 )); then
    echo "local_down: stopped (logs kept in $BASE_DIR)"
fi
exit $status
