// Package e2e runs Keyhole as a user does: the real stub and agent binaries
// (built with -race), the real kubectl, and a real kube-apiserver + etcd with
// a simulated node (internal/kubetest), all on 127.0.0.1.
package e2e
