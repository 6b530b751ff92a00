#!/usr/bin/env bash
# Installs the real middleboxes of the hostile-network end-to-end tests into
# DIR (hack/testbin.sh calls it with its cache directory):
#
#   DIR/haproxy     HAProxy 2.6.12 (Debian bookworm haproxy=2.6.12-1+deb12u3),
#                   the TCP load balancer with a 60 s idle cut
#   DIR/tinyproxy   tinyproxy 1.11.1 (Debian tinyproxy-bin=1.11.1-2.1+deb12u1),
#                   the HTTP CONNECT proxy the agent reaches the stub through
#
# Usage: hack/middlebox.sh DIR
#
# Both come from Debian's packages at pinned versions (apt-get download +
# dpkg-deb -x; never installed into the system). haproxy links three libraries
# that a fresh machine lacks (liblua5.3-0, libopentracing-c-wrapper0,
# libopentracing1), so those are fetched the same way into DIR/middlebox/lib and
# DIR/haproxy is a two-line wrapper that sets LD_LIBRARY_PATH and execs the real
# binary (exec: the PID the tests see is haproxy's). Every other library must
# already be on the machine; the script checks with ldd and fails naming the
# missing one. Takes about 2 s with warm apt lists; progress goes to stderr.
set -euo pipefail

main() {
	HAPROXY_DEB=haproxy=2.6.12-1+deb12u3
	TINYPROXY_DEB=tinyproxy-bin=1.11.1-2.1+deb12u1
	LIB_DEBS=(liblua5.3-0=5.3.6-2 libopentracing-c-wrapper0=1.1.3-3+b1 libopentracing1=1.6.0-4)

	log() { echo "middlebox: $*" >&2; }

	[[ $# -eq 1 && -d "$1" ]] || { log "usage: $0 DIR (an existing directory)"; exit 2; }
	out="$(cd "$1" && pwd)"
	command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
		log "apt-get and dpkg-deb are needed (Debian's packages are the source of haproxy and tinyproxy)"
		exit 1
	}

	debs=("$HAPROXY_DEB" "$TINYPROXY_DEB" "${LIB_DEBS[@]}")
	have_all() {
		local p
		for p in "${debs[@]}"; do
			apt-cache show "$p" >/dev/null 2>&1 || return 1
		done
	}
	if ! have_all; then
		local sudo=()
		if [[ $(id -u) -ne 0 ]]; then
			if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
				sudo=(sudo -n)
			else
				log "${debs[*]} not all in the apt lists and apt-get update needs root"
				exit 1
			fi
		fi
		log "apt-get update (pinned packages not in the apt lists)"
		"${sudo[@]}" apt-get update -qq >&2
		have_all || {
			log "apt cannot provide all of: ${debs[*]}; if Debian replaced a version, update the pins at the top of hack/middlebox.sh (apt-cache policy haproxy tinyproxy-bin liblua5.3-0 libopentracing-c-wrapper0 libopentracing1)"
			exit 1
		}
	fi

	# Outside DIR (which may sit under a private home directory), so that
	# apt's _apt user can write there.
	d="$(mktemp -d "${TMPDIR:-/tmp}/keyhole-middlebox-deb.XXXXXX")"
	trap 'rm -rf "$d"' EXIT
	chmod 0777 "$d"
	log "apt-get download ${debs[*]}"
	(cd "$d" && apt-get download -q "${debs[@]}" >&2)
	local f
	for f in "$d"/*.deb; do
		dpkg-deb -x "$f" "$d/x"
	done

	mkdir -p "$out/middlebox/lib"
	install -m 0755 "$d/x/usr/sbin/haproxy" "$out/middlebox/haproxy"
	cp -a "$d/x/usr/lib/x86_64-linux-gnu/." "$out/middlebox/lib/"
	install -m 0755 "$d/x/usr/bin/tinyproxy" "$out/tinyproxy"
	cat >"$out/haproxy" <<-'EOF'
		#!/bin/sh
		# HAProxy from Debian (hack/middlebox.sh) with the libraries fetched beside it.
		d="$(dirname "$0")/middlebox"
		LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/haproxy" "$@"
	EOF
	chmod 0755 "$out/haproxy"

	local missing
	missing="$(
		LD_LIBRARY_PATH="$out/middlebox/lib" ldd "$out/middlebox/haproxy" "$out/tinyproxy" |
			grep 'not found' || true
	)"
	if [[ -n "$missing" ]]; then
		log "libraries missing on this machine (install their Debian packages): $missing"
		exit 1
	fi
	# sed reads all of it: `head -1` could close the pipe while haproxy
	# still writes, and SIGPIPE under pipefail ended the whole build.
	"$out/haproxy" -v | sed -n 1p >&2
	"$out/tinyproxy" -v >&2
}

main "$@"
exit
