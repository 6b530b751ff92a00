package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientauthv1 "k8s.io/client-go/pkg/apis/clientauthentication/v1"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/install"
)

// `stub ci-token` is the credential plugin of a kubeconfig made by `stub
// kubeconfig --ci`: kubectl runs it for a token and runs it again once the
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

// ciTokenEnv is what ciToken reads of its environment and the network
// (os.Getenv and an http.Client, replaced in tests).
type ciTokenEnv struct {
	getenv func(string) string
	client *http.Client
	now    func() time.Time
	// retryWait is the pause before the second and third request to the
	// token endpoint when it fails with a network error or a 5xx.
	retryWait time.Duration
}

func ciToken(args []string, stdout, stderr io.Writer) error {
	return ciTokenWith(args, stdout, stderr, ciTokenEnv{getenv: os.Getenv, client: &http.Client{Timeout: 30 * time.Second},
		now: time.Now, retryWait: time.Second})
}

func ciTokenWith(args []string, stdout, stderr io.Writer, env ciTokenEnv) error {
	fs := flag.NewFlagSet("stub ci-token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	provider := fs.String("provider", "", "the CI system: "+install.CIGitHubActions+" or "+install.CIGitLab)
	audience := fs.String("audience", "", "the audience of the ID token (required for "+install.CIGitHubActions+"; checked for "+install.CIGitLab+")")
	tokenEnv := fs.String("token-env", install.DefaultCITokenEnv, "with --provider "+install.CIGitLab+": the variable of the job's id_tokens entry")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ci-token: unexpected argument %q", fs.Arg(0))
	}
	var (
		tok     string
		claims  jwtTimes
		refresh time.Time
		err     error
	)
	switch *provider {
	case install.CIGitHubActions:
		if *audience == "" {
			return errors.New("ci-token: --audience is required with --provider " + install.CIGitHubActions + " (the audience the stub's issuer entry accepts, e.g. keyhole)")
		}
		if tok, err = githubIDToken(env, *audience); err != nil {
			return err
		}
		if claims, err = parseJWTTimes(tok); err != nil {
			return fmt.Errorf("ci-token: the token endpoint's answer: %w", err)
		}
		left := claims.exp.Sub(env.now())
		if left <= 0 {
			return fmt.Errorf("ci-token: the token endpoint returned a token that expired at %s (is this machine's clock right? it says %s)",
				claims.exp.UTC().Format(time.RFC3339), env.now().UTC().Format(time.RFC3339))
		}
		// Ask again a tenth of the lifetime early (1 s to 1 min), so that a
		// request sent just before exp is not refused in flight, and a
		// clock a little ahead at the stub does not matter.
		refresh = claims.exp.Add(-min(max(left/10, time.Second), time.Minute))
	case install.CIGitLab:
		name := *tokenEnv
		if tok = strings.TrimSpace(env.getenv(name)); tok == "" {
			return fmt.Errorf("ci-token: $%s is empty: give the job an ID token in .gitlab-ci.yml, `id_tokens: {%s: {aud: %s}}`",
				name, name, cmp.Or(*audience, "keyhole"))
		}
		if claims, err = parseJWTTimes(tok); err != nil {
			return fmt.Errorf("ci-token: $%s: %w", name, err)
		}
		if !env.now().Before(claims.exp) {
			return fmt.Errorf("ci-token: the GitLab ID token in $%s expired at %s. GitLab issues a job's ID tokens once, when the job starts, valid for the job's timeout, and cannot issue another during the job: give the job a `timeout:` longer than it runs",
				name, claims.exp.UTC().Format(time.RFC3339))
		}
		refresh = claims.exp
	default:
		return fmt.Errorf("ci-token: --provider %q: use %s or %s", *provider, install.CIGitHubActions, install.CIGitLab)
	}
	if *audience != "" && !slices.Contains(claims.aud, *audience) {
		return fmt.Errorf("ci-token: the ID token's audience is %q, not %q: the stub would refuse it", claims.aud, *audience)
	}
	cred := clientauthv1.ExecCredential{
		TypeMeta: metav1.TypeMeta{APIVersion: clientauthv1.SchemeGroupVersion.String(), Kind: "ExecCredential"},
		Status:   &clientauthv1.ExecCredentialStatus{Token: tok, ExpirationTimestamp: &metav1.Time{Time: refresh.Truncate(time.Second)}},
	}
	return json.NewEncoder(stdout).Encode(cred)
}

// githubIDToken asks GitHub Actions' token endpoint for an ID token for
// audience, as actions/core's getIDToken does; a network error or a 5xx
// is tried again twice.
func githubIDToken(env ciTokenEnv, audience string) (string, error) {
	reqURL, reqTok := env.getenv("ACTIONS_ID_TOKEN_REQUEST_URL"), env.getenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
	if reqURL == "" || reqTok == "" {
		return "", errors.New("ci-token: ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set: GitHub Actions sets them only for a job with `permissions: {id-token: write}`")
	}
	u, err := url.Parse(reqURL)
	if err != nil {
		return "", fmt.Errorf("ci-token: ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: %w", err)
	}
	q := u.Query()
	q.Set("audience", audience)
	u.RawQuery = q.Encode()
	var last error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(env.retryWait * time.Duration(attempt))
		}
		tok, retry, err := githubRequest(env.client, u.String(), reqTok)
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
func githubRequest(client *http.Client, u, bearer string) (tok string, retry bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Authorization", "bearer "+bearer)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keyhole-stub-ci-token/"+version)
	resp, err := client.Do(req)
	if err != nil {
		return "", true, fmt.Errorf("ci-token: GitHub's ID token endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", true, fmt.Errorf("ci-token: GitHub's ID token endpoint: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode >= 500, fmt.Errorf("ci-token: GitHub's ID token endpoint answered %s: %.200s", resp.Status, body)
	}
	var v struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.Value == "" {
		return "", false, fmt.Errorf("ci-token: GitHub's ID token endpoint answered no {\"value\": token} (%v)", err)
	}
	return v.Value, false, nil
}

// jwtTimes are the claims ci-token reads of a JWT it does not verify (the
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
