package proxy

import (
	"encoding/json"
	"net/http"
	"sort"
	"strings"

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
}

// AgentStatus is a connected agent as the tunnel lists it, with what the
// prober learned of it.
type AgentStatus struct {
	tunnel.AgentInfo
	Health Health `json:"health"`
}

// ClustersHandler serves ClustersPath: the clusters in clusters that the
// caller may reach, their agents and the prober's view of them.
func ClustersHandler(auth Authenticator, pol Policy, clusters ClusterRegistry, agents AgentLister, prober *Prober) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			kubestatus.Write(w, kubestatus.Unauthorized("no bearer token"))
			return
		}
		user, err := auth.Authenticate(r.Context(), token)
		if err != nil {
			kubestatus.Write(w, kubestatus.Unauthorized(unauthorizedMessage(err)))
			return
		}
		out := []ClusterStatus{}
		bound, isBound := boundCluster(clusters, token)
		for _, c := range clusters.Clusters() {
			if !pol.Allowed(user, c.ID, c.Labels) || (isBound && c.ID != bound.ID) {
				continue // callers see only the clusters they may reach (with a bound token: that one)
			}
			list := []AgentStatus{}
			for _, a := range agents.Agents(c.ID) {
				h, _ := prober.Health(a.Cluster, a.ID)
				list = append(list, AgentStatus{AgentInfo: a, Health: h})
			}
			out = append(out, ClusterStatus{ID: c.ID, Labels: c.Labels, Ready: prober.Ready(c.ID), Agents: list})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}
