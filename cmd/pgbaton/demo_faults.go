//go:build linux

package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// faultWait bounds each wait of the fault phase: for a holder, for the next
// grant, for a worker's exit. With the demo's settings each takes well under
// a few seconds.
const faultWait = 15 * time.Second

// injectFaults switches the workers to holding until a fault takes the lock,
// then injects each fault into the current holder and waits for what
// follows.
func (d *demo) injectFaults(ctx context.Context) error {
	if len(d.opts.Faults) == 0 {
		return nil
	}
	d.tr.note("faults", "from now on each holder keeps the lock until a fault ends it")
	for _, p := range d.workers {
		if !p.exited() {
			if err := p.send("keep"); err != nil && !p.exited() {
				return fmt.Errorf("telling %s to keep its leases: %w", p.name, err)
			}
		}
	}
	for i, kind := range d.opts.Faults {
		h, err := d.awaitHolder(ctx)
		if err != nil {
			return err
		}
		f := &faultRecord{N: i + 1, Of: len(d.opts.Faults), Kind: kind, Victim: h.worker, Backend: h.backend}
		p := d.worker(h.worker)
		switch kind {
		case "kill":
			err = d.faultKill(ctx, f, p)
		case "terminate":
			err = d.faultTerminate(ctx, f, h)
		case "blackhole":
			err = d.faultBlackhole(ctx, f, p)
		}
		if err != nil {
			return fmt.Errorf("fault %d (%s): %w", f.N, kind, err)
		}
	}
	return nil
}

// awaitHolder waits for a live worker holding the lock in keep mode.
func (d *demo) awaitHolder(ctx context.Context) (holding, error) {
	var h holding
	err := d.tr.await(ctx, faultWait, "worker holding the lock", func() bool {
		if x := d.tr.holder; x != nil && x.keep && !x.freed && !d.tr.exited[x.worker] {
			h = *x
			return true
		}
		return false
	})
	return h, err
}

// faultKill SIGKILLs the holder. The dead process reports nothing; the
// server frees its lock when the socket closes.
func (d *demo) faultKill(ctx context.Context, f *faultRecord, p *demoProc) error {
	f.Title = "SIGKILL the holder's process"
	d.tr.add(&event{Kind: evFault, fault: f, verb: "kill -9",
		text: fmt.Sprintf("%s holds the lock; kill -9 of its process %d", p.name, p.pid)})
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d: %w", p.pid, err)
	}
	if err := d.tr.await(ctx, faultWait, "grant after the kill", func() bool {
		return f.GrantT != 0 && d.tr.exited[p.name]
	}); err != nil {
		return err
	}
	return d.replaceWorker(ctx, p)
}

// replaceWorker starts a new worker in place of a killed one, holding each
// lease until a fault takes it like the others, and waits until its Locker
// is open: every later fault needs a worker other than the holder to hand
// the lock to, even with -workers 2.
func (d *demo) replaceWorker(ctx context.Context, dead *demoProc) error {
	name := fmt.Sprintf("w%d", len(d.workers)+1)
	d.tr.note("replace", "%s was killed; starting %s in its place", dead.name, name)
	if err := d.startWorker(d.exe, name); err != nil {
		return fmt.Errorf("starting %s in place of %s: %w", name, dead.name, err)
	}
	p := d.worker(name)
	if err := p.send("keep"); err != nil && !p.exited() {
		return fmt.Errorf("telling %s to keep its leases: %w", name, err)
	}
	return d.tr.await(ctx, 30*time.Second, "start of "+name, func() bool {
		return d.tr.ready[name] || d.tr.exited[name]
	})
}

// faultTerminate ends the holder's backend with pg_terminate_backend.
func (d *demo) faultTerminate(ctx context.Context, f *faultRecord, h holding) error {
	f.Title = "terminate the holder's backend"
	d.tr.add(&event{Kind: evFault, fault: f, verb: "terminate",
		text: fmt.Sprintf("%s holds the lock on backend %d: "+
			"pg_terminate_backend(%d)", h.worker, h.backend, h.backend)})
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res := d.admin.ExecParams(qctx, "SELECT pg_terminate_backend($1::int4)",
		[][]byte{[]byte(strconv.FormatUint(uint64(h.backend), 10))}, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("pg_terminate_backend(%d): %w (the demo's role needs to be the workers' role, a member of pg_signal_backend, or a superuser)", h.backend, res.Err)
	}
	if len(res.Rows) != 1 || string(res.Rows[0][0]) != "t" {
		return fmt.Errorf("pg_terminate_backend(%d) returned false: no such backend", h.backend)
	}
	return d.tr.await(ctx, faultWait, "loss report and grant after the termination", func() bool {
		return f.DetectT != 0 && f.GrantT != 0
	})
}

// faultBlackhole makes the holder's network silent. The holder must see the
// loss (no heartbeat confirmed within LeaseTimeout) before the server can
// free its lock (ServerReleaseTimeout of silence). The proxy's own kernel
// would keep answering the server's keepalives, so the demo plays the
// server's part at that moment by resetting the proxied connections.
func (d *demo) faultBlackhole(ctx context.Context, f *faultRecord, p *demoProc) error {
	f.Title = "black-hole the holder's network"
	lc := demoLockerConfig("")
	release := lc.ServerReleaseTimeout()
	t := now()
	d.tr.add(&event{Kind: evFault, T: t, fault: f, verb: "blackhole",
		text: fmt.Sprintf("%s holds the lock; its proxy now forwards nothing and "+
			"closes nothing", p.name)})
	p.proxy.BlackHole()
	healed := false
	defer func() {
		if !healed {
			p.proxy.Heal()
		}
	}()
	if err := d.tr.await(ctx, release, p.name+" loss report", func() bool { return f.DetectT != 0 }); err != nil {
		if ctx.Err() != nil {
			return err
		}
		d.tr.note("!!", "%s has not reported a loss %s into the black hole", p.name, fmtDur(release))
	}
	timer := time.NewTimer(time.Until(time.Unix(0, t).Add(release)))
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		return context.Cause(ctx)
	}
	d.tr.add(&event{Kind: evFreed, fault: f, verb: "reset",
		text: fmt.Sprintf("after %s of silence the server drops %s's session and frees its lock (played by the proxy: it resets the connections)", fmtDur(release), p.name)})
	p.proxy.ResetAll()
	if err := d.tr.await(ctx, faultWait, "grant after the black hole", func() bool { return f.GrantT != 0 }); err != nil {
		return err
	}
	p.proxy.Heal()
	healed = true
	d.tr.note("heal", "%s's network is back; it queues for the lock again", p.name)
	return nil
}

func (d *demo) printSummary(s stats) {
	w := d.out
	printf(w, "\nSummary\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "  grants\t%d\t\n", s.Grants)
	if n := len(s.Handoffs); n > 0 {
		hs := slices.Sorted(slices.Values(s.Handoffs))
		printf(tw, "  handoffs\t%d\tmedian %s, p90 %s, max %s\n",
			n, fmtDur(percentile(hs, 0.5)), fmtDur(percentile(hs, 0.9)), fmtDur(hs[n-1]))
		printf(tw, "  \t\t(a Release call to the next worker's grant)\n")
	} else {
		printf(tw, "  handoffs\t0\t\n")
	}
	overlapNote := "grants while another worker held the lock"
	if s.Overlaps > 0 {
		overlapNote = "<-- MUTUAL EXCLUSION BROKEN: " + overlapNote
	}
	printf(tw, "  overlaps\t%d\t%s\n", s.Overlaps, overlapNote)
	spuriousNote := "leases lost with no fault injected into their holder"
	if s.Spurious > 0 {
		spuriousNote = "<-- " + spuriousNote
	}
	printf(tw, "  unexplained losses\t%d\t%s\n", s.Spurious, spuriousNote)
	printf(tw, "  wait timeouts\t%d\tbounded Acquire waits that expired (and queued again)\n", s.Expired)
	_ = tw.Flush() // terminal output: see printf
	if len(s.Faults) == 0 {
		if s.Overlaps == 0 {
			printf(w, "\n  No two workers held the lock at the same time.\n")
		}
		return
	}
	printf(w, "\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printf(tw, "  fault\tholder\tsaw its loss\tnext grant\n")
	var causes []string
	for _, f := range s.Faults {
		detect, cause := "not reported", "its lease never ended: a bug"
		if f.Kind == "kill" {
			detect, cause = "-", "its process was dead; the server freed the lock when the socket closed"
		} else if dt, ok := f.Detection(); ok {
			detect, cause = fmtDur(dt), f.Reason
		}
		failover := "none"
		if ft, ok := f.Failover(); ok {
			failover = fmt.Sprintf("%s (%s)", fmtDur(ft), f.Next)
		}
		printf(tw, "  %d %s\t%s\t%s\t%s\n", f.N, f.Kind, f.Victim, detect, failover)
		causes = append(causes, fmt.Sprintf("  %d %s: %s", f.N, f.Kind, cause))
	}
	_ = tw.Flush() // terminal output: see printf
	printf(w, "\n  How each holder learned:\n%s\n", strings.Join(causes, "\n"))
	var notes []string
	for _, f := range s.Faults {
		if f.Kind == "blackhole" && f.DetectT != 0 && f.FreedT != 0 {
			if f.DetectT < f.FreedT {
				notes = append(notes, fmt.Sprintf("The black-holed holder (%s) knew it had lost the lock %s before "+
					"the server could hand it to anyone else.", f.Victim, fmtDur(time.Duration(f.FreedT-f.DetectT))))
			} else {
				notes = append(notes, fmt.Sprintf("!! The black-holed holder (%s) learned of its loss only %s "+
					"AFTER the server freed the lock.", f.Victim, fmtDur(time.Duration(f.DetectT-f.FreedT))))
			}
		}
	}
	if s.Overlaps == 0 {
		notes = append(notes, "No two workers held the lock at the same time.")
	}
	if len(notes) > 0 {
		printf(w, "\n  %s\n", strings.Join(notes, "\n  "))
	}
}
