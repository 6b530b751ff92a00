package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/cmd/internal/cli"
	"github.com/keyhole-dev/keyhole/credplugin"
)

// fakeJWT is a JWT-shaped token with these claims (unsigned: ci-token
// reads, the stub verifies).
func fakeJWT(claims map[string]any) string {
	b, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc(b) + ".c2ln"
}

type execCredential struct {
	APIVersion, Kind string
	Status           struct {
		Token               string
		ExpirationTimestamp time.Time
	}
}

func TestCITokenGitHubActions(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var calls, failFirst atomic.Int32
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if failFirst.Add(-1) >= 0 {
			http.Error(w, "busy", http.StatusBadGateway)
			return
		}
		if got := r.Header.Get("Authorization"); got != "bearer request-token" {
			http.Error(w, "bad auth "+got, http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("api-version") != "2.0" {
			http.Error(w, "api-version lost", http.StatusBadRequest)
			return
		}
		if st := int(status.Load()); st != http.StatusOK {
			http.Error(w, "nope", st)
			return
		}
		aud := r.URL.Query().Get("audience")
		fmt.Fprintf(w, `{"count":1,"value":%q}`, fakeJWT(map[string]any{"aud": aud, "exp": now.Unix() + 300, "iat": now.Unix()}))
	}))
	defer srv.Close()
	env := func(vars map[string]string) credplugin.Env {
		return credplugin.Env{Getenv: func(k string) string { return vars[k] }, Client: srv.Client(), Now: func() time.Time { return now }}
	}
	gh := env(map[string]string{"ACTIONS_ID_TOKEN_REQUEST_URL": srv.URL + "/idtoken?api-version=2.0", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token"})
	run := func(e credplugin.Env, args ...string) (execCredential, error) {
		var out, errb bytes.Buffer
		var cred execCredential
		err := ciTokenWith(args, &out, &errb, e)
		if err == nil {
			if err := json.Unmarshal(out.Bytes(), &cred); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
		} else if out.Len() > 0 {
			t.Fatalf("printed %q on error %v", out.String(), err)
		}
		return cred, err
	}

	cred, err := run(gh, "--provider", "github-actions", "--audience", "keyhole")
	if err != nil {
		t.Fatal(err)
	}
	if cred.APIVersion != "client.authentication.k8s.io/v1" || cred.Kind != "ExecCredential" || !strings.HasPrefix(cred.Status.Token, "eyJ") {
		t.Fatalf("%+v", cred)
	}
	// 300 s left: asked again 30 s before exp.
	if want := now.Add(270 * time.Second); !cred.Status.ExpirationTimestamp.Equal(want) {
		t.Fatalf("expirationTimestamp %v, want %v", cred.Status.ExpirationTimestamp, want)
	}

	// A 5xx is tried again; a 4xx is not.
	failFirst.Store(2)
	calls.Store(0)
	if _, err := run(gh, "--provider", "github-actions", "--audience", "keyhole"); err != nil || calls.Load() != 3 {
		t.Fatalf("after two 502s: %v (%d calls)", err, calls.Load())
	}
	status.Store(http.StatusForbidden)
	calls.Store(0)
	if _, err := run(gh, "--provider", "github-actions", "--audience", "keyhole"); err == nil || !strings.Contains(err.Error(), "403 Forbidden") || calls.Load() != 1 {
		t.Fatalf("a 403: %v (%d calls)", err, calls.Load())
	}
	status.Store(http.StatusOK)

	for name, tc := range map[string]struct {
		env  credplugin.Env
		args []string
		want string
	}{
		"no permission":   {env(nil), []string{"--provider", "github-actions", "--audience", "keyhole"}, "permissions: {id-token: write}"},
		"no audience":     {gh, []string{"--provider", "github-actions"}, "--audience is required"},
		"unknown":         {gh, []string{"--provider", "jenkins"}, `--provider "jenkins": use github-actions or gitlab`},
		"expired at once": {func() credplugin.Env { e := gh; e.Now = func() time.Time { return now.Add(time.Hour) }; return e }(), []string{"--provider", "github-actions", "--audience", "keyhole"}, "returned a token that expired"},
	} {
		if _, err := run(tc.env, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
}

func TestCITokenGitLab(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	valid := fakeJWT(map[string]any{"aud": "keyhole", "exp": now.Unix() + 3600, "iat": now.Unix()})
	other := fakeJWT(map[string]any{"aud": []string{"vault"}, "exp": now.Unix() + 3600})
	expired := fakeJWT(map[string]any{"aud": "keyhole", "exp": now.Unix() - 1})
	for name, tc := range map[string]struct {
		vars       map[string]string
		args       []string
		want, fail string
	}{
		"valid":          {vars: map[string]string{"KEYHOLE_TOKEN": valid}, args: []string{"--audience", "keyhole"}, want: valid},
		"other variable": {vars: map[string]string{"DEPLOY_TOKEN": valid}, args: []string{"--token-env", "DEPLOY_TOKEN"}, want: valid},
		"empty":          {args: []string{"--audience", "keyhole"}, fail: "give the job an ID token in .gitlab-ci.yml, `id_tokens: {KEYHOLE_TOKEN: {aud: keyhole}}`"},
		"not a JWT":      {vars: map[string]string{"KEYHOLE_TOKEN": "glpat-123"}, fail: "$KEYHOLE_TOKEN: not a JWT"},
		"wrong audience": {vars: map[string]string{"KEYHOLE_TOKEN": other}, args: []string{"--audience", "keyhole"}, fail: `audience is ["vault"], not "keyhole"`},
		"expired":        {vars: map[string]string{"KEYHOLE_TOKEN": expired}, fail: "cannot issue another during the job: give the job a `timeout:` longer than it runs"},
	} {
		t.Run(name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := ciTokenWith(append([]string{"--provider", "gitlab"}, tc.args...), &out, &errb,
				credplugin.Env{Getenv: func(k string) string { return tc.vars[k] }, Now: func() time.Time { return now }})
			if tc.fail != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fail) || out.Len() > 0 {
					t.Fatalf("%v (printed %q), want %q", err, out.String(), tc.fail)
				}
				return
			}
			var cred execCredential
			if err != nil || json.Unmarshal(out.Bytes(), &cred) != nil {
				t.Fatalf("%v %q", err, out.String())
			}
			// GitLab cannot give another: asked again only at exp.
			if cred.Status.Token != tc.want || !cred.Status.ExpirationTimestamp.Equal(now.Add(time.Hour)) {
				t.Fatalf("%+v", cred.Status)
			}
		})
	}
}

// stub kubeconfig --ci: the user is the ci-token plugin, with no secret;
// clusters whose agents verify callers get their caller audience (GitHub
// Actions) or are left out (GitLab, another audience); bad flags say why.
func TestKubeconfigCI(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "stub.yaml")
	if err := os.WriteFile(cfgPath, []byte(`apiVersion: keyhole.dev/v1alpha1
kind: StubConfig
publicURL: https://keyhole.example.com
stateDir: `+filepath.Join(dir, "state")+`
authentication:
  jwt:
  - issuer: {url: https://token.actions.githubusercontent.com, audiences: [keyhole, keyhole-acc], audienceMatchPolicy: MatchAny}
    claimMappings:
      username: {claim: sub, prefix: "github:"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	stubRun := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(append(args, "--config", cfgPath), &out, &errb)
		return out.String(), err
	}
	for _, reg := range [][]string{{"register", "prod"}, {"register", "acc", "--caller-audience", "keyhole-acc"}} {
		if _, err := stubRun(reg...); err != nil {
			t.Fatal(err)
		}
	}

	out, err := stubRun("kubeconfig", "--ci", "github-actions", "--audience", "keyhole", "--ci-command", "/opt/keyhole/stub")
	if err != nil {
		t.Fatal(err)
	}
	kc, err := clientcmd.Load([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	for ctx, want := range map[string]string{
		"prod": "ci-token --provider github-actions --audience keyhole",
		"acc":  "ci-token --provider github-actions --audience keyhole-acc",
	} {
		c, ok := kc.Contexts[ctx]
		if !ok {
			t.Fatalf("no context %s:\n%s", ctx, out)
		}
		u := kc.AuthInfos[c.AuthInfo]
		if u.Token != "" || u.Exec == nil || u.Exec.Command != "/opt/keyhole/stub" || strings.Join(u.Exec.Args, " ") != want ||
			u.Exec.APIVersion != "client.authentication.k8s.io/v1" || u.Exec.InteractiveMode != "Never" {
			t.Errorf("context %s: user %+v, want exec %q", ctx, u, want)
		}
	}

	out, err = stubRun("kubeconfig", "--ci", "gitlab", "--audience", "keyhole")
	if err != nil {
		t.Fatal(err)
	}
	if kc, err = clientcmd.Load([]byte(out)); err != nil {
		t.Fatal(err)
	}
	if _, ok := kc.Contexts["acc"]; ok || len(kc.Contexts) != 1 {
		t.Fatalf("gitlab kubeconfig has contexts %v; want prod only (acc wants tokens for keyhole-acc)", kc.Contexts)
	}
	if u := kc.AuthInfos[kc.Contexts["prod"].AuthInfo]; u.Exec == nil || strings.Join(u.Exec.Args, " ") != "ci-token --provider gitlab --audience keyhole --token-env KEYHOLE_TOKEN" || u.Exec.Command != "stub" {
		t.Fatalf("gitlab user %+v", u)
	}
	if out, err = stubRun("kubeconfig", "--ci", "gitlab", "--audience", "keyhole-acc", "--token-env", "ACC_TOKEN", "--cluster", "acc"); err != nil ||
		!strings.Contains(out, "--token-env\n      - ACC_TOKEN") {
		t.Fatalf("gitlab for acc: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"kubeconfig", "--ci", "jenkins", "--audience", "keyhole"}, `--ci "jenkins": use github-actions or gitlab`},
		{[]string{"kubeconfig", "--ci", "github-actions"}, "--ci needs --audience"},
		{[]string{"kubeconfig", "--ci", "github-actions", "--audience", "kubernetes"}, `--audience "kubernetes": no authentication.jwt issuer of the config lists it`},
		{[]string{"kubeconfig", "--ci", "github-actions", "--audience", "keyhole", "--token-env", "X"}, "--token-env goes with --ci gitlab"},
		{[]string{"kubeconfig", "--ci", "github-actions", "--audience", "keyhole", "--group", "deployers"}, "a CI job's groups come from its token's claims"},
		{[]string{"kubeconfig", "--ci", "gitlab", "--audience", "keyhole", "--cluster", "acc"}, `--cluster "acc": its agents verify callers themselves and accept only ID tokens for audience "keyhole-acc"`},
		{[]string{"kubeconfig", "--ci", "gitlab", "--audience", "keyhole", "--user", "bob"}, "choose one kind of kubeconfig"},
		{[]string{"kubeconfig", "--user", "bob", "--audience", "keyhole"}, "--audience goes with --ci"},
	} {
		if _, err := stubRun(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

// ciTokenWith runs `stub ci-token args` with env as its environment.
func ciTokenWith(args []string, stdout, stderr io.Writer, env credplugin.Env) error {
	return cli.Execute(newRoot(stdout, stderr, func() credplugin.Env { return env }), append([]string{"ci-token"}, args...))
}
