package testbed

import (
	"os"
	"path/filepath"
	"testing"
)

// EnvTestBin names the directory holding the test binaries; hack/testbin.sh
// builds them and prints it.
const EnvTestBin = "KEYHOLE_TESTBIN"

// TestBin returns $KEYHOLE_TESTBIN after checking that it holds the named
// executables. If it is unset or one is missing, the test fails with a
// message starting "<name>: " that tells to run hack/testbin.sh.
func TestBin(t testing.TB, name string, executables ...string) string {
	t.Helper()
	bin := os.Getenv(EnvTestBin)
	hint := "build the test binaries and export their directory: export " + EnvTestBin + `="$(hack/testbin.sh)"`
	if bin == "" {
		t.Fatalf("%s: $%s is not set; %s", name, EnvTestBin, hint)
	}
	for _, b := range executables {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			t.Fatalf("%s: %s not found (or not executable) in $%s=%s; %s", name, b, EnvTestBin, bin, hint)
		}
	}
	return bin
}
