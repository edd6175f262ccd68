package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// EndKind says how a lease ended.
type EndKind string

const (
	// Open: no end recorded (yet).
	Open EndKind = "open"
	// Released: the holder released it and the release reported the lock
	// held until then.
	Released EndKind = "released"
	// Lost: the holder was told the lease was lost (Done, or an error from
	// Release).
	Lost EndKind = "lost"
	// Crashed: the holder's process died holding it.
	Crashed EndKind = "crashed"
)

// Lease is one grant of a lock and what its holder believed. Times are
// server times; see the package documentation.
type Lease struct {
	ID       string    `json:"id"`
	Proc     string    `json:"proc"`
	Key      string    `json:"key"`
	Shared   bool      `json:"shared,omitempty"`
	Token    int64     `json:"token,omitempty"`
	HasToken bool      `json:"has_token,omitempty"`
	PID      int       `json:"pid,omitempty"` // backend pid of the lock session
	Before   time.Time `json:"before"`        // read before the acquire call
	Grant    time.Time `json:"grant"`         // read after it returned
	End      time.Time `json:"end,omitzero"`  // the holder stopped believing
	// Signalled is when the loss was reported to the holder (zero if never).
	Signalled time.Time `json:"signalled,omitzero"`
	Kind      EndKind   `json:"kind"`
	Cause     string    `json:"cause,omitempty"`
	// HeartbeatTimeout: the holder's own lease bound expired (no fault
	// needed: a starved or partitioned holder gives up by itself).
	HeartbeatTimeout bool `json:"heartbeat_timeout,omitempty"`
	// UnlockFalse: the server answered the unlock with false (the lock was
	// already gone), whatever the holder made of it.
	UnlockFalse bool `json:"unlock_false,omitempty"`
	// Estimated: some times were estimated from the local clock because the
	// server could not be reached to read its clock.
	Estimated bool `json:"estimated,omitempty"`
	// Panicked: the critical section panicked at End (the holder stopped
	// believing then); what became of the lock is for the liveness checks.
	Panicked bool `json:"panicked,omitempty"`
}

// Call is one call into the lock library (Acquire, TryAcquire, Release,
// WithLock, WithXactLock, Close) and how long it took against its
// documented bound. A call is recorded when it starts (Done false) and
// again when it returns; the last record of an ID wins, so a call that
// never returned stays Done false.
type Call struct {
	ID   string `json:"id"`
	Proc string `json:"proc"`
	Op   string `json:"op"`
	Key  string `json:"key,omitempty"`
	// Wait is the wait the caller asked for (0 for a try).
	Wait time.Duration `json:"wait,omitempty"`
	// Start is the server time at the call (estimated from the local clock
	// and the last measured offset: no round trip is added to the call).
	Start time.Time `json:"start"`
	// Took is the call's duration on the caller's monotonic clock, minus
	// the time spent in the caller's own function (WithLock, WithXactLock).
	Took time.Duration `json:"took,omitempty"`
	// Bound is the longest the call may take by its documentation.
	Bound time.Duration `json:"bound"`
	Done  bool          `json:"done,omitempty"`
	Err   string        `json:"err,omitempty"`
	// Panicked: the caller's function panicked inside the call.
	Panicked bool `json:"panicked,omitempty"`
	// Died: the caller's process died (killed by the harness) before the
	// call returned; no bound applies.
	Died bool `json:"died,omitempty"`
	// LeftHeld is set when, after the call failed (or panicked), the key
	// stayed locked by a session of this process although no lease of the
	// process held it or was being acquired, for the whole of Held.For.
	LeftHeld *Held `json:"left_held,omitempty"`
}

// Held is one advisory lock on a key of the run held by a server session.
type Held struct {
	Key  string `json:"key"`
	Proc string `json:"proc,omitempty"` // the process the session belongs to, when known
	PID  int    `json:"pid"`
	App  string `json:"app"` // the session's application_name
	// For is how long it was seen held (it was held at the first look and
	// at the last, For apart).
	For time.Duration `json:"for,omitempty"`
}

// Quiet is a quiet point: every worker had ended every call and released
// or lost every lease, and the server was asked which of the run's keys
// were still locked. Held lists the locks that stayed held through the
// settle time (each one is a leak).
type Quiet struct {
	At     time.Time     `json:"at"`
	Settle time.Duration `json:"settle"`
	Final  bool          `json:"final,omitempty"` // the end of the run
	Held   []Held        `json:"held,omitempty"`
}

// Write is one fenced write attempt.
type Write struct {
	Lease    string    `json:"lease"`
	Proc     string    `json:"proc"`
	Key      string    `json:"key"`
	Token    int64     `json:"token"`
	Accepted bool      `json:"accepted"`
	Seq      int64     `json:"seq,omitempty"` // the resource's commit order of accepted writes
	At       time.Time `json:"at"`
}

// Fault is one injected fault.
type Fault struct {
	Kind string `json:"kind"`
	Proc string `json:"proc,omitempty"` // the process it hit, if one
	PID  int    `json:"pid,omitempty"`  // the backend it hit, if one
	All  bool   `json:"all,omitempty"`  // it hit every holder (server restart, crash)
	// TakesLocks: the fault can take a held lock away or make its holder
	// lose it. Pool exhaustion, for one, must not.
	TakesLocks bool `json:"takes_locks"`
	// From and To bound when the fault took effect: From is read before
	// injecting it, To once it is certainly in effect.
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Until ends a lasting fault (thaw, heal); zero for instant ones.
	Until time.Time `json:"until,omitzero"`
	// DetectFrom is the earliest a holder could notice the fault (the thaw
	// of a frozen process); zero means From.
	DetectFrom time.Time `json:"detect_from,omitzero"`
	// Frozen: the process could not run during [From, Until] (SIGSTOP).
	Frozen bool   `json:"frozen,omitempty"`
	Note   string `json:"note,omitempty"`
}

// Stall is the kind of the Fault a process records about itself when it
// notices it could not run for a while (CPU starvation, a VM pause, a
// freeze): it explains a late look at Done, and takes no lock by itself.
const Stall = "stall"

// effectEnd is the last moment the fault was in effect.
func (f *Fault) effectEnd() time.Time {
	if f.Until.After(f.To) {
		return f.Until
	}
	return f.To
}

func (f *Fault) detectFrom() time.Time {
	if !f.DetectFrom.IsZero() {
		return f.DetectFrom
	}
	return f.From
}

// hits reports whether f is aimed at the holder of l.
func (f *Fault) hits(l *Lease) bool {
	return f.All || (f.Proc != "" && f.Proc == l.Proc) || (f.PID != 0 && f.PID == l.PID)
}

// affects reports whether f hits the holder of l and can take its lock.
func (f *Fault) affects(l *Lease) bool { return f.TakesLocks && f.hits(l) }

// History is everything recorded in one run.
type History struct {
	Leases []Lease
	Writes []Write
	Faults []Fault
	Calls  []Call
	Quiets []Quiet
	// End is when the run ended (server time), if known: calls still
	// running then are judged as running until End.
	End time.Time
}

// record is one line of a history file.
type record struct {
	Lease *Lease `json:"lease,omitempty"`
	Write *Write `json:"write,omitempty"`
	Fault *Fault `json:"fault,omitempty"`
	Call  *Call  `json:"call,omitempty"`
	Quiet *Quiet `json:"quiet,omitempty"`
}

// Recorder appends records to a writer, one JSON line per record, each in
// one Write call so that a process killed at any moment leaves whole lines
// behind. It is safe for concurrent use.
type Recorder struct {
	mu  sync.Mutex
	w   io.Writer
	err error
}

// NewRecorder records to w (typically an *os.File opened with O_APPEND).
func NewRecorder(w io.Writer) *Recorder { return &Recorder{w: w} }

func (r *Recorder) put(rec record) {
	b, err := json.Marshal(rec)
	if err != nil {
		panic(err) // the record types always marshal
	}
	b = append(b, '\n')
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		_, r.err = r.w.Write(b)
	}
}

// Lease records l. A lease is recorded at its grant (Kind Open) and again at
// its end; the last record of an ID wins.
func (r *Recorder) Lease(l Lease) { r.put(record{Lease: &l}) }

// Write records w.
func (r *Recorder) Write(w Write) { r.put(record{Write: &w}) }

// Fault records f.
func (r *Recorder) Fault(f Fault) { r.put(record{Fault: &f}) }

// Call records c. A call is recorded when it starts and when it returns;
// the last record of an ID wins.
func (r *Recorder) Call(c Call) { r.put(record{Call: &c}) }

// Quiet records q.
func (r *Recorder) Quiet(q Quiet) { r.put(record{Quiet: &q}) }

// Err returns the first write error.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Reader merges history files into a History.
type Reader struct {
	h     History
	index map[string]int // lease ID -> index in h.Leases
	calls map[string]int // call ID -> index in h.Calls
}

// NewReader returns an empty Reader.
func NewReader() *Reader { return &Reader{index: map[string]int{}, calls: map[string]int{}} }

// Read adds the records of one file. A final line cut short (a process
// killed while writing) is ignored; any other malformed line is an error.
func (rd *Reader) Read(r io.Reader, name string) error {
	br := bufio.NewReaderSize(r, 1<<16)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			if len(bytes.TrimSpace(line)) == 0 {
				return nil
			}
			var rec record
			if json.Unmarshal(line, &rec) == nil {
				rd.add(rec)
			}
			return nil // a cut-off last line
		}
		if err != nil {
			return fmt.Errorf("history: %s: %w", name, err)
		}
		var rec record
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("history: %s line %d: %w", name, n, err)
		}
		rd.add(rec)
	}
}

// Add adds records directly (for writes read from the resource's log).
func (rd *Reader) Add(leases []Lease, writes []Write, faults []Fault) {
	for i := range leases {
		rd.add(record{Lease: &leases[i]})
	}
	rd.h.Writes = append(rd.h.Writes, writes...)
	rd.h.Faults = append(rd.h.Faults, faults...)
}

func (rd *Reader) add(rec record) {
	switch {
	case rec.Lease != nil:
		if i, ok := rd.index[rec.Lease.ID]; ok {
			rd.h.Leases[i] = *rec.Lease
			return
		}
		rd.index[rec.Lease.ID] = len(rd.h.Leases)
		rd.h.Leases = append(rd.h.Leases, *rec.Lease)
	case rec.Write != nil:
		rd.h.Writes = append(rd.h.Writes, *rec.Write)
	case rec.Fault != nil:
		rd.h.Faults = append(rd.h.Faults, *rec.Fault)
	case rec.Call != nil:
		if i, ok := rd.calls[rec.Call.ID]; ok {
			rd.h.Calls[i] = *rec.Call
			return
		}
		rd.calls[rec.Call.ID] = len(rd.h.Calls)
		rd.h.Calls = append(rd.h.Calls, *rec.Call)
	case rec.Quiet != nil:
		rd.h.Quiets = append(rd.h.Quiets, *rec.Quiet)
	}
}

// AddQuiets adds quiet points observed by the harness.
func (rd *Reader) AddQuiets(qs []Quiet) { rd.h.Quiets = append(rd.h.Quiets, qs...) }

// History returns the merged history.
func (rd *Reader) History() *History { return &rd.h }
