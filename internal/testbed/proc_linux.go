package testbed

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes a process die with the test process (even if the test
// binary is killed before its cleanups run).
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
