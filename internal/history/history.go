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
}

// record is one line of a history file.
type record struct {
	Lease *Lease `json:"lease,omitempty"`
	Write *Write `json:"write,omitempty"`
	Fault *Fault `json:"fault,omitempty"`
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
}

// NewReader returns an empty Reader.
func NewReader() *Reader { return &Reader{index: map[string]int{}} }

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
	}
}

// History returns the merged history.
func (rd *Reader) History() *History { return &rd.h }
