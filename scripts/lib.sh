# shellcheck shell=bash
# Helpers shared by the scripts in this folder; each script sources this file first.
# It moves to the repository root, so every script works from any directory, and sets:
#   ROOT     the repository root
#   RUN_DIR  absolute path of the run folder (logs, pid files, generated configs), default .run
#   VENV     the project's virtualenv, .venv
#   DOCKER_HOST  the Docker engine itself (PROXY_UPSTREAM, default the local socket): these
#            scripts manage the engine, never the proxy in front of it
SCRIPT=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

RUN_DIR=${RUN_DIR:-.run}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
VENV=$ROOT/.venv

DEFAULT_ENGINE=unix:///var/run/docker.sock
PROXY_UPSTREAM=${PROXY_UPSTREAM:-$DEFAULT_ENGINE}
export DOCKER_HOST=$PROXY_UPSTREAM
REDIS_URL=${REDIS_URL:-redis://localhost:6379/0}

# What the command line of each process we start matches, also after it renames itself (celery
# and gunicorn set process titles when setproctitle is installed): a recycled pid is not ours.
# shellcheck disable=SC2034 # used by the scripts that source this file
declare -A PROCESS_PATTERN=(
	[proxy]='executor[.]proxy' [worker]='celery' [api]='gunicorn|api:app'
	[redis]='redis-server' [dockerd]='dockerd'
)

log() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
	exit 1
}

# rel PATH: PATH relative to the repository root, for messages.
rel() { printf '%s' "${1#"$ROOT"/}"; }

# tail_log FILE [LINES]: the end of a log file, framed, on stderr.
tail_log() {
	local file=$1 lines=${2:-40}
	if [[ -s $file ]]; then
		printf -- '----- last %s lines of %s -----\n' "$lines" "$(rel "$file")" >&2
		tail -n "$lines" "$file" >&2
		printf -- '----- end of %s -----\n' "$(rel "$file")" >&2
	else
		printf -- '(%s is empty or missing)\n' "$(rel "$file")" >&2
	fi
}

# pid_alive PIDFILE PATTERN: true when PIDFILE names a live process whose command line
# matches the extended regex PATTERN (so a recycled pid is not taken for ours). A zombie
# (dead, not yet reaped) is not alive.
pid_alive() {
	local file=$1 pattern=$2 pid line
	[[ -s $file ]] || return 1
	pid=$(<"$file")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	line=$(ps -o stat=,args= -p "$pid" 2>/dev/null) || return 1
	line=${line#"${line%%[![:space:]]*}"}
	[[ -n $line && $line != Z* ]] && grep -Eq -- "$pattern" <<<"${line#* }"
}

# group_alive PGID: true while any process of the process group PGID is alive (not a zombie).
group_alive() {
	ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}

# spawn LOGFILE PIDFILE COMMAND...: start COMMAND in the background in a session of its own
# (so it outlives make and can be stopped as a group), output appended to LOGFILE, and its pid
# written to PIDFILE by the process itself before it execs COMMAND.
spawn() {
	local logf=$1 pidf=$2 i
	shift 2
	rm -f "$pidf"
	printf '===== %s: starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logf"
	# fd 9 is the setup lock: a long-lived child must not inherit it.
	# shellcheck disable=SC2016 # $$ and "$@" belong to the child shell
	setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' spawn "$pidf" "$@" </dev/null >>"$logf" 2>&1 9>&- &
	for ((i = 0; i < 50; i++)); do
		[[ -s $pidf ]] && return 0
		sleep 0.1
	done
	die "could not start $1: no pid after 5 s (see $(rel "$logf"))"
}

# stop_pidfile NAME PIDFILE PATTERN [GRACE_SECONDS]: stop the process named in PIDFILE if it is
# alive and matches PATTERN: TERM, then KILL to its whole process group after the grace period.
# Removes PIDFILE. A dead or foreign pid only has its stale file removed.
stop_pidfile() {
	local name=$1 file=$2 pattern=$3 grace=${4:-15} pid i
	if ! pid_alive "$file" "$pattern"; then
		if [[ -e $file ]]; then
			log "$name is not running; removing stale $(rel "$file")"
			rm -f "$file"
		fi
		return 1
	fi
	pid=$(<"$file")
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	# Wait for the whole group (gunicorn and celery children included) to go.
	for ((i = 0; i < grace * 10; i++)); do
		group_alive "$pid" || pid_alive "$file" "$pattern" || break
		sleep 0.1
	done
	if group_alive "$pid" || pid_alive "$file" "$pattern"; then
		log "$name still running after ${grace}s; sending KILL"
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			pid_alive "$file" "$pattern" || break
			sleep 0.1
		done
	fi
	rm -f "$file"
	return 0
}

docker_ok() { timeout 20 docker info >/dev/null 2>&1; }
redis_ok() { [[ $(timeout 5 redis-cli -u "$REDIS_URL" ping 2>/dev/null) == PONG ]]; }

# http_status URL: the HTTP status code of GET URL, or 000 when nothing answers.
http_status() {
	"$VENV/bin/python" - "$1" <<'EOF'
import sys
import urllib.error
import urllib.request

# Local addresses only: ignore any http_proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=5) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
except Exception:
    print("000")
EOF
}
