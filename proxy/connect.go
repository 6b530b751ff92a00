package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"

	"github.com/keyhole-dev/keyhole/audit"
	"github.com/keyhole-dev/keyhole/internal/kubestatus"
)

// Pod sessions need create, whatever the protocol.
//
// kube-apiserver authorizes a request with the verb of its HTTP method: POST
// is create, GET is get. kubectl over SPDY sends POST, so exec, attach and
// port-forward need create on pods/exec, pods/attach, pods/portforward. A
// WebSocket handshake is a GET, so before Kubernetes 1.35 (feature
// AuthorizePodWebsocketUpgradeCreatePermission) the same session over a
// WebSocket — kubectl's default since 1.31 — needs only get, which read-only
// roles grant. The agent closes that gap for every cluster: a request to
// one of these subresources with any verb other than create (a WebSocket,
// or a SPDY upgrade sent as GET) runs only if a SubjectAccessReview says the
// identity it will run as may create the subresource, as 1.35 asks.

// connectSubresources are the pod subresources that run a process in a pod
// or open a port into it.
var connectSubresources = map[string]bool{"exec": true, "attach": true, "portforward": true}

// requestInfoFactory parses a path the way the API server does (the
// factory audit records are built with).
var requestInfoFactory = audit.RequestInfoFactory

// connectTarget returns the request info of r when r opens a pod session
// with a verb other than create, else nil. The path is read as it is and
// also cleaned ("//", "." and ".." resolved): if any router on the way
// cleans paths, the session it would reach is checked too; if none does,
// the cleaned reading costs at most a review for a request that fails with
// 404 anyway.
func connectTarget(r *http.Request) *apirequest.RequestInfo {
	if !slices.ContainsFunc(strings.Split(r.URL.Path, "/"), func(seg string) bool { return connectSubresources[seg] }) {
		return nil // the common case, without parsing
	}
	for _, p := range []string{r.URL.Path, path.Clean("/" + r.URL.Path)} {
		// Method and path only: the verb of these subresources does not
		// depend on the query, and the factory would log a query it cannot
		// decode.
		info, err := requestInfoFactory.NewRequestInfo(&http.Request{Method: r.Method, URL: &url.URL{Path: p}})
		if err == nil && info.IsResourceRequest && info.APIGroup == "" && info.Resource == "pods" &&
			connectSubresources[info.Subresource] && info.Verb != "create" {
			return info
		}
	}
	return nil
}

// mayConnect asks the API server (through the reviewer, reviews.go) whether user (in groups, as the request
// will run at the API server) may create the pod subresource r opens a
// session to, when r's own verb would not ask that. It returns the Status
// to answer with, or nil to go on.
func (a *AgentHop) mayConnect(ctx context.Context, r *http.Request, user string, groups []string) *apierrors.StatusError {
	info := connectTarget(r)
	if info == nil {
		return nil
	}
	d, _, err := a.reviews.decide(ctx, user, impersonatedGroups(groups), authorizationv1.ResourceAttributes{Namespace: info.Namespace, Verb: "create",
		Resource: "pods", Subresource: info.Subresource, Name: info.Name})
	if err != nil {
		return kubestatus.ServiceUnavailable(fmt.Sprintf("cluster %q: the agent cannot check the right to open a pod session: %v", a.cfg.Cluster, err))
	}
	if d.allowed {
		return nil
	}
	// The API server's own wording (endpoints/handlers/responsewriters).
	scope := "at the cluster scope"
	if info.Namespace != "" {
		scope = fmt.Sprintf("in the namespace %q", info.Namespace)
	}
	msg := fmt.Sprintf("User %q cannot create resource %q in API group \"\" %s", user, "pods/"+info.Subresource, scope)
	if d.reason != "" {
		msg += ": " + d.reason
	}
	return apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, info.Name, errors.New(msg))
}

// impersonatedGroups are the groups the API server gives an impersonated
// user: the ones asked for plus system:authenticated, which the API server's
// impersonation filter adds for every user but system:anonymous (which the
// agent never impersonates).
func impersonatedGroups(groups []string) []string {
	if slices.Contains(groups, "system:authenticated") {
		return groups
	}
	return append(slices.Clone(groups), "system:authenticated")
}
