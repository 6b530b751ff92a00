package authn

import "testing"

func TestIdentityRules(t *testing.T) {
	cases := []struct {
		name   string
		rules  IdentityRules
		user   string
		groups []string
		ok     bool
	}{
		{"default admits ordinary", IdentityRules{}, "alice", []string{"dev"}, true},
		{"default refuses system user", IdentityRules{}, "system:admin", nil, false},
		{"default refuses system group", IdentityRules{}, "alice", []string{"system:masters"}, false},
		{"empty user", IdentityRules{}, " ", nil, false},
		{"empty group", IdentityRules{}, "alice", []string{""}, false},
		{"allowSystem", IdentityRules{AllowSystem: true}, "system:serviceaccount:ci:deployer", []string{"system:serviceaccounts"}, true},
		{"user prefix ok", IdentityRules{UserPrefixes: []string{"oidc:", "github:"}}, "github:repo:acme/x", nil, true},
		{"user prefix refused", IdentityRules{UserPrefixes: []string{"oidc:"}}, "alice", nil, false},
		{"group prefix refused", IdentityRules{GroupPrefixes: []string{"oidc:"}}, "oidc:alice", []string{"oidc:dev", "admins"}, false},
		{"group prefix ok", IdentityRules{GroupPrefixes: []string{"oidc:"}}, "alice", []string{"oidc:dev"}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.rules.Check(tc.user, tc.groups); (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
