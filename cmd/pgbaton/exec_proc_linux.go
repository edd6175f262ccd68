package main

import (
	"os/exec"
	"runtime"
	"syscall"
)

// setChildAttrs puts the command in a process group of its own and asks the
// kernel to SIGKILL it if pgbaton dies (prctl PR_SET_PDEATHSIG). The signal
// is tied to the forking thread, which lockThreadForChild keeps alive.
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func lockThreadForChild()   { runtime.LockOSThread() }
func unlockThreadForChild() { runtime.UnlockOSThread() }
