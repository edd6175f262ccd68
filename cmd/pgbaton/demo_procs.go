//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// demoProc is one worker process and its proxy.
//
// A worker cannot outlive the demo: it reads its stdin until EOF and stops
// then, and the demo's end (even by SIGKILL) closes that pipe. Workers run
// in a process group of their own, so a Ctrl-C at the terminal reaches the
// demo only, which then kills them itself.
type demoProc struct {
	name  string
	proxy *pgtest.Proxy
	cmd   *exec.Cmd
	pid   int
	done  chan struct{} // closed once the process has been waited for

	mu    sync.Mutex
	stdin io.WriteCloser // nil once closed
}

// send writes a command line to the worker; it is a no-op once stdin closed.
func (p *demoProc) send(cmd string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		return nil
	}
	_, err := io.WriteString(p.stdin, cmd+"\n")
	return err
}

// closeStdin asks the worker to stop: it releases its lease and exits.
func (p *demoProc) closeStdin() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin != nil {
		_ = p.stdin.Close() // closing a pipe we own; the worker sees EOF either way
		p.stdin = nil
	}
}

func (p *demoProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (d *demo) worker(name string) *demoProc {
	for _, p := range d.workers {
		if p.name == name {
			return p
		}
	}
	return nil
}

// startWorkers starts every worker behind its own proxy and waits until all
// have their Locker open.
func (d *demo) startWorkers(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program to start workers: %w", err)
	}
	d.exe = exe
	for i := 1; i <= d.opts.Workers; i++ {
		if err := d.startWorker(exe, fmt.Sprintf("w%d", i)); err != nil {
			return err
		}
	}
	var fatal string
	err = d.tr.await(ctx, 30*time.Second, "start of every worker", func() bool {
		ready := 0
		for _, p := range d.workers {
			if d.tr.exited[p.name] {
				fatal = p.name + " exited before it was ready"
				return true
			}
			if d.tr.ready[p.name] {
				ready++
			}
		}
		return ready == len(d.workers)
	})
	if err == nil && fatal != "" {
		err = errors.New(fatal)
	}
	if err != nil {
		d.tr.mu.Lock()
		why := d.tr.fatal
		d.tr.mu.Unlock()
		if why != "" {
			return fmt.Errorf("starting workers: %s", why)
		}
		return fmt.Errorf("starting workers: %w", err)
	}
	return nil
}

func (d *demo) startWorker(exe, name string) (err error) {
	proxy, err := pgtest.NewProxy(d.target)
	if err != nil {
		return err
	}
	p := &demoProc{name: name, proxy: proxy, done: make(chan struct{})}
	d.workers = append(d.workers, p)
	defer func() {
		if err != nil {
			close(p.done) // no process to wait for
		}
	}()
	cfg, err := json.Marshal(workerConfig{
		Name: name, DSN: d.workerDSN, Via: proxy.Addr(), Key: d.opts.Key,
		HoldMin: d.opts.HoldMin, HoldMax: d.opts.HoldMax, Wait: d.acquireWait(),
	})
	if err != nil {
		return err
	}
	// No context ends a worker: the demo stops each itself, by closing its
	// stdin or, in cleanup, by killing it, so that the trace reports it.
	cmd := exec.CommandContext(context.Background(), exe, "demo-worker")
	cmd.Env = append(os.Environ(), workerEnv+"="+string(cfg))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr := &lineWriter{emit: func(line string) { d.tr.add(&event{Kind: evStderr, worker: name, text: line}) }}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting worker %s: %w", name, err)
	}
	p.cmd, p.pid, p.stdin = cmd, cmd.Process.Pid, stdin
	d.res.WorkerPIDs = append(d.res.WorkerPIDs, p.pid)
	go func() {
		defer close(p.done)
		d.readEvents(name, stdout)
		werr := cmd.Wait()
		stderr.flush()
		status := "exit status 0"
		if werr != nil {
			status = werr.Error()
		}
		d.tr.add(&event{Kind: evExit, worker: name, text: status})
	}()
	return nil
}

// readEvents feeds the worker's JSON lines to the trace until EOF.
func (d *demo) readEvents(name string, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e := &event{}
		if err := json.Unmarshal(sc.Bytes(), e); err != nil || e.Kind == "" {
			e = &event{Kind: evStderr, text: "stdout: " + sc.Text()}
		}
		e.worker = name
		d.tr.add(e)
	}
	if err := sc.Err(); err != nil {
		d.tr.add(&event{Kind: evStderr, worker: name, text: "reading its events: " + err.Error()})
	}
}

// stopWorkers closes every worker's stdin, so each releases its lease and
// exits, and waits for them (bounded; stragglers are killed by cleanup).
func (d *demo) stopWorkers(ctx context.Context) error {
	d.tr.setStopping(false)
	d.tr.note("stop", "closing the workers' input: each releases its lease, closes its Locker "+
		"and exits")
	for _, p := range d.workers {
		p.closeStdin()
	}
	return d.tr.await(ctx, 10*time.Second, "exit of every worker", func() bool {
		for _, p := range d.workers {
			if !d.tr.exited[p.name] {
				return false
			}
		}
		return true
	})
}

// killWorkers SIGKILLs every worker still running and waits for each (its
// pipes drained, its exit reported). It returns how many it killed.
func (d *demo) killWorkers() int {
	if d.tr != nil {
		d.tr.setStopping(true)
	}
	killed := 0
	for _, p := range d.workers {
		p.closeStdin()
		if p.cmd == nil || p.exited() {
			continue
		}
		// The process group is the worker's own; a worker starts nothing else.
		if err := syscall.Kill(-p.pid, syscall.SIGKILL); err == nil {
			killed++
		}
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for _, p := range d.workers {
		select {
		case <-p.done:
		case <-timeout.C:
			return killed // cannot happen short of a kernel problem; the pipes close with the demo anyway
		}
	}
	return killed
}

// lineWriter turns a worker's stderr into trace lines.
type lineWriter struct {
	emit func(string)
	mu   sync.Mutex
	buf  []byte
}

func (lw *lineWriter) Write(b []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	lw.buf = append(lw.buf, b...)
	for {
		i := bytes.IndexByte(lw.buf, '\n')
		if i < 0 {
			break
		}
		lw.emit(strings.TrimRight(string(lw.buf[:i]), "\r"))
		lw.buf = lw.buf[i+1:]
	}
	return len(b), nil
}

func (lw *lineWriter) flush() {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if len(lw.buf) > 0 {
		lw.emit(string(lw.buf))
		lw.buf = nil
	}
}
