#!/usr/bin/env bash
# Prepare this host for the Executor Service: install the Debian packages it needs, start a
# Docker engine and Redis when none answers, and create or refresh the virtualenv .venv.
# Idempotent and quick when everything is already in place.
#
# Usage: scripts/host-setup.sh [packages] [docker] [redis] [venv]   (no argument: all four)
#
# Environment:
#   PROXY_UPSTREAM  the Docker engine (default unix:///var/run/docker.sock); a dockerd is
#                   started only for that default socket
#   REDIS_URL       default redis://localhost:6379/0; a redis-server is started only when the
#                   URL points at this host
#   RUN_DIR         logs, pid files and the generated daemon config (default .run)
#   PYTHON          the interpreter that creates .venv (default python3)
#   DOCKER_START_TIMEOUT  seconds to wait for a dockerd we started (default 90)
#
# What this script starts is recorded in RUN_DIR (dockerd.pid, redis.pid) so that
# scripts/down.sh stops exactly that and nothing else.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

PYTHON=${PYTHON:-python3}
DOCKER_START_TIMEOUT=${DOCKER_START_TIMEOUT:-90}

# Two setups at once (make -j, two terminals) must not start two engines.
exec 9>"$RUN_DIR/setup.lock"
flock -w 900 9 || die "another host-setup has held $(rel "$RUN_DIR")/setup.lock for 15 minutes"

APT_UPDATED=
apt_install() {
	[[ $(id -u) == 0 ]] || die "missing packages: $*; install them as root: apt-get install -y $*"
	command -v apt-get >/dev/null || die "missing packages: $*; this host has no apt-get, install their equivalents by hand"
	local logf=$RUN_DIR/apt.log
	# No questions, and no service restarts by needrestart on a shared host.
	export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
	if [[ -z $APT_UPDATED ]]; then
		log "packages: apt-get update (log $(rel "$logf"))"
		if ! apt-get update >>"$logf" 2>&1; then
			tail_log "$logf" 20
			die "apt-get update failed"
		fi
		APT_UPDATED=1
	fi
	log "packages: apt-get install $* (log $(rel "$logf"))"
	if ! apt-get install -y --no-install-recommends "$@" </dev/null >>"$logf" 2>&1; then
		tail_log "$logf" 20
		log "error: apt-get install $* failed"
		return 1
	fi
}

setup_packages() {
	# command -> Debian package that provides it
	local -A provides=(
		[docker]=docker.io [redis-cli]=redis-tools [debootstrap]=debootstrap
		[chromium]=chromium [ps]=procps [setsid]=util-linux
		# promtool checks and unit-tests deploy/prometheus/alerts.yml in the suite
		[promtool]=prometheus
		# the suite brings the compose stack up (tests/service/test_compose.py)
		[docker-compose]=docker-compose
	)
	local -A missing=()
	local cmd
	for cmd in "${!provides[@]}"; do
		command -v "$cmd" >/dev/null || missing[${provides[$cmd]}]=1
	done
	# The servers only where none answers already (Docker Desktop, a remote Redis...).
	if ! command -v dockerd >/dev/null && ! docker_ok; then missing[docker.io]=1; fi
	if ! command -v redis-server >/dev/null && ! redis_ok; then missing[redis-server]=1; fi
	# Debian's own python3 makes virtualenvs only with python3-venv.
	if [[ $(readlink -f "$(command -v "$PYTHON" || true)") == /usr/bin/python3* ]] &&
		! dpkg -s python3-venv >/dev/null 2>&1; then
		missing[python3-venv]=1
	fi
	if ((${#missing[@]})); then
		# shellcheck disable=SC2046
		apt_install $(printf '%s\n' "${!missing[@]}" | sort) || exit 1
	fi
	# gVisor is an optional extra runtime: its absence must not stop the setup, and a host
	# that cannot have it is not asked again on every run.
	local no_runsc=$RUN_DIR/runsc.unavailable
	if ! command -v runsc >/dev/null && [[ ! -e $no_runsc ]]; then
		if ! (apt_install runsc); then
			log "warning: could not install runsc (gVisor); the runsc runtime stays unavailable (delete $(rel "$no_runsc") to retry)"
			touch "$no_runsc"
		fi
	fi
	log "packages: all present"
}

setup_docker() {
	if docker_ok; then
		log "docker: engine answers at $DOCKER_HOST"
		return
	fi
	command -v dockerd >/dev/null || die "dockerd is not installed; run: scripts/host-setup.sh packages"
	[[ $DOCKER_HOST == "$DEFAULT_ENGINE" ]] ||
		die "no Docker engine answers at $DOCKER_HOST (PROXY_UPSTREAM); only a local engine on $DEFAULT_ENGINE is started by this script"
	local logf=$RUN_DIR/dockerd.log pidf=$RUN_DIR/dockerd.pid pid i spawned=
	# A dockerd that is exiting (or a zombie not yet reaped) does not count as running.
	if pid=$(ps -e -o pid=,stat=,comm= | awk '$3 == "dockerd" && $2 !~ /^Z/ { print $1; exit }') &&
		[[ -n $pid ]]; then
		log "docker: dockerd (pid $pid) runs but does not answer yet; waiting up to ${DOCKER_START_TIMEOUT}s"
	else
		[[ $(id -u) == 0 ]] || die "no Docker engine answers at $DOCKER_HOST and starting dockerd needs root"
		# An engine that died uncleanly leaves its pid file, and dockerd then refuses to start.
		if [[ -e /var/run/docker.pid ]]; then
			log "docker: removing stale /var/run/docker.pid (no dockerd process runs)"
			rm -f /var/run/docker.pid
		fi
		local config=$RUN_DIR/docker-daemon.json
		write_daemon_config >"$config"
		log "docker: starting dockerd (config $(rel "$config"), log $(rel "$logf"))"
		spawn "$logf" "$pidf" dockerd --config-file "$config"
		pid=$(<"$pidf")
		spawned=1
	fi
	for ((i = 0; i < DOCKER_START_TIMEOUT * 2; i++)); do
		if docker_ok; then
			log "docker: engine answers (dockerd pid $pid)"
			return
		fi
		if ! ps -o stat= -p "$pid" 2>/dev/null | grep -qv '^Z'; then
			if [[ -z $spawned ]]; then
				# Someone else's dockerd was shutting down (e.g. right after `make down`).
				log "docker: dockerd (pid $pid) exited; starting one"
				setup_docker
				return
			fi
			rm -f "$pidf"
			tail_log "$logf"
			die "dockerd (pid $pid) exited before answering; see $(rel "$logf")"
		fi
		sleep 0.5
	done
	tail_log "$logf"
	docker info 2>&1 | tail -n 5 >&2 || true
	die "dockerd (pid $pid) did not answer 'docker info' within ${DOCKER_START_TIMEOUT}s"
}

# The engine's configuration: ours, not /etc/docker/daemon.json. The default runtime stays
# runc; gVisor is registered as the extra runtime "runsc", with its own networking disabled
# and the container's seccomp profile enforced inside the sandbox (runsc ignores it otherwise).
write_daemon_config() {
	local runsc
	if runsc=$(command -v runsc); then
		cat <<EOF
{
  "runtimes": {
    "runsc": {"path": "$runsc", "runtimeArgs": ["--network=none", "--oci-seccomp"]}
  }
}
EOF
	else
		echo '{}'
	fi
}

setup_redis() {
	if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null; then
		die "redis-server or redis-cli is not installed; run: scripts/host-setup.sh packages"
	fi
	if redis_ok; then
		log "redis: answers at $REDIS_URL"
		return
	fi
	# redis://[user:password@]host[:port][/db]
	local scheme=${REDIS_URL%%://*} hostport host port
	hostport=${REDIS_URL#*://}
	hostport=${hostport##*@}
	hostport=${hostport%%/*}
	if [[ $hostport == \[*\]* ]]; then # [::1]:6379
		host=${hostport%%]*}]
		port=${hostport#"$host"}
		port=${port#:}
	else
		host=${hostport%%:*}
		port=${hostport#"$host"}
		port=${port#:}
	fi
	port=${port:-6379}
	[[ $scheme == redis ]] || die "Redis at $REDIS_URL does not answer; only a plain redis:// URL on this host is started by this script"
	case $host in
	localhost | 127.0.0.1 | "[::1]") ;;
	*) die "Redis at $REDIS_URL does not answer, and $host is not this host: start it there" ;;
	esac
	[[ $port =~ ^[0-9]+$ ]] || die "cannot read a port from REDIS_URL=$REDIS_URL"

	local logf=$RUN_DIR/redis.log pidf=$RUN_DIR/redis.pid i
	log "redis: starting redis-server on port $port (log $(rel "$logf"))"
	rm -f "$pidf"
	# A cache for a queue and results: no persistence, loopback only. It daemonizes and
	# writes redis.pid itself; that file is our record that we started it. Errors before it
	# opens its log file go to the same file.
	# shellcheck disable=SC2094
	redis-server --port "$port" --bind 127.0.0.1 -::1 --daemonize yes \
		--pidfile "$pidf" --logfile "$logf" --dir "$RUN_DIR" \
		--save '' --appendonly no </dev/null >>"$logf" 2>&1 9>&- ||
		{
			tail_log "$logf"
			die "redis-server failed to start"
		}
	for ((i = 0; i < 100; i++)); do
		if redis_ok; then
			log "redis: answers at $REDIS_URL (pid $(cat "$pidf" 2>/dev/null || echo '?'))"
			return
		fi
		sleep 0.1
	done
	tail_log "$logf"
	die "redis-server did not answer at $REDIS_URL within 10 s"
}

setup_venv() {
	local reqs=() f stamp want
	for f in requirements.txt requirements-dev.txt; do
		if [[ -f $f ]]; then
			reqs+=("$f")
		else
			log "venv: warning: $f not found; not installed"
		fi
	done
	stamp=$VENV/.requirements.sha256
	want=$(cat "${reqs[@]}" /dev/null | sha256sum | cut -d' ' -f1)
	if "$VENV/bin/python" -c '' 2>/dev/null && [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
		log "venv: $(rel "$VENV") is up to date"
		return
	fi
	if ! "$VENV/bin/python" -c '' 2>/dev/null; then
		command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH to create $(rel "$VENV") with (set PYTHON=...)"
		log "venv: creating $(rel "$VENV") with $PYTHON ($("$PYTHON" --version 2>&1))"
		rm -rf "$VENV"
		"$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed"
	fi
	if ((${#reqs[@]})); then
		log "venv: installing ${reqs[*]}"
		local args=()
		for f in "${reqs[@]}"; do args+=(-r "$f"); done
		"$VENV/bin/pip" install --progress-bar off "${args[@]}" ||
			die "pip install ${args[*]} failed (see above)"
	fi
	echo "$want" >"$stamp"
}

components=("$@")
((${#components[@]})) || components=(packages docker redis venv)
for component in "${components[@]}"; do
	case $component in
	packages | docker | redis | venv) "setup_$component" ;;
	*) die "unknown component '$component' (expected: packages docker redis venv)" ;;
	esac
done
