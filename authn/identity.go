package authn

import (
	"fmt"
	"strings"
)

// IdentityRules are what a cluster owner lets an agent impersonate. The
// zero value refuses only the reserved system: space (and empty names).
type IdentityRules struct {
	// AllowSystem lets callers and --as targets be system: users and groups
	// (for example system:serviceaccount:…). Off by default.
	AllowSystem bool `json:"allowSystem"`
	// UserPrefixes, if set, admit only user names with one of them
	// (e.g. "oidc:", "github:").
	UserPrefixes []string `json:"userPrefixes,omitempty"`
	// GroupPrefixes, if set, admit only groups with one of them.
	GroupPrefixes []string `json:"groupPrefixes,omitempty"`
}

// Check returns why name and groups are not admitted, or nil.
func (r IdentityRules) Check(name string, groups []string) error {
	if strings.TrimSpace(name) == "" {
		return fmt.Errorf("user name is empty")
	}
	if !r.AllowSystem && strings.HasPrefix(name, "system:") {
		return fmt.Errorf("user %q is in the reserved system: space", name)
	}
	if len(r.UserPrefixes) > 0 && !hasAnyPrefix(name, r.UserPrefixes) {
		return fmt.Errorf("user %q does not start with an admitted prefix %q", name, r.UserPrefixes)
	}
	for _, g := range groups {
		switch {
		case g == "":
			return fmt.Errorf("a group name is empty")
		case !r.AllowSystem && strings.HasPrefix(g, "system:"):
			return fmt.Errorf("group %q is in the reserved system: space", g)
		case len(r.GroupPrefixes) > 0 && !hasAnyPrefix(g, r.GroupPrefixes):
			return fmt.Errorf("group %q does not start with an admitted prefix %q", g, r.GroupPrefixes)
		}
	}
	return nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
