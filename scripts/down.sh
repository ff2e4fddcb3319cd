#!/usr/bin/env bash
# Stop what `make up` started on this host, and nothing else: the API, the worker and the proxy
# through their pid files in RUN_DIR; Redis and dockerd only when RUN_DIR records that the
# setup started them (redis.pid, dockerd.pid). TERM first, KILL after a grace period.
# Exits 0 when nothing was running.
#
# Environment: RUN_DIR (.run), STOP_GRACE (seconds before KILL, 20).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

grace=${STOP_GRACE:-20}
stopped=0
# stop NAME [GRACE]: stop the process recorded in RUN_DIR/NAME.pid, if it is alive and ours.
stop() {
	if stop_pidfile "$1" "$RUN_DIR/$1.pid" "${PROCESS_PATTERN[$1]}" "${2:-$grace}"; then
		stopped=$((stopped + 1))
	fi
}

# The API first (no new work comes in), then the worker, then the proxy it talks through.
stop api
stop worker
stop proxy
stop redis
# dockerd stops its containers before it exits: give it longer.
stop dockerd $((grace + 30))

if ((stopped == 0)); then
	log "nothing to stop (no live process recorded in $(rel "$RUN_DIR")/)"
else
	log "stopped $stopped process(es)"
fi
