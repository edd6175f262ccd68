package chaos

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pgbaton/pgbaton/internal/history"
)

// Quiet points (liveness).
//
// At a quiet point every worker has finished its current operation (every
// call returned, every lease released or lost, every after-error check
// done) and starts no new one, and no fault is in progress: nothing may
// hold a lock on any key of the run. The harness asks the server, and a
// lock that stays held through quietSettle is a leak: a lock held with no
// holder to release it, which keeps the key from everyone until its
// session ends.

// quietSettle is how long a lock may be seen after every worker went idle
// before it counts as leaked: a session whose client just closed it takes
// a moment to exit. No fault is in progress at a quiet point, and the
// sessions cut off by the last partition were dropped by the server before
// it healed.
const quietSettle = 3 * time.Second

// pauseBound is how long the workers have to go idle: the longest
// operation (a 5s hand-off wait, its section, an after-error check of up to
// 18s) with room.
const pauseBound = 45 * time.Second

// quiet makes one quiet point and records it. final marks the end of the
// run, after which the workers are stopped rather than resumed.
func (s *suite) quiet(ctx context.Context, final bool) {
	s.mu.Lock()
	s.quietSeq++
	id := fmt.Sprint(s.quietSeq)
	var live []*proc
	for _, p := range s.slots {
		if p != nil {
			live = append(live, p)
		}
	}
	s.mu.Unlock()
	resume := func() {
		for _, p := range live {
			_, _ = io.WriteString(p.stdin, "resume\n") // a dead worker is replaced or reported elsewhere
		}
	}
	if !final { // after the last one the workers are stopped, not resumed
		defer resume()
	}
	for _, p := range live {
		if _, err := io.WriteString(p.stdin, "pause "+id+"\n"); err != nil {
			s.note("quiet point %s skipped: worker %s: %v", id, p.name, err)
			return
		}
	}
	deadline := time.NewTimer(s.o.PauseTimeout)
	defer deadline.Stop()
	for _, p := range live {
	wait:
		for {
			select {
			case got := <-p.paused:
				if got == id {
					break wait
				}
			case <-p.exited:
				s.note("quiet point %s skipped: worker %s exited", id, p.name)
				return
			case <-deadline.C:
				s.note("quiet point %s skipped: worker %s did not go idle within %s (a call or a check that does not end; see the call-bound verdicts)", id, p.name, s.o.PauseTimeout)
				return
			case <-ctx.Done():
				s.note("quiet point %s skipped: the run ended while worker %s was going idle", id, p.name)
				return
			}
		}
	}
	at, err := s.admin.now(ctx)
	if err != nil {
		s.note("quiet point %s skipped: %v", id, err)
		return
	}
	first, err := s.heldLocks(ctx)
	if err != nil {
		s.note("quiet point %s skipped: %v", id, err)
		return
	}
	start := time.Now()
	for len(first) > 0 && time.Since(start) < quietSettle && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond) // lock ownership is the server's state
		now, err := s.heldLocks(ctx)
		if err != nil {
			s.note("quiet point %s skipped: %v", id, err)
			return
		}
		first = intersect(first, now)
	}
	q := history.Quiet{At: at, Settle: quietSettle, Final: final}
	for _, h := range first {
		h.For = time.Since(start)
		q.Held = append(q.Held, h)
	}
	s.mu.Lock()
	s.quiets = append(s.quiets, q)
	s.mu.Unlock()
	if s.faultLog != nil {
		s.faultLog.Quiet(q)
	}
	s.o.Logf("chaos: quiet point %s: %d locks held", id, len(q.Held))
}

// heldLocks lists the granted advisory locks on the run's keys in its
// database, with the holding session.
func (s *suite) heldLocks(ctx context.Context) ([]history.Held, error) {
	c, err := s.admin.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, `SELECT l.pid, coalesce(a.application_name, ''), l.classid::int8, l.objid::int8
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY l.pid`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var held []history.Held
	for rows.Next() {
		var h history.Held
		var hi, lo int64
		if err := rows.Scan(&h.PID, &h.App, &hi, &lo); err != nil {
			return nil, err
		}
		key, ok := s.keyOf[[2]int64{hi, lo}]
		if !ok {
			continue
		}
		h.Key, h.Proc = key, procOfApp(h.App)
		held = append(held, h)
	}
	return held, rows.Err()
}

// procOfApp is the worker a session belongs to, from its application_name:
// "pgbaton:<proc>~<locker>:<n>" for lock sessions, "chaos-app:<proc>" and
// "chaos-clock:<proc>" for the pools.
func procOfApp(app string) string {
	_, rest, ok := strings.Cut(app, ":")
	if !ok {
		return ""
	}
	switch {
	case strings.HasPrefix(app, "pgbaton:"):
		proc, _, _ := strings.Cut(rest, "~")
		return proc
	case strings.HasPrefix(app, "chaos-app:"), strings.HasPrefix(app, "chaos-clock:"):
		return rest
	}
	return ""
}

// intersect keeps the locks of a that are also in b (same session, same key).
func intersect(a, b []history.Held) []history.Held {
	var out []history.Held
	for _, x := range a {
		for _, y := range b {
			if x.PID == y.PID && x.Key == y.Key {
				out = append(out, x)
				break
			}
		}
	}
	return out
}
