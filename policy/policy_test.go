package policy

import (
	"testing"

	"github.com/keyhole-dev/keyhole/authn"
)

func TestAllowed(t *testing.T) {
	p, err := New([]Rule{
		{Clusters: []string{"prod"}, Groups: []string{"deployers"}},
		{ClusterSelector: map[string]string{"env": "dev"}, Users: []string{"alice"}},
		{Clusters: []string{"*"}, Users: []string{"root-ish"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	dev := map[string]string{"env": "dev", "team": "a"}
	cases := []struct {
		name    string
		user    authn.User
		cluster string
		labels  map[string]string
		want    bool
	}{
		{"group on its cluster", authn.User{Name: "ci", Groups: []string{"deployers"}}, "prod", nil, true},
		{"group elsewhere", authn.User{Name: "ci", Groups: []string{"deployers"}}, "staging", nil, false},
		{"user by labels", authn.User{Name: "alice"}, "dev-1", dev, true},
		{"user, labels differ", authn.User{Name: "alice"}, "qa-1", map[string]string{"env": "qa"}, false},
		{"user, no labels", authn.User{Name: "alice"}, "prod", nil, false},
		{"wildcard", authn.User{Name: "root-ish"}, "anything", nil, true},
		{"nobody", authn.User{Name: "mallory", Groups: []string{"devs"}}, "prod", nil, false},
		{"name is not a group", authn.User{Name: "deployers"}, "prod", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.Allowed(&tc.user, tc.cluster, tc.labels); got != tc.want {
				t.Fatalf("got %v", got)
			}
		})
	}
	empty, _ := New(nil)
	if empty.Allowed(&authn.User{Name: "alice"}, "prod", nil) {
		t.Fatal("an empty policy admitted someone")
	}
	if !Open().Allowed(&authn.User{Name: "x"}, "y", nil) {
		t.Fatal("the open policy refused")
	}
}

func TestNewRefusesUselessRules(t *testing.T) {
	for name, r := range map[string]Rule{
		"no clusters": {Users: []string{"a"}},
		"no subjects": {Clusters: []string{"prod"}},
	} {
		if _, err := New([]Rule{r}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
