package ha

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keyhole-dev/keyhole/config"
)

// Client connects to the hub's API server: hub.Kubeconfig, or the pod's
// ServiceAccount when it is empty. No client-wide timeout (it would cut
// watches); callers bound each request with a context.
func Client(hub config.Hub) (kubernetes.Interface, *rest.Config, error) {
	var rc *rest.Config
	var err error
	if hub.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", hub.Kubeconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("hub.kubeconfig: %q: %w", hub.Kubeconfig, err)
		}
	} else {
		rc, err = rest.InClusterConfig()
		if err != nil {
			return nil, nil, fmt.Errorf("hub.kubeconfig is empty and this is not a pod (%w); set hub.kubeconfig to a kubeconfig of the hub cluster", err)
		}
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "keyhole-stub/" + hub.ReplicaID
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("hub: %w", err)
	}
	return cs, rc, nil
}
