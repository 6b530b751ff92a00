package audit_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	"k8s.io/klog/v2"

	"github.com/keyhole-dev/keyhole/audit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	received = time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.UTC)
	finished = received.Add(12345 * time.Microsecond) // latency "12.3ms"
)

// baseRequest is a request from an authenticated kubectl through cluster
// "prod".
func baseRequest(method, path, query string) audit.Request {
	return audit.Request{
		ID:        "0123456789abcdef",
		Received:  received,
		User:      "alice",
		Groups:    []string{"dev", "system:authenticated"},
		Extra:     map[string][]string{"keyhole.dev/token-name": {"laptop"}},
		SourceIP:  "203.0.113.7:51234",
		UserAgent: "kubectl/v1.33.0 (linux/amd64) kubernetes/abcdef",
		Cluster:   "prod",
		Agent:     "agent-1",
		Method:    method,
		Path:      path,
		RawQuery:  query,
	}
}

// expected is the event NewEvent must build for r: every field that does
// not depend on the path and outcome, filled from r.
func expected(r audit.Request, stage auditv1.Stage, o *audit.Outcome) *auditv1.Event {
	ev := &auditv1.Event{
		TypeMeta:                 metav1.TypeMeta{APIVersion: "audit.k8s.io/v1", Kind: "Event"},
		Level:                    auditv1.LevelMetadata,
		AuditID:                  types.UID(r.ID),
		Stage:                    stage,
		User:                     authnv1.UserInfo{Username: r.User, Groups: r.Groups},
		SourceIPs:                []string{"203.0.113.7"},
		UserAgent:                r.UserAgent,
		RequestReceivedTimestamp: metav1.NewMicroTime(r.Received),
		StageTimestamp:           metav1.NewMicroTime(o.Finished),
		ResponseStatus:           &metav1.Status{Code: int32(o.Code)},
		Annotations: map[string]string{
			"keyhole.dev/latency":   "12.3ms",
			"keyhole.dev/bytes-in":  fmt.Sprint(o.BytesIn),
			"keyhole.dev/bytes-out": fmt.Sprint(o.BytesOut),
		},
	}
	if len(r.Extra) > 0 {
		ev.User.Extra = map[string]authnv1.ExtraValue{}
		for k, v := range r.Extra {
			ev.User.Extra[k] = v
		}
	}
	if r.Cluster != "" {
		ev.Annotations["keyhole.dev/cluster"] = r.Cluster
	}
	if r.Agent != "" {
		ev.Annotations["keyhole.dev/agent"] = r.Agent
	}
	return ev
}

func TestNewEvent(t *testing.T) {
	ok := &audit.Outcome{Code: 200, Finished: finished, BytesIn: 0, BytesOut: 2048}
	upgraded := finished
	sessionEnd := upgraded.Add(5*time.Second + 250*time.Millisecond)

	cases := []struct {
		name       string
		req        audit.Request
		stage      auditv1.Stage
		out        *audit.Outcome
		verb       string
		uri        string
		objectRef  *auditv1.ObjectReference
		status     *metav1.Status    // nil: {Code: out.Code}
		annotate   map[string]string // added to the expected annotations ("" deletes)
		impersonal *authnv1.UserInfo
		edit       func(*auditv1.Event) // any other difference from expected()
	}{
		{
			name: "list pods",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods", "limit=500"),
			out:  ok, verb: "list", uri: "/api/v1/namespaces/default/pods?limit=500",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
		},
		{
			name: "list pods in all namespaces",
			req:  baseRequest("GET", "/api/v1/pods", ""),
			out:  ok, verb: "list", uri: "/api/v1/pods",
			objectRef: &auditv1.ObjectReference{Resource: "pods", APIVersion: "v1"},
		},
		{
			name: "list with a metadata.name field selector names the object",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods", "fieldSelector=metadata.name%3Dp"),
			out:  ok, verb: "list", uri: "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dp",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", APIVersion: "v1"},
		},
		{
			name: "get one pod",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods/p", ""),
			out:  ok, verb: "get", uri: "/api/v1/namespaces/default/pods/p",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", APIVersion: "v1"},
		},
		{
			name: "watch=true is a watch",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods", "watch=true&resourceVersion=42&allowWatchBookmarks=true"),
			out:  ok, verb: "watch", uri: "/api/v1/namespaces/default/pods?watch=true&resourceVersion=42&allowWatchBookmarks=true",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
		},
		{
			name: "watch=false is a list",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods", "watch=false"),
			out:  ok, verb: "list", uri: "/api/v1/namespaces/default/pods?watch=false",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
		},
		{
			name: "legacy watch path prefix",
			req:  baseRequest("GET", "/api/v1/watch/namespaces/default/pods", ""),
			out:  ok, verb: "watch", uri: "/api/v1/watch/namespaces/default/pods",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
		},
		{
			name: "watch with a malformed option falls back like the API server",
			req:  baseRequest("GET", "/api/v1/pods", "watch=1&timeoutSeconds=abc"),
			out:  ok, verb: "watch", uri: "/api/v1/pods?watch=1&timeoutSeconds=abc",
			objectRef: &auditv1.ObjectReference{Resource: "pods", APIVersion: "v1"},
		},
		{
			name: "POST create",
			req:  baseRequest("POST", "/apis/apps/v1/namespaces/default/deployments", "fieldManager=kubectl-create"),
			out:  &audit.Outcome{Code: 201, Finished: finished, BytesIn: 512, BytesOut: 1800},
			verb: "create", uri: "/apis/apps/v1/namespaces/default/deployments?fieldManager=kubectl-create",
			objectRef: &auditv1.ObjectReference{Resource: "deployments", Namespace: "default", APIGroup: "apps", APIVersion: "v1"},
		},
		{
			name: "PUT update",
			req:  baseRequest("PUT", "/api/v1/namespaces/default/configmaps/c", ""),
			out:  ok, verb: "update", uri: "/api/v1/namespaces/default/configmaps/c",
			objectRef: &auditv1.ObjectReference{Resource: "configmaps", Namespace: "default", Name: "c", APIVersion: "v1"},
		},
		{
			name: "PATCH",
			req:  baseRequest("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale", ""),
			out:  &audit.Outcome{Code: 200, Finished: finished, BytesIn: 30, BytesOut: 400},
			verb: "patch", uri: "/apis/apps/v1/namespaces/default/deployments/web/scale",
			objectRef: &auditv1.ObjectReference{Resource: "deployments", Namespace: "default", Name: "web", Subresource: "scale", APIGroup: "apps", APIVersion: "v1"},
		},
		{
			name: "DELETE one",
			req:  baseRequest("DELETE", "/api/v1/namespaces/default/pods/p", ""),
			out:  ok, verb: "delete", uri: "/api/v1/namespaces/default/pods/p",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", APIVersion: "v1"},
		},
		{
			name: "DELETE collection",
			req:  baseRequest("DELETE", "/api/v1/namespaces/default/pods", "labelSelector=app%3Dweb"),
			out:  ok, verb: "deletecollection", uri: "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
		},
		{
			name:  "exec (SPDY) starts",
			req:   baseRequest("POST", "/api/v1/namespaces/default/pods/p/exec", "command=sh&stdin=true&stdout=true&tty=true"),
			stage: auditv1.StageResponseStarted,
			out:   &audit.Outcome{Code: 101, Finished: upgraded},
			verb:  "create", uri: "/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true&stdout=true&tty=true",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "exec", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "exec"},
		},
		{
			name:  "exec (SPDY) ends",
			req:   baseRequest("POST", "/api/v1/namespaces/default/pods/p/exec", "command=sh&stdin=true&stdout=true&tty=true"),
			stage: auditv1.StageResponseComplete,
			out:   &audit.Outcome{Code: 101, Upgraded: upgraded, Finished: sessionEnd, BytesIn: 42, BytesOut: 4096},
			verb:  "create", uri: "/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true&stdout=true&tty=true",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "exec", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "exec", "keyhole.dev/duration": "5.25s"},
		},
		{
			name:  "exec (WebSocket) ends, no Upgraded time: duration from Received",
			req:   baseRequest("GET", "/api/v1/namespaces/default/pods/p/exec", "command=ls&stdout=true"),
			stage: auditv1.StageResponseComplete,
			out:   &audit.Outcome{Code: 101, Finished: finished, BytesIn: 7, BytesOut: 99},
			verb:  "get", uri: "/api/v1/namespaces/default/pods/p/exec?command=ls&stdout=true",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "exec", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "exec", "keyhole.dev/duration": "12.3ms"},
		},
		{
			name:  "attach starts",
			req:   baseRequest("POST", "/api/v1/namespaces/default/pods/p/attach", "stdin=true&stdout=true"),
			stage: auditv1.StageResponseStarted,
			out:   &audit.Outcome{Code: 101, Finished: upgraded},
			verb:  "create", uri: "/api/v1/namespaces/default/pods/p/attach?stdin=true&stdout=true",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "attach", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "attach"},
		},
		{
			name:  "port-forward starts",
			req:   baseRequest("GET", "/api/v1/namespaces/default/pods/p/portforward", "ports=8080"),
			stage: auditv1.StageResponseStarted,
			out:   &audit.Outcome{Code: 101, Finished: upgraded},
			verb:  "get", uri: "/api/v1/namespaces/default/pods/p/portforward?ports=8080",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "portforward", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "portforward"},
		},
		{
			name:  "port-forward ends",
			req:   baseRequest("POST", "/api/v1/namespaces/default/pods/p/portforward", ""),
			stage: auditv1.StageResponseComplete,
			out:   &audit.Outcome{Code: 101, Upgraded: upgraded, Finished: upgraded.Add(3 * time.Minute), BytesIn: 1 << 20, BytesOut: 3 << 20},
			verb:  "create", uri: "/api/v1/namespaces/default/pods/p/portforward",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "portforward", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "portforward", "keyhole.dev/duration": "3m0s"},
		},
		{
			name:  "other upgrade (WebSocket through a service proxy)",
			req:   baseRequest("GET", "/api/v1/namespaces/default/services/web:80/proxy/ws", ""),
			stage: auditv1.StageResponseStarted,
			out:   &audit.Outcome{Code: 101, Finished: upgraded},
			verb:  "get", uri: "/api/v1/namespaces/default/services/web:80/proxy/ws",
			objectRef: &auditv1.ObjectReference{Resource: "services", Namespace: "default", Name: "web:80", Subresource: "proxy", APIVersion: "v1"},
			annotate:  map[string]string{"keyhole.dev/session": "upgrade"},
		},
		{
			name: "logs subresource",
			req:  baseRequest("GET", "/api/v1/namespaces/default/pods/p/log", "container=app&follow=true&tailLines=10"),
			out:  &audit.Outcome{Code: 200, Finished: finished, BytesOut: 12000},
			verb: "get", uri: "/api/v1/namespaces/default/pods/p/log?container=app&follow=true&tailLines=10",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", Subresource: "log", APIVersion: "v1"},
		},
		{
			name: "namespace status is a namespace subresource",
			req:  baseRequest("PUT", "/api/v1/namespaces/ns1/status", ""),
			out:  ok, verb: "update", uri: "/api/v1/namespaces/ns1/status",
			objectRef: &auditv1.ObjectReference{Resource: "namespaces", Namespace: "ns1", Name: "ns1", Subresource: "status", APIVersion: "v1"},
		},
		{
			name: "CRD, namespaced, one object",
			req:  baseRequest("GET", "/apis/stable.example.com/v1/namespaces/team-a/crontabs/nightly", ""),
			out:  ok, verb: "get", uri: "/apis/stable.example.com/v1/namespaces/team-a/crontabs/nightly",
			objectRef: &auditv1.ObjectReference{Resource: "crontabs", Namespace: "team-a", Name: "nightly", APIGroup: "stable.example.com", APIVersion: "v1"},
		},
		{
			name: "CRD, cluster-scoped, list",
			req:  baseRequest("GET", "/apis/example.com/v1alpha1/widgets", ""),
			out:  ok, verb: "list", uri: "/apis/example.com/v1alpha1/widgets",
			objectRef: &auditv1.ObjectReference{Resource: "widgets", APIGroup: "example.com", APIVersion: "v1alpha1"},
		},
		{
			name: "non-resource /version",
			req:  baseRequest("GET", "/version", ""),
			out:  ok, verb: "get", uri: "/version",
		},
		{
			name: "non-resource /healthz with a query",
			req:  baseRequest("GET", "/healthz", "verbose=1"),
			out:  ok, verb: "get", uri: "/healthz?verbose=1",
		},
		{
			name: "discovery /apis/apps/v1 is non-resource",
			req:  baseRequest("GET", "/apis/apps/v1", ""),
			out:  ok, verb: "get", uri: "/apis/apps/v1",
		},
		{
			name: "401: no user, refused before any cluster",
			req: func() audit.Request {
				r := baseRequest("GET", "/api/v1/namespaces/default/pods", "")
				r.User, r.Groups, r.Extra, r.Agent = "", nil, nil, ""
				return r
			}(),
			out:  &audit.Outcome{Code: 401, Reason: "Unauthorized", Message: "the bearer token is not valid (unknown, expired or revoked)", Finished: finished, BytesOut: 180},
			verb: "list", uri: "/api/v1/namespaces/default/pods",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", APIVersion: "v1"},
			status:    &metav1.Status{Status: "Failure", Code: 401, Reason: "Unauthorized", Message: "the bearer token is not valid (unknown, expired or revoked)"},
		},
		{
			name: "403: impersonation refused",
			req: func() audit.Request {
				r := baseRequest("GET", "/api/v1/namespaces/kube-system/secrets", "")
				r.Agent = ""
				return r
			}(),
			out:  &audit.Outcome{Code: 403, Reason: "Forbidden", Message: `cluster "prod": impersonation (kubectl --as/--as-group) is not allowed through this gateway`, Finished: finished, BytesOut: 200},
			verb: "list", uri: "/api/v1/namespaces/kube-system/secrets",
			objectRef: &auditv1.ObjectReference{Resource: "secrets", Namespace: "kube-system", APIVersion: "v1"},
			status:    &metav1.Status{Status: "Failure", Code: 403, Reason: "Forbidden", Message: `cluster "prod": impersonation (kubectl --as/--as-group) is not allowed through this gateway`},
		},
		{
			name: "404: no cluster in the path",
			req: func() audit.Request {
				r := baseRequest("GET", "/api/v1/pods", "")
				r.Cluster, r.Agent = "", ""
				return r
			}(),
			out:  &audit.Outcome{Code: 404, Reason: "NotFound", Message: "no cluster in path", Finished: finished},
			verb: "list", uri: "/api/v1/pods",
			objectRef: &auditv1.ObjectReference{Resource: "pods", APIVersion: "v1"},
			status:    &metav1.Status{Status: "Failure", Code: 404, Reason: "NotFound", Message: "no cluster in path"},
		},
		{
			name: "impersonation honoured",
			req: func() audit.Request {
				r := baseRequest("GET", "/api/v1/nodes", "")
				r.ImpersonatedUser, r.ImpersonatedGroups = "bob", []string{"ops"}
				return r
			}(),
			out: ok, verb: "list", uri: "/api/v1/nodes",
			objectRef:  &auditv1.ObjectReference{Resource: "nodes", APIVersion: "v1"},
			impersonal: &authnv1.UserInfo{Username: "bob", Groups: []string{"ops"}},
		},
		{
			name: "IPv6 source, long user agent",
			req: func() audit.Request {
				r := baseRequest("HEAD", "/api/v1/namespaces/default/pods/p", "")
				r.SourceIP = "[2001:db8::1]:443"
				r.UserAgent = strings.Repeat("x", 2000)
				return r
			}(),
			out: ok, verb: "get", uri: "/api/v1/namespaces/default/pods/p",
			objectRef: &auditv1.ObjectReference{Resource: "pods", Namespace: "default", Name: "p", APIVersion: "v1"},
			edit: func(ev *auditv1.Event) {
				ev.SourceIPs = []string{"2001:db8::1"}
				ev.UserAgent = strings.Repeat("x", 1024) + "...TRUNCATED"
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stage := tc.stage
			if stage == "" {
				stage = auditv1.StageResponseComplete
			}
			want := expected(tc.req, stage, tc.out)
			want.Verb = tc.verb
			want.RequestURI = tc.uri
			want.ObjectRef = tc.objectRef
			want.ImpersonatedUser = tc.impersonal
			if tc.status != nil {
				want.ResponseStatus = tc.status
			}
			for k, v := range tc.annotate {
				want.Annotations[k] = v
			}
			if tc.edit != nil {
				tc.edit(want)
			}

			got := audit.NewEvent(tc.req, stage, tc.out)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("event mismatch\n got: %s\nwant: %s", mustJSON(t, got), mustJSON(t, want))
			}

			// What existing tooling reads: the JSON field names.
			var m map[string]any
			if err := json.Unmarshal(mustJSON(t, got), &m); err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]any{
				"apiVersion": "audit.k8s.io/v1", "kind": "Event", "level": "Metadata",
				"auditID": tc.req.ID, "stage": string(stage), "verb": tc.verb, "requestURI": tc.uri,
			} {
				if m[k] != v {
					t.Errorf("JSON %s = %v, want %v", k, m[k], v)
				}
			}
			for _, k := range []string{"requestReceivedTimestamp", "stageTimestamp", "user", "responseStatus", "annotations", "sourceIPs", "userAgent"} {
				if _, ok := m[k]; !ok {
					t.Errorf("JSON has no %s", k)
				}
			}
		})
	}
}

func TestNewEventTimestampsInJSON(t *testing.T) {
	ev := audit.NewEvent(baseRequest("GET", "/version", ""), auditv1.StageResponseComplete, &audit.Outcome{Code: 200, Finished: finished})
	b := mustJSON(t, ev)
	for _, s := range []string{
		`"requestReceivedTimestamp":"2025-03-04T05:06:07.123456Z"`,
		`"stageTimestamp":"2025-03-04T05:06:07.135801Z"`,
		`"responseStatus":{"metadata":{},"code":200}`,
	} {
		if !bytes.Contains(b, []byte(s)) {
			t.Errorf("JSON lacks %s:\n%s", s, b)
		}
	}
}

func TestNewEventWithoutOutcome(t *testing.T) {
	before := time.Now()
	ev := audit.NewEvent(baseRequest("GET", "/version", ""), auditv1.StageRequestReceived, nil)
	if ev.ResponseStatus != nil {
		t.Errorf("ResponseStatus = %v, want nil", ev.ResponseStatus)
	}
	if ev.StageTimestamp.Time.Before(before) {
		t.Errorf("StageTimestamp %v before %v", ev.StageTimestamp, before)
	}
	for _, k := range []string{audit.AnnotationLatency, audit.AnnotationBytesIn, audit.AnnotationBytesOut, audit.AnnotationSession} {
		if _, ok := ev.Annotations[k]; ok {
			t.Errorf("annotation %s set without an outcome", k)
		}
	}
}

func TestNewEventDoesNotAliasRequest(t *testing.T) {
	r := baseRequest("GET", "/version", "")
	ev := audit.NewEvent(r, auditv1.StageResponseComplete, &audit.Outcome{Code: 200, Finished: finished})
	r.Groups[0] = "changed"
	r.Extra["keyhole.dev/token-name"][0] = "changed"
	if ev.User.Groups[0] != "dev" || ev.User.Extra["keyhole.dev/token-name"][0] != "laptop" {
		t.Errorf("event shares slices with the request: %+v", ev.User)
	}
}

func TestStatusOutcome(t *testing.T) {
	st := metav1.Status{Status: "Failure", Code: 503, Reason: metav1.StatusReasonServiceUnavailable, Message: `cluster "prod" has no connected agent`}
	got := audit.StatusOutcome(st, finished)
	want := &audit.Outcome{Code: 503, Reason: "ServiceUnavailable", Message: `cluster "prod" has no connected agent`, Finished: finished}
	if *got != *want {
		t.Errorf("StatusOutcome = %+v, want %+v", got, want)
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{850*time.Microsecond + 400, "850µs"},
		{12345 * time.Microsecond, "12.3ms"},
		{1234567 * time.Microsecond, "1.235s"},
		{5*time.Minute + 3140*time.Millisecond, "5m3.1s"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := audit.FormatDuration(tc.d); got != tc.want {
				t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
			}
		})
	}
}

func TestSourceIP(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1:5555":     "10.0.0.1",
		"[2001:db8::1]:443": "2001:db8::1",
		"10.0.0.1":          "10.0.0.1",
		"2001:db8::1":       "2001:db8::1",
		"[2001:db8::1]":     "2001:db8::1",
		"":                  "",
	} {
		t.Run(in, func(t *testing.T) {
			if got := audit.SourceIP(in); got != want {
				t.Errorf("SourceIP(%q) = %q, want %q", in, got, want)
			}
		})
	}
	ev := audit.NewEvent(audit.Request{Method: "GET", Path: "/version"}, auditv1.StageResponseComplete, &audit.Outcome{Code: 200})
	if ev.SourceIPs != nil {
		t.Errorf("SourceIPs = %v for an empty SourceIP, want none", ev.SourceIPs)
	}
}

func TestRedactQuery(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"watch=true&resourceVersion=1", "watch=true&resourceVersion=1"},
		{"access_token=SECRET", "access_token=REDACTED"},
		{"watch=true&access_token=SECRET&limit=5", "watch=true&access_token=REDACTED&limit=5"},
		{"token=SECRET", "token=REDACTED"},
		{"Access_Token=SECRET", "Access_Token=REDACTED"},
		{"acc%65ss_token=SECRET", "acc%65ss_token=REDACTED"},
		{"access+token=SECRET", "access+token=REDACTED"},
		{"id_token=SECRET&refresh_token=SECRET", "id_token=REDACTED&refresh_token=REDACTED"},
		{"client_secret=SECRET&password=SECRET", "client_secret=REDACTED&password=REDACTED"},
		{"x-api-key=SECRET&X-Amz-Signature=SECRET&X-Amz-Credential=SECRET", "x-api-key=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED"},
		{"code=SECRET&state=s", "code=REDACTED&state=s"},
		{"a=1;token=SECRET", "a=1;token=REDACTED"},
		{"token=SECRET=MORE", "token=REDACTED"},
		{"%zz=SECRET&limit=1", "REDACTED&limit=1"},
		{"token", "token"},
		{"token=", "token=REDACTED"},
		{"command=sh&command=-c&command=ls&stdin=true", "command=sh&command=-c&command=ls&stdin=true"},
		{"fieldSelector=metadata.name%3Dp&labelSelector=a%20in%20(b)", "fieldSelector=metadata.name%3Dp&labelSelector=a%20in%20(b)"},
		{"continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ", "continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := audit.RedactQuery(tc.in); got != tc.want {
				t.Errorf("RedactQuery(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestNoSecretInRecord(t *testing.T) {
	// klog is where the API server's request parsing complains about bad
	// queries; nothing of ours may end up there either.
	state := klog.CaptureState()
	defer state.Restore()
	var klogOut bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&klogOut)

	for _, tc := range []struct{ name, method, path, query string }{
		{"watch with access_token", "GET", "/api/v1/namespaces/default/pods", "watch=true&access_token=SECRET"},
		{"malformed options and a token", "GET", "/api/v1/pods", "timeoutSeconds=abc&access_token=SECRET"},
		{"exec with token", "POST", "/api/v1/namespaces/default/pods/p/exec", "command=sh&token=SECRET"},
		{"port-forward with token", "GET", "/api/v1/namespaces/default/pods/p/portforward", "ports=80&access_token=SECRET"},
		{"proxy with OAuth code", "GET", "/api/v1/namespaces/default/services/web/proxy/cb", "code=SECRET&state=x"},
		{"escaped name", "GET", "/version", "acc%65ss_token=SECRET"},
		{"semicolon", "GET", "/api/v1/pods", "limit=1;token=SECRET"},
		{"non-resource", "GET", "/healthz", "access_token=SECRET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := baseRequest(tc.method, tc.path, tc.query)
			for _, stage := range []auditv1.Stage{auditv1.StageResponseStarted, auditv1.StageResponseComplete} {
				ev := audit.NewEvent(r, stage, &audit.Outcome{Code: 101, Finished: finished})
				var buf bytes.Buffer
				if err := audit.NewWriterSink(&buf).Write(ev); err != nil {
					t.Fatal(err)
				}
				if strings.Contains(buf.String(), "SECRET") {
					t.Errorf("record contains the secret: %s", buf.String())
				}
				if !strings.Contains(ev.RequestURI, "REDACTED") {
					t.Errorf("requestURI %q shows no redaction", ev.RequestURI)
				}
			}
		})
	}
	if strings.Contains(klogOut.String(), "SECRET") || klogOut.Len() > 0 {
		t.Errorf("klog got: %s", klogOut.String())
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleEvent(id string) *auditv1.Event {
	r := baseRequest("GET", "/api/v1/namespaces/default/pods", "watch=true")
	r.ID = id
	return audit.NewEvent(r, auditv1.StageResponseComplete, &audit.Outcome{Code: 200, Finished: finished, BytesOut: 10})
}

func TestWriterSinkRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	s := audit.NewWriterSink(&buf)
	events := []*auditv1.Event{
		sampleEvent("a"),
		audit.NewEvent(baseRequest("POST", "/api/v1/namespaces/default/pods/p/exec", "command=sh"), auditv1.StageResponseStarted, &audit.Outcome{Code: 101, Finished: finished}),
		audit.NewEvent(audit.Request{ID: "c", Received: received, Method: "GET", Path: "/api", SourceIP: "10.1.1.1:1"}, auditv1.StageResponseComplete,
			&audit.Outcome{Code: 401, Reason: "Unauthorized", Message: "no bearer token", Finished: finished}),
	}
	for _, ev := range events {
		if err := s.Write(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(events) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(events), buf.String())
	}
	for i, line := range lines {
		t.Run(string(events[i].AuditID), func(t *testing.T) {
			var got auditv1.Event
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("decode %s: %v", line, err)
			}
			if got.APIVersion != "audit.k8s.io/v1" || got.Kind != "Event" {
				t.Errorf("apiVersion/kind = %q/%q", got.APIVersion, got.Kind)
			}
			// Decoded MicroTimes are in the local zone; the instants and
			// everything else must survive.
			if !got.RequestReceivedTimestamp.Equal(&events[i].RequestReceivedTimestamp) || !got.StageTimestamp.Equal(&events[i].StageTimestamp) {
				t.Errorf("timestamps %v, %v; want %v, %v", got.RequestReceivedTimestamp, got.StageTimestamp, events[i].RequestReceivedTimestamp, events[i].StageTimestamp)
			}
			want := events[i].DeepCopy()
			want.RequestReceivedTimestamp, want.StageTimestamp = got.RequestReceivedTimestamp, got.StageTimestamp
			if !reflect.DeepEqual(&got, want) {
				t.Errorf("round trip differs\n got: %s\nwant: %s", mustJSON(t, &got), mustJSON(t, want))
			}
		})
	}
}

// chunkWriter records every Write call.
type chunkWriter struct {
	mu     sync.Mutex
	chunks [][]byte
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.chunks = append(w.chunks, bytes.Clone(p))
	return len(p), nil
}

func TestSinkConcurrentWriters(t *testing.T) {
	const goroutines, perGoroutine = 100, 100
	file := filepath.Join(t.TempDir(), "audit.log")
	fileSink, err := audit.OpenFileSink(file)
	if err != nil {
		t.Fatal(err)
	}
	chunks := &chunkWriter{}
	sinks := map[string]audit.Sink{"file": fileSink, "writer": audit.NewWriterSink(chunks)}

	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perGoroutine {
				ev := sampleEvent(fmt.Sprintf("%d-%d", g, i))
				ev.Annotations["padding"] = strings.Repeat("p", (g*perGoroutine+i)%5000) // lines of many sizes
				for name, s := range sinks {
					if err := s.Write(ev); err != nil {
						t.Errorf("%s: %v", name, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	for name, s := range sinks {
		if err := s.Close(); err != nil {
			t.Errorf("close %s: %v", name, err)
		}
	}

	checkLines := func(t *testing.T, lines [][]byte) {
		seen := map[types.UID]bool{}
		for _, line := range lines {
			var ev auditv1.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				t.Fatalf("line does not decode: %v: %.200s", err, line)
			}
			if ev.Kind != "Event" || ev.APIVersion != "audit.k8s.io/v1" {
				t.Fatalf("kind/apiVersion = %s/%s", ev.Kind, ev.APIVersion)
			}
			if seen[ev.AuditID] {
				t.Fatalf("event %s twice", ev.AuditID)
			}
			seen[ev.AuditID] = true
		}
		if len(seen) != goroutines*perGoroutine {
			t.Fatalf("%d events, want %d", len(seen), goroutines*perGoroutine)
		}
	}
	t.Run("each Write call is whole lines", func(t *testing.T) {
		var lines [][]byte
		for _, c := range chunks.chunks {
			if len(c) == 0 || c[len(c)-1] != '\n' {
				t.Fatalf("a Write call does not end a line: %.200q", c)
			}
			lines = append(lines, bytes.Split(c[:len(c)-1], []byte("\n"))...)
		}
		checkLines(t, lines)
	})
	t.Run("file holds only whole lines", func(t *testing.T) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(data, []byte("\n")) {
			t.Fatal("file does not end with a newline")
		}
		checkLines(t, bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")))
	})
}

// failingWriter fails, or writes only part of the line, as told.
type failingWriter struct {
	buf     bytes.Buffer
	partial int // write this many bytes, then fail
	err     error
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		n := min(w.partial, len(p))
		w.buf.Write(p[:n])
		err := w.err
		w.err = nil // fail once
		return n, err
	}
	return w.buf.Write(p)
}

// shortWriter claims a short write without an error.
type shortWriter struct{}

func (shortWriter) Write(p []byte) (int, error) { return len(p) / 2, nil }

func TestSinkErrors(t *testing.T) {
	t.Run("write error is returned, and a torn line costs only itself", func(t *testing.T) {
		disk := errors.New("disk full")
		w := &failingWriter{partial: 20, err: disk}
		s := audit.NewWriterSink(w)
		if err := s.Write(sampleEvent("torn")); !errors.Is(err, disk) {
			t.Fatalf("Write = %v, want %v", err, disk)
		}
		if err := s.Write(sampleEvent("next")); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("lines = %q", lines)
		}
		var ev auditv1.Event
		if err := json.Unmarshal([]byte(lines[1]), &ev); err != nil || ev.AuditID != "next" {
			t.Errorf("event after a torn line: %v, %q", err, lines[1])
		}
	})
	t.Run("short write", func(t *testing.T) {
		if err := audit.NewWriterSink(shortWriter{}).Write(sampleEvent("x")); !errors.Is(err, io.ErrShortWrite) {
			t.Errorf("Write = %v, want io.ErrShortWrite", err)
		}
	})
	t.Run("write after close", func(t *testing.T) {
		s := audit.NewWriterSink(io.Discard)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Write(sampleEvent("late")); !errors.Is(err, audit.ErrClosed) {
			t.Errorf("Write after Close = %v, want ErrClosed", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
	})
	t.Run("nil event", func(t *testing.T) {
		if err := audit.NewWriterSink(io.Discard).Write(nil); err == nil {
			t.Error("Write(nil) succeeded")
		}
	})
}

func TestOpenFileSink(t *testing.T) {
	t.Run("created 0600 and appended across reopen", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		for i := range 3 {
			s, err := audit.OpenFileSink(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(sampleEvent(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
			}
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("%d lines, want 3:\n%s", len(lines), data)
		}
		for i, line := range lines {
			var ev auditv1.Event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.AuditID != types.UID(fmt.Sprint(i)) {
				t.Errorf("line %d is event %s", i, ev.AuditID)
			}
		}
	})
	t.Run("existing content is kept", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.WriteFile(path, []byte("earlier\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := audit.OpenFileSink(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Write(sampleEvent("x")); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(path)
		if !strings.HasPrefix(string(data), "earlier\n{") {
			t.Errorf("file = %q", data)
		}
	})
	t.Run("stdout is not closed", func(t *testing.T) {
		s, err := audit.OpenFileSink("-")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stdout.Stat(); err != nil {
			t.Errorf("stdout after Close: %v", err)
		}
	})
	t.Run("bad paths", func(t *testing.T) {
		for _, p := range []string{"", filepath.Join(t.TempDir(), "missing", "audit.log")} {
			if s, err := audit.OpenFileSink(p); err == nil {
				s.Close()
				t.Errorf("OpenFileSink(%q) succeeded", p)
			}
		}
	})
}

func TestCountingConnPipe(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := audit.NewCountingConn(a)
	defer c.Close()

	go func() {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(b, buf)
		_, _ = b.Write([]byte("world!!"))
	}()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if c.BytesWritten() != 5 || c.BytesRead() != 7 {
		t.Errorf("written/read = %d/%d, want 5/7", c.BytesWritten(), c.BytesRead())
	}
	if err := c.CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite on a pipe = %v, want ErrUnsupported", err)
	}
	if c.Unwrap() != a {
		t.Error("Unwrap does not return the wrapped conn")
	}
}

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

func TestCountingConnTCPHalfClose(t *testing.T) {
	client, server := tcpPair(t)
	defer server.Close()
	c := audit.NewCountingConn(client)
	defer c.Close()

	const request, reply = "a request of 25 bytes....", "the reply"
	done := make(chan error, 1)
	go func() {
		// The server reads to EOF (the half-close), then still answers.
		got, err := io.ReadAll(server)
		if err == nil && string(got) != request {
			err = fmt.Errorf("server read %q", got)
		}
		if err == nil {
			_, err = server.Write([]byte(reply))
		}
		server.Close()
		done <- err
	}()
	if _, err := c.Write([]byte(request)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if string(got) != reply {
		t.Errorf("client read %q, want %q", got, reply)
	}
	if c.BytesWritten() != int64(len(request)) || c.BytesRead() != int64(len(reply)) {
		t.Errorf("written/read = %d/%d, want %d/%d", c.BytesWritten(), c.BytesRead(), len(request), len(reply))
	}
}

// halfCloser is a conn whose CloseWrite is observable.
type halfCloser struct {
	net.Conn
	called bool
	err    error
}

func (h *halfCloser) CloseWrite() error { h.called = true; return h.err }

func TestCountingConnCloseWritePassesThrough(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	sentinel := errors.New("from the wrapped conn")
	h := &halfCloser{Conn: a, err: sentinel}
	c := audit.NewCountingConn(h)
	var cw interface{ CloseWrite() error } = c // what ReverseProxy looks for
	if err := cw.CloseWrite(); !errors.Is(err, sentinel) || !h.called {
		t.Errorf("CloseWrite = %v (called %v), want the wrapped conn's", err, h.called)
	}
}

func TestCountRequestBody(t *testing.T) {
	t.Run("body", func(t *testing.T) {
		r := httptest.NewRequest("POST", "/x", strings.NewReader("twelve bytes"))
		b := audit.CountRequestBody(r)
		if _, err := io.ReadAll(r.Body); err != nil {
			t.Fatal(err)
		}
		if b.BytesRead() != 12 {
			t.Errorf("BytesRead = %d, want 12", b.BytesRead())
		}
	})
	t.Run("no body stays no body", func(t *testing.T) {
		r := httptest.NewRequest("GET", "/x", nil)
		r.Body = http.NoBody
		b := audit.CountRequestBody(r)
		if r.Body != http.NoBody || b.BytesRead() != 0 {
			t.Errorf("Body = %T, BytesRead = %d", r.Body, b.BytesRead())
		}
		r.Body = nil
		if audit.CountRequestBody(r); r.Body != nil {
			t.Errorf("nil Body replaced by %T", r.Body)
		}
	})
}

func TestResponseWriter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		handler   func(w http.ResponseWriter)
		wantCode  int
		wantBytes int64
	}{
		{"nothing written", func(http.ResponseWriter) {}, 200, 0},
		{"implicit 200", func(w http.ResponseWriter) { _, _ = w.Write([]byte("abc")) }, 200, 3},
		{"refusal", func(w http.ResponseWriter) { w.WriteHeader(403); _, _ = w.Write([]byte("forbidden")) }, 403, 9},
		{"1xx is not the status", func(w http.ResponseWriter) { w.WriteHeader(103); w.WriteHeader(201) }, 201, 0},
		{"flush sends 200", func(w http.ResponseWriter) { _ = http.NewResponseController(w).Flush(); w.WriteHeader(500) }, 200, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			w := audit.NewResponseWriter(rec)
			tc.handler(w)
			if w.Code() != tc.wantCode || w.BytesWritten() != tc.wantBytes {
				t.Errorf("Code/BytesWritten = %d/%d, want %d/%d", w.Code(), w.BytesWritten(), tc.wantCode, tc.wantBytes)
			}
			if w.Upgraded() != nil {
				t.Error("Upgraded without a hijack")
			}
		})
	}
	t.Run("flush reaches the wrapped writer", func(t *testing.T) {
		rec := httptest.NewRecorder()
		w := audit.NewResponseWriter(rec)
		if err := http.NewResponseController(w).Flush(); err != nil || !rec.Flushed {
			t.Errorf("Flush = %v, flushed %v", err, rec.Flushed)
		}
		var _ http.Flusher = w
	})
	t.Run("hijack unsupported is passed back", func(t *testing.T) {
		w := audit.NewResponseWriter(httptest.NewRecorder())
		if _, _, err := http.NewResponseController(w).Hijack(); !errors.Is(err, http.ErrNotSupported) {
			t.Errorf("Hijack = %v, want ErrNotSupported", err)
		}
		if w.Upgraded() != nil {
			t.Error("Upgraded after a failed hijack")
		}
	})
}

// TestResponseWriterUpgradeThroughReverseProxy runs an upgraded session
// through httputil.ReverseProxy, as the stub does: the session's bytes are
// counted, OnUpgrade fires before the end, and the client's half-close
// travels to the backend and the backend's back to the client.
func TestResponseWriterUpgradeThroughReverseProxy(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "keyhole-test" {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: keyhole-test\r\n\r\n")
		_ = brw.Flush()
		// Echo, in upper case, until the client half-closes; then end.
		data, _ := io.ReadAll(brw)
		_, _ = conn.Write([]byte(strings.ToUpper(string(data))))
	}))
	defer backend.Close()
	target, _ := url.Parse(backend.URL)
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = transport

	type result struct {
		code              int
		bytesIn, bytesOut int64
		startedBeforeEnd  bool
		sameConn          bool
	}
	results := make(chan result, 1)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		aw := audit.NewResponseWriter(w)
		var started *audit.CountingConn
		aw.OnUpgrade = func(c *audit.CountingConn) { started = c }
		rp.ServeHTTP(aw, r)
		up := aw.Upgraded()
		res := result{code: aw.Code(), startedBeforeEnd: started != nil, sameConn: up != nil && up == started}
		if up != nil {
			res.bytesIn, res.bytesOut = up.BytesRead(), up.BytesWritten()
		}
		results <- res
	}))
	defer front.Close()

	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = fmt.Fprintf(conn, "GET /api/v1/namespaces/default/pods/p/exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: keyhole-test\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %s", resp.Status)
	}
	const sent = "hello through the gateway"
	if _, err := conn.Write([]byte(sent)); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(br) // EOF only if the backend's half-close came through
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.ToUpper(sent) {
		t.Errorf("client got %q", got)
	}
	res := <-results
	want := result{code: 101, bytesIn: int64(len(sent)), bytesOut: int64(len(sent)), startedBeforeEnd: true, sameConn: true}
	if res != want {
		t.Errorf("recorded %+v, want %+v", res, want)
	}
}

// How a request ended is an annotation of its record, when known.
func TestNewEventEnded(t *testing.T) {
	r := audit.Request{ID: "x", Method: "GET", Path: "/api/v1/secrets", RawQuery: "watch=true", Received: time.Now()}
	ev := audit.NewEvent(r, auditv1.StageResponseComplete, &audit.Outcome{Code: 200, Ended: audit.EndedClientGone})
	if got := ev.Annotations[audit.AnnotationEnded]; got != "client-gone" || ev.Verb != "watch" {
		t.Errorf("ended %q verb %q", got, ev.Verb)
	}
	if ev := audit.NewEvent(r, auditv1.StageResponseComplete, &audit.Outcome{Code: 200}); ev.Annotations[audit.AnnotationEnded] != "" {
		t.Errorf("an unknown end was recorded as %q", ev.Annotations[audit.AnnotationEnded])
	}
}

// errWriter fails every Write, as the writer of a caller that went
// away does.
type errWriter struct {
	*httptest.ResponseRecorder
	err error
}

func (w *errWriter) Write(p []byte) (int, error) { return 0, w.err }

func TestResponseWriterErr(t *testing.T) {
	gone := errors.New("write: broken pipe")
	w := audit.NewResponseWriter(&errWriter{httptest.NewRecorder(), gone})
	if w.Err() != nil {
		t.Fatal("an error before any write")
	}
	_, _ = w.Write([]byte("a"))
	_, _ = w.Write([]byte("b"))
	if !errors.Is(w.Err(), gone) {
		t.Errorf("Err = %v, want the first write's error", w.Err())
	}
	ok := audit.NewResponseWriter(httptest.NewRecorder())
	_, _ = ok.Write([]byte("abc"))
	_ = ok.FlushError()
	if ok.Err() != nil {
		t.Errorf("Err = %v after good writes", ok.Err())
	}
}

func TestCountingConnOnError(t *testing.T) {
	a, b := net.Pipe()
	c := audit.NewCountingConn(a)
	var mu sync.Mutex
	var errs []error
	c.OnError = func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	go func() { _, _ = b.Write([]byte("hi")); b.Close() }()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Fatal("a write to a closed pipe succeeded")
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 2 || !errors.Is(errs[0], io.EOF) || errors.Is(errs[1], io.EOF) {
		t.Errorf("OnError saw %v, want io.EOF then the write's error", errs)
	}
}

// BenchmarkFileSink writes a typical request record to a file from
// GOMAXPROCS×8 goroutines, as a busy stub does (one record per request).
func BenchmarkFileSink(b *testing.B) {
	s, err := audit.OpenFileSink(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	ev := sampleEvent("bench")
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Write(ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}
