//go:build tools

// Package tools pins the binaries that end-to-end tests need.
// Build them from this module (see hack/testbin.sh), e.g.
//
//	go build -o kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
