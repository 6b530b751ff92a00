#!/usr/bin/env bash
# Builds (once, cached) the binaries of the real test control plane and of the
# test identity provider and prints, on its last stdout line, the directory
# holding kube-apiserver, etcd, nodesim, dex, kubectl-oidc_login,
# bcrypthash, pebble, pebble-challtestsrv, and (hack/middlebox.sh) haproxy
# and tinyproxy. Use it as:
#
#   export KEYHOLE_TESTBIN="$(hack/testbin.sh)"
#   go test ./internal/kubetest/ ./internal/idptest/
#
# Cache: ${KEYHOLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyhole}/testbin/<key>,
# where <key> hashes go.mod, go.sum and the Go sources of hack/tools (tools.go,
# nodesim), of hack/idp (bcrypthash) and of hack/acme, this script,
# hack/middlebox.sh and the Go version. A cache hit takes about a second. Progress goes to stderr.
#
# kube-apiserver v1.33.13 and nodesim are built from the hack/tools module
# (cold, empty Go caches: ~1 GB of module downloads, 2.2 GB build cache, 3.5 min
# measured on an idle 2-core machine, up to 25 min when loaded). etcd is Debian's
# etcd-server package at a pinned version (apt-get download + dpkg-deb -x); if
# apt cannot provide it (or KEYHOLE_ETCD_FROM_SOURCE is set), etcd v3.5.16 is
# built from source in a throw-away module instead (~5 min cold).
#
# Dex v2.45.1 (OIDC provider), kubelogin v1.34.0 (kubectl's OIDC credential
# plugin, binary kubectl-oidc_login) and bcrypthash (bcrypt for Dex's static
# passwords) are built from the separate hack/idp module, so that Dex's
# dependencies never meet Kubernetes' replace set (cold, empty Go caches:
# about 2 min more on a 2-core machine; 0.5 GB build cache).
#
# Pebble v2.10.1 (ACME test CA) and pebble-challtestsrv (its DNS answers
# every name with 127.0.0.1) are built from the separate hack/acme module
# (cold: well under a minute more; warm: seconds).
	# >>> browser
	# It also installs chromium (hack/browser.sh: Debian's Chromium for the
	# browser tests), which is not part of the cache key: see main.
	# <<< browser
	# >>> browser
	# And helm (Helm v4.3.1) and helm3 (Helm v3.22.0) for the chart tests,
	# built by hack/helm.sh from the modules hack/helm/v4 and hack/helm/v3;
	# like the browser they are not part of the cache key (hack/helm.sh
	# keeps its own stamp), so adding or updating Helm rebuilds nothing else.
	# <<< browser
	# >>> podman
	# And it installs Debian's podman and runc (hack/podman.sh, into the
	# system) for the image test, e2e/image_test.go; not part of the cache key.
	# <<< podman
set -euo pipefail

# Everything is inside main, which bash parses completely before running it,
# so that editing this file while it runs cannot break the run.
main() {
	K8S_VERSION=v1.33.13
	K8S_MINOR=33
	ETCD_DEB_VERSION=3.4.23-4+b4 # Debian bookworm; `apt-cache policy etcd-server`
	ETCD_GO_VERSION=v3.5.16      # fallback when apt is not usable
	DEX_VERSION=v2.45.1          # = github.com/dexidp/dex v0.0.0-20260303133905-11d2eeb52b42 in hack/idp/go.mod
	KUBELOGIN_VERSION=v1.34.0    # = github.com/int128/kubelogin in hack/idp/go.mod
	PEBBLE_VERSION=v2.10.1       # = github.com/letsencrypt/pebble/v2 in hack/acme/go.mod

	log() { echo "testbin: $*" >&2; }

	root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
	tools="$root/hack/tools"
	idp="$root/hack/idp"
	acme="$root/hack/acme"
	script="$root/hack/testbin.sh"
	# >>> browser
	# The lines between "# >>> browser" and "# <<< browser" markers (tab-indented,
	# like these) add Chromium (hack/browser.sh) and are left out of the cache
	# key below: the browser is added to an existing cache directory, and
	# replaced when hack/browser.sh changes (its own stamp), without
	# rebuilding kube-apiserver and the rest. Keep every browser line inside
	# markers, or every machine rebuilds everything.
	keyscript="$(mktemp "${TMPDIR:-/tmp}/keyhole-testbin-key.XXXXXX")"
	# The same holds for "# >>> podman" blocks (hack/podman.sh).
	sed -e '/^\t# >>> browser$/,/^\t# <<< browser$/d' -e '/^\t# >>> podman$/,/^\t# <<< podman$/d' "$script" >"$keyscript"
	script="$keyscript"
	# <<< browser

	command -v go >/dev/null || { log "go is not on PATH"; exit 1; }
	# >>> podman
	# Debian's podman and runc at pinned versions for e2e/image_test.go,
	# installed into the system (not the cache directory) and left out of
	# the cache key: a cache hit gets them too. A second run is instant. A
	# failure costs only the image test, which then names hack/podman.sh.
	if ! "$root/hack/podman.sh"; then
		log "WARNING: could not install podman (hack/podman.sh failed above); the image test will fail"
	fi
	# <<< podman

	# Sane, reproducible Go settings for everything below.
	export GOWORK=off
	export GOFLAGS="-mod=readonly -buildvcs=false"
	unset GOOS GOARCH

	# Paths relative to $root of every input of the builds below.
	sources() {
		(
			cd "$root"
			for m in hack/tools hack/idp hack/acme; do
				printf '%s\n' "$m/go.mod" "$m/go.sum"
				find "$m" -name '*.go' | LC_ALL=C sort
			done
			echo hack/middlebox.sh
		)
	}
	key="$(
		{
			while IFS= read -r f; do
				printf '%s  ' "$f"
				sha256sum <"$root/$f" | cut -d' ' -f1
			done < <(sources)
			sha256sum <"$script" | cut -d' ' -f1
			(cd "$tools" && go env GOVERSION GOOS GOARCH CGO_ENABLED)
			(cd "$idp" && go env GOVERSION) # in case hack/idp ever pins another toolchain
			(cd "$acme" && go env GOVERSION)
			echo "etcd-from-source=${KEYHOLE_ETCD_FROM_SOURCE:-}"
		} | sha256sum | cut -c1-20
	)"
	# >>> browser
	rm -f "$keyscript"
	script="$root/hack/testbin.sh"
	# <<< browser

	cache="${KEYHOLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyhole}/testbin"
	dir="$cache/$key"
	bins=(kube-apiserver etcd nodesim dex kubectl-oidc_login bcrypthash pebble pebble-challtestsrv haproxy tinyproxy)
	complete() {
		[[ -f "$1/.complete" ]] || return 1
		local b
		for b in "${bins[@]}"; do
			[[ -x "$1/$b" ]] || return 1
		done
	}
	# >>> browser
	# Helm the same way (hack/helm.sh, its own stamp .helm-stamp): added to
	# a complete cache directory here, or built with the rest below; a
	# failure leaves the directory to everything but the Helm tests. Before
	# the browser's lines: chromium must stay the last of bins.
	if complete "$dir"; then
		if ! "$root/hack/helm.sh" "$dir"; then
			log "WARNING: could not add helm to $dir (hack/helm.sh failed above); the Helm tests will fail"
			echo "$dir"
			exit 0
		fi
	fi
	bins+=(helm helm3)
	# <<< browser
	# >>> browser
	# A cache directory complete but for the browser (or with a browser from
	# an older hack/browser.sh) gets it added here; browser.sh takes a lock
	# and ends at once when its stamp matches. If that fails, the directory
	# is still handed out: only the browser tests need Chromium.
	if complete "$dir"; then
		if ! "$root/hack/browser.sh" "$dir"; then
			log "WARNING: could not add Chromium to $dir (hack/browser.sh failed above); browser tests will fail"
			echo "$dir"
			exit 0
		fi
	fi
	bins+=(chromium)
	# <<< browser
	if complete "$dir"; then
		echo "$dir"
		exit 0
	fi

	mkdir -p "$cache"
	tmp="$(mktemp -d "$cache/.build-$key.XXXXXX")"
	chmod 0755 "$tmp"
	trap 'rm -rf "$tmp"' EXIT
	log "building into $dir (key from hack/tools, hack/idp, hack/acme and this script)"
	start=$SECONDS

	# --- etcd ---------------------------------------------------------------
	etcd_from_apt() {
		local sudo=()
		if [[ $(id -u) -ne 0 ]]; then
			if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); fi
		fi
		command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
		if ! apt-cache show "etcd-server=$ETCD_DEB_VERSION" >/dev/null 2>&1; then
			if [[ $(id -u) -ne 0 && ${#sudo[@]} -eq 0 ]]; then
				log "etcd-server=$ETCD_DEB_VERSION not in the apt lists and apt-get update needs root"
				return 1
			fi
			log "apt-get update (etcd-server=$ETCD_DEB_VERSION not in the apt lists)"
			"${sudo[@]}" apt-get update -qq >&2 || return 1
			apt-cache show "etcd-server=$ETCD_DEB_VERSION" >/dev/null 2>&1 || return 1
		fi
		# Outside the cache (which may sit under a private home directory), so
		# that apt's _apt user can write there.
		local d
		d="$(mktemp -d "${TMPDIR:-/tmp}/keyhole-etcd-deb.XXXXXX")"
		chmod 0777 "$d"
		log "apt-get download etcd-server=$ETCD_DEB_VERSION"
		(cd "$d" && apt-get download -q "etcd-server=$ETCD_DEB_VERSION" >&2) || { rm -rf "$d"; return 1; }
		dpkg-deb -x "$d"/etcd-server_*.deb "$d/x" || { rm -rf "$d"; return 1; }
		install -m 0755 "$d/x/usr/bin/etcd" "$tmp/etcd" || { rm -rf "$d"; return 1; }
		rm -rf "$d"
	}
	etcd_from_source() {
		# Throw-away module: etcd's own go.mod has replace directives, so
		# `go install` is refused; its dependencies must not leak into hack/tools.
		local m="$tmp/etcd-src"
		mkdir -p "$m"
		log "building etcd $ETCD_GO_VERSION from source (fallback)"
		(
			cd "$m"
			export GOFLAGS="-mod=mod -buildvcs=false"
			go mod init keyhole.invalid/etcdbuild >/dev/null 2>&1
			go get "go.etcd.io/etcd/server/v3@$ETCD_GO_VERSION" >&2
			CGO_ENABLED=0 go build -o "$tmp/etcd" go.etcd.io/etcd/server/v3 >&2
		) || return 1
		rm -rf "$m"
	}
	if [[ -n "${KEYHOLE_ETCD_FROM_SOURCE:-}" ]]; then # for testing the fallback
		etcd_from_source
	elif ! etcd_from_apt; then
		log "etcd from apt failed; falling back to building it"
		etcd_from_source
	fi
	"$tmp/etcd" --version >&2

	# --- kube-apiserver and nodesim -----------------------------------------
	pkgs="k8s.io/component-base/version k8s.io/client-go/pkg/version"
	ldflags=""
	for p in $pkgs; do
		ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
		ldflags+=" -X $p.gitTreeState=clean"
	done
	log "go build kube-apiserver $K8S_VERSION (cold: minutes, up to 25 on a loaded 2-core machine; warm: seconds)"
	(cd "$tools" && go build -o "$tmp/kube-apiserver" -ldflags "$ldflags" k8s.io/kubernetes/cmd/kube-apiserver)
	"$tmp/kube-apiserver" --version >&2
	log "go build nodesim"
	(cd "$tools" && go build -o "$tmp/nodesim" ./nodesim)

	# --- Dex, kubelogin, bcrypthash (hack/idp) --------------------------------
	log "go build dex $DEX_VERSION (cold: about 2 min, more on a loaded machine; warm: seconds)"
	(cd "$idp" && go build -o "$tmp/dex" -ldflags "-X main.version=$DEX_VERSION" github.com/dexidp/dex/cmd/dex)
	"$tmp/dex" version >&2
	log "go build kubectl-oidc_login (kubelogin $KUBELOGIN_VERSION)"
	(cd "$idp" && go build -o "$tmp/kubectl-oidc_login" -ldflags "-X main.version=$KUBELOGIN_VERSION" github.com/int128/kubelogin)
	"$tmp/kubectl-oidc_login" --version >&2
	log "go build bcrypthash"
	(cd "$idp" && go build -o "$tmp/bcrypthash" ./bcrypthash)

	# --- Pebble and pebble-challtestsrv (hack/acme) ----------------------------
	log "go build pebble $PEBBLE_VERSION and pebble-challtestsrv"
	(cd "$acme" && go build -o "$tmp/pebble" -ldflags "-X main.version=$PEBBLE_VERSION" github.com/letsencrypt/pebble/v2/cmd/pebble)
	(cd "$acme" && go build -o "$tmp/pebble-challtestsrv" github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv)
	"$tmp/pebble" -version >&2

	# --- haproxy and tinyproxy (Debian packages; hostile-network e2e tests) ----
	"$root/hack/middlebox.sh" "$tmp"
	# >>> browser

	# --- Helm (Go modules hack/helm/v4, hack/helm/v3; chart tests) -------------
	if ! "$root/hack/helm.sh" "$tmp"; then
		log "WARNING: could not build helm (hack/helm.sh failed above); the Helm tests will fail until a later run adds it"
		nohelm=()
		for b in "${bins[@]}"; do
			[[ "$b" == helm || "$b" == helm3 ]] || nohelm+=("$b")
		done
		bins=("${nohelm[@]}")
	fi
	# <<< browser
	# >>> browser

	# --- Chromium (Debian packages; browser e2e tests) -------------------------
	# A failure here does not throw the build away: the directory is
	# published without the browser, and the next run tries to add it.
	if ! "$root/hack/browser.sh" "$tmp"; then
		log "WARNING: could not add Chromium (hack/browser.sh failed above); browser tests will fail until a later run adds it"
		bins=("${bins[@]:0:${#bins[@]}-1}") # drop chromium, added last
	fi
	# <<< browser

	touch "$tmp/.complete"
	# Publish atomically. If a concurrent run won, keep its directory.
	if [[ -e "$dir" ]] && ! complete "$dir"; then
		rm -rf "$dir"
	fi
	if mv -T "$tmp" "$dir" 2>/dev/null; then
		trap - EXIT
	else
		log "another run published $dir first"
	fi
	complete "$dir" || { log "cache directory $dir is incomplete"; exit 1; }
	log "done in $((SECONDS - start))s"
	echo "$dir"
}

main "$@"
exit
