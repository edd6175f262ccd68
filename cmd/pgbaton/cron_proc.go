//go:build unix

package main

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// cronReaper starts the jobs' processes and reaps every child of the
// daemon: its own (whose status it hands to the waiting run) and the
// orphans the kernel re-parents to it, which would otherwise stay zombies:
// when the daemon is PID 1 in a container, and on Linux always, since it
// makes itself a child subreaper. One loop calls wait4(-1) on SIGCHLD
// (and every second, in case signals were coalesced); forks and reaps are
// serialised by mu, so a child is always registered before it can be
// reaped.
type cronReaper struct {
	log     *slog.Logger
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus
	sigc    chan os.Signal
	stop    chan struct{}
	done    chan struct{}
	orphans int
}

func newCronReaper(log *slog.Logger) *cronReaper {
	r := &cronReaper{log: log, waiting: map[int]chan syscall.WaitStatus{}, sigc: make(chan os.Signal, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	signal.Notify(r.sigc, syscall.SIGCHLD)
	if err := becomeSubreaper(); err != nil {
		log.Warn("cron: cannot become a child subreaper; processes jobs leave behind are reaped by init", "err", err.Error())
	}
	go r.loop()
	return r
}

func (r *cronReaper) loop() {
	defer close(r.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.sigc:
		case <-t.C:
		case <-r.stop:
			r.reap()
			return
		}
		r.reap()
	}
}

// close stops the loop (after a last reap).
func (r *cronReaper) close() {
	signal.Stop(r.sigc)
	close(r.stop)
	<-r.done
}

func (r *cronReaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiting[pid]; ok {
			delete(r.waiting, pid)
			ch <- ws
			continue
		}
		r.orphans++
		r.log.Debug("cron: reaped an orphaned process", "pid", pid, "status", describeWait(ws))
	}
}

// cronChild is a started job process.
type cronChild struct {
	pid    int
	status chan syscall.WaitStatus // receives once, when reaped
}

// start forks argv[0] (an absolute path) in a process group of its own,
// with the parent-death signal on Linux, and registers it for reaping.
// files are its stdin, stdout and stderr. The calling goroutine must stay
// on its locked OS thread until the child is reaped (the parent-death
// signal is tied to the forking thread).
func (r *cronReaper) start(argv, env []string, files []*os.File) (*cronChild, error) {
	fds := make([]uintptr, len(files))
	for i, f := range files {
		fds[i] = f.Fd()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{Env: env, Files: fds, Sys: cronSysProcAttr()})
	if err != nil {
		return nil, &os.PathError{Op: "fork/exec", Path: argv[0], Err: err}
	}
	c := &cronChild{pid: pid, status: make(chan syscall.WaitStatus, 1)}
	r.waiting[pid] = c.status
	return c, nil
}

// cronSysProcAttr puts the job in a process group of its own and, on
// Linux, asks the kernel to SIGKILL it if the daemon dies.
func cronSysProcAttr() *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if runtime.GOOS == "linux" {
		setPdeathsig(attr)
	}
	return attr
}

// describeWait is a wait status in words: "exit 3", "signal SIGKILL".
func describeWait(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + signalName(ws.Signal())
	}
	return "exit " + itoa(ws.ExitStatus())
}

func itoa(n int) string { return strconv.Itoa(n) }

// signalName is SIGTERM, SIGKILL...
func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGSEGV:
		return "SIGSEGV"
	case syscall.SIGABRT:
		return "SIGABRT"
	case syscall.SIGPIPE:
		return "SIGPIPE"
	}
	return "signal " + itoa(int(s))
}

// logLines logs each line read from rd as one structured record with
// attrs; a line longer than 64 KiB is logged in pieces marked
// "continued". It returns at EOF or a read error.
func logLines(rd io.Reader, log *slog.Logger, stream string, attrs ...any) {
	br := bufio.NewReaderSize(rd, 64*1024)
	cont := false
	for {
		line, isPrefix, err := br.ReadLine()
		if len(line) > 0 || (err == nil && !cont) {
			a := append(append([]any(nil), attrs...), "stream", stream, "line", string(line))
			if cont {
				a = append(a, "continued", true)
			}
			log.Info("cron: output", a...)
		}
		if err != nil {
			return
		}
		cont = isPrefix
	}
}
