#!/usr/bin/env bash
# Build the images the Executor Service needs, on the Docker engine (PROXY_UPSTREAM, default
# the local socket). Quick when nothing changed: Docker's build cache decides what to redo.
#
# Usage: scripts/build-images.sh [sandbox] [languages] [wheelhouse] [service]
#         (no argument: sandbox languages)
#   sandbox     the sandbox image executor-python:3.11 from images/python/Dockerfile, on top of
#               the base image python:3.11-slim. The base is pulled; where no registry can be
#               reached it is made from Debian bookworm's python3 with debootstrap and imported.
#   languages   one image per language of executor/languages.py (and the operator-approved
#               example python-data) from images/language/Dockerfile: the same base, the
#               language's Debian packages, the sandbox image's runner. With MISSING_ONLY=1,
#               only the images that do not exist yet. BUILD_JOBS builds at once (default 2).
#               LANGUAGES (e.g. c,python-data) builds only those; IMAGE_TAG tags each image
#               NAME:IMAGE_TAG instead of the registry's tag (a test build beside the real
#               ones: give them to the service with EXECUTOR_IMAGES, e.g. c=executor-c:TAG).
#   wheelhouse  wheelhouse/: the wheels of requirements.txt for the base image's interpreter,
#               made on the host with .venv's pip (pip cannot reach an index inside a build
#               everywhere), resolved with the image's environment markers, not the host's.
#   service     the service image (Dockerfile: API, worker and proxy, for docker-compose.yml),
#               installed offline from wheelhouse/.
#
# Environment: BASE_IMAGE (python:3.11-slim), EXECUTOR_PYTHON_IMAGE (executor-python:3.11),
# SERVICE_IMAGE (executor-service:latest), PULL_TIMEOUT (seconds, 60), DEBIAN_MIRROR (read
# from apt's sources on Debian, else http://deb.debian.org/debian), RUN_DIR (.run), PYTHON
# (python3, reads the language registry), MISSING_ONLY, BUILD_JOBS, LANGUAGES, IMAGE_TAG.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
SANDBOX_IMAGE=${EXECUTOR_PYTHON_IMAGE:-executor-python:3.11} # the service reads the same setting
SERVICE_IMAGE=${SERVICE_IMAGE:-executor-service:latest}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}
DEBIAN_SUITE=bookworm # the Debian release whose python3 is 3.11, as in python:3.11-slim

command -v docker >/dev/null || die "no docker command; run scripts/host-setup.sh first"
docker_ok || die "no Docker engine answers at $DOCKER_HOST; run scripts/host-setup.sh first"

# A CLI without the buildx plugin cannot use BuildKit; the classic builder does all we need.
if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! docker buildx version >/dev/null 2>&1; then
	export DOCKER_BUILDKIT=0
fi

# The Debian mirror apt already uses on this host, so debootstrap goes where apt may go.
debian_mirror() {
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
	local mirror=
	if grep -qs '^ID=debian' /etc/os-release; then
		# deb822 sources: the URIs of the stanza that lists the plain suite
		mirror=$(awk -v suite="$DEBIAN_SUITE" '
			/^[[:space:]]*$/ { if (uri != "" && has) { print uri; exit } uri = ""; has = 0; next }
			tolower($1) == "uris:" { uri = $2 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
			END { if (uri != "" && has) print uri }
		' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
		if [[ -z $mirror ]]; then
			mirror=$(awk -v suite="$DEBIAN_SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' \
				/etc/apt/sources.list 2>/dev/null || true)
		fi
	fi
	echo "${mirror:-http://deb.debian.org/debian}"
}

# python:3.11-slim made locally: Debian bookworm's python3 (the full package: ctypes, sqlite3,
# ssl), with the environment of the official image where it matters.
import_base() {
	command -v debootstrap >/dev/null || die "cannot pull $BASE_IMAGE and debootstrap is not installed; run scripts/host-setup.sh packages"
	[[ $(id -u) == 0 ]] || die "cannot pull $BASE_IMAGE, and making it with debootstrap needs root"
	local mirror rootfs logf=$RUN_DIR/debootstrap.log
	mirror=$(debian_mirror)
	rootfs=$(mktemp -d "${TMPDIR:-/tmp}/executor-rootfs.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$rootfs'" EXIT
	log "base: building $BASE_IMAGE with debootstrap ($DEBIAN_SUITE from $mirror; log $(rel "$logf"))"
	if ! debootstrap --variant=minbase --include=python3 "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$logf" 2>&1; then
		tail_log "$logf"
		die "debootstrap of $DEBIAN_SUITE from $mirror failed"
	fi
	# What an image does not need: downloaded packages, package lists, the build host's files.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
	tar -C "$rootfs" --numeric-owner -c . |
		docker import \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change 'ENV LANG=C.UTF-8' \
			--change 'CMD ["python3"]' \
			--message "debootstrap $DEBIAN_SUITE python3 from $mirror" \
			- "$BASE_IMAGE" >/dev/null ||
		die "docker import of the debootstrap tree as $BASE_IMAGE failed"
	rm -rf "$rootfs"
	trap - EXIT
	log "base: imported $BASE_IMAGE ($(docker run --rm "$BASE_IMAGE" python3 --version 2>&1))"
}

ensure_base() {
	if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
		return
	fi
	log "base: $BASE_IMAGE is missing; pulling it (up to ${PULL_TIMEOUT}s)"
	local pull_log=$RUN_DIR/pull.log
	if timeout "$PULL_TIMEOUT" docker pull "$BASE_IMAGE" >"$pull_log" 2>&1; then
		log "base: pulled $BASE_IMAGE"
		return
	fi
	log "base: pull failed ($(tail -n 1 "$pull_log"))"
	[[ $BASE_IMAGE == python:3.11-slim ]] ||
		die "cannot pull $BASE_IMAGE, and only python:3.11-slim can be made locally"
	import_base
}

# build NAME DOCKERFILE TAG [docker build args...]: build from the repository root, output to
# RUN_DIR/build-NAME.log, shown when the build fails.
build() {
	local name=$1 dockerfile=$2 tag=$3 logf=$RUN_DIR/build-$1.log id
	shift 3
	if ! docker build --force-rm --file "$dockerfile" --tag "$tag" --build-arg "BASE=$BASE_IMAGE" "$@" . >"$logf" 2>&1; then
		tail_log "$logf"
		die "building $tag from $dockerfile failed"
	fi
	id=$(docker image inspect --format '{{.Id}}' "$tag")
	log "$name: $tag is ${id:7:12}"
}

build_sandbox() {
	[[ -f executor/runner.py ]] || die "executor/runner.py is missing: the sandbox image is built around it"
	ensure_base
	build sandbox images/python/Dockerfile "$SANDBOX_IMAGE"
}

# One image per entry of the language registry, BUILD_JOBS at a time; each build's log is
# RUN_DIR/build-NAME.log. Docker's cache makes a rebuild with nothing changed take seconds.
build_languages() {
	docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1 || build_sandbox
	local table name image packages setup failed=0 started
	table=$("${PYTHON:-python3}" -m executor.languages images) ||
		die "could not read the language registry (executor/languages.py)"
	local -a pids=() names=()
	while IFS=$'\t' read -r name image packages setup; do
		if [[ -n ${LANGUAGES:-} && " ${LANGUAGES//,/ } " != *" $name "* ]]; then
			continue
		fi
		if [[ -n ${IMAGE_TAG:-} ]]; then
			image=${image%%:*}:$IMAGE_TAG
		fi
		if [[ ${MISSING_ONLY:-0} == 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
			continue
		fi
		while (($(jobs -rp | wc -l) >= ${BUILD_JOBS:-2})); do
			wait -n || true
		done
		log "$name: building $image${packages:+ (Debian: $packages)}"
		(
			started=$SECONDS
			build "$name" images/language/Dockerfile "$image" \
				--build-arg "SANDBOX=$SANDBOX_IMAGE" --build-arg "PACKAGES=$packages" \
				--build-arg "SETUP=$setup" --build-arg "TITLE=${image%%:*}"
			log "$name: built in $((SECONDS - started))s"
		) &
		pids+=($!)
		names+=("$name")
	done <<<"$table"
	local i
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || {
			log "${names[$i]}: build failed"
			failed=1
		}
	done
	((failed == 0)) || die "some language images failed to build (logs: $(rel "$RUN_DIR")/build-*.log)"
}

# The environment markers of the base image's interpreter (what packaging's
# default_environment() gives there), as JSON: e.g. python_full_version decides whether redis
# needs async-timeout (Debian's 3.11.2 does, a newer 3.11 does not).
image_markers() {
	docker run --rm --network none "$BASE_IMAGE" python3 -c '
import json, os, platform, sys
def full(info):
    v = "%d.%d.%d" % info[:3]
    return v if info.releaselevel == "final" else v + info.releaselevel[0] + str(info.serial)
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": full(sys.implementation.version),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": "%d.%d" % sys.version_info[:2],
    "sys_platform": sys.platform,
}))'
}

build_wheelhouse() {
	[[ -f requirements.txt ]] || die "requirements.txt is missing"
	[[ -x $VENV/bin/pip ]] || die "no virtualenv at $(rel "$VENV"); run 'make venv' first"
	ensure_base
	local markers host_py image_py logf=$RUN_DIR/wheelhouse.log
	markers=$(image_markers) || die "could not read the interpreter of $BASE_IMAGE"
	host_py=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	image_py=$(sed -E 's/.*"python_version": "([0-9.]+)".*/\1/' <<<"$markers")
	[[ $host_py == "$image_py" ]] ||
		die "$(rel "$VENV") runs Python $host_py but $BASE_IMAGE has $image_py: compiled wheels would not fit; recreate .venv with PYTHON=python$image_py"
	log "wheelhouse: wheels of requirements.txt for $BASE_IMAGE (Python $image_py; log $(rel "$logf"))"
	rm -rf wheelhouse
	# pip resolves with the image's markers instead of the host's: patch the one function that
	# supplies them (pip's vendored packaging).
	if ! "$VENV/bin/python" - "$markers" wheel --progress-bar off -r requirements.txt -w wheelhouse >"$logf" 2>&1 <<'EOF'; then
import json
import sys

from pip._vendor.packaging import markers

target = json.loads(sys.argv[1])
markers.default_environment = lambda: dict(target)

from pip._internal.cli.main import main

sys.exit(main(sys.argv[2:]))
EOF
		tail_log "$logf"
		die "pip wheel -r requirements.txt failed"
	fi
	log "wheelhouse: $(compgen -G 'wheelhouse/*.whl' | wc -l) wheels in wheelhouse/"
}

build_service() {
	[[ -f requirements.txt ]] || die "requirements.txt is missing"
	compgen -G 'wheelhouse/*.whl' >/dev/null ||
		die "wheelhouse/ holds no wheels: run 'make wheelhouse' first (the image installs from it, offline)"
	ensure_base
	build service Dockerfile "$SERVICE_IMAGE"
}

targets=("$@")
((${#targets[@]})) || targets=(sandbox languages)
for target in "${targets[@]}"; do
	case $target in
	sandbox | languages | wheelhouse | service) "build_$target" ;;
	*) die "unknown target '$target' (expected: sandbox languages wheelhouse service)" ;;
	esac
done
