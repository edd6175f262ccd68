package history

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Check names, as used in Violation.Check.
const (
	CheckOverlap        = "overlap"          // (a) two healthy holders at once
	CheckActedAfterLoss = "acted-after-loss" // (a) a holder went on after the loss was signalled
	CheckStaleAccepted  = "stale-accepted"   // (b)
	CheckUnreported     = "unreported-loss"  // (c)
	CheckTokenOrder     = "token-order"      // (d)
	CheckCallBound      = "call-bound"       // (e) a call took longer than its documented bound
	CheckErrorLeftHeld  = "error-left-held"  // (f) a failed call left its key locked
	CheckLeakedLock     = "leaked-lock"      // (g) a lock held at a quiet point
)

// AllChecks lists the check names in the order of Summary.
var AllChecks = []string{CheckOverlap, CheckActedAfterLoss, CheckStaleAccepted, CheckUnreported, CheckTokenOrder,
	CheckCallBound, CheckErrorLeftHeld, CheckLeakedLock}

// Violation is one failed check.
type Violation struct {
	Check string
	Key   string
	Msg   string
}

func (v Violation) String() string { return v.Check + " on " + v.Key + ": " + v.Msg }

// Durations summarises a sample of durations.
type Durations []time.Duration

// Max returns the largest, or 0.
func (d Durations) Max() time.Duration {
	if len(d) == 0 {
		return 0
	}
	return slices.Max(d)
}

// Quantile returns the q-quantile (nearest rank), or 0.
func (d Durations) Quantile(q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

// FaultStats are the figures of one kind of fault.
type FaultStats struct {
	Count int
	// Leases it hit: held when it began, and not released cleanly before
	// it was certainly in effect.
	Leases int
	Lost   int // of those, reported lost (or their process died)
	// Detection: from when the holder could notice (DetectFrom) to the
	// loss being signalled to it.
	Detection Durations
	// Release: from the fault to the next grant of the key to another
	// lease.
	Release Durations
}

// Result is the outcome of Check.
type Result struct {
	Leases          int // grants
	Released        int
	Lost            int // losses reported to their holders
	Crashed         int
	Overlaps        int // pairs of leases on a key believed at the same time
	ExcusedOverlaps int // of those, while the earlier holder had been hit by a fault and not yet told
	WritesAccepted  int
	StaleRejected   int // stale writes attempted and rejected by the fence
	StaleAccepted   int // stale writes accepted: must be 0
	// UnexplainedLosses are losses with no fault that takes locks and no
	// heartbeat timeout to explain them (not a safety violation).
	UnexplainedLosses int
	HeartbeatLosses   int
	Calls             int // calls recorded
	FailedCalls       int // of those, returned an error or panicked
	Panics            int // critical sections that panicked
	QuietPoints       int
	Faults            map[string]*FaultStats
	Violations        []Violation
	// ExcusedSamples describes the first excused overlaps, for reading.
	ExcusedSamples []string

	grace time.Duration
}

// OK reports whether no check failed.
func (r *Result) OK() bool { return len(r.Violations) == 0 }

// Count returns the number of violations of one check.
func (r *Result) Count(check string) int {
	n := 0
	for _, v := range r.Violations {
		if v.Check == check {
			n++
		}
	}
	return n
}

// maxViolations bounds the violations kept per check (they are counted in
// full by Count only up to this bound).
const maxViolations = 1000

func (r *Result) violate(check, key, format string, args ...any) {
	if r.Count(check) >= maxViolations {
		return
	}
	r.Violations = append(r.Violations, Violation{Check: check, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Options tune Check.
type Options struct {
	// Grace is how long a holder may go on after its loss was signalled
	// before it counts as acting after the loss: the longest interval
	// between its looks at Done (one step of its critical section). A
	// holder that is told while its last step is in flight cannot know
	// sooner; one that goes on for longer than a step ignores the signal.
	Grace time.Duration
}

// Check runs every check on h with no grace. See [CheckWith].
func Check(h *History) *Result { return CheckWith(h, Options{}) }

// CheckWith runs every check on h. Leases still Open are treated as
// believed until their End, or until the last time in the history if End
// is zero.
func CheckWith(h *History, o Options) *Result {
	r := &Result{Faults: map[string]*FaultStats{}, grace: o.Grace}
	last := lastTime(h)
	leases := make([]*Lease, len(h.Leases))
	byKey := map[string][]*Lease{}
	for i := range h.Leases {
		l := &h.Leases[i]
		if l.End.IsZero() {
			l.End = last
		}
		if l.End.Before(l.Grant) {
			l.End = l.Grant
		}
		leases[i] = l
		byKey[l.Key] = append(byKey[l.Key], l)
		switch l.Kind {
		case Released:
			r.Released++
		case Lost:
			r.Lost++
		case Crashed:
			r.Crashed++
		}
		if l.HeartbeatTimeout {
			r.HeartbeatLosses++
		}
	}
	r.Leases = len(leases)
	for i := range h.Faults {
		f := &h.Faults[i]
		fs := r.Faults[f.Kind]
		if fs == nil {
			fs = &FaultStats{}
			r.Faults[f.Kind] = fs
		}
		fs.Count++
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ls := byKey[k]
		sort.Slice(ls, func(i, j int) bool { return ls[i].Grant.Before(ls[j].Grant) })
		r.checkOverlaps(k, ls, h.Faults)
		r.checkTokenOrder(k, ls)
		r.faultFigures(ls, h.Faults)
	}
	r.checkUnreported(leases, h.Faults)
	r.checkTokensUnique(leases)
	r.checkWrites(h.Writes)
	r.checkCalls(h.Calls, h.Faults, last)
	r.checkQuiets(h.Quiets, h.Calls)
	return r
}

func lastTime(h *History) time.Time {
	var t time.Time
	up := func(x time.Time) {
		if x.After(t) {
			t = x
		}
	}
	for i := range h.Leases {
		up(h.Leases[i].Grant)
		up(h.Leases[i].End)
		up(h.Leases[i].Signalled)
	}
	for i := range h.Writes {
		up(h.Writes[i].At)
	}
	for i := range h.Faults {
		up(h.Faults[i].effectEnd())
	}
	for i := range h.Calls {
		up(h.Calls[i].Start.Add(h.Calls[i].Took))
	}
	for i := range h.Quiets {
		up(h.Quiets[i].At)
	}
	up(h.End)
	return t
}

// earlier orders two leases by grant: by token when both have one (the
// token is drawn after the grant, so it is the grant order), else by the
// server time read after the grant.
func earlier(a, b *Lease) (*Lease, *Lease) {
	if a.HasToken && b.HasToken {
		if a.Token <= b.Token {
			return a, b
		}
		return b, a
	}
	if !b.Grant.Before(a.Grant) {
		return a, b
	}
	return b, a
}

// checkOverlaps is check (a) for one key, ls sorted by Grant.
func (r *Result) checkOverlaps(key string, ls []*Lease, faults []Fault) {
	var active []*Lease
	for _, b := range ls {
		kept := active[:0]
		for _, a := range active {
			if a.End.After(b.Grant) {
				kept = append(kept, a)
			}
		}
		active = kept
		for _, a := range active {
			if a.Shared && b.Shared {
				continue
			}
			r.Overlaps++
			r.judgeOverlap(key, a, b, faults)
		}
		active = append(active, b)
	}
}

func (r *Result) judgeOverlap(key string, x, y *Lease, faults []Fault) {
	a, b := earlier(x, y) // a is the one that should have let go
	if (!a.HasToken || !b.HasToken) && b.Before.Before(a.Grant) && stalledFor(faults, b.Proc, b.Before, b.Grant) > 0 {
		// b's grant time was read after its process was frozen or stalled
		// somewhere between the call and that reading: the server may
		// have granted it before a, which then is the later holder.
		a, b = b, a
	}
	start := maxTime(a.Grant, b.Grant)
	end := minTime(a.End, b.End)
	desc := func() string {
		return fmt.Sprintf("%s (token %d, %s, believed %s..%s) and %s (token %d, believed %s..%s) overlap for %s",
			a.ID, a.Token, a.Kind, ts(a.Grant), ts(a.End), b.ID, b.Token, ts(b.Grant), ts(b.End), end.Sub(start))
	}
	if a.Kind == Released && !a.UnlockFalse && !a.Panicked {
		// A panicked section's lease is released by WithLock/WithXactLock
		// after the panic, out of the holder's sight: whether it was held
		// to the end is not known, and it is judged as a lost one below.
		r.violate(CheckOverlap, key, "%s; %s released cleanly, so the server held its lock throughout", desc(), a.ID)
		return
	}
	signal := a.Signalled
	if a.Kind == Crashed || signal.IsZero() || signal.After(a.End) {
		signal = a.End
	}
	if end.After(signal) {
		// The holder went on after it was told: allowed for one step (the
		// grace), not counting time its process could not run.
		stalled := stalledFor(faults, a.Proc, signal, end)
		if end.Sub(signal)-stalled > r.grace {
			r.violate(CheckActedAfterLoss, key, "%s; %s was told of the loss at %s and went on for %s (stalled %s, grace %s)",
				desc(), a.ID, ts(signal), a.End.Sub(signal), stalled, r.grace)
			return
		}
	}
	excuse := func(why string) {
		r.ExcusedOverlaps++
		if len(r.ExcusedSamples) < 20 {
			r.ExcusedSamples = append(r.ExcusedSamples, desc()+"; "+why)
		}
	}
	for i := range faults {
		f := &faults[i]
		if f.affects(a) && !f.From.After(start) && !f.effectEnd().Before(a.Before) {
			excuse(fmt.Sprintf("%s hit %s at %s", f.Kind, a.ID, ts(f.From)))
			return
		}
	}
	if a.HeartbeatTimeout {
		excuse(a.ID + " gave up at its own lease bound")
		return
	}
	r.violate(CheckOverlap, key, "%s; no fault hit %s", desc(), a.ID)
}

// checkTokenOrder is check (d) for one key: a lease certainly granted before
// another (its Grant before the other's Before) must have a smaller token.
func (r *Result) checkTokenOrder(key string, ls []*Lease) {
	var tl []*Lease
	for _, l := range ls {
		if l.HasToken {
			tl = append(tl, l)
		}
	}
	sort.Slice(tl, func(i, j int) bool { return tl[i].Token > tl[j].Token })
	var minGrant *Lease // among larger tokens, the one granted first
	for _, l := range tl {
		if minGrant != nil && minGrant.Token > l.Token && minGrant.Grant.Before(l.Before) {
			r.violate(CheckTokenOrder, key, "%s got token %d, granted by %s, before %s (token %d) asked at %s",
				minGrant.ID, minGrant.Token, ts(minGrant.Grant), l.ID, l.Token, ts(l.Before))
		}
		if minGrant == nil || l.Grant.Before(minGrant.Grant) {
			minGrant = l
		}
	}
}

func (r *Result) checkTokensUnique(ls []*Lease) {
	seen := map[int64]*Lease{}
	for _, l := range ls {
		if !l.HasToken {
			continue
		}
		if o, ok := seen[l.Token]; ok {
			r.violate(CheckTokenOrder, l.Key, "token %d handed out twice: %s and %s", l.Token, o.ID, l.ID)
			continue
		}
		seen[l.Token] = l
	}
}

// signalSlack is how long after a stop signal was sent its process may
// still run: a signal takes effect when each thread next enters the kernel,
// and on a loaded VM a release was seen to complete 2.4 ms after SIGSTOP was
// sent. A lease that ended within it was not hit.
const signalSlack = 20 * time.Millisecond

// checkUnreported is check (c).
func (r *Result) checkUnreported(ls []*Lease, faults []Fault) {
	for _, l := range ls {
		if l.Kind != Released || l.Panicked {
			continue // a panicked section's lock is judged by the liveness checks
		}
		if l.UnlockFalse {
			r.violate(CheckUnreported, l.Key, "%s: the unlock found the lock gone, yet its holder was told it released cleanly", l.ID)
			continue
		}
		for i := range faults {
			f := &faults[i]
			if f.affects(l) && l.Grant.Before(f.From) && l.End.After(f.To.Add(signalSlack)) {
				r.violate(CheckUnreported, l.Key, "%s (held %s..%s) was hit by %s at %s..%s but released cleanly",
					l.ID, ts(l.Grant), ts(l.End), f.Kind, ts(f.From), ts(f.To))
				break
			}
		}
	}
	for _, l := range ls {
		if l.Kind != Lost || l.HeartbeatTimeout {
			continue
		}
		explained := false
		for i := range faults {
			f := &faults[i]
			if f.affects(l) && !f.From.After(l.End) && !f.effectEnd().Before(l.Before) {
				explained = true
				break
			}
		}
		if !explained {
			r.UnexplainedLosses++
		}
	}
}

// faultFigures computes, for one key, how fast each fault's victims were
// told (detection) and how soon the key went to someone else (release).
func (r *Result) faultFigures(ls []*Lease, faults []Fault) {
	for i := range faults {
		f := &faults[i]
		fs := r.Faults[f.Kind]
		for j, l := range ls {
			if !f.hits(l) || !l.Grant.Before(f.From) || l.End.Before(f.From) {
				continue // not held when the fault began
			}
			if l.Kind == Released && !l.End.After(f.To) {
				continue // released before the fault was certainly in effect
			}
			fs.Leases++
			if l.Kind == Lost || l.Kind == Crashed {
				fs.Lost++
			}
			if f.TakesLocks && l.Kind == Lost && !l.Signalled.IsZero() {
				fs.Detection = append(fs.Detection, nonNeg(l.Signalled.Sub(f.detectFrom())))
			}
			for _, n := range ls[j+1:] {
				if n.Grant.After(f.From) {
					fs.Release = append(fs.Release, nonNeg(n.Grant.Sub(f.From)))
					break
				}
			}
		}
	}
}

// checkWrites is check (b): per key, in the resource's commit order, no
// accepted write may carry a token older than one accepted before it.
func (r *Result) checkWrites(ws []Write) {
	byKey := map[string][]*Write{}
	for i := range ws {
		w := &ws[i]
		if !w.Accepted {
			r.StaleRejected++
			continue
		}
		r.WritesAccepted++
		byKey[w.Key] = append(byKey[w.Key], w)
	}
	for key, kw := range byKey {
		sort.Slice(kw, func(i, j int) bool { return kw[i].Seq < kw[j].Seq })
		var max *Write
		for _, w := range kw {
			if max != nil && w.Token < max.Token {
				r.StaleAccepted++
				r.violate(CheckStaleAccepted, key, "write #%d with token %d (lease %s) accepted after #%d with token %d (lease %s)",
					w.Seq, w.Token, w.Lease, max.Seq, max.Token, max.Lease)
			}
			if max == nil || w.Token > max.Token {
				max = w
			}
		}
	}
}

// Summary is a one-line account of the violations.
func (r *Result) Summary() string {
	if r.OK() {
		return "no violations"
	}
	counts := map[string]int{}
	for _, v := range r.Violations {
		counts[v.Check]++
	}
	var parts []string
	for _, c := range AllChecks {
		if counts[c] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[c], c))
		}
	}
	return strings.Join(parts, ", ")
}

// checkCalls is check (e), every call within its bound (time its process
// could not run not counted), and check (f), no failed call leaving its key
// locked.
func (r *Result) checkCalls(cs []Call, faults []Fault, last time.Time) {
	for i := range cs {
		c := &cs[i]
		r.Calls++
		if c.Err != "" || c.Panicked {
			r.FailedCalls++
		}
		if c.Panicked {
			r.Panics++
		}
		if c.LeftHeld != nil {
			h := c.LeftHeld
			what := "failed with " + c.errText()
			r.violate(CheckErrorLeftHeld, c.Key, "%s %s(%s%s) at %s %s, yet backend pid %d (%s) of the same process still held the key %s later with no lease of the process on it",
				c.Proc, c.Op, c.Key, waitText(c.Wait), ts(c.Start), what, h.PID, h.App, h.For.Round(time.Millisecond))
		}
		if c.Died || c.Bound <= 0 {
			continue
		}
		took := c.Took
		if !c.Done {
			took = last.Sub(c.Start) // still running at the end of the history
		}
		stalled := stalledFor(faults, c.Proc, c.Start, c.Start.Add(took))
		if took-stalled <= c.Bound {
			continue
		}
		if !c.Done {
			r.violate(CheckCallBound, c.Key, "%s %s(%s%s) called at %s never returned (%s until the end of the history, stalled %s, bound %s)",
				c.Proc, c.Op, c.Key, waitText(c.Wait), ts(c.Start), took.Round(time.Millisecond), stalled.Round(time.Millisecond), c.Bound)
			continue
		}
		r.violate(CheckCallBound, c.Key, "%s %s(%s%s) called at %s took %s (stalled %s), bound %s; it returned %s",
			c.Proc, c.Op, c.Key, waitText(c.Wait), ts(c.Start), took.Round(time.Millisecond), stalled.Round(time.Millisecond), c.Bound, c.errText())
	}
}

func (c *Call) errText() string {
	switch {
	case c.Panicked:
		return "a panic of the caller's function"
	case c.Err == "":
		return "nil"
	}
	return fmt.Sprintf("%q", c.Err)
}

func waitText(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return ", Wait " + d.String()
}

// checkQuiets is check (g): at a quiet point no lock of the run is held.
// Each leak names the holding session and, when the session's process is
// known, that process's last failed call on the key before the quiet point
// (the likely cause).
func (r *Result) checkQuiets(qs []Quiet, cs []Call) {
	for _, q := range qs {
		r.QuietPoints++
		for _, h := range q.Held {
			cause := "no failed call of its process on the key before it"
			if h.Proc == "" {
				cause = "the session belongs to no worker"
			}
			var best *Call
			for i := range cs {
				c := &cs[i]
				if c.Proc != h.Proc || c.Key != h.Key || (c.Err == "" && !c.Panicked) || c.Start.After(q.At) {
					continue
				}
				if c.LeftHeld != nil && c.LeftHeld.PID == h.PID {
					best = c // the failed call after which this very lock was seen left held
					break
				}
				if best == nil || c.Start.After(best.Start) {
					best = c
				}
			}
			switch {
			case best != nil && best.LeftHeld != nil && best.LeftHeld.PID == h.PID:
				cause = fmt.Sprintf("left held since %s %s at %s returned %s", h.Proc, best.Op, ts(best.Start), best.errText())
			case best != nil:
				cause = fmt.Sprintf("the last failed call of %s on it: %s at %s returned %s", h.Proc, best.Op, ts(best.Start), best.errText())
			}
			when := "quiet point"
			if q.Final {
				when = "end-of-run quiet point"
			}
			r.violate(CheckLeakedLock, h.Key, "at the %s %s (every lease ended, every call returned) backend pid %d (%s) held the key for %s; %s",
				when, ts(q.At), h.PID, h.App, h.For.Round(time.Millisecond), cause)
		}
	}
}

// stalledFor is how long, within [from, to], process proc could not run:
// the union of its Stall faults and freezes.
func stalledFor(faults []Fault, proc string, from, to time.Time) time.Duration {
	type iv struct{ a, b time.Time }
	var ivs []iv
	for i := range faults {
		f := &faults[i]
		if f.Proc != proc || (f.Kind != Stall && !f.Frozen) {
			continue
		}
		a, b := maxTime(f.From, from), minTime(f.effectEnd(), to)
		if b.After(a) {
			ivs = append(ivs, iv{a, b})
		}
	}
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].a.Before(ivs[j].a) })
	var total time.Duration
	var cur iv
	for i, x := range ivs {
		switch {
		case i == 0:
			cur = x
		case !x.a.After(cur.b):
			cur.b = maxTime(cur.b, x.b)
		default:
			total += cur.b.Sub(cur.a)
			cur = x
		}
	}
	if len(ivs) > 0 {
		total += cur.b.Sub(cur.a)
	}
	return total
}

func ts(t time.Time) string { return t.UTC().Format("15:04:05.000000") }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func nonNeg(d time.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	return d
}
