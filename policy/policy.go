// Package policy decides which clusters a caller may reach through the
// stub, before anything is sent to an agent. A rule names clusters (by ID,
// "*" for all, or by labels given at registration) and the users and groups
// it admits; a caller may reach a cluster if any rule admits it. What the
// caller may then do inside the cluster is the cluster's RBAC's business.
//
// A stub with no policy configured admits every authenticated caller to
// every cluster (the first-run default, logged as a warning); a configured
// policy, even an empty one, denies whatever no rule allows.
package policy

import (
	"fmt"
	"slices"

	"github.com/keyhole-dev/keyhole/authn"
)

// Rule admits Users and members of Groups to the clusters it selects.
type Rule struct {
	// Clusters lists cluster IDs; "*" selects every cluster.
	Clusters []string `json:"clusters,omitempty"`
	// ClusterSelector selects clusters whose labels include all of these.
	ClusterSelector map[string]string `json:"clusterSelector,omitempty"`
	Users           []string          `json:"users,omitempty"`
	Groups          []string          `json:"groups,omitempty"`
}

// Policy is a set of rules; the zero value admits nobody.
type Policy struct {
	rules []Rule
	open  bool
}

// Open admits every authenticated caller to every cluster.
func Open() *Policy { return &Policy{open: true} }

// New validates rules and returns the policy they make.
func New(rules []Rule) (*Policy, error) {
	for i, r := range rules {
		if len(r.Clusters) == 0 && len(r.ClusterSelector) == 0 {
			return nil, fmt.Errorf("policy[%d]: select clusters with clusters (IDs or \"*\") or clusterSelector (labels)", i)
		}
		if len(r.Users) == 0 && len(r.Groups) == 0 {
			return nil, fmt.Errorf("policy[%d]: name the users or groups it admits", i)
		}
	}
	return &Policy{rules: slices.Clone(rules)}, nil
}

// IsOpen reports whether the policy admits everybody everywhere.
func (p *Policy) IsOpen() bool { return p.open }

// Allowed reports whether u may reach cluster id with labels.
func (p *Policy) Allowed(u *authn.User, id string, labels map[string]string) bool {
	if p.open {
		return true
	}
	for _, r := range p.rules {
		if r.selects(id, labels) && r.admits(u) {
			return true
		}
	}
	return false
}

func (r Rule) selects(id string, labels map[string]string) bool {
	if slices.Contains(r.Clusters, "*") || slices.Contains(r.Clusters, id) {
		return true
	}
	if len(r.ClusterSelector) == 0 {
		return false
	}
	for k, v := range r.ClusterSelector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (r Rule) admits(u *authn.User) bool {
	if slices.Contains(r.Users, u.Name) {
		return true
	}
	for _, g := range u.Groups {
		if slices.Contains(r.Groups, g) {
			return true
		}
	}
	return false
}
