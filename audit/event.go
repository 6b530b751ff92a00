package audit

import (
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metainternalversionscheme "k8s.io/apimachinery/pkg/apis/meta/internalversion/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"
)

// Annotation keys set by NewEvent.
const (
	AnnotationCluster  = "keyhole.dev/cluster"
	AnnotationAgent    = "keyhole.dev/agent"
	AnnotationLatency  = "keyhole.dev/latency"
	AnnotationBytesIn  = "keyhole.dev/bytes-in"
	AnnotationBytesOut = "keyhole.dev/bytes-out"
	AnnotationSession  = "keyhole.dev/session"
	AnnotationDuration = "keyhole.dev/duration"
	// AnnotationEnded says how a request or session ended (an Ended*
	// value), AnnotationEndedMessage in words when the stub ended it.
	// AnnotationBrowserSession identifies the browser session a cookie
	// request or a browser Event belongs to: a hash of the session ID,
	// never the cookie (see web). Absent on bearer requests.
	AnnotationBrowserSession = "keyhole.dev/browser-session"
	// AnnotationBrowserEvent names a browser sign-in Event: one of the
	// BrowserEvent* values.
	AnnotationBrowserEvent = "keyhole.dev/browser-event"
	// AnnotationAppOrigin is the origin of the in-cluster app (a
	// Service's web UI served on a host of browser.apps.domain) that a
	// request was made from or launched: https://<label>.<domain>[:port].
	AnnotationAppOrigin    = "keyhole.dev/app-origin"
	AnnotationEnded        = "keyhole.dev/ended"
	AnnotationEndedMessage = "keyhole.dev/ended-message"
)

// Values of AnnotationSession.
const (
	SessionExec        = "exec"
	SessionAttach      = "attach"
	SessionPortForward = "portforward"
	// SessionUpgrade is any other 101 (a WebSocket through pods/proxy, …).
	SessionUpgrade = "upgrade"
)

// Values of AnnotationEnded: how a request or session ended.
const (
	// EndedComplete: the response (or the session) ran to its end: the
	// stub's own answer, or the cluster's, delivered whole.
	EndedComplete = "complete"
	// EndedClientGone: the caller went away (closed or reset its
	// connection, or stopped reading) before the response was complete.
	EndedClientGone = "client-gone"
	// EndedAgentGone: the tunnel to the agent, or the agent's side of the
	// response, failed before the response was complete.
	EndedAgentGone = "agent-gone"
	// EndedStubStopping: the stub ended it to stop (a graceful drain).
	EndedStubStopping = "stub-stopping"
	// EndedStubFailed: the stub's handler failed (a panic that none of the
	// above explains); the stub logs it as an error.
	EndedStubFailed = "stub-failed"
	// The stub ended a long-running request that was no longer admitted
	// (see proxy/recheck.go): its credential expired, its credential no
	// longer authenticates or names another identity, the policy no longer
	// admits the user, or the cluster was unregistered.
	EndedCredentialExpired = "credential-expired"
	EndedCredentialRevoked = "credential-revoked"
	EndedPolicy            = "policy"
	EndedUnregistered      = "cluster-unregistered"
)

// Browser Events (AnnotationBrowserEvent).
const (
	BrowserEventSignIn        = "sign-in"
	BrowserEventSignInRefused = "sign-in-refused"
	BrowserEventRefreshFailed = "refresh-failed"
	BrowserEventSignOut       = "sign-out"
)

// Redacted replaces the value of a sensitive query parameter.
const Redacted = "REDACTED"

// Request describes one request as the stub saw it.
type Request struct {
	ID        string // the stub's request id (also sent to the client as a header)
	Received  time.Time
	User      string // "" when authentication failed
	Groups    []string
	Extra     map[string][]string
	SourceIP  string // from RemoteAddr; a port, if present, is stripped
	UserAgent string
	Cluster   string // "" if the path had none
	Agent     string // agent that served it, if known
	Method    string
	// Path is the path inside the cluster, e.g.
	// /api/v1/namespaces/default/pods/p/exec. When the request named no
	// cluster, the path as received.
	Path     string
	RawQuery string // as received (still escaped); redacted by NewEvent

	// From kubectl --as/--as-group, if honoured.
	ImpersonatedUser   string
	ImpersonatedGroups []string

	// BrowserSession is the audit ID of the browser session of a cookie
	// request or browser Event (AnnotationBrowserSession); "" otherwise.
	BrowserSession string
	// BrowserEvent is a BrowserEvent* value for the Events of sign-in,
	// refresh failure and sign-out (AnnotationBrowserEvent); "" otherwise.
	BrowserEvent string
	// AppOrigin is the app origin of a request to an app host, or of the
	// launch of an app (AnnotationAppOrigin); "" otherwise.
	AppOrigin string
}

// Outcome is how a request ended.
type Outcome struct {
	Code    int
	Reason  string // Status reason for refusals (Unauthorized, Forbidden, NotFound, ServiceUnavailable…)
	Message string // for refusals: the message the caller got
	// Finished is when the response completed (for ResponseStarted: when the
	// 101 went out). Zero means now.
	Finished time.Time
	// Upgraded is when the 101 went out, for the ResponseComplete record of
	// an upgraded session; it splits latency (Received→Upgraded) from the
	// session's duration (Upgraded→Finished). Zero means the duration is
	// counted from Received.
	Upgraded time.Time
	// BytesIn and BytesOut are request and response body bytes, or the
	// bytes of an upgraded stream in each direction (in: client→cluster).
	BytesIn, BytesOut int64
	// Ended is how the request ended (an Ended* value), recorded as
	// AnnotationEnded; empty leaves the annotation out. EndedMessage says
	// in words why the stub ended it, when it did (AnnotationEndedMessage).
	Ended, EndedMessage string
}

// StatusOutcome is the Outcome of a refusal answered with st (the
// metav1.Status the caller got).
func StatusOutcome(st metav1.Status, finished time.Time) *Outcome {
	return &Outcome{Code: int(st.Code), Reason: string(st.Reason), Message: st.Message, Finished: finished}
}

// RequestInfoFactory is what the API server itself uses; the stub and
// agent hops read paths with it too (see
// k8s.io/apiserver/pkg/server.NewRequestInfoResolver).
var RequestInfoFactory = &apirequest.RequestInfoFactory{
	APIPrefixes:          sets.NewString("api", "apis"),
	GrouplessAPIPrefixes: sets.NewString("api"),
}

// maxUserAgentLength and userAgentTruncateSuffix are the API server's.
const (
	maxUserAgentLength      = 1024
	userAgentTruncateSuffix = "...TRUNCATED"
)

// NewEvent builds the audit record of r at stage (ResponseComplete for plain
// requests and refusals; ResponseStarted and ResponseComplete for upgraded
// sessions). o may be nil for a record without a response (ResponseStatus
// is then left out and StageTimestamp is now). A response with code 101 is
// an upgraded session.
func NewEvent(r Request, stage auditv1.Stage, o *Outcome) *auditv1.Event {
	query := RedactQuery(r.RawQuery)
	info := requestInfo(r.Method, r.Path, query)

	ev := &auditv1.Event{
		TypeMeta: metav1.TypeMeta{
			APIVersion: auditv1.SchemeGroupVersion.String(),
			Kind:       "Event",
		},
		Level:      auditv1.LevelMetadata,
		AuditID:    types.UID(r.ID),
		Stage:      stage,
		RequestURI: (&url.URL{Path: r.Path, RawQuery: query}).RequestURI(),
		Verb:       info.Verb,
		User: authnv1.UserInfo{
			Username: r.User,
			Groups:   slices.Clone(r.Groups),
			Extra:    extra(r.Extra),
		},
		UserAgent:                truncateUserAgent(r.UserAgent),
		RequestReceivedTimestamp: metav1.NewMicroTime(r.Received),
		Annotations:              map[string]string{},
	}
	if r.ImpersonatedUser != "" || len(r.ImpersonatedGroups) > 0 {
		ev.ImpersonatedUser = &authnv1.UserInfo{
			Username: r.ImpersonatedUser,
			Groups:   slices.Clone(r.ImpersonatedGroups),
		}
	}
	if ip := SourceIP(r.SourceIP); ip != "" {
		ev.SourceIPs = []string{ip}
	}
	if info.IsResourceRequest {
		ev.ObjectRef = &auditv1.ObjectReference{
			Resource:    info.Resource,
			Namespace:   info.Namespace,
			Name:        info.Name,
			Subresource: info.Subresource,
			APIGroup:    info.APIGroup,
			APIVersion:  info.APIVersion,
		}
	}
	if r.Cluster != "" {
		ev.Annotations[AnnotationCluster] = r.Cluster
	}
	if r.Agent != "" {
		ev.Annotations[AnnotationAgent] = r.Agent
	}
	if r.BrowserSession != "" {
		ev.Annotations[AnnotationBrowserSession] = r.BrowserSession
	}
	if r.BrowserEvent != "" {
		ev.Annotations[AnnotationBrowserEvent] = r.BrowserEvent
	}
	if r.AppOrigin != "" {
		ev.Annotations[AnnotationAppOrigin] = r.AppOrigin
	}

	if o == nil {
		ev.StageTimestamp = metav1.NewMicroTime(time.Now())
		return ev
	}
	finished := o.Finished
	if finished.IsZero() {
		finished = time.Now()
	}
	ev.StageTimestamp = metav1.NewMicroTime(finished)
	ev.ResponseStatus = &metav1.Status{
		Code:    int32(o.Code),
		Reason:  metav1.StatusReason(o.Reason),
		Message: o.Message,
	}
	if o.Code >= 400 {
		ev.ResponseStatus.Status = metav1.StatusFailure
	}
	ev.Annotations[AnnotationBytesIn] = strconv.FormatInt(o.BytesIn, 10)
	ev.Annotations[AnnotationBytesOut] = strconv.FormatInt(o.BytesOut, 10)
	if o.Ended != "" {
		ev.Annotations[AnnotationEnded] = o.Ended
	}
	if o.EndedMessage != "" {
		ev.Annotations[AnnotationEndedMessage] = o.EndedMessage
	}

	upgraded := o.Code == http.StatusSwitchingProtocols
	responded := finished // when the response (or the 101) went out
	if upgraded && !o.Upgraded.IsZero() {
		responded = o.Upgraded
	}
	if !r.Received.IsZero() {
		ev.Annotations[AnnotationLatency] = FormatDuration(responded.Sub(r.Received))
	}
	if upgraded {
		ev.Annotations[AnnotationSession] = sessionKind(info)
		if stage == auditv1.StageResponseComplete {
			start := o.Upgraded
			if start.IsZero() {
				start = r.Received
			}
			if !start.IsZero() {
				ev.Annotations[AnnotationDuration] = FormatDuration(finished.Sub(start))
			}
		}
	}
	return ev
}

// requestInfo runs the API server's RequestInfoFactory on method, path and
// an already redacted query.
func requestInfo(method, path, query string) *apirequest.RequestInfo {
	req := &http.Request{Method: method, URL: &url.URL{Path: path, RawQuery: query}}
	if method == http.MethodGet || method == http.MethodHead {
		// When list options do not decode, the factory logs the whole
		// query through klog and falls back to the watch parameter alone.
		// Take the same fallback here, so that a caller's malformed query
		// never reaches the process log.
		opts := metainternalversion.ListOptions{}
		if err := metainternalversionscheme.ParameterCodec.DecodeParameters(req.URL.Query(), metav1.SchemeGroupVersion, &opts); err != nil {
			fallback := url.Values{}
			if v := req.URL.Query()["watch"]; len(v) > 0 {
				switch strings.ToLower(v[0]) {
				case "false", "0":
				default:
					fallback.Set("watch", "true")
				}
			}
			req.URL.RawQuery = fallback.Encode()
		}
	}
	info, err := RequestInfoFactory.NewRequestInfo(req)
	if err != nil && info == nil {
		// Never happens with this factory; keep what the API server would:
		// a non-resource request.
		info = &apirequest.RequestInfo{Path: path, Verb: strings.ToLower(method)}
	}
	// On error (e.g. /api/v1/watch with nothing after it) info holds what
	// was known, which is what the API server would audit too.
	return info
}

func sessionKind(info *apirequest.RequestInfo) string {
	if info.IsResourceRequest && info.APIGroup == "" && info.Resource == "pods" {
		switch info.Subresource {
		case "exec":
			return SessionExec
		case "attach":
			return SessionAttach
		case "portforward":
			return SessionPortForward
		}
	}
	return SessionUpgrade
}

func extra(in map[string][]string) map[string]authnv1.ExtraValue {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]authnv1.ExtraValue, len(in))
	for k, v := range in {
		out[k] = authnv1.ExtraValue(slices.Clone(v))
	}
	return out
}

func truncateUserAgent(ua string) string {
	if len(ua) > maxUserAgentLength {
		return ua[:maxUserAgentLength] + userAgentTruncateSuffix
	}
	return ua
}

// SourceIP is the address part of a RemoteAddr ("10.0.0.1:5555" →
// "10.0.0.1", "[::1]:443" → "::1"); an address without a port is returned
// as it is.
func SourceIP(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(remoteAddr, "["), "]")
}

// FormatDuration renders d for an annotation, rounded to a sensible
// precision: "850µs", "12.3ms", "1.234s", "5m3.1s". Negative durations
// (clock steps) are 0s.
func FormatDuration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
	case d < time.Millisecond:
		d = d.Round(time.Microsecond)
	case d < time.Second:
		d = d.Round(100 * time.Microsecond)
	case d < time.Minute:
		d = d.Round(time.Millisecond)
	default:
		d = d.Round(100 * time.Millisecond)
	}
	return d.String()
}

// sensitiveNames are query parameter names (lower case, unescaped) whose
// values are credentials.
var sensitiveNames = map[string]bool{
	"access_token": true, "token": true, "id_token": true, "refresh_token": true,
	"bearer": true, "authorization": true, "auth": true, "jwt": true,
	"password": true, "passwd": true, "pwd": true, "secret": true,
	"client_secret": true, "key": true, "apikey": true, "api_key": true,
	"sig": true, "signature": true, "code": true, "cookie": true, "session": true,
}

// sensitiveParts make any parameter whose name contains them sensitive.
var sensitiveParts = []string{
	"token", "secret", "password", "passwd", "credential", "apikey", "api_key", "api-key",
	"signature", "authorization", "cookie",
}

func sensitiveName(name string) bool {
	name = strings.ToLower(name)
	if sensitiveNames[name] {
		return true
	}
	for _, p := range sensitiveParts {
		if strings.Contains(name, p) {
			return true
		}
	}
	return false
}

// RedactQuery returns rawQuery with the value of every sensitive parameter
// replaced by "REDACTED". Other parameters, their order and their encoding
// are kept byte for byte. Names are compared unescaped and in lower case,
// both '&' and ';' count as separators, and a pair whose name does not
// unescape is replaced whole, so that no spelling smuggles a credential past
// it.
func RedactQuery(rawQuery string) string {
	if rawQuery == "" {
		return ""
	}
	var b strings.Builder
	b.Grow(len(rawQuery))
	rest := rawQuery
	for {
		i := strings.IndexAny(rest, "&;")
		piece := rest
		if i >= 0 {
			piece = rest[:i]
		}
		b.WriteString(redactPair(piece))
		if i < 0 {
			break
		}
		b.WriteByte(rest[i])
		rest = rest[i+1:]
	}
	return b.String()
}

func redactPair(pair string) string {
	rawName, _, hasValue := strings.Cut(pair, "=")
	name, err := url.QueryUnescape(rawName)
	if err != nil {
		// Unreadable (the API server drops it too): it could be anything,
		// including the credential itself.
		return Redacted
	}
	if !sensitiveName(name) {
		return pair
	}
	if !hasValue {
		// A bare sensitive name carries no value to hide.
		return pair
	}
	return rawName + "=" + Redacted
}
