package ha

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ClientConfig says how to reach the hub's API server.
type ClientConfig struct {
	// Kubeconfig is a kubeconfig file of the hub cluster (the stub's
	// hub.kubeconfig); empty means the pod's ServiceAccount.
	Kubeconfig string
	// ReplicaID names this replica in the User-Agent
	// (keyhole-stub/<ReplicaID>), so the hub's audit log tells replicas
	// apart.
	ReplicaID string
}

// NewClient connects to the hub's API server. No client-wide timeout (it
// would cut watches); callers bound each request with a context.
func NewClient(cfg ClientConfig) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("hub.kubeconfig: %q: %w", cfg.Kubeconfig, err)
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("hub.kubeconfig is empty and this is not a pod (%w); set hub.kubeconfig to a kubeconfig of the hub cluster", err)
		}
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "keyhole-stub/" + cfg.ReplicaID
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	return cs, nil
}
