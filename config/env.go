package config

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
)

// Env is everything Complete may take from the process's surroundings:
// with the file, the only input of parsing. DiscoverEnv fills it for a real
// process, and only cmd/* calls it; tests write an Env literal, so they
// neither depend on nor scrub the machine they run on.
type Env struct {
	// Hostname is the host name (in a pod, the pod name): hub.replicaID's
	// default, and the agent ID's outside a pod.
	Hostname string
	// PodName is $POD_NAME (the downward API): agentID's default.
	PodName string
	// PodNamespace is $POD_NAMESPACE (the downward API): hub.namespace's
	// default.
	PodNamespace string
	// ServiceAccountNamespace is the namespace in the pod's ServiceAccount
	// files: hub.namespace's default without POD_NAMESPACE.
	ServiceAccountNamespace string
	// StateHome ($XDG_STATE_HOME) and Home (the user's home directory)
	// give stateDir's default: StateHome/keyhole, else
	// Home/.local/state/keyhole, else ./keyhole-state.
	StateHome, Home string
	// Nonce is a few random hex digits drawn once per process. Outside a
	// pod the agent ID is Hostname-Nonce, so that two agents on one host
	// do not replace each other's session at the stub. Randomness is
	// drawn here rather than in Complete so that Complete stays a function
	// of its inputs: the same file and Env give the same config.
	Nonce string
}

// ServiceAccountNamespaceFile is where a pod finds its own namespace.
const ServiceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// DiscoverEnv reads the Env of this process: host name, downward-API
// variables, the ServiceAccount's namespace file, the state directories,
// and a fresh Nonce. A value that cannot be read is left empty.
func DiscoverEnv() Env {
	e := Env{
		PodName:      os.Getenv("POD_NAME"),
		PodNamespace: os.Getenv("POD_NAMESPACE"),
		StateHome:    os.Getenv("XDG_STATE_HOME"),
	}
	e.Hostname, _ = os.Hostname()
	e.Home, _ = os.UserHomeDir()
	if b, err := os.ReadFile(ServiceAccountNamespaceFile); err == nil {
		e.ServiceAccountNamespace = strings.TrimSpace(string(b))
	}
	b := make([]byte, 3)
	if _, err := rand.Read(b); err == nil {
		e.Nonce = hex.EncodeToString(b)
	}
	return e
}
