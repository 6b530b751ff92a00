#!/usr/bin/env bash
# Reproduce the reverse-tunnel peer benchmark (127.0.0.1 only).
#   ./run.sh                 # build everything, 3 repetitions of all paths
#   REPS=1 PATHS=direct,yamux TESTS=lat,rps ./run.sh
#   PPROF=1 ./run.sh         # also a profiling build of Keyhole (bin/prof/), for profile-keyhole.sh
#   BASE=<rev> PATHS=...,keyhole-audit-base,keyhole-audit ./run.sh   # Keyhole at <rev> beside the checkout
# Results: results/raw.jsonl (one JSON line per measurement), results/table.md
set -euo pipefail
cd "$(dirname "$0")"
REPS=${REPS:-3}
PATHS=${PATHS:-}
TESTS=${TESTS:-lat,rps,big1,big8,ttfb,watch1000,watch5000}
OUT=${OUT:-results/raw.jsonl}   # e.g. OUT=results/keyhole.jsonl (table next to it: .md)
TABLE=${OUT%.jsonl}; TABLE=${TABLE/%raw/table}.md
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
mkdir -p bin results /tmp/pb-src

echo "== building harness"; go build -trimpath -o bin/pb .

# Peers are pinned: the module proxy reachable here serves pinned versions but
# not version lists, so `go install ...@latest` fails; build from module source.
modsrc() { # module@version -> writable copy of its source
  local dir; dir=$(go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  local dst=/tmp/pb-src/$(basename "${1%@*}")
  rm -rf "$dst"; cp -r "$dir" "$dst"; chmod -R u+w "$dst"; echo "$dst"
}
if [ ! -x bin/chisel ]; then
  echo "== building chisel v1.10.1"; s=$(modsrc github.com/jpillora/chisel@v1.10.1)
  (cd "$s" && go build -trimpath -ldflags "-X github.com/jpillora/chisel/share.BuildVersion=1.10.1" -o "$OLDPWD/bin/chisel" .) || echo "chisel build failed"
fi
if [ ! -x bin/frps ] || [ ! -x bin/frpc ]; then
  # frp's go.mod has a replace directive (its yamux fork), so go install can't build it
  echo "== building frp v0.65.0"; s=$(modsrc github.com/fatedier/frp@v0.65.0)
  (cd "$s" && go build -trimpath -o "$OLDPWD/bin/frps" ./cmd/frps && go build -trimpath -o "$OLDPWD/bin/frpc" ./cmd/frpc) || echo "frp build failed"
fi
if [ ! -x bin/konn-server ] || [ ! -x bin/konn-agent ]; then
  # the module zip lacks vendor/ and the ./konnectivity-client replace target:
  # drop the replace and use the published konnectivity-client of the same version
  echo "== building apiserver-network-proxy v0.30.3"; s=$(modsrc sigs.k8s.io/apiserver-network-proxy@v0.30.3)
  (cd "$s" && rm -rf vendor && go mod edit -dropreplace sigs.k8s.io/apiserver-network-proxy/konnectivity-client \
     -require sigs.k8s.io/apiserver-network-proxy/konnectivity-client@v0.30.3 \
   && GOFLAGS=-mod=mod go build -trimpath -o "$OLDPWD/bin/konn-server" ./cmd/server \
   && GOFLAGS=-mod=mod go build -trimpath -o "$OLDPWD/bin/konn-agent" ./cmd/agent) || echo "konnectivity build failed"
fi
# Keyhole (stub + agent) from a checkout, release build as its Dockerfile
# does it minus the version stamp; the commit goes to bin/keyhole.version.
# In the Keyhole repository (hack/bench-peers) it is the checkout itself,
# rebuilt on every run.
KEYHOLE_SRC=${KEYHOLE_SRC:-$(cd ../.. && pwd)}
if [ -d "$KEYHOLE_SRC" ]; then
  echo "== building keyhole from $KEYHOLE_SRC"
  (cd "$KEYHOLE_SRC" && go build -trimpath -o "$OLDPWD/bin/keyhole-stub" ./cmd/stub \
     && go build -trimpath -o "$OLDPWD/bin/keyhole-agent" ./cmd/agent) || echo "keyhole build failed"
  (cd "$KEYHOLE_SRC" && git rev-parse HEAD 2>/dev/null; go version) > bin/keyhole.version || true
  if [ -n "${PPROF:-}" ]; then # serves net/http/pprof on $KH_PPROF (cmd/*/pprof.go)
    mkdir -p bin/prof
    (cd "$KEYHOLE_SRC" && go build -trimpath -tags keyhole_pprof -o "$OLDPWD/bin/prof/keyhole-stub" ./cmd/stub \
       && go build -trimpath -tags keyhole_pprof -o "$OLDPWD/bin/prof/keyhole-agent" ./cmd/agent) || echo "keyhole profiling build failed"
  fi
fi

# BASE=<git revision>: also build Keyhole at that revision into bin/base/,
# for the keyhole-audit-base and keyhole-prod-base paths (before and after in
# one run).
if [ -n "${BASE:-}" ] && [ -d "$KEYHOLE_SRC" ]; then
  echo "== building keyhole at $BASE into bin/base"
  rm -rf /tmp/pb-src/keyhole-base && mkdir -p /tmp/pb-src/keyhole-base bin/base
  (cd "$KEYHOLE_SRC" && git archive "$BASE") | tar -x -C /tmp/pb-src/keyhole-base
  (cd /tmp/pb-src/keyhole-base && go build -trimpath -o "$OLDPWD/bin/base/keyhole-stub" ./cmd/stub \
     && go build -trimpath -o "$OLDPWD/bin/base/keyhole-agent" ./cmd/agent) || echo "keyhole base build failed"
  (cd "$KEYHOLE_SRC" && git rev-parse "$BASE") > bin/base/keyhole.version || true
fi

ulimit -n 20000 2>/dev/null || true
if [ -s "$OUT" ]; then mv "$OUT" "${OUT%.jsonl}-$(date +%Y%m%d-%H%M%S).jsonl"; fi
echo "== running (reps=$REPS)"
bin/pb drive -reps "$REPS" -paths "$PATHS" -tests "$TESTS" -out "$OUT"
bin/pb report -in "$OUT" | tee "$TABLE"
