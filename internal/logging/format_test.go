package logging

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// One entry, written in each format: JSON off a terminal (unless console
// is asked for), console lines on one (coloured levels only there), and
// the same keys in both.
func TestFormats(t *testing.T) {
	write := func(t *testing.T, format string, terminal bool) string {
		t.Helper()
		var buf bytes.Buffer
		log, err := build("info", format, zapcore.AddSync(&buf), terminal)
		if err != nil {
			t.Fatal(err)
		}
		log.Named("tunnel").Info("agent connected", zap.String("cluster", "prod"), zap.Int("streams", 3))
		log.Debug("not at info")
		return buf.String()
	}
	wantKeys := []string{"caller", "cluster", "level", "logger", "msg", "streams", "ts"}

	for _, tc := range []struct {
		name, format string
		terminal     bool
		want         string // json or console
	}{
		{"auto, a pipe", "", false, "json"},
		{"auto, a terminal", "", true, "console"},
		{"json on a terminal", "json", true, "json"},
		{"console to a pipe", "console", false, "console"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := write(t, tc.format, tc.terminal)
			if n := strings.Count(out, "\n"); n != 1 {
				t.Fatalf("%d lines, want 1:\n%s", n, out)
			}
			if tc.want == "json" {
				var m map[string]any
				if err := json.Unmarshal([]byte(out), &m); err != nil {
					t.Fatalf("not a JSON line: %v\n%s", err, out)
				}
				var keys []string
				for k := range m {
					keys = append(keys, k)
				}
				if got := strings.Join(slices.Sorted(slices.Values(keys)), ","); got != strings.Join(wantKeys, ",") {
					t.Errorf("keys %s, want %s", got, strings.Join(wantKeys, ","))
				}
				if m["level"] != "info" || m["logger"] != "tunnel" || m["msg"] != "agent connected" || m["cluster"] != "prod" {
					t.Errorf("entry %v", m)
				}
				return
			}
			// 2026-12-02T05:41:07.123Z INFO tunnel logging/format_test.go:25 agent connected {"cluster": "prod", "streams": 3}
			level := "INFO"
			if tc.terminal {
				level = "\x1b[34mINFO\x1b[0m"
			}
			re := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) ` + regexp.QuoteMeta(level) + ` tunnel logging/format_test\.go:\d+ agent connected (\{.*\})\n$`)
			m := re.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("console line %q does not match %s", out, re)
			}
			var fields map[string]any
			if err := json.Unmarshal([]byte(m[2]), &fields); err != nil || fields["cluster"] != "prod" || fields["streams"] != float64(3) {
				t.Errorf("fields %q: %v %v", m[2], fields, err)
			}
		})
	}
}

func TestBadFormat(t *testing.T) {
	_, err := build("info", "text", zapcore.AddSync(&bytes.Buffer{}), false)
	if err == nil || !strings.Contains(err.Error(), `log.format "text"`) || !strings.Contains(err.Error(), "json or console") {
		t.Fatalf("err = %v, want one naming log.format and its values", err)
	}
	_, err = build("loud", "", zapcore.AddSync(&bytes.Buffer{}), false)
	if err == nil || !strings.Contains(err.Error(), `log.level "loud"`) {
		t.Fatalf("err = %v, want one naming log.level", err)
	}
}
