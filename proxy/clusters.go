package proxy

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
	"github.com/keyhole-dev/keyhole/tunnel"
)

// ClustersPath lists, for an authenticated caller, the registered clusters it
// may reach and their connected agents.
const ClustersPath = "/keyhole/v1/clusters"

// AgentLister lists connected agents (*tunnel.Server).
type AgentLister interface {
	Agents(cluster string) []tunnel.AgentInfo
}

// ClusterStatus is one entry of the ClustersPath answer.
type ClusterStatus struct {
	ID     string            `json:"id"`
	Labels map[string]string `json:"labels,omitempty"`
	// Ready: an agent had a successful round trip through the tunnel to
	// the API server within ReadyWindow (Prober.Ready).
	Ready  bool          `json:"ready"`
	Agents []AgentStatus `json:"agents"`
	// KubectlOnly: the cluster's agents verify callers themselves
	// (Cluster.CallerAudience) and accept only ID tokens issued for them,
	// so a browser session never reaches it (docs/browser.md); kubectl
	// with `stub kubeconfig --oidc` does.
	KubectlOnly bool `json:"kubectlOnly,omitempty"`
}

// AgentStatus is a connected agent as the tunnel lists it, with what the
// prober learned of it.
type AgentStatus struct {
	tunnel.AgentInfo
	Health Health `json:"health"`
}

// ClusterList serves ClustersPath: the registered clusters the caller may
// reach (with a token bound to one cluster: that one), their agents and the
// prober's view of them. Every request is audited like a request to a
// cluster, refusals included.
func (s *Stub) ClusterList(agents AgentLister, prober *Prober) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ar, cred, st := s.ownRequest(w, r)
		if st != nil {
			kubestatus.Write(w, st)
			o := audit.StatusOutcome(st.ErrStatus, time.Now())
			o.Ended = audit.EndedComplete
			s.record(ar, auditv1.StageResponseComplete, o)
			return
		}
		token, user := cred.token, cred.user
		ar.User, ar.Groups = user.Name, user.Groups
		out := clusterStatuses(s.cfg.Clusters, s.cfg.Policy, user, token, agents, prober)
		w.Header().Set("Content-Type", "application/json")
		aw := audit.NewResponseWriter(w)
		_ = json.NewEncoder(aw).Encode(out)
		s.record(ar, auditv1.StageResponseComplete, &audit.Outcome{Code: http.StatusOK, Finished: time.Now(), BytesOut: aw.BytesWritten(), Ended: audit.EndedComplete})
	})
}

// ClusterStatuses returns what ClusterList answers a caller, as a function
// of the caller's user and token (for the browser's landing page, whose
// session the web package has already authenticated).
func (s *Stub) ClusterStatuses(agents AgentLister, prober *Prober) func(u *authn.User, token string) []ClusterStatus {
	return func(u *authn.User, token string) []ClusterStatus {
		return clusterStatuses(s.cfg.Clusters, s.cfg.Policy, u, token, agents, prober)
	}
}

// clusterStatuses lists, for user with token, the clusters it may reach.
func clusterStatuses(clusters ClusterRegistry, pol Policy, user *authn.User, token string, agents AgentLister, prober *Prober) []ClusterStatus {
	out := []ClusterStatus{}
	bound, isBound := boundCluster(clusters, token)
	for _, c := range clusters.Clusters() {
		if !pol.Allowed(user, c.ID, c.Labels) || (isBound && (bound.Unregistered || c.ID != bound.ID)) {
			continue // callers see only the clusters they may reach (with a bound token: that one)
		}
		list := []AgentStatus{}
		for _, a := range agents.Agents(c.ID) {
			h, _ := prober.Health(a.Cluster, a.ID)
			list = append(list, AgentStatus{AgentInfo: a, Health: h})
		}
		out = append(out, ClusterStatus{ID: c.ID, Labels: c.Labels, Ready: prober.Ready(c.ID), Agents: list, KubectlOnly: c.CallerAudience != ""})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ownRequest starts a request to one of the stub's own endpoints
// (/keyhole/v1/…): its audit record's request, with a new request ID (also
// in the response's HeaderRequestID), and the caller's credential as
// authenticate finds it (a refusal in st). A cookie request's response
// gets the browser headers.
func (s *Stub) ownRequest(w http.ResponseWriter, r *http.Request) (audit.Request, credential, *apierrors.StatusError) {
	ar := audit.Request{ID: newRequestID(), Received: time.Now(), SourceIP: audit.SourceIP(r.RemoteAddr), UserAgent: r.UserAgent(),
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery}
	w.Header().Set(HeaderRequestID, ar.ID)
	cred, st := s.authenticate(w, r)
	ar.BrowserSession = cred.auditID()
	if cred.cookie {
		s.setBrowserResponseHeaders(w.Header())
	}
	return ar, cred, st
}
