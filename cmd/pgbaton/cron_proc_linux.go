package main

import "syscall"

// setPdeathsig asks the kernel to SIGKILL the job if the daemon's forking
// thread dies (prctl PR_SET_PDEATHSIG).
func setPdeathsig(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }
