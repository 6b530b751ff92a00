package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/coreos/go-oidc/v3/oidc/oidctest"
)

// inprocIssuer is an OIDC issuer in the test process (go-oidc's oidctest)
// over HTTPS on 127.0.0.1, signing with alg; its discovery advertises only
// alg. handle serves more paths (distributed claim sources).
type inprocIssuer struct {
	*httptest.Server
	alg   string
	key   crypto.Signer
	mu    sync.Mutex
	extra map[string]http.HandlerFunc
}

func startIssuer(t *testing.T, alg string) *inprocIssuer {
	t.Helper()
	var (
		key crypto.Signer
		err error
	)
	switch alg {
	case oidc.ES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case oidc.RS256:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("startIssuer: no key for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	is := &inprocIssuer{alg: alg, key: key, extra: map[string]http.HandlerFunc{}}
	srv := &oidctest.Server{PublicKeys: []oidctest.PublicKey{{PublicKey: key.Public(), KeyID: "k1", Algorithm: alg}}, Algorithms: []string{alg}}
	is.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.mu.Lock()
		h := is.extra[r.URL.Path]
		is.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(is.Close)
	srv.SetIssuer(is.URL)
	return is
}

func (is *inprocIssuer) handle(path string, h http.HandlerFunc) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.extra[path] = h
}

// mint signs claims over iss, aud keyhole, exp in 10 minutes and iat.
func (is *inprocIssuer) mint(claims map[string]any) string {
	c := map[string]any{"iss": is.URL, "aud": "keyhole", "exp": time.Now().Add(10 * time.Minute).Unix(), "iat": time.Now().Unix()}
	for k, v := range claims {
		c[k] = v
	}
	b, _ := json.Marshal(c)
	return oidctest.SignIDToken(is.key, "k1", is.alg, string(b))
}

func (is *inprocIssuer) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.Certificate().Raw}))
}

// issuerYAML is the issuer key of a jwt entry for is, with its CA inline
// (as kube-apiserver needs it).
func (is *inprocIssuer) issuerYAML() string {
	ca, _ := json.Marshal(is.caPEM())
	return fmt.Sprintf("issuer: {url: %q, audiences: [keyhole], certificateAuthority: %s}", is.URL, ca)
}

// indentYAML puts every line of s n spaces in.
func indentYAML(s string, n int) string {
	pad := strings.Repeat(" ", n)
	return pad + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+pad) + "\n"
}
