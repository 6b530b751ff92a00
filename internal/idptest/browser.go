package idptest

import (
	"context"
	"errors"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// LoginTimeout bounds one Login.
var LoginTimeout = 60 * time.Second

var (
	formRe  = regexp.MustCompile(`(?is)<form[^>]*method="post"[^>]*action="([^"]*)"[^>]*>(.*?)</form>`)
	inputRe = regexp.MustCompile(`(?is)<input([^>]*)>`)
	attrRe  = regexp.MustCompile(`(?is)\b(name|value|type)="([^"]*)"`)
)

// Login plays the browser in Dex's pages, as a user would: it opens startURL
// (an authorization URL of Dex, /dex/auth?client_id=…&redirect_uri=…, or the
// device flow's verification_uri_complete, or any page that redirects
// there), submits the device's user code if asked, logs in with email and
// password on the local login form, approves if asked, and follows Dex's
// redirects. It returns the first URL outside the issuer that Dex redirects
// to (the client's redirect_uri with code and state, not requested), or, if
// the journey ends on a page of Dex (the device flow's "you are logged in"
// page), that page's URL. It fails the test on an error page, a rejected
// password, or after LoginTimeout.
func (d *Dex) Login(t testing.TB, startURL, email, password string) *url.URL {
	t.Helper()
	u, err := d.login(startURL, email, password)
	if err != nil {
		t.Fatalf("idptest: login of %s at %s: %v", email, startURL, err)
	}
	return u
}

func (d *Dex) login(startURL, email, password string) (*url.URL, error) {
	ctx, cancel := context.WithTimeout(context.Background(), LoginTimeout)
	defer cancel()
	issuer, err := url.Parse(d.Issuer)
	if err != nil {
		return nil, err
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, err
	}
	var left *url.URL // the first redirect target outside Dex
	client := &http.Client{
		Transport: d.client.Transport,
		Jar:       jar,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != issuer.Scheme || req.URL.Host != issuer.Host || !strings.HasPrefix(req.URL.Path, issuer.Path+"/") {
				left = req.URL
				return http.ErrUseLastResponse
			}
			if len(via) > 20 {
				return errors.New("more than 20 redirects")
			}
			return nil
		},
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, startURL, nil)
	if err != nil {
		return nil, err
	}
	submittedPassword := false
	for step := 0; step < 10; step++ {
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if left != nil {
			return left, nil
		}
		page := resp.Request.URL
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: %s: %s", page, resp.Status, pageText(body))
		}
		m := formRe.FindSubmatch(body)
		if m == nil {
			return page, nil // a final page of Dex
		}
		action, err := page.Parse(html.UnescapeString(string(m[1])))
		if err != nil {
			return nil, fmt.Errorf("%s: form action: %v", page, err)
		}
		form := url.Values{}
		for _, in := range inputRe.FindAllSubmatch(m[2], -1) {
			var name, value, typ string
			for _, a := range attrRe.FindAllSubmatch(in[1], -1) {
				switch strings.ToLower(string(a[1])) {
				case "name":
					name = html.UnescapeString(string(a[2]))
				case "value":
					value = html.UnescapeString(string(a[2]))
				case "type":
					typ = strings.ToLower(string(a[2]))
				}
			}
			if name != "" && typ != "submit" && !form.Has(name) {
				form.Set(name, value)
			}
		}
		switch {
		case form.Has("password"):
			if submittedPassword {
				return nil, fmt.Errorf("%s: login refused (wrong email or password?): %s", page, pageText(body))
			}
			form.Set("login", email)
			form.Set("password", password)
			submittedPassword = true
		case form.Has("user_code"):
			if form.Get("user_code") == "" {
				return nil, fmt.Errorf("%s: Dex asks for a device user code; open verification_uri_complete", page)
			}
		case form.Has("approval"):
			// approve (the first form's values)
		default:
			return nil, fmt.Errorf("%s: unexpected form with fields %v: %s", page, keys(form), pageText(body))
		}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, action.String(), strings.NewReader(form.Encode()))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return nil, errors.New("no end after 10 pages")
}

// pageText returns the visible text of an HTML page, shortened.
func pageText(body []byte) string {
	s := regexp.MustCompile(`(?is)<(script|style)[^>]*>.*?</(script|style)>`).ReplaceAllString(string(body), " ")
	s = regexp.MustCompile(`(?s)<[^>]*>`).ReplaceAllString(s, " ")
	s = strings.Join(strings.Fields(html.UnescapeString(s)), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

func keys(v url.Values) []string {
	var ks []string
	for k := range v {
		ks = append(ks, k)
	}
	return ks
}
