#!/usr/bin/env bash
# Installs the container runtime of the image end-to-end test
# (e2e/image_test.go): Debian's podman and runc at pinned versions, with
# apt-get into the system (podman needs its helpers, conmon, and config in
# their standard places; it cannot run from an extracted tree as Chromium
# does). hack/testbin.sh calls it outside its cache key; the test finds podman
# on PATH and fails naming this script when it is missing.
#
#   hack/podman.sh          install (or check) the pinned versions
#
# crun, podman's default runtime, cannot run here (setrlimit and hybrid
# cgroups are refused); the test runs podman with --runtime runc
# --cgroup-manager=cgroupfs (docs/operations.md, "Images"). A second run with
# the pins already installed ends in well under a second; a first install
# takes about a minute. Progress goes to stderr.
set -euo pipefail

main() {
	PODMAN_VERSION=4.3.1+ds1-8+deb12u1+b3 # Debian bookworm; apt-cache policy podman
	RUNC_VERSION=1.1.5+ds1-1+deb12u1       # Debian bookworm(-security); apt-cache policy runc

	log() { echo "podman.sh: $*" >&2; }

	installed() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || true; }
	if [[ "$(installed podman)" == "$PODMAN_VERSION" && "$(installed runc)" == "$RUNC_VERSION" ]]; then
		return 0
	fi
	command -v apt-get >/dev/null || { log "apt-get is needed (podman and runc come from Debian's packages)"; exit 1; }
	sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo=(sudo -n)
		else
			log "installing podman needs root (or password-less sudo): run as root: $0"
			exit 1
		fi
	fi
	has() {
		apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF -- "$2"
	}
	if ! has podman "$PODMAN_VERSION" || ! has runc "$RUNC_VERSION"; then
		log "apt-get update (a pinned version is not in the apt lists)"
		"${sudo[@]}" apt-get update -qq >&2
	fi
	for p in "podman=$PODMAN_VERSION" "runc=$RUNC_VERSION"; do
		if ! has "${p%%=*}" "${p#*=}"; then
			log "apt cannot provide $p; update the pin in hack/podman.sh (apt-cache policy ${p%%=*})"
			exit 1
		fi
	done
	start=$SECONDS
	log "apt-get install podman=$PODMAN_VERSION runc=$RUNC_VERSION"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"podman=$PODMAN_VERSION" "runc=$RUNC_VERSION" >&2
	podman --version >&2
	log "installed in $((SECONDS - start))s"
}

main "$@"
exit
