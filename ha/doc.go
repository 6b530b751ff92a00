// Package ha lets several stub replicas run as one gateway in a hub
// cluster. It owns the hub connection, leader election with a
// coordination.k8s.io Lease (client-go leaderelection) and the work only
// the leader does, the per-replica Leases by which replicas find each other
// and which agents use to hold a session to every replica, and the state
// the replicas share in Secrets.
package ha
