package proxy

import (
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/keyhole-dev/keyhole/authn"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// Caller tokens and agents that verify callers. An agent that checks each
// caller's ID token itself (callerVerification) keeps a compromised stub
// from inventing identities in its cluster, but it must receive the token,
// and a token it receives must be worth nothing anywhere else. So:
//
//   - the stub operator, not the agent, decides that a cluster's agents
//     verify callers: at registration, by giving the cluster a caller
//     audience (Cluster.CallerAudience). An agent's own handshake attribute
//     (AttrVerifiesCallers) changes nothing;
//   - a token is handed to that cluster's agents only if its audience
//     includes that cluster's caller audience: a token issued for that one
//     cluster (the kubeconfig's context for it logs in asking the IdP for
//     that audience);
//   - a token whose audience includes a cluster's caller audience is bound
//     to that cluster: the stub refuses it for every other cluster and
//     lists only that cluster for it. What such an agent learns can be
//     replayed only where it was headed anyway.

// boundCluster is the cluster whose caller audience token carries (a
// verified token's aud claim), if any.
func boundCluster(reg ClusterRegistry, token string) (Cluster, bool) {
	for _, aud := range authn.TokenAudiences(token) {
		if c, ok := reg.ByCallerAudience(aud); ok {
			return c, true
		}
	}
	return Cluster{}, false
}

// agentToken decides, for a request with token to cluster c, whether the
// token goes to c's agents (HeaderCallerToken), or why the request is
// refused.
func agentToken(reg ClusterRegistry, token string, c Cluster) (forward bool, refusal *apierrors.StatusError) {
	bound, isBound := boundCluster(reg, token)
	switch {
	case isBound && bound.Unregistered:
		return false, kubestatus.Forbidden(fmt.Sprintf("this ID token is bound to cluster %q (its audience %q), which is no longer registered: log in again for the cluster you want",
			bound.ID, bound.CallerAudience))
	case isBound && (bound.ID != c.ID || bound.CallerAudience != c.CallerAudience):
		return false, kubestatus.Forbidden(fmt.Sprintf("this ID token is bound to cluster %q (its audience %q) and is accepted for that cluster only; use that cluster's context for it and your usual login for the others",
			bound.ID, bound.CallerAudience))
	case c.CallerAudience == "":
		return false, nil
	case isBound:
		return true, nil // bound.ID == c.ID
	}
	return false, kubestatus.Unauthorized(fmt.Sprintf("cluster %q verifies callers itself and accepts only an ID token issued for it (audience %q): use its context from a kubeconfig made by `stub kubeconfig --oidc`",
		c.ID, c.CallerAudience))
}
