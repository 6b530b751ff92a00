package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/keyhole-dev/keyhole/internal/kubetest"
)

// ciTokenLifetime is how long the imitated GitHub Actions token endpoint's
// tokens last (GitHub's own last longer).
const ciTokenLifetime = 15 * time.Second

// ghTokenEndpoint imitates GitHub Actions' ID token endpoint on the
// in-process issuer: GET /idtoken?api-version=2.0&audience=AUD with
// "Authorization: bearer <request token>" answers {"value": <ID token>},
// an ID token of the issuer valid for ciTokenLifetime. It keeps what it
// issued, to count the calls and to look for the tokens where they must
// not be.
type ghTokenEndpoint struct {
	mu     sync.Mutex
	issued []time.Time
	tokens []string
}

func (e *ghTokenEndpoint) serve(is *inprocIssuer, requestToken string, claims map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "bearer "+requestToken || r.URL.Query().Get("api-version") != "2.0" {
			http.Error(w, `{"message":"bad request token"}`, http.StatusUnauthorized)
			return
		}
		c := map[string]any{"aud": r.URL.Query().Get("audience"), "exp": time.Now().Add(ciTokenLifetime).Unix(), "nbf": time.Now().Unix()}
		for k, v := range claims {
			c[k] = v
		}
		tok := is.mint(c)
		e.mu.Lock()
		e.issued = append(e.issued, time.Now())
		e.tokens = append(e.tokens, tok)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"count":%d,"value":%q}`, len(tok), tok)
	}
}

// between counts the tokens issued in [from, to].
func (e *ghTokenEndpoint) between(from, to time.Time) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, at := range e.issued {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

func (e *ghTokenEndpoint) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.tokens...)
}

// TestCIJobOutlivesItsToken: a GitHub Actions job deploys through the
// gateway with the kubeconfig of `stub kubeconfig --ci github-actions`,
// whose user is the credential plugin `stub ci-token`. The job's ID tokens
// last 15 s (an in-process issuer imitates the job's token endpoint); its
// `kubectl wait --timeout=150s` runs about 60 s, across the stub's graceful
// restart (SIGTERM, then the same binary again) and four token expiries,
// each ending its watch and making client-go re-list. It succeeds when the
// condition is met, with no 401 on the way, and the plugin was asked
// again and again. Beside it, the recipe the docs gave before (one token
// fetched, passed with --token) loops on the expired token and times out
// although the condition was met. No file, the kubeconfig included, holds
// a token.
func TestCIJobOutlivesItsToken(t *testing.T) {
	c := kubetest.Start(t)
	g := startGateway(t, c)
	is := startIssuer(t, oidc.RS256)
	caFile := filepath.Join(g.dir, "gh-ca.pem")
	writeFile(t, caFile, is.caPEM())
	rt := make([]byte, 16)
	_, _ = rand.Read(rt)
	requestToken := hex.EncodeToString(rt) // ACTIONS_ID_TOKEN_REQUEST_TOKEN
	ep := &ghTokenEndpoint{}
	is.handle("/idtoken", ep.serve(is, requestToken, map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main",
		"repository": "acme/deploy", "ref": "refs/heads/main", "repository_owner": "acme"}))

	secret, tokenFile := g.install("prod")
	g.startAgent(agentOpts{cluster: "prod", id: "p1", secretFile: secret, apiURL: c.URL, tokenFile: tokenFile, c: c})
	_, adminTok := g.user("admin", "cluster-admin")
	g.waitAgents(adminTok, "prod", "p1")
	c.Apply(t, `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: deployers-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: deployers}]
`)
	g.setConfig(fmt.Sprintf(`authentication:
  jwt:
  - issuer: {url: %s, audiences: [keyhole], certificateAuthorityFile: %s}
    claimValidationRules:
    - {claim: repository_owner, requiredValue: acme}
    claimMappings:
      username: {claim: sub, prefix: "github:"}
      groups:
        expression: 'claims.repository == "acme/deploy" && claims.ref == "refs/heads/main" ? ["deployers"] : []'
policy:
- clusters: [prod]
  groups: [deployers]
- clusters: ["*"]
  users: [admin]
`, is.URL, caFile))

	// The job's kubeconfig, and the job's environment: what GitHub sets
	// for a job with `permissions: {id-token: write}`, and the issuer's
	// CA (the real endpoint has a public certificate).
	kc := filepath.Join(g.dir, "ci.kubeconfig")
	writeFile(t, kc, g.stubCmd("kubeconfig", "--ci", "github-actions", "--audience", "keyhole", "--ci-command", g.stubBin))
	if b, _ := os.ReadFile(kc); strings.Contains(string(b), "token:") || jwtShape.Match(b) || !strings.Contains(string(b), "ci-token") {
		t.Fatalf("the CI kubeconfig:\n%s", b)
	}
	jobEnv := []string{"ACTIONS_ID_TOKEN_REQUEST_URL=" + is.URL + "/idtoken?api-version=2.0",
		"ACTIONS_ID_TOKEN_REQUEST_TOKEN=" + requestToken, "SSL_CERT_FILE=" + caFile}
	waitFor(t, 30*time.Second, "the stub to accept the job's tokens (config re-read)", func() bool {
		out, err := g.kubectl(kc, jobEnv, nil, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		return err == nil && out == "github:repo:acme/deploy:ref:refs/heads/main"
	}, g.stub)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cms := c.Client().CoreV1().ConfigMaps("default")
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "rollout"}, Data: map[string]string{"state": "running"}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out, stderr string
		err         error
		took        time.Duration
	}
	wait := func(timeout string, extra ...string) <-chan result {
		ch := make(chan result, 1)
		args := append(extra, "wait", "--for=jsonpath={.data.state}=done", "configmap/rollout", "--timeout="+timeout)
		cmd := c.KubectlCmdAs(ctx, kc, args...)
		cmd.Env = append(cmd.Env, jobEnv...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			err := cmd.Wait()
			ch <- result{out.String(), errb.String(), err, time.Since(start)}
		}()
		return ch
	}
	// The recipe the docs gave before: one token, fetched at the start.
	resp, body := func() (*http.Response, string) {
		req, _ := http.NewRequest("GET", is.URL+"/idtoken?api-version=2.0&audience=keyhole", nil)
		req.Header.Set("Authorization", "bearer "+requestToken)
		resp, err := is.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, readAll(resp)
	}()
	var answer struct{ Value string }
	_ = json.Unmarshal([]byte(body), &answer)
	oneToken := answer.Value
	if resp.StatusCode != http.StatusOK || !jwtShape.MatchString(oneToken) {
		t.Fatalf("token endpoint: %d %s", resp.StatusCode, body)
	}

	jobStart := time.Now()
	job := wait("150s")
	old := wait("70s", "--token", oneToken) // the condition is met at 62 s

	// A graceful rollout of the stub once the first token has expired.
	time.Sleep(ciTokenLifetime + 5*time.Second)
	stopAt := time.Now()
	g.stub.stop()
	stopped := time.Since(stopAt)
	g.stub = startProcess(t, "stub", filepath.Join(g.dir, "stub-restarted.log"), nil, g.stubBin, "serve", "--config", g.cfg)
	waitFor(t, 30*time.Second, "the stub to listen again", func() bool { return dialable(strings.TrimPrefix(g.url, "https://")) }, g.stub)
	g.waitAgents(adminTok, "prod", "p1")
	t.Logf("stub restarted: SIGTERM to exit %v, the agent back %v after the SIGTERM (job at %v)",
		stopped.Round(time.Millisecond), time.Since(stopAt).Round(time.Millisecond), time.Since(jobStart).Round(time.Second))
	select {
	case r := <-job:
		t.Fatalf("the job's kubectl wait ended before its condition: %v %q\n%s", r.err, r.out, r.stderr)
	default:
	}

	// The condition is met after four token lifetimes.
	time.Sleep(time.Until(jobStart.Add(4*ciTokenLifetime + 2*time.Second)))
	metAt := time.Now()
	patch := []byte(`{"data":{"state":"done"}}`)
	if _, err := cms.Patch(ctx, "rollout", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-job:
	case <-time.After(60 * time.Second):
		t.Fatal("the job's kubectl wait did not end within 60 s of its condition")
	}
	jobEnd := time.Now()
	calls := ep.between(jobStart, jobEnd)
	t.Logf("job: kubectl wait %v, %q, %v after the condition was met; the plugin fetched %d tokens (one per %v token) in %v",
		r.err, strings.TrimSpace(r.out), jobEnd.Sub(metAt).Round(time.Millisecond), calls, ciTokenLifetime, r.took.Round(time.Second))
	if r.err != nil || strings.TrimSpace(r.out) != "configmap/rollout condition met" {
		t.Fatalf("the job failed: %v %q\n%s", r.err, r.out, r.stderr)
	}
	if calls < 4 {
		t.Errorf("the plugin fetched %d tokens in %v; want one per %v token lifetime", calls, r.took, ciTokenLifetime)
	}
	for _, bad := range []string{"Unauthorized", "expired", "401"} {
		if strings.Contains(r.stderr, bad) {
			t.Errorf("the job's kubectl printed %q:\n%s", bad, r.stderr)
		}
	}

	// The old recipe, same job: it never saw the condition.
	o := <-old
	expiredLines := 0
	firstExpired := ""
	for _, l := range strings.Split(o.stderr, "\n") {
		if strings.Contains(l, "expired") {
			if expiredLines++; firstExpired == "" {
				firstExpired = l
			}
		}
	}
	t.Logf("the --token recipe: %v after %v, %d lines about the expired token, the first:\n%s\nthe last:\n%s",
		o.err, o.took.Round(time.Second), expiredLines, firstExpired, tailLines(o.stderr, 1))
	if o.err == nil || !strings.Contains(o.stderr, "expired") {
		t.Errorf("the --token recipe did not fail on its expired token: %v %q\n%s", o.err, o.out, o.stderr)
	}

	// After the job: a plugin call still works (another step of the job).
	if out, err := g.kubectl(kc, jobEnv, nil, "get", "configmap", "rollout", "-o", "jsonpath={.data.state}"); err != nil || out != "done" {
		t.Fatalf("a later step: %v %q", err, out)
	}
	// No token anywhere on disk: the kubeconfig, kubectl's cache and the
	// stub's state, logs and audit.
	tokens := ep.all()
	for _, root := range []string{g.dir, filepath.Join(c.Dir, ".kube")} {
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			for _, tok := range append(tokens, oneToken) {
				if bytes.Contains(b, []byte(tok)) {
					t.Errorf("%s holds a CI token", path)
					break
				}
			}
			return nil
		})
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
