//go:build unix && !linux

package main

import (
	"os/exec"
	"syscall"
)

// setChildAttrs puts the command in a process group of its own. Outside
// Linux there is no parent-death signal: if pgbaton is SIGKILLed, the
// command keeps running (its lock is freed when the connection closes).
func setChildAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

func lockThreadForChild()   {}
func unlockThreadForChild() {}
