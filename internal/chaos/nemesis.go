package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/internal/history"
	"github.com/pgbaton/pgbaton/pgtest"
)

// Fault kinds.
const (
	FaultKill           = "kill"             // SIGKILL of a worker (a new one replaces it)
	FaultFreeze         = "freeze"           // SIGSTOP longer than the lease bound, then SIGCONT
	FaultFreezeCut      = "freeze+partition" // frozen AND its lock sessions cut off until the server drops them
	FaultTerminate      = "terminate"        // pg_terminate_backend of a lock session
	FaultRestart        = "restart"          // server restart (fast shutdown, start)
	FaultCrash          = "crash"            // an unrelated backend crashes: the server restarts every session
	FaultBlackHole      = "proxy-blackhole"  // the proxy of worker slot 0 stops forwarding
	FaultPartition      = "partition"        // a worker's lock sessions cut off by a packet filter
	FaultPoolExhaustion = "pool-exhaustion"  // a worker's application pool held by others
)

// AllFaults is every kind, in the order of the report.
var AllFaults = []string{FaultKill, FaultFreeze, FaultFreezeCut, FaultTerminate, FaultRestart,
	FaultCrash, FaultBlackHole, FaultPartition, FaultPoolExhaustion}

// Fault windows, from pgbaton's defaults: lease bound 4s, server release 6s.
var (
	leaseBound    = pgbaton.DefaultLeaseTimeout
	serverRelease = pgbaton.DefaultTCPUserTimeout
	freezeFor     = leaseBound + 2*time.Second
	freezeCutFor  = serverRelease + 3*time.Second
	holeFor       = leaseBound + 2*time.Second
	partitionFor  = serverRelease + 2*time.Second
	hogFor        = 3 * time.Second
)

// nemesis injects faults in rounds of a shuffled order until ctx ends; a
// fault in progress is always completed and undone.
func (s *suite) nemesis(ctx context.Context) error {
	if len(s.o.Faults) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	kinds := append([]string(nil), s.o.Faults...)
	for {
		order := append([]string(nil), kinds...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		retried := map[string]bool{}
		for i := 0; i < len(order); i++ {
			kind := order[i]
			if err := sleepCtx(ctx, jitter(s.o.Gap)); err != nil {
				return err
			}
			err := s.inject(kind)
			switch {
			case err == nil:
			case errors.Is(err, pgtest.ErrNetCutUnsupported):
				s.note("fault %s dropped: %v", kind, err)
				s.mu.Lock()
				s.unsupported = append(s.unsupported, kind)
				s.mu.Unlock()
				kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == kind })
			case !retried[kind]:
				// Transient (no lock session at that moment, a worker
				// restarting): try it once more later in the round.
				s.note("fault %s not injected, will retry: %v", kind, err)
				retried[kind] = true
				order = append(order, kind)
			default:
				s.note("fault %s not injected: %v", kind, err)
			}
		}
		if len(kinds) == 0 {
			<-ctx.Done()
			return ctx.Err()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (s *suite) record(f history.Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
	if s.faultLog != nil {
		s.faultLog.Fault(f) // kept with the histories for reading later
	}
	s.o.Logf("chaos: %s %s%s", f.Kind, f.Proc, map[bool]string{true: fmt.Sprintf(" pid %d", f.PID), false: ""}[f.PID != 0])
}

// victim picks a live worker (any slot but 0 when not0), preferring one
// whose lock sessions hold a lock right now, so that the fault hits a
// holder.
func (s *suite) victim(ctx context.Context, not0 bool) *proc {
	holding := map[string]bool{}
	if c, err := s.admin.conn(ctx); err == nil {
		rows, err := c.Query(ctx, `SELECT DISTINCT split_part(a.application_name, ':', 2)
			FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
			  AND a.application_name LIKE 'pgbaton:%'`)
		if err == nil {
			for rows.Next() {
				var name string
				if rows.Scan(&name) == nil {
					holding[name] = true
				}
			}
			rows.Close()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var cands, all []*proc
	for _, p := range s.slots {
		if not0 && p.slot == 0 && len(s.slots) > 1 {
			continue
		}
		all = append(all, p)
		if holding[p.name] {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		cands = all
	}
	return cands[rand.N(len(cands))]
}

// inject runs one fault to completion. It does not use the run's context:
// a fault begun is finished and undone.
func (s *suite) inject(kind string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	now := func() time.Time {
		t, err := s.admin.now(ctx)
		if err != nil {
			return time.Time{}
		}
		return t
	}
	switch kind {
	case FaultKill:
		p := s.victim(ctx, false)
		from := now()
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		p.killed = true
		s.record(history.Fault{Kind: kind, Proc: p.name, TakesLocks: true, From: from, To: now()})
		gen, _ := strconv.Atoi(p.name[strings.IndexByte(p.name, '.')+1:]) // names are w<slot>.<gen>
		return s.spawn(ctx, p.slot, gen+1)

	case FaultFreeze, FaultFreezeCut:
		p := s.victim(ctx, false)
		var cuts []*pgtest.Cut
		defer func() {
			for _, c := range cuts {
				_ = c.Heal()
			}
		}()
		from := now()
		if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		p.stopped = true
		defer func() {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			p.stopped = false
		}()
		to := now()
		d := freezeFor
		if kind == FaultFreezeCut {
			d = freezeCutFor
			var err error
			if cuts, err = s.cutLockSessions(ctx, p); err != nil {
				return err
			}
			to = now()
		}
		time.Sleep(d) // the fault's duration
		for _, c := range cuts {
			if err := c.Heal(); err != nil {
				s.note("heal: %v", err)
			}
		}
		thaw := now()
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		p.stopped = false
		s.record(history.Fault{Kind: kind, Proc: p.name, TakesLocks: true, From: from, To: to, Until: now(), DetectFrom: thaw, Frozen: true})
		return nil

	case FaultTerminate:
		c, err := s.admin.conn(ctx)
		if err != nil {
			return err
		}
		var pid int
		var app string
		err = c.QueryRow(ctx, `SELECT a.pid, a.application_name FROM pg_stat_activity a
			WHERE a.datname = current_database() AND a.application_name LIKE 'pgbaton:%'
			ORDER BY EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted) DESC, random()
			LIMIT 1`).Scan(&pid, &app)
		if err != nil {
			return fmt.Errorf("no lock session to terminate: %w", err)
		}
		var from, to time.Time
		var ok bool
		if err := c.QueryRow(ctx, "SELECT clock_timestamp(), pg_terminate_backend($1, 5000), clock_timestamp()", pid).Scan(&from, &ok, &to); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("pg_terminate_backend(%d) returned false", pid)
		}
		s.record(history.Fault{Kind: kind, PID: pid, TakesLocks: true, From: from, To: to, Note: app})
		return nil

	case FaultRestart, FaultCrash:
		from := now()
		var err error
		if kind == FaultRestart {
			err = s.o.Cluster.Restart(ctx)
		} else {
			err = s.o.Cluster.Crash(ctx)
		}
		if err != nil {
			return err
		}
		to := now()
		if from.IsZero() || to.IsZero() {
			return errors.New("could not read the server clock around the fault")
		}
		s.record(history.Fault{Kind: kind, All: true, TakesLocks: true, From: from, To: to})
		return nil

	case FaultBlackHole:
		s.mu.Lock()
		p := s.slots[0]
		s.mu.Unlock()
		s.waitHolding(ctx, p, 3*time.Second)
		from := now()
		s.proxy.BlackHole()
		defer s.proxy.Heal()
		to := now()
		time.Sleep(holeFor)
		s.proxy.Heal()
		s.record(history.Fault{Kind: kind, Proc: p.name, TakesLocks: true, From: from, To: to, Until: now()})
		return nil

	case FaultPartition:
		p := s.victim(ctx, true)
		from := now()
		cuts, err := s.cutLockSessions(ctx, p)
		defer func() {
			for _, c := range cuts {
				_ = c.Heal()
			}
		}()
		if err != nil {
			return err
		}
		to := now()
		time.Sleep(partitionFor)
		for _, c := range cuts {
			if err := c.Heal(); err != nil {
				s.note("heal: %v", err)
			}
		}
		s.record(history.Fault{Kind: kind, Proc: p.name, TakesLocks: true, From: from, To: to, Until: now()})
		return nil

	case FaultPoolExhaustion:
		p := s.victim(ctx, false)
		from := now()
		if _, err := io.WriteString(p.stdin, fmt.Sprintf("hog %d\n", hogFor.Milliseconds())); err != nil {
			return err
		}
		time.Sleep(hogFor)
		s.record(history.Fault{Kind: kind, Proc: p.name, TakesLocks: false, From: from, To: from, Until: now()})
		return nil
	}
	return fmt.Errorf("unknown fault kind %q", kind)
}

// cutLockSessions drops every packet of p's lock sessions (by their client
// ports) until healed; the server then frees their locks after its
// keepalive bound.
func (s *suite) cutLockSessions(ctx context.Context, p *proc) ([]*pgtest.Cut, error) {
	c, err := s.admin.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := c.Query(ctx, `SELECT client_port FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'pgbaton:' || $1 || ':%' AND client_port > 0`, p.name)
	if err != nil {
		return nil, err
	}
	var ports []int
	for rows.Next() {
		var port int
		if err := rows.Scan(&port); err != nil {
			rows.Close()
			return nil, err
		}
		ports = append(ports, port)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(ports) == 0 {
		return nil, fmt.Errorf("worker %s has no lock session to cut", p.name)
	}
	var cuts []*pgtest.Cut
	for _, port := range ports {
		cut, err := pgtest.CutPort(ctx, port)
		if err != nil {
			return cuts, err
		}
		cuts = append(cuts, cut)
	}
	return cuts, nil
}

// waitHolding waits (at most d) until p's lock sessions hold a lock, so that
// a fault aimed at p hits a holder. Polling: lock ownership is external
// state.
func (s *suite) waitHolding(ctx context.Context, p *proc, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := s.admin.conn(ctx)
		if err != nil {
			return
		}
		var holds bool
		err = c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
			  AND a.application_name LIKE 'pgbaton:' || $1 || ':%')`, p.name).Scan(&holds)
		if err != nil || holds {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
