package config

import (
	"cmp"
	"net"
	"net/url"

	"github.com/keyhole-dev/keyhole/authn"
)

// Agent is the agent's configuration (kind AgentConfig).
type Agent struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// StubURL is the stub's public https URL.
	StubURL string `json:"stubURL"`
	// Cluster is the ID this cluster was registered under.
	Cluster string `json:"cluster"`
	// AgentID names this replica; default $POD_NAME (Env.PodName), else
	// the host name with a random suffix (Env.Hostname, Env.Nonce). An
	// agent that reconnects under the same ID replaces its previous
	// session at the stub.
	AgentID string `json:"agentID"`
	// JoinSecretFile holds the join secret `stub register` printed.
	JoinSecretFile string `json:"joinSecretFile"`
	// StubCAFile pins the CA of the stub's certificate; empty means the
	// system roots.
	StubCAFile string `json:"stubCAFile"`
	// Kubeconfig reaches the API server from outside the cluster; empty
	// means in-cluster (ServiceAccount token and CA from the pod). Its
	// cluster's proxy-url, if any, is the proxy to the API server.
	Kubeconfig string `json:"kubeconfig"`
	// Context is the kubeconfig's context to use (kubectl's --context);
	// empty: its current-context. Only with Kubeconfig.
	Context string `json:"context"`
	// APIServer overrides the in-cluster defaults (used by tests and by
	// agents that run beside, not inside, a cluster).
	APIServer APIServer `json:"apiServer"`
	Tunnel    Tunnel    `json:"tunnel"`
	Log       Log       `json:"log"`
	// CallerVerification makes the agent verify every caller's OIDC token
	// against issuers the cluster owner trusts (same shape as the stub's
	// authentication.jwt) instead of trusting the stub's word. Callers with
	// static tokens are then refused by this cluster.
	CallerVerification Authentication `json:"callerVerification"`
	// Identities limit who the agent impersonates, callers and --as targets
	// alike: by default nothing under system:.
	Identities authn.IdentityRules `json:"identities"`
	// DrainTimeout bounds a graceful stop (SIGTERM): requests and streams
	// in flight get this long to finish; new ones go to other agents.
	// Zero or unset: tunnel.DefaultDrainTimeout (25s, inside Kubernetes'
	// default 30 s grace period).
	DrainTimeout Duration `json:"drainTimeout,omitzero"`
	// HealthListen serves /healthz (the process answers) and /readyz (the
	// tunnel to the stub is up) for the pod's probes; off when empty.
	HealthListen string `json:"healthListen"`
}

// APIServer names the API server and the files of the agent's credentials.
// The token file is re-read as it rotates.
type APIServer struct {
	URL       string `json:"url"`
	TokenFile string `json:"tokenFile"`
	CAFile    string `json:"caFile"`
	// ProxyURL is a proxy (http, https or socks5) between the agent and its
	// API server, in-cluster or apiServer.url (with kubeconfig, the
	// kubeconfig's proxy-url). Empty: the API server is reached directly.
	// HTTPS_PROXY and NO_PROXY never apply to it: they are for the tunnel
	// to the stub, and a corporate proxy usually cannot reach, or must not
	// see, a cluster's API server.
	ProxyURL string `json:"proxyURL"`
}

// DefaultAgent returns the defaults this package owns. Tunnel keepalive
// and drainTimeout stay zero: the tunnel package's defaults.
func DefaultAgent() Agent {
	return Agent{
		APIVersion: APIVersion, Kind: "AgentConfig",
		JoinSecretFile: "/etc/keyhole/join-secret",
		Log:            Log{Level: "info"},
	}
}

// LoadAgent reads path (required) and parses it as ParseAgent does.
func LoadAgent(path string, env Env) (Agent, error) {
	if path == "" {
		return DefaultAgent(), errorf("config: the agent needs --config: a %s AgentConfig file (`stub register` prints one)", APIVersion)
	}
	data, err := readFile(path)
	if err != nil {
		return DefaultAgent(), err
	}
	return ParseAgent(path, data, env)
}

// ParseAgent decodes data read from path over DefaultAgent, completes it
// with env and validates it. The result depends only on its arguments.
func ParseAgent(path string, data []byte, env Env) (Agent, error) {
	c := DefaultAgent()
	if err := decode(path, data, "AgentConfig", &c); err != nil {
		return c, err
	}
	c.Complete(env)
	return c, invalid(path, c.Validate())
}

// Complete fills agentID when it is empty: Env.PodName in a pod, else the
// host name plus Env.Nonce, so that two agents on one host do not replace
// each other's session at the stub.
func (c *Agent) Complete(env Env) {
	if c.AgentID != "" {
		return
	}
	if env.PodName != "" {
		c.AgentID = env.PodName
		return
	}
	c.AgentID = cmp.Or(env.Hostname, "agent")
	if env.Nonce != "" {
		c.AgentID += "-" + env.Nonce
	}
}

// Validate checks a completed config (see Complete) and returns every
// problem found, joined; it changes nothing.
func (c Agent) Validate() error {
	var p problems
	if u, err := url.Parse(c.StubURL); err != nil || u.Scheme != "https" || u.Host == "" {
		p.addf("stubURL: %q must be the stub's https:// URL, e.g. \"https://keyhole.example.com\"", c.StubURL)
	}
	if c.Cluster == "" {
		p.addf("cluster: must be the ID the cluster was registered under (`stub register <id>`)")
	}
	if c.JoinSecretFile == "" {
		p.addf("joinSecretFile: must name the file holding the join secret")
	}
	if c.Context != "" && c.Kubeconfig == "" {
		p.addf("context %q: a context is chosen in a kubeconfig; set kubeconfig too (e.g. ~/.kube/config written out), or leave context out", c.Context)
	}
	if c.Kubeconfig != "" && c.APIServer.URL != "" {
		p.addf("kubeconfig %q and apiServer.url %q: give one of them, not both", c.Kubeconfig, c.APIServer.URL)
	}
	if c.APIServer.URL != "" {
		if u, err := url.Parse(c.APIServer.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			p.addf("apiServer.url: %q must be an https:// URL", c.APIServer.URL)
		}
		if c.APIServer.TokenFile == "" {
			p.addf("apiServer.tokenFile: required with apiServer.url (the agent's ServiceAccount token)")
		}
	}
	if c.APIServer.ProxyURL != "" {
		switch u, err := url.Parse(c.APIServer.ProxyURL); {
		case c.Kubeconfig != "":
			p.addf("apiServer.proxyURL %q: with kubeconfig %q, set proxy-url in the kubeconfig's cluster instead (the agent honours it)", c.APIServer.ProxyURL, c.Kubeconfig)
		case err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "socks5") || u.Host == "":
			p.addf("apiServer.proxyURL: %q must be a proxy URL such as \"http://proxy.corp.example:3128\" (http, https or socks5), or left out to reach the API server directly", c.APIServer.ProxyURL)
		}
	}
	checkTunnel(&p, c.Tunnel)
	checkLog(&p, c.Log)
	if c.HealthListen != "" {
		if _, _, err := net.SplitHostPort(c.HealthListen); err != nil {
			p.addf("healthListen: %q is not host:port; write e.g. \":8081\", or leave it empty", c.HealthListen)
		}
	}
	if c.DrainTimeout.Duration < 0 {
		p.addf("drainTimeout: %v must be positive, e.g. 25s (below the pod's terminationGracePeriodSeconds), or left out for the default (25s)", c.DrainTimeout.Duration)
	}
	p = append(p, authn.ValidateJWT("callerVerification.jwt", c.CallerVerification.JWT)...)
	return p.err()
}
