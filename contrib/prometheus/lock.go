package prometheus

import (
	"strings"
	"sync/atomic"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
)

// KeyFamily is the default family label of a key: a named key's name up to
// its first ':' (all of it if it has none), so that
// KeyName("incident.dedupe-open-for-system:" + id) counts under
// "incident.dedupe-open-for-system"; "int8" or "pair" for a raw key
// (KeyInt64, KeyPair) that carries no name. The raw name never becomes a
// label: it may hold an ID per entity.
func KeyFamily(k pgbaton.Key) string {
	if name := k.Name(); name != "" {
		if i := strings.IndexByte(name, ':'); i >= 0 {
			return name[:i]
		}
		return name
	}
	if _, _, ok := k.Pair(); ok {
		return "pair"
	}
	return "int8"
}

// Outcomes and loss causes, in the order of the arrays below; every one of
// them is registered at zero with its family.
var (
	outcomes = [...]pgbaton.Outcome{pgbaton.OutcomeAcquired, pgbaton.OutcomeBusy, pgbaton.OutcomeTimeout, pgbaton.OutcomeError}
	// causes are the values pgbaton.LossCause documents. A cause it returns
	// beyond these is still counted, from its first loss on.
	causes = [...]string{"terminated", "heartbeat_timeout", "unlock_false", "locker_closed", "state_unknown", "connection", "other"}
)

// lockFamily holds the resolved series of one family label.
type lockFamily struct {
	m     *Metrics
	label string
	modes [2]atomic.Pointer[modeSeries] // exclusive, shared: made at first use
	lost  [len(causes)]prom.Counter
}

// modeSeries are a family's series of one mode.
type modeSeries struct {
	acquire [len(outcomes)]prom.Observer
	held    prom.Observer
}

func (m *Metrics) newFamily(label string) *lockFamily {
	f := &lockFamily{m: m, label: label}
	for i, c := range causes {
		f.lost[i] = m.lost.WithLabelValues(label, c)
	}
	return f
}

// mode returns the family's series of mode i (0 exclusive, 1 shared),
// registering every outcome of it at zero on first use.
func (f *lockFamily) mode(i int) *modeSeries {
	if s := f.modes[i].Load(); s != nil {
		return s
	}
	name := pgbaton.Exclusive.String()
	if i == 1 {
		name = pgbaton.Shared.String()
	}
	s := &modeSeries{held: f.m.held.WithLabelValues(f.label, name)}
	for j, o := range outcomes {
		s.acquire[j] = f.m.acquire.WithLabelValues(f.label, name, string(o))
	}
	f.modes[i].CompareAndSwap(nil, s) // a racing twin holds the same series
	return f.modes[i].Load()
}

// Observe records one pgbaton event. Put it in pgbaton.Config.Observer:
//
//	cfg.Observer = m.Observe
//
// It runs inside the Locker's call, without blocking and, for a family
// already seen, without allocating (BENCHMARKS.md gives its cost).
func (m *Metrics) Observe(e pgbaton.Event) {
	f := m.families.get(m.opts.Family(e.Key))
	mi := 0
	if e.Mode == pgbaton.Shared {
		mi = 1
	}
	s := f.mode(mi)
	switch e.Kind {
	case pgbaton.EventAcquire:
		oi := len(outcomes) - 1 // an outcome this version does not know is an error
		for i, o := range outcomes {
			if o == e.Outcome {
				oi = i
				break
			}
		}
		s.acquire[oi].Observe(e.Wait.Seconds())
	case pgbaton.EventRelease:
		s.held.Observe(e.Held.Seconds())
	case pgbaton.EventLoss:
		s.held.Observe(e.Held.Seconds())
		cause := pgbaton.LossCause(e.Err)
		for i, c := range causes {
			if c == cause {
				f.lost[i].Inc()
				return
			}
		}
		m.lost.WithLabelValues(f.label, label(cause)).Inc()
	}
}

// WatchLocker makes every scrape report l's [pgbaton.Locker.Stats] as
// pgbaton_leases_held and pgbaton_lock_connections (summed over the
// watched Lockers; use ConstLabels and a Metrics each to tell them apart).
// Reading Stats takes the Locker's mutex briefly and no database round
// trip. Call the returned func to stop (before or after l.Close).
func (m *Metrics) WatchLocker(l *pgbaton.Locker) (unwatch func()) {
	return m.watch(m.lockers, &watched{stats: func() (int, int) {
		s := l.Stats()
		return s.Held, s.Conns
	}})
}
