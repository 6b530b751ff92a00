package idptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

var (
	alice = User{Email: "alice@example.com", Password: "alice-pw-1", Name: "Alice", Groups: []string{"dev", "ops/admins"}}
	bob   = User{Email: "bob@example.com", Password: "bob pw with spaces & symbols: ü"} // no groups, default name
)

// TestDex starts Dex, gets ID tokens by the password grant directly and
// through the real kubelogin run as kubectl runs an exec credential plugin,
// and checks what the tokens say.
func TestDex(t *testing.T) {
	d := Start(t, Options{Users: []User{alice, bob}})
	if !strings.HasPrefix(d.Issuer, "https://127.0.0.1:") || !strings.HasSuffix(d.Issuer, "/dex") {
		t.Fatalf("issuer %q", d.Issuer)
	}
	if d.ClientID != "keyhole" || d.ClientSecret != "" {
		t.Fatalf("client %q/%q, want the public client keyhole", d.ClientID, d.ClientSecret)
	}

	t.Run("discovery", func(t *testing.T) {
		var doc struct {
			Issuer     string   `json:"issuer"`
			GrantTypes []string `json:"grant_types_supported"`
			Device     string   `json:"device_authorization_endpoint"`
			PKCE       []string `json:"code_challenge_methods_supported"`
		}
		getJSON(t, d, d.Issuer+"/.well-known/openid-configuration", &doc)
		for _, g := range []string{"password", "authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"} {
			if !slices.Contains(doc.GrantTypes, g) {
				t.Errorf("grant type %s not supported: %v", g, doc.GrantTypes)
			}
		}
		if doc.Device != d.Issuer+"/device/code" {
			t.Errorf("device_authorization_endpoint %q", doc.Device)
		}
		if !slices.Contains(doc.PKCE, "S256") {
			t.Errorf("PKCE methods %v", doc.PKCE)
		}
	})

	t.Run("password grant", func(t *testing.T) {
		for _, u := range []User{alice, bob} {
			tok := d.PasswordToken(t, u.Email, u.Password)
			checkIDToken(t, d, tok, u)
		}
		tr, err := d.PasswordGrant(alice.Email, alice.Password)
		if err != nil {
			t.Fatal(err)
		}
		if tr.RefreshToken == "" || tr.AccessToken == "" || !strings.EqualFold(tr.TokenType, "bearer") {
			t.Errorf("token response without refresh/access token: type %q, refresh %t, access %t", tr.TokenType, tr.RefreshToken != "", tr.AccessToken != "")
		}
	})

	t.Run("only openid", func(t *testing.T) {
		tr, err := d.PasswordGrant(alice.Email, alice.Password, "openid")
		if err != nil {
			t.Fatal(err)
		}
		c, err := DecodeClaims(tr.IDToken)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"email", "groups", "name"} {
			if _, ok := c[k]; ok {
				t.Errorf("claim %s present without its scope: %v", k, c)
			}
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		_, err := d.PasswordGrant(alice.Email, "not-"+alice.Password)
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("got %v, want 401", err)
		}
		if strings.Contains(err.Error(), alice.Password) {
			t.Fatalf("error carries the password: %v", err)
		}
		_, err = d.PasswordGrant("nobody@example.com", "x")
		if err == nil {
			t.Fatal("unknown user got a token")
		}
	})

	// The authorization-code flow with PKCE, as a browser-based login of a
	// public client (kubelogin's default flow) would run it.
	t.Run("authcode PKCE", func(t *testing.T) {
		verifier := rand.Text() + rand.Text()
		sum := sha256.Sum256([]byte(verifier))
		redirect := "http://127.0.0.1:18000/callback" // never requested
		q := url.Values{
			"client_id":             {d.ClientID},
			"redirect_uri":          {redirect},
			"response_type":         {"code"},
			"scope":                 {"openid email groups profile"},
			"state":                 {"st-123"},
			"nonce":                 {"n-456"},
			"code_challenge":        {base64.RawURLEncoding.EncodeToString(sum[:])},
			"code_challenge_method": {"S256"},
		}
		back := d.Login(t, d.Issuer+"/auth?"+q.Encode(), alice.Email, alice.Password)
		if got := back.Scheme + "://" + back.Host + back.Path; got != redirect {
			t.Fatalf("Dex sent the browser to %s, want %s", back, redirect)
		}
		if back.Query().Get("state") != "st-123" || back.Query().Get("code") == "" {
			t.Fatalf("redirect without state/code: %s", back.RawQuery)
		}
		tr := postToken(t, d, url.Values{
			"grant_type":    {"authorization_code"},
			"code":          {back.Query().Get("code")},
			"redirect_uri":  {redirect},
			"client_id":     {d.ClientID},
			"code_verifier": {verifier},
		})
		checkIDToken(t, d, tr.IDToken, alice)
		if c, _ := DecodeClaims(tr.IDToken); c["nonce"] != "n-456" {
			t.Errorf("nonce %v", c["nonce"])
		}
	})

	// The device flow (RFC 8628), as a CLI without a local browser runs it.
	t.Run("device flow", func(t *testing.T) {
		var dc struct {
			DeviceCode              string `json:"device_code"`
			UserCode                string `json:"user_code"`
			VerificationURIComplete string `json:"verification_uri_complete"`
		}
		postJSON(t, d, d.Issuer+"/device/code", url.Values{"client_id": {d.ClientID}, "scope": {"openid email groups profile"}}, &dc)
		if dc.DeviceCode == "" || dc.UserCode == "" || !strings.HasPrefix(dc.VerificationURIComplete, d.Issuer+"/device") {
			t.Fatalf("device authorization answer %+v", dc)
		}
		end := d.Login(t, dc.VerificationURIComplete, bob.Email, bob.Password)
		if !strings.HasPrefix(end.String(), d.Issuer+"/device/callback") {
			t.Fatalf("device login ended at %s", end)
		}
		tr := postToken(t, d, url.Values{
			"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
			"device_code": {dc.DeviceCode},
			"client_id":   {d.ClientID},
		})
		checkIDToken(t, d, tr.IDToken, bob)
	})

	t.Run("kubelogin", func(t *testing.T) {
		cacheDir := t.TempDir()
		for _, u := range []User{alice, bob} {
			args := d.KubeloginArgs(u.Email, u.Password, cacheDir)
			want := []string{
				"get-token",
				"--oidc-issuer-url=" + d.Issuer,
				"--oidc-client-id=keyhole",
				"--grant-type=password",
				"--username=" + u.Email,
				"--password=" + u.Password,
				"--certificate-authority=" + d.CAFile,
				"--token-cache-dir=" + cacheDir,
			}
			for _, w := range want {
				if !slices.Contains(args, w) {
					flag, _, _ := strings.Cut(w, "=") // no password in the output
					t.Fatalf("kubelogin args lack %s with the expected value", flag)
				}
			}
			cred := runKubelogin(t, d, args)
			checkIDToken(t, d, cred.Status.Token, u)
			if cred.Status.ExpirationTimestamp == "" {
				t.Errorf("ExecCredential without expirationTimestamp")
			}
			// A second run answers from kubelogin's token cache: same token.
			if again := runKubelogin(t, d, args); again.Status.Token != cred.Status.Token {
				t.Errorf("second run did not use the token cache in %s", cacheDir)
			}
		}
		// A wrong password makes kubelogin fail (and kubectl with it).
		ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
		defer cancel()
		cmd := kubeloginCmd(ctx, d, d.KubeloginArgs(alice.Email, "wrong", t.TempDir()))
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || out.Len() != 0 {
			t.Fatalf("kubelogin with a wrong password: err %v, stdout %q, stderr %q", err, out.String(), errb.String())
		}
	})
}

// TestConfidentialClient: with a client secret, the password grant and
// kubelogin (--oidc-client-secret) work, and a token request without the
// secret is refused.
func TestConfidentialClient(t *testing.T) {
	d := Start(t, Options{Users: []User{alice}, ClientID: "keyhole-web", ClientSecret: "s3cret", RedirectURIs: []string{"https://127.0.0.1:1/callback"}})
	checkIDToken(t, d, d.PasswordToken(t, alice.Email, alice.Password), alice)

	args := d.KubeloginArgs(alice.Email, alice.Password, t.TempDir())
	if !slices.Contains(args, "--oidc-client-secret=s3cret") {
		t.Fatalf("kubelogin args lack --oidc-client-secret")
	}
	checkIDToken(t, d, runKubelogin(t, d, args).Status.Token, alice)

	public := *d
	public.ClientSecret = ""
	if _, err := public.PasswordGrant(alice.Email, alice.Password); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("token request without the client secret: got %v, want 401", err)
	}
}

// checkIDToken decodes (does not verify) an ID token of d and checks its claims for u.
func checkIDToken(t *testing.T, d *Dex, tok string, u User) {
	t.Helper()
	c, err := DecodeClaims(tok)
	if err != nil {
		t.Fatalf("ID token of %s: %v", u.Email, err)
	}
	if c["iss"] != d.Issuer {
		t.Errorf("%s: iss %v, want %s", u.Email, c["iss"], d.Issuer)
	}
	switch aud := c["aud"].(type) {
	case string:
		if aud != d.ClientID {
			t.Errorf("%s: aud %q, want %s", u.Email, aud, d.ClientID)
		}
	default:
		t.Errorf("%s: aud %#v, want the string %q", u.Email, aud, d.ClientID)
	}
	if c["email"] != u.Email {
		t.Errorf("email %v, want %s", c["email"], u.Email)
	}
	if c["email_verified"] != true {
		t.Errorf("%s: email_verified %v", u.Email, c["email_verified"])
	}
	wantName := u.Name
	if wantName == "" {
		wantName, _, _ = strings.Cut(u.Email, "@")
	}
	if c["name"] != wantName {
		t.Errorf("%s: name %v, want %s", u.Email, c["name"], wantName)
	}
	var groups []string
	if raw, ok := c["groups"]; ok {
		list, ok := raw.([]any)
		if !ok {
			t.Fatalf("%s: groups %#v is not a list", u.Email, raw)
		}
		for _, g := range list {
			s, _ := g.(string)
			groups = append(groups, s)
		}
	}
	if !slices.Equal(groups, u.Groups) {
		t.Errorf("%s: groups %q, want %q", u.Email, groups, u.Groups)
	}
	if sub, _ := c["sub"].(string); sub == "" {
		t.Errorf("%s: no sub", u.Email)
	}
	exp, _ := c["exp"].(float64)
	if now := float64(time.Now().Unix()); exp < now+3600 {
		t.Errorf("%s: exp %v is less than an hour away", u.Email, exp)
	}
}

type execCredential struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Status     struct {
		Token               string `json:"token"`
		ExpirationTimestamp string `json:"expirationTimestamp"`
	} `json:"status"`
}

// kubeloginCmd prepares kubelogin as kubectl runs an exec credential plugin
// (client.authentication.k8s.io/v1, not interactive), with its own HOME.
func kubeloginCmd(ctx context.Context, d *Dex, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, d.KubeloginPath, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+d.Dir,
		`KUBERNETES_EXEC_INFO={"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":false}}`,
	)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func runKubelogin(t *testing.T, d *Dex, args []string) execCredential {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	cmd := kubeloginCmd(ctx, d, args)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl-oidc_login get-token: %v (ctx: %v); stderr: %s", err, ctx.Err(), errb.String())
	}
	var cred execCredential
	if err := json.Unmarshal(out.Bytes(), &cred); err != nil {
		t.Fatalf("kubectl-oidc_login printed no ExecCredential: %v\n%s", err, out.String())
	}
	if cred.APIVersion != "client.authentication.k8s.io/v1" || cred.Kind != "ExecCredential" {
		t.Fatalf("kubectl-oidc_login printed %s %s, want client.authentication.k8s.io/v1 ExecCredential", cred.APIVersion, cred.Kind)
	}
	if strings.Count(cred.Status.Token, ".") != 2 {
		t.Fatalf("status.token is not a JWT")
	}
	return cred
}

func postToken(t *testing.T, d *Dex, form url.Values) TokenResponse {
	t.Helper()
	var tr TokenResponse
	postJSON(t, d, d.Issuer+"/token", form, &tr)
	if tr.IDToken == "" {
		t.Fatalf("token response without id_token")
	}
	return tr
}

func postJSON(t *testing.T, d *Dex, target string, form url.Values, v any) {
	t.Helper()
	doJSON(t, d, http.MethodPost, target, form, v)
}

func getJSON(t *testing.T, d *Dex, target string, v any) {
	t.Helper()
	doJSON(t, d, http.MethodGet, target, nil, v)
}

// doJSON sends a request to Dex (a form body when form is not nil) and
// decodes a 200 answer's JSON into v.
func doJSON(t *testing.T, d *Dex, method, target string, form url.Values, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), RequestTimeout)
	defer cancel()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := d.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s: %s", method, target, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
}
