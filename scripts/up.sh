#!/usr/bin/env bash
# Start the Executor Service on this host in the background: the Docker security proxy, the
# Celery worker and the API, each with its log and pid file in RUN_DIR. Returns once
# GET /health answers 200. A process whose pid file names a live process is left as it is.
# Run scripts/host-setup.sh and scripts/build-images.sh first (`make up` does).
#
# Environment: PORT (8083), PROXY_LISTEN (127.0.0.1:2375), PROXY_METRICS_LISTEN (127.0.0.1:9102;
# empty: off), PROXY_UPSTREAM
# (unix:///var/run/docker.sock), REDIS_URL (redis://localhost:6379/0), RUN_DIR (.run),
# UP_TIMEOUT (seconds to wait for /health, 120), EXECUTOR_PROXY_TOKEN_FILE (RUN_DIR/proxy.token);
# EXECUTOR_* settings pass through.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

PORT=${PORT:-8083}
PROXY_LISTEN=${PROXY_LISTEN:-127.0.0.1:2375}
UP_TIMEOUT=${UP_TIMEOUT:-120}

[[ -x $VENV/bin/python ]] || die "no virtualenv at $(rel "$VENV"); run 'make setup' first"

# Where the worker and API reach the proxy: a wildcard listen address is reached on loopback.
proxy_host=${PROXY_LISTEN%:*}
proxy_port=${PROXY_LISTEN##*:}
case $proxy_host in
"" | 0.0.0.0 | "*") proxy_host=127.0.0.1 ;;
"[::]" | "::") proxy_host="[::1]" ;;
esac
proxy_url=http://$proxy_host:$proxy_port
# The secret proxy, worker and API share (see executor/proxyauth.py): EXECUTOR_PROXY_TOKEN when
# set, else a file in RUN_DIR that the proxy creates with a random token on its first start.
secret_env=("EXECUTOR_PROXY_TOKEN_FILE=${EXECUTOR_PROXY_TOKEN_FILE:-$RUN_DIR/proxy.token}")
service_env=(
	"DOCKER_HOST=tcp://$proxy_host:$proxy_port"
	"REDIS_URL=$REDIS_URL"
	"PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}"
	"${secret_env[@]}"
)

# start NAME COMMAND...: start NAME unless its pid file names a live process of that kind.
start() {
	local name=$1 pidf=$RUN_DIR/$1.pid
	shift
	if pid_alive "$pidf" "${PROCESS_PATTERN[$name]}"; then
		log "$name: already running (pid $(<"$pidf"))"
		return
	fi
	spawn "$RUN_DIR/$name.log" "$pidf" "$@"
	log "$name: started (pid $(<"$pidf"), log $(rel "$RUN_DIR/$name.log"))"
}

# check_alive NAME...: fail with the log of the first process that has exited.
check_alive() {
	local name
	for name in "$@"; do
		if ! pid_alive "$RUN_DIR/$name.pid" "${PROCESS_PATTERN[$name]}"; then
			tail_log "$RUN_DIR/$name.log"
			die "$name exited; see $(rel "$RUN_DIR/$name.log") (run 'make down' to stop the rest)"
		fi
	done
}

# wait_ok NAME URL WANT TIMEOUT PROCESS...: poll URL until it answers WANT (a status, or "any"
# for any HTTP answer), while PROCESSes live.
wait_ok() {
	local name=$1 url=$2 want=$3 timeout=$4 deadline status=000 p
	shift 4
	deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		check_alive "$@"
		status=$(http_status "$url")
		[[ $status == "$want" || ($want == any && $status != 000) ]] && return 0
		sleep 0.5
	done
	for p in "$@"; do tail_log "$RUN_DIR/$p.log" 20; done
	die "$name: GET $url did not answer $want within ${timeout}s (last status $status); run 'make down' to stop what started"
}

start proxy env "PROXY_LISTEN=$PROXY_LISTEN" "PROXY_UPSTREAM=$PROXY_UPSTREAM" \
	"PROXY_AUDIT_LOG=${PROXY_AUDIT_LOG:-$RUN_DIR/audit.jsonl}" \
	"PROXY_METRICS_LISTEN=${PROXY_METRICS_LISTEN-127.0.0.1:9102}" \
	"PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}" "${secret_env[@]}" "$VENV/bin/python" -m executor.proxy
# The proxy answers anyone (401 without the credential): any answer means it listens.
wait_ok proxy "$proxy_url/_ping" any 30 proxy

start worker env "${service_env[@]}" "$VENV/bin/celery" -A worker worker --loglevel=INFO
# XDG_RUNTIME_DIR: gunicorn's control socket goes to RUN_DIR, not a path shared with every
# other gunicorn of this user (~/.gunicorn).
start api env "${service_env[@]}" "PORT=$PORT" "XDG_RUNTIME_DIR=$RUN_DIR" "$VENV/bin/gunicorn" -b "0.0.0.0:$PORT" api:app
wait_ok api "http://127.0.0.1:$PORT/health" 200 "$UP_TIMEOUT" proxy worker api

log "up: API http://127.0.0.1:$PORT (health 200), worker, proxy $proxy_url; logs and pids in $(rel "$RUN_DIR")/; 'make down' stops them"
