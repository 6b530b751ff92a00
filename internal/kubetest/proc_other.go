//go:build !linux

package kubetest

import "os/exec"

func setProcAttr(cmd *exec.Cmd) {}
