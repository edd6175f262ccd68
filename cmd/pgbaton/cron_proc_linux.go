package main

import "syscall"

// setPdeathsig asks the kernel to SIGKILL the job if the daemon's forking
// thread dies (prctl PR_SET_PDEATHSIG).
func setPdeathsig(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER from linux/prctl.h.
const prSetChildSubreaper = 36

// becomeSubreaper makes the daemon a child subreaper (prctl
// PR_SET_CHILD_SUBREAPER, Linux 3.4+): the processes a job leaves behind
// (a daemonised helper) are re-parented to pgbaton instead of init, and
// reaped by it, as when it runs as PID 1.
func becomeSubreaper() error {
	// prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0): the arguments after the
	// flag are unused.
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	if e != 0 {
		return e
	}
	return nil
}
