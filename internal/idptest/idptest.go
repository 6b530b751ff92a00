// Package idptest runs a real OpenID Connect provider, Dex v2.45.1, for
// tests: on a free 127.0.0.1 port, over HTTPS with its own test CA, with
// in-memory storage, static users (with groups) and one static client that
// may use the password grant, the authorization-code flow (with or without
// PKCE) and, if public, the device flow; Dex's approval screen is skipped.
// It also hands out the path of the real kubelogin
// (kubectl-oidc_login v1.34.0), kubectl's OIDC credential plugin.
//
// The binaries (dex, kubectl-oidc_login, bcrypthash) come from the directory
// named by the environment variable KEYHOLE_TESTBIN; build them once with
//
//	export KEYHOLE_TESTBIN="$(hack/testbin.sh)"
//
// Facts about Dex that tests rely on:
//   - The ID token's "sub" is opaque (Dex encodes user ID and connector ID);
//     identify users by the "email" claim.
//   - "email" and "email_verified" are present only with the scope "email",
//     "groups" only with the scope "groups", "name" only with "profile".
//     "aud" is the client ID (a string, not a list, for one audience).
//   - ID tokens live 24 h; signing keys are made at start (memory storage).
package idptest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyhole-dev/keyhole/internal/testbed"
)

// EnvTestBin names the directory holding dex, kubectl-oidc_login and bcrypthash.
const EnvTestBin = testbed.EnvTestBin

// DefaultClientID is the client ID when Options.ClientID is empty.
const DefaultClientID = "keyhole"

// Scopes that PasswordToken requests: every claim Dex can put in an ID token
// for a static user, and a refresh token.
var Scopes = []string{"openid", "email", "groups", "profile", "offline_access"}

// Timeouts. The machine may be small and loaded; these bound every wait.
var (
	StartTimeout   = 60 * time.Second // Dex up and serving its discovery document
	RequestTimeout = 30 * time.Second // one token request
)

// User is a static Dex user (Dex's staticPasswords). Email is the login name
// of the password grant and of the login form.
type User struct {
	Email    string
	Password string
	Name     string   // "name" claim (scope profile); default: the part of Email before "@"
	Groups   []string // "groups" claim (scope groups)
}

// Options configure Start.
type Options struct {
	Users []User
	// ClientID of the one static client; default DefaultClientID ("keyhole").
	ClientID string
	// ClientSecret of the client; "" makes it a public client (no secret on
	// the token endpoint, as kubelogin and kubectl use it). The device flow
	// works with a public client only: for a confidential one, Dex v2.45.1
	// sends the browser to /device/callback outside the issuer's /dex path
	// (a 404), so the device code never gets authorized.
	ClientSecret string
	// RedirectURIs registered for the client. When empty, a public client
	// accepts Dex's built-in ones: any http://127.0.0.1:PORT/… or
	// http://localhost:PORT/… (kubelogin's authcode flow),
	// urn:ietf:wg:oauth:2.0:oob and /device/callback (the device flow). Once
	// any is given, Dex accepts only the listed ones; for a public client
	// /device/callback is then added, so the device flow keeps working.
	RedirectURIs []string
	// PeerClients are more public clients that trust ClientID as a peer
	// (Dex's trustedPeers): ClientID may ask for an ID token whose audience
	// is one of them with the scope "audience:server:client_id:<peer>"
	// (Dex's cross-client trust), e.g. a token bound to one cluster.
	PeerClients []string
	// WebClients are more clients, each with its own redirect URIs, as a
	// browser sign-in (the stub's login.browser) registers one: public
	// (PKCE) when Secret is "", else confidential.
	WebClients []Client
	// IDTokenExpiry is the lifetime of the ID tokens Dex issues (Dex's
	// expiry.idTokens); default Dex's own (24h).
	IDTokenExpiry time.Duration
}

// Client is a Dex static client of Options.WebClients.
type Client struct {
	ID, Secret   string
	RedirectURIs []string
}

// Dex is a running Dex. Fields are read-only.
type Dex struct {
	Issuer        string // https://127.0.0.1:PORT/dex
	CAFile        string // PEM of the CA that signed Dex's serving certificate
	CAData        []byte
	ClientID      string
	ClientSecret  string // "" for a public client
	KubeloginPath string // kubectl-oidc_login (kubelogin v1.34.0)
	Dir           string // working directory (t.TempDir()): config.json, dex.log, pki/
	LogPath       string // Dex's log

	client *http.Client
}

// Start runs Dex in t.TempDir() and stops it (by PID) in t.Cleanup. If
// $KEYHOLE_TESTBIN is unset or a binary is missing, the test fails telling
// to run hack/testbin.sh. On failure, the end of Dex's log is printed.
func Start(t testing.TB, o Options) *Dex {
	t.Helper()
	bin := testbed.TestBin(t, "idptest", "dex", "kubectl-oidc_login", "bcrypthash")
	if o.ClientID == "" {
		o.ClientID = DefaultClientID
	}
	seen := map[string]bool{}
	for _, u := range o.Users {
		if u.Email == "" || !strings.Contains(u.Email, "@") {
			t.Fatalf("idptest: user email %q: Dex needs an email address as login", u.Email)
		}
		if seen[strings.ToLower(u.Email)] {
			t.Fatalf("idptest: user %s given twice", u.Email)
		}
		seen[strings.ToLower(u.Email)] = true
		if u.Password == "" || strings.ContainsAny(u.Password, "\r\n") {
			t.Fatalf("idptest: user %s: the password must be non-empty and on one line", u.Email)
		}
	}

	dir := t.TempDir()
	d := &Dex{
		CAFile:        filepath.Join(dir, "pki", "ca.crt"),
		ClientID:      o.ClientID,
		ClientSecret:  o.ClientSecret,
		KubeloginPath: filepath.Join(bin, "kubectl-oidc_login"),
		Dir:           dir,
		LogPath:       filepath.Join(dir, "dex.log"),
	}
	var p *testbed.Proc
	t.Cleanup(func() {
		if p != nil {
			p.Stop(10 * time.Second)
		}
		if d.client != nil {
			d.client.CloseIdleConnections()
		}
		if t.Failed() {
			t.Logf("idptest: last lines of dex (%s):\n%s", d.LogPath, tail(d.LogPath, 60))
		}
	})

	certFile, keyFile, err := d.writePKI()
	if err != nil {
		t.Fatalf("idptest: PKI: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(d.CAData)
	d.client = &http.Client{
		Timeout:   RequestTimeout,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
	}

	hashes, err := bcryptHashes(filepath.Join(bin, "bcrypthash"), o.Users)
	if err != nil {
		t.Fatalf("idptest: %v", err)
	}

	for attempt := 1; ; attempt++ {
		addr := "127.0.0.1:" + strconv.Itoa(testbed.FreePort(t, "idptest"))
		d.Issuer = "https://" + addr + "/dex"
		cfg := dexConfig(d.Issuer, addr, certFile, keyFile, o, hashes)
		cfgPath := filepath.Join(dir, "config.json")
		if err := writeFile(cfgPath, cfg); err != nil {
			t.Fatalf("idptest: %v", err)
		}
		p, err = testbed.StartProc("dex", d.LogPath, filepath.Join(bin, "dex"), "serve", cfgPath)
		if err != nil {
			t.Fatalf("idptest: %v", err)
		}
		err = testbed.WaitFor(p, StartTimeout, func() bool { return d.discoveryOK() })
		if err == nil {
			break
		}
		if p.Exited() && attempt < 5 && strings.Contains(tail(d.LogPath, 20), "address already in use") {
			t.Logf("idptest: dex port clash, retrying")
			continue
		}
		t.Fatalf("idptest: dex did not serve %s/.well-known/openid-configuration: %v", d.Issuer, err)
	}
	return d
}

// dexConfig returns Dex's configuration file (JSON, which Dex reads as YAML).
func dexConfig(issuer, addr, certFile, keyFile string, o Options, hashes []string) []byte {
	type obj = map[string]any
	client := obj{
		"id":     o.ClientID,
		"name":   "Keyhole (test)",
		"public": o.ClientSecret == "",
	}
	if o.ClientSecret != "" {
		client["secret"] = o.ClientSecret
	}
	if len(o.RedirectURIs) > 0 {
		uris := append([]string(nil), o.RedirectURIs...)
		if o.ClientSecret == "" && !contains(uris, "/device/callback") {
			uris = append(uris, "/device/callback")
		}
		client["redirectURIs"] = uris
	}
	clients := []obj{client}
	for _, p := range o.PeerClients {
		clients = append(clients, obj{"id": p, "name": p + " (test peer)", "public": true, "trustedPeers": []string{o.ClientID}})
	}
	for _, c := range o.WebClients {
		wc := obj{"id": c.ID, "name": c.ID + " (test web client)", "public": c.Secret == "", "redirectURIs": c.RedirectURIs}
		if c.Secret != "" {
			wc["secret"] = c.Secret
		}
		clients = append(clients, wc)
	}
	users := []obj{}
	for i, u := range o.Users {
		name := u.Name
		if name == "" {
			name, _, _ = strings.Cut(u.Email, "@")
		}
		groups := u.Groups
		if groups == nil {
			groups = []string{}
		}
		sum := sha256.Sum256([]byte(strings.ToLower(u.Email)))
		users = append(users, obj{
			"email":         u.Email,
			"hash":          hashes[i],
			"username":      name,
			"name":          name,
			"emailVerified": true,
			"groups":        groups,
			"userID":        hex.EncodeToString(sum[:16]),
		})
	}
	cfg := obj{
		"issuer":  issuer,
		"storage": obj{"type": "memory"},
		"web": obj{
			"https":   addr,
			"tlsCert": certFile,
			"tlsKey":  keyFile,
		},
		"logger": obj{"level": "info", "format": "text"},
		"oauth2": obj{
			"grantTypes": []string{
				"authorization_code",
				"refresh_token",
				"password",
				"urn:ietf:params:oauth:grant-type:device_code",
			},
			"responseTypes":      []string{"code"},
			"skipApprovalScreen": true,
			"passwordConnector":  "local",
		},
		"enablePasswordDB": true,
		"staticPasswords":  users,
		"staticClients":    clients,
	}
	if o.IDTokenExpiry > 0 {
		cfg["expiry"] = obj{"idTokens": o.IDTokenExpiry.String()}
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		panic(err) // only strings, bools and slices of them
	}
	return append(b, '\n')
}

// bcryptHashes hashes the users' passwords with hack/idp's bcrypthash (cost 10,
// the minimum Dex accepts). The passwords go through stdin.
func bcryptHashes(path string, users []User) ([]string, error) {
	if len(users) == 0 {
		return nil, nil
	}
	var in bytes.Buffer
	for _, u := range users {
		in.WriteString(u.Password + "\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	cmd.Stdin = &in
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("bcrypthash: %v: %s", err, strings.TrimSpace(errb.String()))
	}
	hashes := strings.Fields(out.String())
	if len(hashes) != len(users) {
		return nil, fmt.Errorf("bcrypthash: %d hashes for %d passwords", len(hashes), len(users))
	}
	return hashes, nil
}

// discoveryOK reports whether Dex serves its discovery document for Issuer.
func (d *Dex) discoveryOK() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.Issuer+"/.well-known/openid-configuration", nil)
	if err != nil {
		return false
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer string `json:"issuer"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc)
	return err == nil && resp.StatusCode == http.StatusOK && doc.Issuer == d.Issuer
}

// HTTPClient returns a client that trusts Dex's CA (and nothing else).
func (d *Dex) HTTPClient() *http.Client { return d.client }

// TokenResponse is the token endpoint's answer.
type TokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	IDToken      string `json:"id_token"`
}

// PasswordGrant asks Dex's token endpoint for tokens by the OAuth2 resource
// owner password grant with the given scopes (Scopes if none). The client
// authenticates with its ID (and secret, if any) in the form. Errors carry
// Dex's error response, never the password.
func (d *Dex) PasswordGrant(email, password string, scopes ...string) (*TokenResponse, error) {
	if len(scopes) == 0 {
		scopes = Scopes
	}
	form := url.Values{
		"grant_type": {"password"},
		"username":   {email},
		"password":   {password},
		"scope":      {strings.Join(scopes, " ")},
		"client_id":  {d.ClientID},
	}
	if d.ClientSecret != "" {
		form.Set("client_secret", d.ClientSecret)
	}
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.Issuer+"/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("password grant for %s: %w", email, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("password grant for %s: %w", email, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("password grant for %s: %s: %s", email, resp.Status, bytes.TrimSpace(body))
	}
	var tr TokenResponse
	if err := json.Unmarshal(body, &tr); err != nil {
		return nil, fmt.Errorf("password grant for %s: decoding the answer: %w", email, err)
	}
	if tr.IDToken == "" {
		return nil, fmt.Errorf("password grant for %s: no id_token in the answer", email)
	}
	return &tr, nil
}

// PasswordToken returns an ID token for the user by the OAuth2 password grant
// (scopes: Scopes, so the token carries email, email_verified, groups and
// name). It fails the test on error.
func (d *Dex) PasswordToken(t testing.TB, email, password string) string {
	t.Helper()
	tr, err := d.PasswordGrant(email, password)
	if err != nil {
		t.Fatalf("idptest: %v", err)
	}
	return tr.IDToken
}

// KubeloginArgs returns the arguments of `kubectl-oidc_login get-token` for
// the password grant against this Dex, as a kubeconfig exec plugin would run
// it (command: d.KubeloginPath; kubectl sets KUBERNETES_EXEC_INFO, without
// which kubelogin answers in client.authentication.k8s.io/v1beta1). The
// token cache goes to cacheDir (use a t.TempDir()).
func (d *Dex) KubeloginArgs(email, password, cacheDir string) []string {
	args := []string{
		"get-token",
		"--oidc-issuer-url=" + d.Issuer,
		"--oidc-client-id=" + d.ClientID,
	}
	if d.ClientSecret != "" {
		args = append(args, "--oidc-client-secret="+d.ClientSecret)
	}
	return append(args,
		"--oidc-extra-scope=email",
		"--oidc-extra-scope=groups",
		"--oidc-extra-scope=profile",
		"--grant-type=password",
		"--username="+email,
		"--password="+password,
		"--certificate-authority="+d.CAFile,
		"--token-cache-dir="+cacheDir,
	)
}

// DecodeClaims returns the claims of a JWT (its middle part) WITHOUT
// verifying the signature: for checking what a token says in tests.
func DecodeClaims(jwt string) (map[string]any, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT (%d parts)", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("JWT payload: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		return nil, fmt.Errorf("JWT payload: %w", err)
	}
	return claims, nil
}

// --- helpers ------------------------------------------------------------

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// tail is testbed.Tail, but "(no log)" if the file does not exist.
func tail(path string, n int) string {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return "(no log)"
	}
	return testbed.Tail(path, n)
}
