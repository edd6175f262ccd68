//go:build unix && !linux

package main

import "syscall"

// setPdeathsig: outside Linux there is no parent-death signal; if the
// daemon is SIGKILLed, a running job keeps running (its lock is freed when
// the connection closes).
func setPdeathsig(*syscall.SysProcAttr) {}

// becomeSubreaper: only Linux has child subreapers; as PID 1 the daemon
// reaps orphans anyway.
func becomeSubreaper() error { return nil }
