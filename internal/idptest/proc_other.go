//go:build !linux

package idptest

import "os/exec"

func setProcAttr(cmd *exec.Cmd) {}
