package main

// report aggregates results/raw.jsonl into a markdown table: rows = figures,
// columns = paths; each cell is the median over repetitions [min-max] and the
// median over repetitions of the ratio to `direct` in the same repetition.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"strings"
)

type rec map[string]any

func (r rec) f(k string) (float64, bool) {
	v, ok := r[k]
	if !ok {
		return 0, false
	}
	x, ok := v.(float64)
	return x, ok
}

type row struct {
	label string
	test  string
	val   func(r rec) (float64, bool)
	ratio bool // show ratio to direct
	fmt   string
}

func field(k string, scale float64) func(rec) (float64, bool) {
	return func(r rec) (float64, bool) {
		v, ok := r.f(k)
		return v * scale, ok
	}
}

func cpuPerGB(r rec) (float64, bool) {
	b, ok := r.f("bytes")
	if !ok || b == 0 {
		return 0, false
	}
	s, ok1 := r.f("server_cpu_s")
	a, _ := r.f("agent_cpu_s")
	if !ok1 {
		return 0, false
	}
	return (s + a) / (b / 1e9), true
}

func backendCPUPerGB(r rec) (float64, bool) {
	b, ok := r.f("bytes")
	c, ok2 := r.f("backend_cpu_s")
	if !ok || !ok2 || b == 0 {
		return 0, false
	}
	return c / (b / 1e9), true
}

func rssMiB(role string) func(rec) (float64, bool) {
	return func(r rec) (float64, bool) {
		v, ok := r.f(role + "_rss_kb_during")
		return v / 1024, ok
	}
}

// hwmMiB is the process's peak RSS (VmHWM) since it started, read after the test.
func hwmMiB(role string) func(rec) (float64, bool) {
	return func(r rec) (float64, bool) {
		v, ok := r.f(role + "_hwm_kb_after")
		return v / 1024, ok && v > 0
	}
}

func bytesPerStream(r rec) (float64, bool) {
	n, ok := r.f("n")
	if !ok || n == 0 {
		return 0, false
	}
	var tot float64
	found := false
	for _, role := range []string{"server", "agent"} {
		d, ok1 := r.f(role + "_rss_kb_during")
		i, ok2 := r.f(role + "_rss_kb_idle")
		if ok1 && ok2 {
			tot += (d - i) * 1024
			found = true
		}
	}
	return tot / n / 1024, found // KiB per stream
}

func aliveFrac(r rec) (float64, bool) {
	a, ok := r.f("alive_in_window")
	n, ok2 := r.f("n")
	if !ok || !ok2 || n == 0 {
		return 0, false
	}
	return 100 * a / n, true
}

func deliveredFrac(r rec) (float64, bool) {
	e, ok := r.f("events_per_s")
	n, ok2 := r.f("n")
	if !ok || !ok2 || n == 0 {
		return 0, false
	}
	return 100 * e / (n * 100), true // 100 events/s/stream expected at 10 ms
}

var rows = []row{
	{"1. GET /small c=1 p50 (µs)", "lat", field("p50_us", 1), true, "%.0f"},
	{"1. GET /small c=1 p99 (µs)", "lat", field("p99_us", 1), true, "%.0f"},
	{"2. GET /small c=64 (req/s)", "rps64", field("rps", 1), true, "%.0f"},
	{"2. GET /small c=64 p99 (ms)", "rps64", field("p99_us", 0.001), true, "%.1f"},
	{"3. GET /big c=1 (MB/s)", "big1", field("MBps", 1), true, "%.0f"},
	{"3. GET /big c=8 (MB/s)", "big8", field("MBps", 1), true, "%.0f"},
	{"4. 1k watches: server RSS (MiB)", "watch1000", rssMiB("server"), false, "%.0f"},
	{"4. 1k watches: agent RSS (MiB)", "watch1000", rssMiB("agent"), false, "%.0f"},
	{"4. 1k watches: KiB/stream (srv+agt)", "watch1000", bytesPerStream, false, "%.1f"},
	{"4. 1k watches: server peak RSS (MiB)", "watch1000", hwmMiB("server"), false, "%.0f"},
	{"4. 1k watches: agent peak RSS (MiB)", "watch1000", hwmMiB("agent"), false, "%.0f"},
	{"4. 1k watches: % streams alive", "watch1000", aliveFrac, false, "%.0f"},
	{"4. 1k watches: % events delivered", "watch1000", deliveredFrac, true, "%.0f"},
	{"4. 5k watches: server RSS (MiB)", "watch5000", rssMiB("server"), false, "%.0f"},
	{"4. 5k watches: agent RSS (MiB)", "watch5000", rssMiB("agent"), false, "%.0f"},
	{"4. 5k watches: KiB/stream (srv+agt)", "watch5000", bytesPerStream, false, "%.1f"},
	{"4. 5k watches: % streams alive", "watch5000", aliveFrac, false, "%.0f"},
	{"4. 5k watches: % events delivered", "watch5000", deliveredFrac, true, "%.0f"},
	{"5. TTFB new stream, idle p50 (ms)", "ttfb", field("idle_p50_us", 0.001), true, "%.2f"},
	{"5. TTFB new stream, 8×/big p50 (ms)", "ttfb", field("loaded_p50_us", 0.001), true, "%.2f"},
	{"5. TTFB new stream, 8×/big p99 (ms)", "ttfb", field("loaded_p99_us", 0.001), true, "%.2f"},
	{"5. background /big during probes (MB/s)", "ttfb", field("bg_MBps", 1), true, "%.0f"},
	{"6. CPU s/GB server+agent, /big c=8", "big8", cpuPerGB, false, "%.2f"},
	{"6. CPU s/GB server+agent, /big c=1", "big1", cpuPerGB, false, "%.2f"},
	{"   (backend CPU s/GB, /big c=8)", "big8", backendCPUPerGB, false, "%.2f"},
	{"   (loadgen CPU s, /big c=8, 5 s)", "big8", field("loadgen_cpu_s", 1), false, "%.1f"},
}

func runReport(args []string) {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("in", "results/raw.jsonl", "")
	order := fs.String("paths", "direct,direct-tls,direct-tls-h1,revproxy,yamux,yamux-tls,yamux-w4m,yamux-nocoal,yamux-batch,yamux-pool,yamux-splice,h2,h2-tls,remotedialer,chisel,frp,konnectivity,keyhole,keyhole-audit-base,keyhole-audit,keyhole-prod-base,keyhole-prod,keyhole-h1", "column order")
	ref := fs.String("ref", "direct", "ratios are to this path in the same repetition")
	fs.Parse(args)
	f, err := os.Open(*in)
	if err != nil {
		log.Fatal(err)
	}
	var recs []rec
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r rec
		if json.Unmarshal(sc.Bytes(), &r) == nil {
			recs = append(recs, r)
		}
	}
	present := map[string]bool{}
	for _, r := range recs {
		present[r["path"].(string)] = true
	}
	var paths []string
	for _, p := range strings.Split(*order, ",") {
		if present[p] {
			paths = append(paths, p)
		}
	}
	// index: test -> path -> rep -> rec
	idx := map[string]map[string]map[int]rec{}
	for _, r := range recs {
		t, p := r["test"].(string), r["path"].(string)
		rep := int(r["rep"].(float64))
		if idx[t] == nil {
			idx[t] = map[string]map[int]rec{}
		}
		if idx[t][p] == nil {
			idx[t][p] = map[int]rec{}
		}
		idx[t][p][rep] = r
	}
	var b strings.Builder
	b.WriteString("| figure | " + strings.Join(paths, " | ") + " |\n|---|" + strings.Repeat("---|", len(paths)) + "\n")
	for _, rw := range rows {
		b.WriteString("| " + rw.label + " |")
		for _, p := range paths {
			var vals, ratios []float64
			for rep, r := range idx[rw.test][p] {
				if r["load_error"] != nil {
					continue
				}
				v, ok := rw.val(r)
				if !ok || math.IsNaN(v) {
					continue
				}
				vals = append(vals, v)
				if dr, ok := idx[rw.test][*ref][rep]; ok && rw.ratio {
					if dv, ok := rw.val(dr); ok && dv != 0 {
						ratios = append(ratios, v/dv)
					}
				}
			}
			if len(vals) == 0 {
				b.WriteString(" – |")
				continue
			}
			slices.Sort(vals)
			cell := fmt.Sprintf(rw.fmt, median(vals))
			if len(vals) > 1 {
				cell += fmt.Sprintf(" ["+rw.fmt+"–"+rw.fmt+"]", vals[0], vals[len(vals)-1])
			}
			if len(ratios) > 0 && p != *ref {
				slices.Sort(ratios)
				cell += fmt.Sprintf(" ×%.2f", median(ratios))
			}
			b.WriteString(" " + cell + " |")
		}
		b.WriteString("\n")
	}
	// error summary
	var errs []string
	for _, r := range recs {
		if e, ok := r["load_error"]; ok {
			errs = append(errs, fmt.Sprintf("rep %v %v %v: %v", r["rep"], r["path"], r["test"], e))
		}
		if e, ok := r["error"]; ok {
			errs = append(errs, fmt.Sprintf("rep %v %v %v: %v", r["rep"], r["path"], r["test"], e))
		}
		if e, ok := r.f("errors"); ok && e > 0 {
			errs = append(errs, fmt.Sprintf("rep %v %v %v: %v request errors", r["rep"], r["path"], r["test"], e))
		}
	}
	reps := map[float64]bool{}
	for _, r := range recs {
		reps[r["rep"].(float64)] = true
	}
	fmt.Printf("%d records, %d repetitions\n\n", len(recs), len(reps))
	fmt.Print(b.String())
	if len(errs) > 0 {
		fmt.Println("\nErrors:")
		for _, e := range errs {
			fmt.Println("- " + e)
		}
	}
}

func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}
