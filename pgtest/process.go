package pgtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Child processes and their clean-up.
//
// Two independent mechanisms make sure no server process and no data
// directory outlives the test process, whatever way it ends:
//
//   - Pdeathsig: every server program is started with a parent-death
//     signal (SIGQUIT for the postmaster, which is PostgreSQL's immediate
//     shutdown; SIGKILL for initdb and pg_basebackup). Linux sends it when
//     the *thread* that forked the child exits, and the Go runtime may
//     retire threads, so the children are forked from one OS thread that a
//     goroutine keeps locked while any such child may be running (see
//     pinnedSpawner).
//
//   - A watchdog: a tiny /bin/sh process per temp directory, in its own
//     process group, whose stdin is the read end of a pipe whose write end
//     only the test process holds. When the test process dies (panic,
//     os.Exit, SIGKILL), the kernel closes the write end, the watchdog reads
//     EOF, stops the postmaster (SIGQUIT, then SIGKILL) and removes the
//     directory. A normal Close cleans up itself and then disarms it.

// pinnedSpawner starts processes on one locked OS thread that stays alive
// while any of them runs.
type pinnedSpawner struct {
	mu   sync.Mutex
	reqs chan spawnReq
	live int
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var spawner pinnedSpawner

// start starts cmd on the pinned thread. On success the caller must call
// release once the process has exited (after Wait returned).
func (s *pinnedSpawner) start(cmd *exec.Cmd) (release func(), err error) {
	s.mu.Lock()
	if s.reqs == nil {
		s.reqs = make(chan spawnReq)
		go spawnLoop(s.reqs)
	}
	s.live++
	reqs := s.reqs
	s.mu.Unlock()

	var once sync.Once
	release = func() { once.Do(s.release) }
	done := make(chan error, 1)
	reqs <- spawnReq{cmd: cmd, done: done}
	if err := <-done; err != nil {
		release()
		return nil, err
	}
	return release, nil
}

func (s *pinnedSpawner) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live--
	if s.live == 0 {
		close(s.reqs)
		s.reqs = nil
	}
}

func spawnLoop(reqs <-chan spawnReq) {
	runtime.LockOSThread()
	// Unlocking before returning hands the thread back to the runtime
	// instead of terminating it; no pinned child is alive at that point.
	defer runtime.UnlockOSThread()
	for r := range reqs {
		r.done <- r.cmd.Start()
	}
}

// runPinned runs cmd to completion with a parent-death signal, killing it
// if ctx ends first.
func runPinned(ctx context.Context, cmd *exec.Cmd) error {
	release, err := spawner.start(cmd)
	if err != nil {
		return err
	}
	defer release()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done //nolint:errcheck // the killed process's exit status; ctx's error is the one to report
		return ctx.Err()
	}
}

// serverUser is the identity server programs run as. PostgreSQL refuses
// to run as root, so when the test process is root they run as the
// "postgres" OS user if it exists, else "nobody".
type serverUser struct {
	name     string
	uid, gid uint32
	switched bool // false: run as the current user
}

func lookupServerUser() (serverUser, error) {
	if os.Geteuid() != 0 {
		return serverUser{}, nil
	}
	var lastErr error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			lastErr = err
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return serverUser{name: name, uid: uint32(uid), gid: uint32(gid), switched: true}, nil
	}
	return serverUser{}, fmt.Errorf("pgtest: running as root and neither the postgres nor the nobody OS user is usable: %v", lastErr) //nolint:errorlint // lastErr may be nil (users found but unusable); it is detail only
}

func (u serverUser) chown(path string) error {
	if !u.switched {
		return nil
	}
	return os.Chown(path, int(u.uid), int(u.gid)) //nolint:gosec // paths in temp dirs the harness made
}

// sysProcAttr returns attributes for a server program: its own process
// group (a terminal Ctrl-C reaches the test process only), the server
// user's credentials and the given parent-death signal (0 for none).
func (u serverUser) sysProcAttr(pdeathsig syscall.Signal) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: pdeathsig}
	if u.switched {
		a.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: []uint32{}}
	}
	return a
}

// serverEnv is the environment for server programs: the test process's,
// without PG* variables that could redirect them (PGDATA, PGHOST, ...).
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C")
}

// traversableByOthers reports whether every ancestor of dir can be
// searched by an unprivileged user.
func traversableByOthers(dir string) bool {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == filepath.Dir(d) {
			return true
		}
	}
}

// watchdog is the sidecar that cleans up after a dead test process.
type watchdog struct {
	mu  sync.Mutex
	w   *os.File // write end of the pipe; kept referenced so it is not finalised
	cmd *exec.Cmd
}

// clusterCleanup is the watchdog's action for a cluster temp dir ($1):
// stop the postmaster last reported with "pid N" (or named in
// postmaster.pid) and remove the directory. Zombies count as gone: an
// exited postmaster whose parent died may never be reaped by a minimal init.
const clusterCleanup = `
dir=$1
if [ -z "$pid" ] && [ -r "$dir/data/postmaster.pid" ]; then
	pid=$(head -n 1 "$dir/data/postmaster.pid")
fi
stop QUIT 150
rm -rf "$dir"
if [ -e "$dir" ]; then sleep 1; rm -rf "$dir"; fi
`

// watchdogLoop reads commands until "disarm" (exit without acting) or EOF
// (run the clean-up). "pid N" records the process to stop; "pid" clears it.
// It defines for the clean-up: alive PID (zombies count as gone) and
// stop SIGNAL TENTHS (signal $pid, wait up to TENTHS/10 s, then SIGKILL).
const watchdogLoop = `
alive() {
	[ -n "$1" ] || return 1
	if [ -r "/proc/$1/stat" ]; then
		s=$(sed 's/^.*) //;s/ .*$//' "/proc/$1/stat" 2>/dev/null)
		[ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
	else
		kill -0 "$1" 2>/dev/null
	fi
}
stop() {
	case "$pid" in ''|*[!0-9]*) return 0 ;; esac
	alive "$pid" || return 0
	kill -"$1" "$pid" 2>/dev/null
	i=0
	while alive "$pid" && [ $i -lt "$2" ]; do sleep 0.1; i=$((i+1)); done
	alive "$pid" && kill -KILL "$pid" 2>/dev/null
	return 0
}
pid=
while IFS= read -r line; do
	case "$line" in
	disarm) exit 0 ;;
	"pid "*) pid=${line#pid } ;;
	pid) pid= ;;
	esac
done
`

// startWatchdog starts a sidecar that runs cleanup (a sh fragment seeing
// args as $1...) when the test process dies.
func startWatchdog(cleanup string, args ...string) (*watchdog, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	argv := append([]string{"-c", watchdogLoop + cleanup, "pgtest-watchdog"}, args...)
	// The watchdog must outlive every context: it acts when the test process dies.
	cmd := exec.CommandContext(context.Background(), "/bin/sh", argv...)
	cmd.Stdin = r
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = r.Close() // the watchdog holds its own copy of the read end
	if err != nil {
		_ = w.Close() // nothing reads it; the start error is the one to report
		return nil, fmt.Errorf("pgtest: start watchdog: %w", err)
	}
	return &watchdog{w: w, cmd: cmd}, nil
}

// setPID tells the watchdog which postmaster to stop (0: none).
func (wd *watchdog) setPID(pid int) {
	if wd == nil {
		return
	}
	wd.mu.Lock()
	defer wd.mu.Unlock()
	if wd.w == nil {
		return
	}
	// A failed write means the watchdog is gone; there is nothing to do about it here.
	if pid > 0 {
		_, _ = fmt.Fprintf(wd.w, "pid %d\n", pid)
	} else {
		_, _ = io.WriteString(wd.w, "pid\n")
	}
}

// disarm makes the watchdog exit without acting and waits for it.
func (wd *watchdog) disarm() {
	if wd == nil {
		return
	}
	wd.mu.Lock()
	defer wd.mu.Unlock()
	if wd.w == nil {
		return
	}
	// If the write fails the watchdog is gone, or it reads EOF and runs its
	// clean-up, which finds nothing left to do after a normal Close.
	_, _ = io.WriteString(wd.w, "disarm\n")
	_ = wd.w.Close()
	wd.w = nil
	_ = wd.cmd.Wait()
}
