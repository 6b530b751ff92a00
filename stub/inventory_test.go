package stub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/config"
	"github.com/keyhole-dev/keyhole/internal/kubetest"
	"github.com/keyhole-dev/keyhole/policy"
)

// The operator's operations on tokens and clusters, against a backend:
// st changes, reader (another process's view of the same state) sees.
func inventoryOps(t *testing.T, st, reader *State) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	mint := func(user string, groups ...string) string {
		tok, err := st.AddToken(ctx, TokenRequest{User: user, Groups: groups, Description: "kubeconfig " + now.Format(time.RFC3339)})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	alice1, alice2, bob := mint("alice"), mint("alice"), mint("bob", "ops")
	if _, err := st.AddToken(ctx, TokenRequest{User: "carol", Description: "by hand"}); err != nil {
		t.Fatal(err)
	}
	list, err := reader.TokenInfos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 {
		t.Fatalf("listed %d tokens, want 4: %+v", len(list), list)
	}
	for i, tok := range []string{alice1, alice2, bob} {
		got := list[i]
		if got.ID != TokenIDOf(tok) || got.Created == nil || !got.Created.Equal(now) {
			t.Errorf("token %d: %+v, want ID %s created %v", i, got, TokenIDOf(tok), now)
		}
		if strings.Contains(fmt.Sprint(got), tok) {
			t.Errorf("token %d: the listing holds the token", i)
		}
	}
	if list[2].User != "bob" || !slices.Equal(list[2].Groups, []string{"ops"}) || list[3].Created != nil {
		t.Errorf("bob, carol: %+v %+v", list[2], list[3])
	}

	// Expire one of alice's tokens in two seconds: refused from then on.
	waitFor(t, "alice's first token at the reader", func() bool { _, err := reader.AuthenticateToken(alice1); return err == nil })
	if _, err := st.ExpireToken(ctx, TokenIDOf(alice1), now.Add(-time.Second)); err == nil {
		t.Error("an expiry in the past was taken")
	}
	if _, err := st.ExpireToken(ctx, "000000000000", now.Add(time.Hour)); !errors.Is(err, ErrTokenNotFound) {
		t.Errorf("unknown ID: %v", err)
	}
	at := time.Now().Add(2 * time.Second)
	ti, err := st.ExpireToken(ctx, TokenIDOf(alice1), at)
	if err != nil || ti.Expires == nil || !ti.Expires.Equal(at.UTC().Truncate(time.Second)) {
		t.Fatalf("expire: %+v %v", ti, err)
	}
	if list, err := reader.TokenInfos(ctx); err != nil || list[0].Expires == nil || !list[0].Expires.Equal(*ti.Expires) {
		t.Fatalf("the reader's list after the expiry: %+v %v", list, err)
	}
	waitFor(t, "alice's first token to expire at the reader", func() bool { _, err := reader.AuthenticateToken(alice1); return err != nil })
	if time.Now().Before(*ti.Expires) {
		t.Fatalf("alice's first token refused before its expiry %v", ti.Expires)
	}
	if _, err := reader.AuthenticateToken(alice2); err != nil {
		t.Fatalf("alice's other token: %v", err)
	}

	// Revoke by ID: an unknown ID among them revokes nothing.
	if _, err := st.RevokeTokenIDs(ctx, []string{TokenIDOf(bob), "ffffffffffff"}); !errors.Is(err, ErrTokenNotFound) || !strings.Contains(err.Error(), "ffffffffffff") {
		t.Fatalf("revoke with an unknown ID: %v", err)
	}
	if _, err := reader.AuthenticateToken(bob); err != nil {
		t.Fatalf("bob's token went with a failed revoke: %v", err)
	}
	removed, err := st.RevokeTokenIDs(ctx, []string{TokenIDOf(bob)})
	if err != nil || len(removed) != 1 || removed[0].User != "bob" {
		t.Fatalf("revoke bob's: %+v %v", removed, err)
	}
	waitFor(t, "bob's token to be refused at the reader", func() bool { _, err := reader.AuthenticateToken(bob); return err != nil })
	if list, _ = reader.TokenInfos(ctx); len(list) != 3 {
		t.Fatalf("after the revoke: %+v", list)
	}

	// Clusters: the current secret's issue time moves with a rotation.
	if _, err := st.Register(ctx, "edge", RegisterOptions{Labels: map[string]string{"env": "edge"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Register(ctx, "pci", RegisterOptions{CallerAudience: "keyhole-pci"}); err != nil {
		t.Fatal(err)
	}
	cs, err := reader.ClusterInfos(ctx)
	if err != nil || len(cs) != 2 || cs[0].ID != "edge" || cs[0].SecretIssued != cs[0].Registered || cs[1].CallerAudience != "keyhole-pci" {
		t.Fatalf("clusters: %+v %v", cs, err)
	}
	st.now = func() time.Time { return now.Add(time.Hour) }
	defer func() { st.now = time.Now }()
	exp := now.Add(48 * time.Hour)
	if _, err := st.Rotate(ctx, "edge", RotateOptions{Expires: &exp}); err != nil {
		t.Fatal(err)
	}
	cs, err = reader.ClusterInfos(ctx)
	if err != nil || !cs[0].SecretIssued.Equal(now.Add(time.Hour)) || !cs[0].PreviousSecretLive || !cs[0].SecretExpires.Equal(exp) {
		t.Fatalf("after rotation: %+v %v", cs, err)
	}
}

func TestInventoryDirectory(t *testing.T) {
	st := openDir(t)
	reader, err := OpenState(StateConfig{Dir: st.dir})
	if err != nil {
		t.Fatal(err)
	}
	inventoryOps(t, st, reader)
}

func TestInventoryHub(t *testing.T) {
	c := kubetest.Start(t)
	ns := "keyhole-inventory"
	c.EnsureNamespace(t, ns)
	st, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := OpenState(StateConfig{Dir: t.TempDir(), Hub: c.Client(), Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); reader.mirror.Run(ctx) }()
	defer func() { cancel(); <-done }()
	inventoryOps(t, st, reader)
}

func TestTokenID(t *testing.T) {
	sum := sha256.Sum256([]byte("khu_example"))
	h := hex.EncodeToString(sum[:])
	id := TokenID(h)
	if !ValidTokenID(id) || id != TokenIDOf("khu_example") || id != TokenID(strings.ToUpper(h)) {
		t.Fatalf("TokenID %q", id)
	}
	if strings.Contains(h, id) {
		t.Fatalf("the ID %s is part of the hash %s", id, h)
	}
	for _, bad := range []string{"", "abc", "ABCDEF012345", "abcdef01234g", id + "0"} {
		if ValidTokenID(bad) {
			t.Errorf("ValidTokenID(%q)", bad)
		}
	}
}

func TestStaticTokenReach(t *testing.T) {
	clusters := []ClusterInfo{{ID: "dev"}, {ID: "pci", CallerAudience: "keyhole-pci"}, {ID: "prod", Labels: map[string]string{"env": "prod"}}}
	open, err := StaticTokenReach(config.Stub{}, clusters)
	if err != nil {
		t.Fatal(err)
	}
	if got := open("anyone", nil); !slices.Equal(got, []string{"dev", "prod"}) {
		t.Errorf("no policy: %v (clusters whose agents verify callers take no static token)", got)
	}
	rules := []policy.Rule{{Clusters: []string{"dev"}, Users: []string{"alice"}}, {ClusterSelector: map[string]string{"env": "prod"}, Groups: []string{"ops"}}}
	reach, err := StaticTokenReach(config.Stub{Policy: &rules}, clusters)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user   authn.User
		want   []string
		reason string
	}{
		{authn.User{Name: "alice"}, []string{"dev"}, "by name"},
		{authn.User{Name: "bob", Groups: []string{"ops"}}, []string{"prod"}, "by group and label"},
		{authn.User{Name: "alice", Groups: []string{"ops"}}, []string{"dev", "prod"}, "both"},
		{authn.User{Name: "carol"}, nil, "none"},
	} {
		if got := reach(tc.user.Name, tc.user.Groups); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.reason, got, tc.want)
		}
	}
}

// ReadLive reads the agents and health of a real stub from its metrics,
// where MetricsURL finds them; anything else is refused.
func TestReadLive(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	cfg, _ := stubConfig(t, t.TempDir(), "")
	cfg.Metrics.Listen = ":" + port // as in the base: every address
	url := MetricsURL(cfg)
	if url != "http://127.0.0.1:"+port+"/metrics" {
		t.Fatalf("MetricsURL %q", url)
	}
	started := make(chan Started, 1)
	srv, err := New(cfg, Options{Started: func(s Started) { started <- s }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	secret, err := srv.State().Register(ctx, "c1", RegisterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.State().Register(ctx, "c2", RegisterOptions{}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-runErr; err != nil {
			t.Error(err)
		}
	}()
	var st Started
	select {
	case st = <-started:
	case err := <-runErr:
		t.Fatal(err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	live, err := ReadLive(ctx, client, url)
	if err != nil || len(live) != 0 {
		t.Fatalf("no agent yet: %v %v", live, err)
	}
	runAgent(t, st.Addr, srv.bundle.CAPEM, "c1", secret)
	waitFor(t, "agent a1 of c1 ready in the metrics", func() bool {
		live, err = ReadLive(ctx, client, url)
		c := live["c1"]
		return err == nil && c.Ready && len(c.Agents) == 1 && c.Agents[0].ID == "a1" && c.Agents[0].LastRoundTrip != nil
	})
	if c2, ok := live["c2"]; ok {
		t.Errorf("c2 has no agent, yet: %+v", c2)
	}
	if a := live["c1"].Agents[0]; a.TunnelRTT <= 0 || time.Since(*a.LastRoundTrip) > time.Minute {
		t.Errorf("agent health: %+v", a)
	}

	// Other metrics, or none: an error, never an empty "no agents".
	other := &http.Server{Handler: promhttp.Handler()}
	ol, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = other.Serve(ol) }()
	defer other.Close()
	for _, u := range []string{"http://" + ol.Addr().String() + "/metrics", "http://" + st.Addr.String() + "/metrics"} {
		if live, err := ReadLive(ctx, client, u); err == nil {
			t.Errorf("%s: %v, want an error", u, live)
		}
	}
	if MetricsURL(config.Stub{}) != "" {
		t.Error("a MetricsURL without metrics.listen")
	}
}
