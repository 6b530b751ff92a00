// Package credplugin is the client side of CI workload identity: the
// kubectl exec credential plugin (client.authentication.k8s.io/v1) that a
// kubeconfig made by `stub kubeconfig --ci` runs, through the command
// `stub ci-token`, to get the job's ID token from its CI system.
//
// kubectl runs the plugin for a token and runs it again once the
// token's expirationTimestamp has passed, so a job may run longer than
// any one of its CI system's ID tokens. It prints a
// client.authentication.k8s.io/v1 ExecCredential and nothing else on
// stdout; it writes no file, and it never prints the token elsewhere.
//
//   - github-actions: asks the job's token endpoint for a fresh ID token
//     each time (GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD with
//     "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN"; the job needs
//     `permissions: {id-token: write}`). expirationTimestamp is a little
//     before the token's exp, so kubectl asks for the next one before the
//     stub would refuse this one.
//   - gitlab: GitLab issues the job's ID tokens once, as variables, when the
//     job starts (id_tokens in .gitlab-ci.yml), valid for the job's timeout;
//     nothing can ask for another during the job. The plugin hands over the
//     variable's token with its exp, and when it has expired says so and why
//     instead of sending it.
package credplugin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"

	"github.com/keyhole-dev/keyhole/authn"
)

// Providers: the CI systems the plugin gets tokens from.
const (
	GitHubActions = "github-actions"
	GitLab        = "gitlab"
	// DefaultTokenEnv is the id_tokens variable a GitLab job's kubeconfig
	// reads by default.
	DefaultTokenEnv = "KEYHOLE_TOKEN"
)

// Env is what the plugin reads of its environment and the network
// (os.Getenv and an http.Client in a job, replaced in tests).
type Env struct {
	Getenv func(string) string
	Client *http.Client
	Now    func() time.Time
	// RetryWait is the pause before the second and third request to the
	// token endpoint when it fails with a network error or a 5xx.
	RetryWait time.Duration
	// UserAgent names the plugin in its requests to the token endpoint.
	UserAgent string
}

// ExecCredential gets the job's ID token from provider (GitHubActions: a
// fresh one for audience; GitLab: the id_tokens variable tokenEnv, checked
// against audience when given) and returns it as an ExecCredential whose
// expirationTimestamp makes kubectl ask again in time.
func ExecCredential(env Env, provider, audience, tokenEnv string) (*clientauthv1.ExecCredential, error) {
	var (
		tok     string
		claims  jwtTimes
		refresh time.Time
		err     error
	)
	switch provider {
	case GitHubActions:
		if audience == "" {
			return nil, errors.New("--audience is required with --provider " + GitHubActions + " (the audience the stub's issuer entry accepts, e.g. keyhole)")
		}
		if tok, err = githubIDToken(env, audience); err != nil {
			return nil, err
		}
		if claims, err = parseJWTTimes(tok); err != nil {
			return nil, fmt.Errorf("the token endpoint's answer: %w", err)
		}
		left := claims.exp.Sub(env.Now())
		if left <= 0 {
			return nil, fmt.Errorf("the token endpoint returned a token that expired at %s (is this machine's clock right? it says %s)",
				claims.exp.UTC().Format(time.RFC3339), env.Now().UTC().Format(time.RFC3339))
		}
		// Ask again a tenth of the lifetime early (1 s to 1 min), so that a
		// request sent just before exp is not refused in flight, and a
		// clock a little ahead at the stub does not matter.
		refresh = claims.exp.Add(-min(max(left/10, time.Second), time.Minute))
	case GitLab:
		name := tokenEnv
		if tok = strings.TrimSpace(env.Getenv(name)); tok == "" {
			return nil, fmt.Errorf("$%s is empty: give the job an ID token in .gitlab-ci.yml, `id_tokens: {%s: {aud: %s}}`",
				name, name, cmp.Or(audience, "keyhole"))
		}
		if claims, err = parseJWTTimes(tok); err != nil {
			return nil, fmt.Errorf("$%s: %w", name, err)
		}
		if !env.Now().Before(claims.exp) {
			return nil, fmt.Errorf("the GitLab ID token in $%s expired at %s. GitLab issues a job's ID tokens once, when the job starts, valid for the job's timeout, and cannot issue another during the job: give the job a `timeout:` longer than it runs",
				name, claims.exp.UTC().Format(time.RFC3339))
		}
		refresh = claims.exp
	default:
		return nil, fmt.Errorf("--provider %q: use %s or %s", provider, GitHubActions, GitLab)
	}
	if audience != "" && !slices.Contains(claims.aud, audience) {
		return nil, fmt.Errorf("the ID token's audience is %q, not %q: the stub would refuse it", claims.aud, audience)
	}
	return &clientauthv1.ExecCredential{
		TypeMeta: metav1.TypeMeta{APIVersion: clientauthv1.SchemeGroupVersion.String(), Kind: "ExecCredential"},
		Status:   &clientauthv1.ExecCredentialStatus{Token: tok, ExpirationTimestamp: &metav1.Time{Time: refresh.Truncate(time.Second)}},
	}, nil
}

// githubIDToken asks GitHub Actions' token endpoint for an ID token for
// audience, as actions/core's getIDToken does; a network error or a 5xx
// is tried again twice.
func githubIDToken(env Env, audience string) (string, error) {
	reqURL, reqTok := env.Getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), env.Getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if reqURL == "" || reqTok == "" {
		return "", errors.New("ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: GitHub Actions sets them only for a job with `permissions: {id-token: write}`")
	}
	u, err := url.Parse(reqURL)
	if err != nil {
		return "", fmt.Errorf("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: %w", err)
	}
	q := u.Query()
	q.Set("audience", audience)
	u.RawQuery = q.Encode()
	var last error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(env.RetryWait * time.Duration(attempt))
		}
		tok, retry, err := githubRequest(env.Client, u.String(), reqTok, env.UserAgent)
		if err == nil {
			return tok, nil
		}
		if last = err; !retry {
			break
		}
	}
	return "", last
}

// githubRequest makes one request to the token endpoint; retry says
// whether another might succeed.
func githubRequest(client *http.Client, u, bearer, userAgent string) (tok string, retry bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Authorization", "bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", cmp.Or(userAgent, "keyhole-ci-token"))
	resp, err := client.Do(req)
	if err != nil {
		return "", true, fmt.Errorf("GitHub's ID token endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", true, fmt.Errorf("GitHub's ID token endpoint: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode >= 500, fmt.Errorf("GitHub's ID token endpoint answered %s: %.200s", resp.Status, body)
	}
	var v struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.Value == "" {
		return "", false, fmt.Errorf("GitHub's ID token endpoint answered no {\"value\": token} (%v)", err)
	}
	return v.Value, false, nil
}

// jwtTimes are the claims the plugin reads of a JWT it does not verify (the
// stub does).
type jwtTimes struct {
	exp time.Time
	aud []string
}

func parseJWTTimes(tok string) (jwtTimes, error) {
	if !authn.LooksLikeJWT(tok) {
		return jwtTimes{}, errors.New("not a JWT (three dot-separated base64url parts)")
	}
	exp := authn.CredentialExpiry(tok, &authn.User{})
	if exp.IsZero() {
		return jwtTimes{}, errors.New("the JWT has no exp claim")
	}
	return jwtTimes{exp: exp, aud: authn.TokenAudiences(tok)}, nil
}
