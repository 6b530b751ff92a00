package stub

import (
	"testing"
)

// A stub started without a config file (no reload) still answers the
// landing page's question: which browser logins are there.
func TestBrowserLoginsWithoutConfigFile(t *testing.T) {
	cfg, _ := stubConfig(t, t.TempDir(), "")
	log, _ := observed(t)
	srv, err := New(cfg, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if l := srv.access.BrowserLogins(); len(l) != 0 {
		t.Fatalf("browser logins %v, want none", l)
	}
}
