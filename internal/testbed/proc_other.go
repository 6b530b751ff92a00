//go:build !linux

package testbed

import "os/exec"

func setProcAttr(cmd *exec.Cmd) {}
