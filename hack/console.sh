#!/usr/bin/env bash
# Builds the browser console (web/console) into web/console/dist, which is
# committed and embedded in the stub (go:embed), so `go run ./cmd/stub`
# needs no Node. Pinned tools only: npm ci from package-lock.json, with
# npm's cache in ~/.cache/keyhole/npm.
#
#   hack/console.sh           rebuild web/console/dist
#   hack/console.sh --check   rebuild into a temporary directory and fail
#                             if it differs from the committed dist
#
# The build is deterministic (no timestamps, no content hashes in names,
# no source maps), so the check compares bytes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../web/console"

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: hack/console.sh [--check]" >&2; exit 2 ;;
esac

command -v npm >/dev/null || { echo "console: npm is not on PATH (Node 20 or later builds the console)" >&2; exit 1; }
export npm_config_cache="${npm_config_cache:-$HOME/.cache/keyhole/npm}"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# npm ci wipes node_modules; skip it when node_modules was installed from
# this very lockfile (npm keeps a copy of it there).
if ! cmp -s package-lock.json node_modules/.package-lock.json.keyhole 2>/dev/null; then
  npm ci --no-audit --prefer-offline --loglevel=error >&2
  cp package-lock.json node_modules/.package-lock.json.keyhole
fi

out=dist
if $check; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

node_modules/.bin/tsc -p .
node_modules/.bin/esbuild src/main.ts --bundle --minify --format=iife --target=es2022 \
  --legal-comments=none --charset=utf8 --log-level=warning --outfile="$out/console.js"
# xterm.js, loaded by the terminal view only when a terminal opens (its
# license comments kept at the end of the file).
node_modules/.bin/esbuild src/xterm-entry.ts --bundle --minify --format=iife --target=es2022 \
  --legal-comments=eof --charset=utf8 --log-level=warning --outfile="$out/xterm.js"
node_modules/.bin/esbuild src/console.css --bundle --minify --log-level=warning --outfile="$out/console.css"
cp src/index.html "$out/index.html"

if $check; then
  if ! diff -r dist "$out" >/dev/null; then
    diff -r dist "$out" | head -20 >&2 || true
    echo "console: web/console/dist is not what hack/console.sh builds from web/console/src; run hack/console.sh and commit dist" >&2
    exit 1
  fi
  echo "console: web/console/dist is up to date" >&2
else
  for f in console.js xterm.js console.css index.html; do
    printf 'console: %-11s %6d bytes, %5d gzipped\n' "$f" "$(wc -c <"$out/$f")" "$(gzip -9n <"$out/$f" | wc -c)" >&2
  done
fi
