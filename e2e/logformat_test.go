package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

// TestLogFormats runs the real stub binary three ways and reads the line
// it logs when it listens: with stderr on a terminal (a pty) it is a
// readable console line with a coloured level; on a pipe it is JSON; on a
// pipe with log.format: console it is a console line again, uncoloured.
// The fields are the same JSON in both.
func TestLogFormats(t *testing.T) {
	stubBin, _ := binaries(t)
	console := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) (\x1b\[\d+m)?INFO(\x1b\[0m)? stub/server\.go:\d+ stub listening (\{.*\})$`)
	for _, tc := range []struct {
		name, format string
		tty          bool
		wantJSON     bool
		wantColour   bool
	}{
		{"terminal", "", true, false, true},
		{"pipe", "", false, true, false},
		{"pipe, console asked for", "console", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			port := freePort(t)
			cfg := filepath.Join(dir, "stub.yaml")
			writeFile(t, cfg, fmt.Sprintf("apiVersion: keyhole.dev/v1alpha1\nkind: StubConfig\nlisten: 127.0.0.1:%d\nstateDir: %s\nlog: {format: %q}\n", port, filepath.Join(dir, "state"), tc.format))
			cmd := exec.Command(stubBin, "serve", "--config", cfg)
			var out io.Reader
			if tc.tty {
				ptmx, tty, err := pty.Open()
				if err != nil {
					t.Fatal(err)
				}
				defer ptmx.Close()
				cmd.Stderr = tty
				out = ptmx
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				tty.Close()
			} else {
				r, err := cmd.StderrPipe()
				if err != nil {
					t.Fatal(err)
				}
				out = r
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan struct{})
			lines := make(chan string)
			defer func() {
				_ = cmd.Process.Signal(os.Interrupt)
				go func() {
					for range lines {
					}
				}()
				<-done
			}()
			go func() {
				defer close(done)
				defer cmd.Wait()
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					lines <- strings.TrimRight(sc.Text(), "\r")
				}
				close(lines)
			}()
			var seen []string
			deadline := time.After(30 * time.Second)
			for {
				var l string
				select {
				case l = <-lines:
				case <-deadline:
					t.Fatalf("no \"stub listening\" line in 30 s:\n%s", strings.Join(seen, "\n"))
				}
				seen = append(seen, l)
				if !strings.Contains(l, "stub listening") {
					continue
				}
				var fields map[string]any
				if tc.wantJSON {
					if err := json.Unmarshal([]byte(l), &fields); err != nil {
						t.Fatalf("not a JSON line on a pipe: %v\n%q", err, l)
					}
					if fields["level"] != "info" || fields["msg"] != "stub listening" {
						t.Errorf("JSON line %v", fields)
					}
				} else {
					m := console.FindStringSubmatch(l)
					if m == nil {
						t.Fatalf("not a console line:\n%q\nwant %s", l, console)
					}
					if colour := m[2] != ""; colour != tc.wantColour {
						t.Errorf("coloured level: %v, want %v: %q", colour, tc.wantColour, l)
					}
					if err := json.Unmarshal([]byte(m[4]), &fields); err != nil {
						t.Fatalf("fields %q: %v", m[4], err)
					}
				}
				if fields["addr"] != fmt.Sprintf("127.0.0.1:%d", port) {
					t.Errorf("field addr = %v, want 127.0.0.1:%d", fields["addr"], port)
				}
				return
			}
		})
	}
}
