#!/usr/bin/env bash
# Keyhole diagnostics (not part of run.sh): CPU profiles of stub and agent
# during GET /small c=64 and GET /big c=8, and goroutines / RSS with N idle
# watches. Uses a pprof-enabled build of the same Keyhole commit:
#   KH_BIN=bin/prof           (keyhole-stub, keyhole-agent built by `PPROF=1 ./run.sh` with
#                              -tags keyhole_pprof: cmd/*/pprof.go serves net/http/pprof on $KH_PPROF)
#   MODE=audit (default: audit file + metrics on, as keyhole-audit) | plain (as keyhole)
#        | prod (as keyhole-prod: audit + metrics, agent → backend over TLS h2 with apiServer{url,tokenFile,caFile})
#   OUTDIR=results/profiles
set -u
cd "$(dirname "$0")"
KH_BIN=${KH_BIN:-bin/prof}
MODE=${MODE:-audit}
N=${N:-1000}
OUTDIR=${OUTDIR:-results/profiles}
PSEC=${PSEC:-8}
B=bin/pb
W=$(mktemp -d /tmp/khprof-XXXX)
mkdir -p "$OUTDIR"
PIDS=()
stopall() { for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null; wait "${PIDS[$i]}" 2>/dev/null; done; PIDS=(); }
trap stopall EXIT
gcount() { curl -s "http://$1/debug/pprof/goroutine?debug=1" | head -1 | awk '{print $NF}'; }
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
hwm() { awk '/VmHWM/{print $2}' /proc/$1/status; }

LISTEN=127.0.0.1:18130
AUDIT='""'; METRICS='""'
if [ "$MODE" != plain ]; then AUDIT="\"$W/audit.log\""; METRICS='"127.0.0.1:18330"'; fi
cat > "$W/stub.yaml" <<EOF
apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
listen: "$LISTEN"
publicURL: "https://$LISTEN"
stateDir: "$W/state"
log: {level: warn}
audit: {path: $AUDIT}
metrics: {listen: $METRICS}
EOF
"$KH_BIN/keyhole-stub" register bench --config "$W/stub.yaml" --secret-out "$W/secret" >/dev/null 2>&1 || { echo "register failed"; exit 1; }
"$KH_BIN/keyhole-stub" kubeconfig --user bench-user --group bench-group --cluster bench --config "$W/stub.yaml" 2>/dev/null \
  | sed -n 's/^ *token: *"\{0,1\}\([^" ]*\)"\{0,1\} *$/\1/p' > "$W/token"
echo agent-token > "$W/agent-token"
# the backend's TLS port (prod) serves the stub's self-signed pair (IP SAN 127.0.0.1)
$B backend -listen 127.0.0.1:18080 -tls-listen 127.0.0.1:18081 -tlsdir "$W/state/tls" 2>"$W/backend.log" & PIDS+=($!)
sleep 0.5
API="kubeconfig: \"$W/agent.kubeconfig\""
if [ "$MODE" = prod ]; then API="apiServer: {url: \"https://127.0.0.1:18081\", tokenFile: \"$W/agent-token\", caFile: \"$W/state/tls/ca.crt\"}"; fi
cat > "$W/agent.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: b, cluster: {server: "http://127.0.0.1:18080"}}]
users: [{name: a, user: {tokenFile: "$W/agent-token"}}]
contexts: [{name: b, context: {cluster: b, user: a}}]
current-context: b
EOF
cat > "$W/agent.yaml" <<EOF
apiVersion: keyhole.dev/v1alpha1
kind: AgentConfig
stubURL: "https://$LISTEN"
cluster: bench
agentID: bench-agent-1
joinSecretFile: "$W/secret"
stubCAFile: "$W/state/tls/ca.crt"
$API
log: {level: warn}
EOF
KH_PPROF=127.0.0.1:6061 GOGC=100 "$KH_BIN/keyhole-stub" serve --config "$W/stub.yaml" 2>"$W/stub.log" & SPID=$!; PIDS+=($SPID)
sleep 0.3
KH_PPROF=127.0.0.1:6062 GOGC=100 "$KH_BIN/keyhole-agent" --config "$W/agent.yaml" 2>"$W/agent.log" & APID=$!; PIDS+=($APID)
L=(-base "https://$LISTEN/clusters/bench" -cafile "$W/state/tls/ca.crt" -token-file "$W/token" -h2)
for i in $(seq 1 100); do $B load lat -n 1 "${L[@]}" -max 5s >/dev/null 2>&1 && break; sleep 0.2; done

prof() { # name load-args...
  local name=$1; shift
  $B load "$@" "${L[@]}" > "$OUTDIR/$MODE-$name.load.json" 2>/dev/null & local LP=$!
  sleep 1.5
  curl -s -o "$OUTDIR/$MODE-$name-stub.pprof" "http://127.0.0.1:6061/debug/pprof/profile?seconds=$PSEC" & local C1=$!
  curl -s -o "$OUTDIR/$MODE-$name-agent.pprof" "http://127.0.0.1:6062/debug/pprof/profile?seconds=$PSEC" & local C2=$!
  wait $LP $C1 $C2
  for r in stub agent; do
    go tool pprof -top -nodecount=40 "$OUTDIR/$MODE-$name-$r.pprof" > "$OUTDIR/$MODE-$name-$r.top.txt" 2>/dev/null
    go tool pprof -top -cum -nodecount=60 "$OUTDIR/$MODE-$name-$r.pprof" > "$OUTDIR/$MODE-$name-$r.cum.txt" 2>/dev/null
  done
  echo "$name: $(cat "$OUTDIR/$MODE-$name.load.json")"
}
prof small64 rps -c 64 -d $((PSEC+3))s -max 60s
prof big8 big -c 8 -d $((PSEC+3))s -max 60s

# goroutines and RSS: idle, then with N open watches
sleep 2
s0=$(gcount 127.0.0.1:6061); a0=$(gcount 127.0.0.1:6062); sr0=$(rss $SPID); ar0=$(rss $APID)
$B load watch -n "$N" -window 6s -max 120s "${L[@]}" > "$W/watch.out" 2>/dev/null & WP=$!
for i in $(seq 1 900); do grep -q READY "$W/watch.out" && break; sleep 0.1; done
sleep 2
s1=$(gcount 127.0.0.1:6061); a1=$(gcount 127.0.0.1:6062); sr1=$(rss $SPID); ar1=$(rss $APID)
curl -s -o "$OUTDIR/$MODE-watch$N-stub.heap" "http://127.0.0.1:6061/debug/pprof/heap"
curl -s -o "$OUTDIR/$MODE-watch$N-agent.heap" "http://127.0.0.1:6062/debug/pprof/heap"
curl -s "http://127.0.0.1:6061/debug/pprof/goroutine?debug=1" > "$OUTDIR/$MODE-watch$N-stub.goroutines.txt"
curl -s "http://127.0.0.1:6062/debug/pprof/goroutine?debug=1" > "$OUTDIR/$MODE-watch$N-agent.goroutines.txt"
wait $WP
per() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN{printf "%.2f", (b-a)/n}'; }
echo "keyhole($MODE): stub goroutines idle=$s0 with_${N}_watches=$s1 ($(per $s0 $s1) per watch) rss_kb $sr0 -> $sr1 ($(per $sr0 $sr1) KiB/watch) peak $(hwm $SPID) | agent goroutines idle=$a0 with=$a1 ($(per $a0 $a1) per watch) rss_kb $ar0 -> $ar1 ($(per $ar0 $ar1) KiB/watch) peak $(hwm $APID)" | tee -a "$OUTDIR/goroutines.txt"
tail -1 "$W/watch.out"
stopall
rm -rf "$W"
