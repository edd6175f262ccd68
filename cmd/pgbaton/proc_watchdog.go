//go:build unix

package main

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// groupWatchdog starts a small process that SIGKILLs the process group pgid
// if this process dies first, for whatever reason (SIGKILL included). The
// parent-death signal reaches only the command pgbaton started, not the
// processes that command started in its group (a shell's steps); the
// watchdog covers those. It is `sh` reading a pipe whose write end only
// this process holds (close-on-exec, so the command does not inherit it):
// when this process dies the kernel closes that end, the read ends at EOF,
// and the watchdog kills the group. It runs in a process group of its own,
// so signals to the command's group do not reach it.
//
// stop ends it without killing: it reads a line and exits. With reap, stop
// also waits for it; without, the caller's own reaper collects it (pgbaton
// cron reaps every child).
func groupWatchdog(pgid int, reap bool) (stop func(), err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// No context: the watchdog must outlive this process (that is its
	// purpose); stop ends it.
	cmd := exec.Command("/bin/sh", "-c", `read -r _ || kill -9 -"$1" 2>/dev/null`, "pgbaton-watchdog", strconv.Itoa(pgid)) //nolint:noctx // see above
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = r.Close() // the watchdog has it
	if err != nil {
		_ = w.Close()
		return nil, err
	}
	return func() {
		_, _ = w.Write([]byte("done\n"))
		_ = w.Close()
		if reap {
			_ = cmd.Wait()
		} else {
			_ = cmd.Process.Release()
		}
	}, nil
}
