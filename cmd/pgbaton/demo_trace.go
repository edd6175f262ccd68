//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// event is one thing that happened, stamped with the host's wall clock in
// Unix nanoseconds. Workers are processes on the same host as the demo, so
// their stamps and the demo's come from one clock and subtract directly.
//
// Workers send the exported fields as JSON lines on their stdout; the demo
// fills in the rest.
type event struct {
	Kind    string        `json:"ev"`
	T       int64         `json:"t"`
	PID     int           `json:"pid,omitempty"`     // ready: the worker's OS pid
	App     string        `json:"app,omitempty"`     // granted: the lock connection's application_name
	Backend uint32        `json:"backend,omitempty"` // granted: its backend pid
	Waited  time.Duration `json:"waited,omitempty"`  // granted: time spent in Acquire
	Held    time.Duration `json:"held,omitempty"`    // released, lost
	Keep    bool          `json:"keep,omitempty"`    // granted: will hold until a fault takes the lock
	Reason  string        `json:"reason,omitempty"`  // lost: short cause
	Err     string        `json:"err,omitempty"`     // lost, error, fatal, released: the full error

	worker string       // who: a worker's name, or "" for the demo itself
	text   string       // demo events: what to print
	verb   string       // demo events: the verb column
	fault  *faultRecord // fault, freed: the fault concerned
}

// Event kinds sent by workers.
const (
	evReady    = "ready"    // the Locker is open
	evGranted  = "granted"  // Acquire returned a lease
	evKeep     = "keep"     // the holder switched to holding until a fault
	evReleased = "released" // T is when Release was called
	evLost     = "lost"     // T is when Done was observed closed
	evExpired  = "expired"  // a bounded wait ended without the lock
	evError    = "error"    // Acquire failed otherwise; the worker retries
	evFatal    = "fatal"    // the worker cannot go on
	evBye      = "bye"      // clean exit
)

// Event kinds made by the demo.
const (
	evFault  = "fault"  // a fault is injected now
	evFreed  = "freed"  // the server frees the victim's lock now (black hole)
	evExit   = "exit"   // a worker process ended
	evStderr = "stderr" // a line a worker wrote to stderr
	evNote   = "note"   // anything else worth a line
)

// faultRecord is one injected fault and what followed it. Its fields are
// filled in by the trace as events are processed; read them under the
// trace's lock (or after the trace stopped).
type faultRecord struct {
	N, Of   int
	Kind    string // "kill", "terminate" or "blackhole"
	Title   string
	Victim  string
	Backend uint32
	T       int64  // injected
	FreedT  int64  // the server freed the victim's lock (0: not yet)
	DetectT int64  // the victim reported the loss (0: it did not, or could not)
	Reason  string // the victim's loss cause
	Next    string // the worker granted the lock next
	GrantT  int64  // when (0: nobody yet)
}

// Detection is the time from the fault to the holder seeing Done closed.
func (f *faultRecord) Detection() (time.Duration, bool) {
	if f.DetectT == 0 {
		return 0, false
	}
	return time.Duration(f.DetectT - f.T), true
}

// Failover is the time from the fault to the next grant.
func (f *faultRecord) Failover() (time.Duration, bool) {
	if f.GrantT == 0 {
		return 0, false
	}
	return time.Duration(f.GrantT - f.T), true
}

// holding is the trace's view of the current lock holder.
type holding struct {
	worker  string
	backend uint32
	app     string
	since   int64
	keep    bool
	freed   bool // a fault made the server free this holder's lock
}

// trace collects events from every worker, prints them in time order and
// keeps the state the demo waits on: who holds the lock, the handoffs, and
// the outcome of each fault.
//
// Events reach the trace through pipes, so one can arrive slightly after a
// later-stamped one from another worker. The trace holds every event back
// for a short window and processes them sorted by stamp, so a release is
// always processed before the grant it allowed.
type trace struct {
	out    io.Writer
	t0     int64
	window time.Duration

	mu       sync.Mutex
	pending  []*event
	changed  chan struct{} // closed and replaced after each processed batch
	holder   *holding
	lastRel  *event // a clean release not yet followed by a grant
	lastLoss *event // a loss not caused by a fault, not yet followed by a grant
	lastGone *event // the exit of a holder's process, not yet followed by a grant
	ready    map[string]bool
	exited   map[string]bool
	fatal    string // the first worker's reason for giving up
	stopping bool   // worker exits are expected now
	killing  bool   // the demo is killing its workers: their exits are not news
	faults   []*faultRecord

	grants, expired, overlaps int
	spurious                  int // losses no fault explains
	handoffs                  []time.Duration

	stop chan struct{}
	done chan struct{}
}

func newTrace(out io.Writer, window time.Duration) *trace {
	return &trace{
		out: out, t0: now(), window: window,
		changed: make(chan struct{}), ready: map[string]bool{}, exited: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
}

func now() int64 { return time.Now().UnixNano() }

// start runs the flusher until close.
func (tr *trace) start() {
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				tr.flush(false)
			case <-tr.stop:
				tr.flush(true)
				return
			}
		}
	}()
}

// close processes every pending event and stops the flusher. Idempotent.
func (tr *trace) close() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	<-tr.done
}

// add queues an event; a zero stamp means now.
func (tr *trace) add(e *event) {
	if e.T == 0 {
		e.T = now()
	}
	tr.mu.Lock()
	tr.pending = append(tr.pending, e)
	tr.mu.Unlock()
}

// note queues a line from the demo.
func (tr *trace) note(verb, format string, args ...any) {
	tr.add(&event{Kind: evNote, verb: verb, text: fmt.Sprintf(format, args...)})
}

func (tr *trace) flush(all bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.pending) == 0 {
		return
	}
	mark := now() - tr.window.Nanoseconds()
	var ready, rest []*event
	for _, e := range tr.pending {
		if all || e.T <= mark {
			ready = append(ready, e)
		} else {
			rest = append(rest, e)
		}
	}
	if len(ready) == 0 {
		return
	}
	tr.pending = rest
	sort.SliceStable(ready, func(i, j int) bool { return ready[i].T < ready[j].T })
	for _, e := range ready {
		tr.process(e)
	}
	if all && tr.lastRel != nil {
		r := tr.lastRel
		tr.lastRel = nil
		tr.line(r.T, r.worker, "released", "held "+fmtDur(r.Held))
	}
	close(tr.changed)
	tr.changed = make(chan struct{})
}

// await waits until cond (called with the trace locked) holds, at most d.
func (tr *trace) await(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		tr.mu.Lock()
		ok, ch := cond(), tr.changed
		tr.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return fmt.Errorf("no %s within %s", what, d)
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// setStopping marks worker exits from now on as expected; killing also
// silences them.
func (tr *trace) setStopping(killing bool) {
	tr.mu.Lock()
	tr.stopping = true
	tr.killing = tr.killing || killing
	tr.mu.Unlock()
}

func (tr *trace) line(t int64, who, verb, text string) {
	if who == "" {
		who = "demo"
	}
	printf(tr.out, "%9s  %-4s  %-9s  %s\n", rel(t-tr.t0), who, verb, text)
}

// process updates the state with one event and prints it. tr.mu is held.
func (tr *trace) process(e *event) {
	if e.Kind != evGranted && tr.lastRel != nil && (tr.stopping || e.Kind == evFault) {
		// A release that no grant followed: nobody else is waiting.
		r := tr.lastRel
		tr.lastRel = nil
		tr.line(r.T, r.worker, "released", "held "+fmtDur(r.Held))
	}
	switch e.Kind {
	case evReady:
		tr.ready[e.worker] = true
		tr.line(e.T, e.worker, "ready", fmt.Sprintf("process %d has its Locker open", e.PID))
	case evGranted:
		tr.granted(e)
	case evKeep:
		if tr.holder != nil && tr.holder.worker == e.worker {
			tr.holder.keep = true
		}
	case evReleased:
		if tr.holder != nil && tr.holder.worker == e.worker {
			tr.holder = nil
		}
		switch {
		case e.Err != "":
			// No fault ends a lease in the middle of a Release.
			tr.spurious++
			tr.line(e.T, e.worker, "LOST", "Release found the lease already lost: "+e.Err+"  <-- no fault was injected into "+e.worker)
		case tr.stopping:
			tr.line(e.T, e.worker, "released", "held "+fmtDur(e.Held))
		default:
			tr.lastRel = e
		}
	case evLost:
		tr.lost(e)
	case evExpired:
		tr.expired++
	case evError:
		tr.line(e.T, e.worker, "error", e.Reason+" (retrying)")
	case evFatal:
		if tr.fatal == "" {
			tr.fatal = e.worker + ": " + e.Err
		}
		tr.line(e.T, e.worker, "failed", e.Err)
	case evBye:
	case evFault:
		f := e.fault
		f.T = e.T
		tr.faults = append(tr.faults, f)
		printf(tr.out, "%9s  ── fault %d of %d: %s ──\n", "", f.N, f.Of, f.Title)
		if f.Kind != "blackhole" {
			tr.free(f, e.T)
		}
		tr.line(e.T, "", e.verb, e.text)
	case evFreed:
		tr.free(e.fault, e.T)
		tr.line(e.T, "", e.verb, e.text)
	case evExit:
		tr.exited[e.worker] = true
		if tr.holder != nil && tr.holder.worker == e.worker {
			tr.holder = nil
			tr.lastGone = e
		}
		if !tr.killing && (!tr.stopping || e.text != "exit status 0") {
			tr.line(e.T, e.worker, "exited", e.text)
		}
	case evStderr:
		tr.line(e.T, e.worker, "stderr", e.text)
	case evNote:
		tr.line(e.T, "", e.verb, e.text)
	}
}

// free records that the server freed the victim's lock at t.
func (tr *trace) free(f *faultRecord, t int64) {
	f.FreedT = t
	if tr.holder != nil && tr.holder.worker == f.Victim {
		tr.holder.freed = true
	}
}

func (tr *trace) granted(e *event) {
	tr.grants++
	var detail string
	if h := tr.holder; h != nil && !h.freed {
		// Two holders at once: pgbaton's guarantee broken. Never expected.
		tr.overlaps++
		tr.line(e.T, e.worker, "OVERLAP", fmt.Sprintf("granted while %s still holds the lock (since %s)", h.worker, rel(h.since-tr.t0)))
	}
	switch f := tr.openFault(e.T); {
	case tr.lastRel != nil:
		r := tr.lastRel
		tr.lastRel = nil
		d := time.Duration(e.T - r.T)
		tr.handoffs = append(tr.handoffs, d)
		from := "from " + r.worker
		if r.worker == e.worker {
			from = "from itself"
		}
		detail = fmt.Sprintf("handoff %-6s %s (held %s)", fmtDur(d), from, fmtDur(r.Held))
	case f != nil:
		f.Next, f.GrantT = e.worker, e.T
		detail = fmt.Sprintf("failover %s after the fault", fmtDur(time.Duration(e.T-f.T)))
		if f.DetectT != 0 && f.DetectT < e.T {
			detail += fmt.Sprintf("; %s had stopped %s earlier", f.Victim, fmtDur(time.Duration(e.T-f.DetectT)))
		}
	case tr.lastLoss != nil:
		detail = fmt.Sprintf("takeover %s after %s lost it", fmtDur(time.Duration(e.T-tr.lastLoss.T)), tr.lastLoss.worker)
	case tr.lastGone != nil:
		why := "ended"
		if tr.stopping {
			why = "was stopped by the demo"
		}
		detail = fmt.Sprintf("takeover %s after %s's process %s", fmtDur(time.Duration(e.T-tr.lastGone.T)), tr.lastGone.worker, why)
	case tr.stopping:
		detail = fmt.Sprintf("while the demo stops, after waiting %s", fmtDur(e.Waited))
	case tr.grants == 1:
		detail = fmt.Sprintf("first holder, after waiting %s", fmtDur(e.Waited))
	default:
		detail = fmt.Sprintf("after waiting %s", fmtDur(e.Waited))
	}
	tr.lastLoss, tr.lastGone = nil, nil
	tr.line(e.T, e.worker, "granted", detail+fmt.Sprintf(" [pid %d]", e.Backend))
	tr.holder = &holding{worker: e.worker, backend: e.Backend, app: e.App, since: e.T, keep: e.Keep}
}

// openFault returns the latest fault injected before t that no grant has
// followed yet.
func (tr *trace) openFault(t int64) *faultRecord {
	if n := len(tr.faults); n > 0 {
		if f := tr.faults[n-1]; f.GrantT == 0 && f.T < t {
			return f
		}
	}
	return nil
}

func (tr *trace) lost(e *event) {
	if tr.holder != nil && tr.holder.worker == e.worker {
		tr.holder = nil
	}
	detail := fmt.Sprintf("Done() closed after holding %s: %s", fmtDur(e.Held), e.Reason)
	explained := false
	for _, f := range slices.Backward(tr.faults) {
		if f.Victim == e.worker && f.DetectT == 0 && f.T <= e.T {
			f.DetectT, f.Reason = e.T, e.Reason
			detail += fmt.Sprintf(" (%s after the fault)", fmtDur(time.Duration(e.T-f.T)))
			explained = true
			break
		}
	}
	if !explained {
		// Nothing was done to this worker: pgbaton gave up a lease that was
		// still good, or something outside the demo interfered.
		tr.spurious++
		tr.lastLoss = e
		detail += "  <-- no fault was injected into " + e.worker
	}
	tr.line(e.T, e.worker, "LOST", detail)
}

// stats is a snapshot for the summary and for tests.
type stats struct {
	Grants, Expired, Overlaps int
	Spurious                  int // losses no fault explains
	Handoffs                  []time.Duration
	Faults                    []faultRecord
}

func (tr *trace) stats() stats {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	s := stats{Grants: tr.grants, Expired: tr.expired, Overlaps: tr.overlaps, Spurious: tr.spurious, Handoffs: slices.Clone(tr.handoffs)}
	for _, f := range tr.faults {
		s.Faults = append(s.Faults, *f)
	}
	return s
}

// rel formats a time since the start of the trace: "+1.234s".
func rel(ns int64) string {
	return fmt.Sprintf("+%.3fs", float64(ns)/1e9)
}

// fmtDur formats a duration with three significant digits or so.
func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.0fms", float64(d)/1e6)
	default:
		return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", d.Seconds()), "0"), ".") + "s"
	}
}

// percentile returns the p-th percentile (0..1) of sorted ds, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
