//go:build keyhole_pprof

package main

// A profiling build (go build -tags keyhole_pprof), for the benchmarks in
// hack/bench-peers only: it serves net/http/pprof on the address in
// KH_PPROF (e.g. 127.0.0.1:6061). Release builds have no such listener.

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof/ on http.DefaultServeMux
	"os"
)

func init() {
	if addr := os.Getenv("KH_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }() // lives as long as the process
	}
}
