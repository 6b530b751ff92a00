package origin

import (
	"net/http"
	"testing"
)

func TestOf(t *testing.T) {
	for in, want := range map[string]string{
		"https://Keyhole.Example.com":       "https://keyhole.example.com",
		"https://keyhole.example.com:443/x": "https://keyhole.example.com",
		"https://keyhole.example.com:8443/": "https://keyhole.example.com:8443",
		"http://127.0.0.1:80":               "http://127.0.0.1",
		"https://[::1]:9443":                "https://[::1]:9443",
	} {
		if got, err := Of(in); err != nil || got != want {
			t.Errorf("Of(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "keyhole.example.com", "ftp://x", "https://"} {
		if _, err := Of(bad); err == nil {
			t.Errorf("Of(%q): no error", bad)
		}
	}
}

func TestSameOrigin(t *testing.T) {
	const o = "https://keyhole.example.test:8443"
	for _, tc := range []struct {
		name     string
		r        Request
		ok, upOK bool
	}{
		{"own page fetch (Chromium: Sec-Fetch-Site, no Origin)", Request{SecFetchSite: "same-origin"}, true, false},
		{"own page POST", Request{SecFetchSite: "same-origin", Origin: o}, true, true},
		{"own WebSocket (Origin only)", Request{Origin: o}, true, true},
		{"case and default port", Request{Origin: "HTTPS://KEYHOLE.example.test:8443"}, true, true},
		{"sibling subdomain", Request{SecFetchSite: "same-site", Origin: "https://evil.example.test:8443"}, false, false},
		{"another port on the host", Request{SecFetchSite: "same-site", Origin: "https://keyhole.example.test:9443"}, false, false},
		{"cross-site", Request{SecFetchSite: "cross-site", Origin: "https://attacker.test"}, false, false},
		{"typed into the address bar", Request{SecFetchSite: "none"}, false, false},
		{"no headers at all", Request{}, false, false},
		{"Origin null (sandboxed frame)", Request{Origin: "null"}, false, false},
		{"Origin null from another site (sandboxed frame, redirect)", Request{SecFetchSite: "cross-site", Origin: "null"}, false, false},
		{"own page's form POST under Referrer-Policy: no-referrer (Chromium)", Request{SecFetchSite: "same-origin", Origin: "null"}, true, false},
		{"same-origin but a foreign Origin", Request{SecFetchSite: "same-origin", Origin: "https://attacker.test"}, false, false},
		{"Origin with a path", Request{Origin: o + "/x"}, false, false},
		{"Origin with user info", Request{Origin: "https://u@keyhole.example.test:8443"}, false, false},
		{"plain http", Request{Origin: "http://keyhole.example.test:8443"}, false, false},
		{"a header sent twice", FromHeader(http.Header{"Origin": {o, "https://evil.example.test"}, "Sec-Fetch-Site": {"same-origin"}}), false, false},
		{"Sec-Fetch-Site sent twice", FromHeader(http.Header{"Origin": {o}, "Sec-Fetch-Site": {"same-origin", "cross-site"}}), false, false},
	} {
		if ok, why := SameOrigin(tc.r, o); ok != tc.ok || (!ok && why == "") {
			t.Errorf("%s: SameOrigin = %v %q, want %v", tc.name, ok, why, tc.ok)
		}
		if ok, why := SameOriginUpgrade(tc.r, o); ok != tc.upOK || (!ok && why == "") {
			t.Errorf("%s: SameOriginUpgrade = %v %q, want %v", tc.name, ok, why, tc.upOK)
		}
	}
}
