#!/usr/bin/env bash
# Installs the real browser of the browser end-to-end tests into DIR
# (hack/testbin.sh calls it with its cache directory):
#
#   DIR/chromium        a wrapper that runs Debian's Chromium with the
#                       libraries fetched beside it
#   DIR/chromium-root   the extracted packages (about 360 MB)
#
# Usage: hack/browser.sh DIR
#
# Chromium comes from Debian's packages at a pinned version (apt-get download
# + dpkg-deb -x; never installed into the system), with the 16 libraries it
# needs that a machine with the project's usual packages lacks. Every other
# library must already be on the machine; the script checks with ldd and fails
# naming the missing one.
#
# Debian ships Chromium through bookworm-security, which keeps only its newest
# build: a pin there stops being downloadable at Debian's next Chromium update
# (every few weeks). When a pinned version is no longer in apt (also after an
# apt-get update), the script takes apt's candidate version instead and warns
# loudly, naming both; the tests log navigator.userAgent. Update the pins
# below when that happens (apt-cache policy chromium).
#
# Running it again is cheap: DIR/chromium-root/.keyhole-browser records the
# hash of this script, and a match ends the run at once. Concurrent runs on
# one DIR are serialised by a lock (DIR/.browser.lock). 40 to 60 s on a 2-core
# machine (mostly unpacking 117 MB of xz debs); progress goes to stderr.
set -euo pipefail

main() {
	CHROMIUM_VERSION=156.0.8078.114-1~deb12u1 # Debian bookworm-security
	# chromium-common goes with chromium (same version, always).
	LIB_DEBS=(
		libdouble-conversion3=3.2.1-1 libflac12=1.4.2+ds-2 libogg0=1.3.5-3
		libharfbuzz-subset0=6.0.0+dfsg-3 libminizip1=1.1-8+deb12u1 libopenh264-7=2.3.1+dfsg-3+deb12u2
		libopenjp2-7=2.5.0-2+deb12u3 libopus0=1.3.1-3 libasyncns0=0.8-6+b3 libmp3lame0=3.100-6
		libmpg123-0=1.31.2-1+deb12u1 libvorbis0a=1.3.7-1 libvorbisenc2=1.3.7-1
		libsndfile1=1.2.0-1+deb12u1 libpulse0=16.1+dfsg1-2+b1 libxnvctrl0=525.85.05-3~deb12u1
	)

	log() { echo "browser: $*" >&2; }

	[[ $# -eq 1 && -d "$1" ]] || { log "usage: $0 DIR (an existing directory)"; exit 2; }
	out="$(cd "$1" && pwd)"
	self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
	stamp="$(sha256sum <"$self" | cut -d' ' -f1)"

	exec 9>"$out/.browser.lock"
	flock 9
	if [[ -x "$out/chromium" && "$(cat "$out/chromium-root/.keyhole-browser" 2>/dev/null | head -1)" == "$stamp" ]]; then
		return 0 # installed by this very script
	fi
	start=$SECONDS

	command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
		log "apt-get and dpkg-deb are needed (Debian's packages are the source of Chromium)"
		exit 1
	}
	sudo=()
	if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo=(sudo -n)
	fi
	updated=""
	apt_update() {
		[[ -z "$updated" ]] || return 0
		updated=1
		if [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
			log "apt-get update needs root; going on with the apt lists as they are"
			return 0
		fi
		log "apt-get update (a pinned package is not in the apt lists)"
		"${sudo[@]}" apt-get update -qq >&2 || log "apt-get update failed; going on with the apt lists as they are"
	}
	# has NAME VERSION: whether the apt lists offer that version. (Not
	# `apt-cache show NAME=VERSION`: it exits 0 for a version it lacks.)
	has() {
		apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF -- "$2"
	}
	# resolve NAME=VERSION sets resolved to the pin when apt has it, else to
	# apt's candidate version, with a loud warning naming both.
	resolve() {
		local name="${1%%=*}" want="${1#*=}" cand
		has "$name" "$want" || apt_update
		if has "$name" "$want"; then
			resolved="$1"
			return 0
		fi
		cand="$(apt-cache policy "$name" | awk '/Candidate:/ {print $2}')"
		if [[ -z "$cand" || "$cand" == "(none)" ]]; then
			log "apt cannot provide $name at all (pinned $want); check the apt sources"
			exit 1
		fi
		{
			echo "browser: ****************************************************************"
			echo "browser: WARNING: $name=$want (the pin in hack/browser.sh) is not in apt;"
			echo "browser: WARNING: using apt's candidate $name=$cand instead."
			echo "browser: WARNING: update the pin in hack/browser.sh (apt-cache policy $name)"
			echo "browser: ****************************************************************"
		} >&2
		resolved="$name=$cand"
	}

	resolve "chromium=$CHROMIUM_VERSION"
	debs=("$resolved" "chromium-common=${resolved#*=}")
	local p
	for p in "${LIB_DEBS[@]}"; do
		resolve "$p"
		debs+=("$resolved")
	done

	# Outside DIR (which may sit under a private home directory), so that
	# apt's _apt user can write there.
	d="$(mktemp -d "${TMPDIR:-/tmp}/keyhole-browser-deb.XXXXXX")"
	x="$(mktemp -d "$out/.chromium-root.XXXXXX")"
	trap 'rm -rf "$d" "$x"' EXIT
	chmod 0777 "$d"
	log "apt-get download ${debs[*]}"
	(cd "$d" && apt-get download -q "${debs[@]}" >&2)
	local f
	for f in "$d"/*.deb; do
		dpkg-deb -x "$f" "$x"
	done
	chmod 0755 "$x"
	printf '%s\n' "$stamp" "${debs[@]}" >"$x/.keyhole-browser"

	local missing
	missing="$(
		LD_LIBRARY_PATH="$x/usr/lib/x86_64-linux-gnu:$x/usr/lib/x86_64-linux-gnu/pulseaudio" \
			ldd "$x/usr/lib/chromium/chromium" | grep 'not found' || true
	)"
	if [[ -n "$missing" ]]; then
		log "libraries missing on this machine (install their Debian packages): $missing"
		exit 1
	fi

	# Replace: the wrapper goes first (no half-installed browser is ever
	# runnable), then the tree, then the new wrapper.
	rm -f "$out/chromium"
	rm -rf "$out/chromium-root"
	mv -T "$x" "$out/chromium-root"
	cat >"$out/.chromium.tmp" <<-'EOF'
		#!/bin/sh
		# Chromium from Debian (hack/browser.sh) with the libraries fetched beside it.
		d="$(dirname "$0")/chromium-root"
		LD_LIBRARY_PATH="$d/usr/lib/x86_64-linux-gnu:$d/usr/lib/x86_64-linux-gnu/pulseaudio${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/usr/lib/chromium/chromium" "$@"
	EOF
	chmod 0755 "$out/.chromium.tmp"
	mv -f "$out/.chromium.tmp" "$out/chromium"
	"$out/chromium" --headless --no-sandbox --version >&2 || "$out/chromium" --version >&2
	log "installed ${debs[0]} into $out in $((SECONDS - start))s"
}

main "$@"
exit
