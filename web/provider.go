package web

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// idpTimeout bounds each request to an issuer (discovery, code exchange,
// refresh, revocation).
const idpTimeout = 10 * time.Second

// provider is an issuer's discovery document and the HTTP client that
// reaches it (trusting the issuer's CA as authn does).
type provider struct {
	client   *http.Client
	endpoint oauth2.Endpoint
	// From discovery, when the issuer lists them.
	endSession, revocation string
}

// provider returns l's issuer, discovered once per issuer and CA; a
// failed discovery is tried again on the next use.
func (s *Sessions) provider(ctx context.Context, l Login) (*provider, error) {
	sum := sha256.Sum256(l.CAPEM)
	key := l.IssuerURL + "\x00" + string(sum[:])
	s.mu.Lock()
	p := s.providers[key]
	s.mu.Unlock()
	if p != nil {
		return p, nil
	}
	client, err := issuerClient(l.CAPEM)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, idpTimeout)
	defer cancel()
	op, err := oidc.NewProvider(oidc.ClientContext(ctx, client), l.IssuerURL)
	if err != nil {
		client.CloseIdleConnections()
		return nil, fmt.Errorf("discovery of %s: %w", l.IssuerURL, err)
	}
	var extra struct {
		EndSession string `json:"end_session_endpoint"`
		Revocation string `json:"revocation_endpoint"`
	}
	if err := op.Claims(&extra); err != nil {
		client.CloseIdleConnections()
		return nil, fmt.Errorf("discovery of %s: %w", l.IssuerURL, err)
	}
	p = &provider{client: client, endpoint: op.Endpoint(), endSession: httpsURL(extra.EndSession), revocation: httpsURL(extra.Revocation)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.providers[key]; old != nil { // discovered in parallel
		client.CloseIdleConnections()
		return old, nil
	}
	s.providers[key] = p
	return p, nil
}

// httpsURL is u if it is an absolute https URL, else "": a discovery
// document sends neither the browser nor a token anywhere else.
func httpsURL(u string) string {
	if p, err := url.Parse(u); err != nil || p.Scheme != "https" || p.Host == "" || p.User != nil {
		return ""
	}
	return u
}

// issuerClient trusts caPEM alone when given, else the system's roots.
func issuerClient(caPEM []byte) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the issuer's certificateAuthority holds no PEM certificate")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: idpTimeout}, nil
}

// oauth2Config is l's client at p.
func (s *Sessions) oauth2Config(l Login, p *provider) *oauth2.Config {
	ep := p.endpoint
	if l.ClientSecret == "" {
		ep.AuthStyle = oauth2.AuthStyleInParams // a public client: client_id in the body, no secret
	} else {
		ep.AuthStyle = oauth2.AuthStyleInHeader // RFC 6749 2.3.1: every server supports Basic
	}
	return &oauth2.Config{ClientID: l.ClientID, ClientSecret: l.ClientSecret, Endpoint: ep,
		RedirectURL: s.cfg.PublicURL + CallbackPath, Scopes: l.Scopes}
}

// clientContext makes oauth2 use p's client.
func clientContext(ctx context.Context, p *provider) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, p.client)
}

// revoke revokes token (a refresh token) at p's revocation endpoint (RFC
// 7009), if it has one.
func (s *Sessions) revoke(ctx context.Context, l Login, p *provider, token string) error {
	if p.revocation == "" || token == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, idpTimeout)
	defer cancel()
	form := url.Values{"token": {token}, "token_type_hint": {"refresh_token"}}
	if l.ClientSecret == "" {
		form.Set("client_id", l.ClientID)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.revocation, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if l.ClientSecret != "" {
		req.SetBasicAuth(url.QueryEscape(l.ClientID), url.QueryEscape(l.ClientSecret))
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("revoke the refresh token at %s: %w", p.revocation, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("revoke the refresh token at %s: %s", p.revocation, resp.Status)
	}
	return nil
}
