package inspect

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Class is a key's, holder's or waiter's diagnosis.
type Class string

// Classes, from least to most severe.
const (
	// ClassOK: held, nobody waits, nothing looks wrong.
	ClassOK Class = "ok"
	// ClassWaiting: someone waits for the key (a waiter's own class).
	ClassWaiting Class = "waiting"
	// ClassIdleInTransaction: the holder sits idle inside a transaction
	// (Options.IdleInTransactionAfter or longer), holding the lock while
	// doing nothing on its connection: the second incident, where lock
	// holders and their work shared one pool and every connection waited
	// for another.
	ClassIdleInTransaction Class = "idle-in-transaction"
	// ClassStaleHolder: a pgbaton lock connection whose heartbeats stopped
	// (idle for Options.StaleAfter or longer): a frozen process, or a
	// partition the server has not noticed yet. Its own process already
	// considers the lease lost (LeaseTimeout).
	ClassStaleHolder Class = "stale-holder"
	// ClassLeaked: a session lock on a non-pgbaton session that has been idle
	// for Options.StuckAfter or longer: the first incident, a lock taken
	// through a pool and "released" on another connection.
	ClassLeaked Class = "leaked"
)

func (c Class) severity() int {
	switch c {
	case ClassWaiting:
		return 1
	case ClassIdleInTransaction:
		return 2
	case ClassStaleHolder:
		return 3
	case ClassLeaked:
		return 4
	}
	return 0
}

// Classes lists every class, least severe first.
func Classes() []Class {
	return []Class{ClassOK, ClassWaiting, ClassIdleInTransaction, ClassStaleHolder, ClassLeaked}
}

func classify(s *Snapshot, o Options) {
	s.Summary = map[Class]int{}
	for _, c := range Classes() {
		s.Summary[c] = 0
	}
	type appKey struct{ app, host string }
	idleTx := map[appKey][]int{}
	for i := range s.Keys {
		k := &s.Keys[i]
		k.Class = ClassOK
		for h := range k.Holders {
			hd := &k.Holders[h]
			classifyHolder(hd, o)
			if hd.Class.severity() > k.Class.severity() {
				k.Class = hd.Class
			}
			if hd.Class == ClassIdleInTransaction {
				host := hd.ClientAddr
				if i := strings.LastIndexByte(host, ':'); i >= 0 {
					host = host[:i]
				}
				ak := appKey{hd.ApplicationName, host}
				idleTx[ak] = append(idleTx[ak], hd.PID)
			}
		}
		for w := range k.Waiters {
			wt := &k.Waiters[w]
			wt.Class = ClassWaiting
			if wt.WaitingFor == nil {
				wt.Why = "waiting (start unknown)"
			} else {
				wt.Why = "waiting " + fmtDur(wt.WaitingFor.Duration())
			}
			if len(wt.BlockedBy) > 0 {
				wt.Why += " behind pid " + joinInts(wt.BlockedBy)
			}
		}
		if len(k.Waiters) > 0 && k.Class == ClassOK {
			k.Class = ClassWaiting
		}
		s.Summary[k.Class]++
	}
	// Most severe first; within a class, by key.
	sort.SliceStable(s.Keys, func(i, j int) bool { return s.Keys[i].Class.severity() > s.Keys[j].Class.severity() })
	aks := make([]appKey, 0, len(idleTx))
	for ak := range idleTx {
		aks = append(aks, ak)
	}
	sort.Slice(aks, func(i, j int) bool { return aks[i].app+aks[i].host < aks[j].app+aks[j].host })
	for _, ak := range aks {
		pids := idleTx[ak]
		if len(pids) < 2 {
			continue
		}
		sort.Ints(pids)
		from := fmt.Sprintf("application %q", ak.app)
		if ak.host != "" {
			from += " at " + ak.host
		}
		s.Hints = append(s.Hints, fmt.Sprintf("%d lock holders idle in transaction from %s (pids %s): the locks and the work "+
			"likely share one pool, each holder waiting for a connection its peers hold. Take the lock in the work's own "+
			"transaction (pgbaton.LockTx) or on a Locker's dedicated connections, and size the pool above the concurrency",
			len(pids), from, joinInts(pids)))
	}
}

func classifyHolder(h *Holder, o Options) {
	h.Class, h.Scope = ClassOK, ScopeUnknown
	if !h.Visible {
		h.Why = "this role cannot see the holder's session (grant pg_read_all_stats to see it)"
		return
	}
	idle := time.Duration(0)
	if h.InStateFor != nil {
		idle = h.InStateFor.Duration()
	}
	inTx := strings.HasPrefix(h.State, "idle in transaction")
	switch {
	case h.State == "idle":
		h.Scope = ScopeSession
	case h.PgbatonConn == ConnLock && h.State == "idle in transaction":
		h.Scope = ScopeTransaction // WithXactLock's transaction, on a connection with no other lease
	}
	who := "application " + quoteApp(h.ApplicationName)
	if h.Instance != "" {
		who = "pgbaton instance " + quoteApp(h.Instance)
	}
	if h.ClientAddr != "" {
		who += " (" + h.ClientAddr + ")"
	}
	switch {
	case h.PgbatonConn == ConnLock && (h.State == "idle" || inTx):
		if idle >= o.StaleAfter {
			h.Class = ClassStaleHolder
			h.Why = fmt.Sprintf("lock connection of %s silent for %s (heartbeat every %s): the process is frozen or cut off, "+
				"and already counts the lease as lost; the server frees the lock when the connection ends",
				who, fmtDur(idle), fmtDur(o.HeartbeatInterval))
			return
		}
		h.Why = "pgbaton lease of " + who + ", heartbeating"
	case h.State == "idle":
		if idle >= o.StuckAfter {
			h.Class = ClassLeaked
			h.Why = fmt.Sprintf("session lock held by an idle session of %s, idle for %s: nothing runs on it, so nothing will unlock it "+
				"(a lock taken through a pool and unlocked on another connection?)", who, fmtDur(idle))
			h.Terminate = fmt.Sprintf("SELECT pg_terminate_backend(%d);", h.PID)
			return
		}
		h.Why = fmt.Sprintf("session lock on an idle session of %s, idle for %s (leaked if still idle after %s)", who, fmtDur(idle), fmtDur(o.StuckAfter))
	case inTx:
		if idle >= o.IdleInTransactionAfter {
			h.Class = ClassIdleInTransaction
			h.Why = fmt.Sprintf("held by %s, %s for %s: the lock is held while nothing runs on its connection", who, h.State, fmtDur(idle))
			if h.XactStart != nil && h.InStateFor != nil && h.StateChange != nil {
				h.Why += fmt.Sprintf("; transaction open for %s", fmtDur(h.StateChange.Sub(*h.XactStart)+idle))
			}
			return
		}
		h.Why = fmt.Sprintf("held by %s, %s for %s", who, h.State, fmtDur(idle))
	default:
		h.Why = fmt.Sprintf("held by %s, %s", who, h.State)
	}
}

func quoteApp(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

func joinInts(xs []int) string {
	ss := make([]string, len(xs))
	for i, x := range xs {
		ss[i] = fmt.Sprint(x)
	}
	return strings.Join(ss, ",")
}

// fmtDur prints d rounded for people: 850ms, 12.3s, 4m05s, 2h10m.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// Check levels, as `pgbaton locks --check` exits.
const (
	CheckOK       = 0
	CheckWarning  = 1
	CheckCritical = 2
)

// Finding is one reason for a check level.
type Finding struct {
	Level   int    `json:"level"` // CheckWarning or CheckCritical
	Key     string `json:"key"`   // the key's label
	PID     int    `json:"pid"`
	Message string `json:"message"`
	// Terminate is the statement that would free a leaked lock, for a
	// person to run (pgbaton never runs it).
	Terminate string `json:"terminate,omitempty"`
}

// Check grades the snapshot for monitoring: critical for a leaked or stale
// holder and for a waiter stuck for Thresholds.StuckAfter or longer; warning
// for an idle-in-transaction holder and a waiter waiting
// Thresholds.LongWaitAfter or longer; ok otherwise. Findings are ordered
// most severe first.
func (s *Snapshot) Check() (level int, findings []Finding) {
	add := func(lv int, k *KeyState, pid int, format string, args ...any) {
		findings = append(findings, Finding{Level: lv, Key: k.Label(), PID: pid, Message: fmt.Sprintf(format, args...)})
		level = max(level, lv)
	}
	terminate := func(stmt string) { findings[len(findings)-1].Terminate = stmt }
	for i := range s.Keys {
		k := &s.Keys[i]
		for _, h := range k.Holders {
			switch h.Class {
			case ClassLeaked:
				add(CheckCritical, k, h.PID, "leaked: %s", h.Why)
				terminate(h.Terminate)
			case ClassStaleHolder:
				add(CheckCritical, k, h.PID, "stale holder: %s", h.Why)
			case ClassIdleInTransaction:
				add(CheckWarning, k, h.PID, "idle-in-transaction holder: %s", h.Why)
			}
		}
		for _, w := range k.Waiters {
			if w.WaitingFor == nil {
				continue
			}
			switch d := w.WaitingFor.Duration(); {
			case d >= s.Thresholds.StuckAfter.Duration():
				add(CheckCritical, k, w.PID, "stuck: waiting %s (over %s) behind pid %s", fmtDur(d), fmtDur(s.Thresholds.StuckAfter.Duration()), joinInts(w.BlockedBy))
			case d >= s.Thresholds.LongWaitAfter.Duration():
				add(CheckWarning, k, w.PID, "long wait: waiting %s (over %s) behind pid %s", fmtDur(d), fmtDur(s.Thresholds.LongWaitAfter.Duration()), joinInts(w.BlockedBy))
			}
		}
	}
	sort.SliceStable(findings, func(i, j int) bool { return findings[i].Level > findings[j].Level })
	return level, findings
}

// Filter returns a copy of s with only the keys whose name (or other name)
// is name, or whose raw form ("int8:42", "pair:1,2") is name.
func (s *Snapshot) Filter(name string) *Snapshot {
	c := *s
	c.Keys = nil
	c.Summary = map[Class]int{}
	for _, cl := range Classes() {
		c.Summary[cl] = 0
	}
	for _, k := range s.Keys {
		match := k.Name == name || k.Key == name
		for _, n := range k.OtherNames {
			match = match || n == name
		}
		if match {
			c.Keys = append(c.Keys, k)
			c.Summary[k.Class]++
		}
	}
	return &c
}
