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

	"github.com/jackc/pgx/v5"

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
	FaultCancel         = "cancel"           // pg_cancel_backend of lock sessions at random moments, for a while
	FaultRoleTimeouts   = "role-timeouts"    // lock_timeout and statement_timeout set on the workers' role, then reset
	FaultConnLimit      = "conn-limit"       // the workers' role limited to one connection: new ones refused, then allowed
	// FaultLockerClose is recorded by worker 0 when, during a black hole,
	// it closes one of its Lockers (with a call in flight if it has one)
	// and opens it again; the leases of that Locker are lost.
	FaultLockerClose = "locker-close"
)

// AllFaults is every kind, in the order of the report.
var AllFaults = []string{FaultKill, FaultFreeze, FaultFreezeCut, FaultTerminate, FaultRestart,
	FaultCrash, FaultBlackHole, FaultPartition, FaultPoolExhaustion, FaultCancel, FaultRoleTimeouts, FaultConnLimit}

// Fault windows, from pgbaton's defaults: lease bound 4s, server release 6s.
var (
	leaseBound    = pgbaton.DefaultLeaseTimeout
	serverRelease = pgbaton.DefaultTCPUserTimeout
	freezeFor     = leaseBound + 2*time.Second
	freezeCutFor  = serverRelease + 3*time.Second
	holeFor       = leaseBound + 2*time.Second
	partitionFor  = serverRelease + 2*time.Second
	hogFor        = 3 * time.Second
	cancelFor     = 1500 * time.Millisecond // a burst of cancels
	roleFor       = 3 * time.Second         // role settings in force
	limitFor      = 3 * time.Second         // connections refused
)

// nemesis injects faults in rounds of a shuffled order until ctx ends; a
// fault in progress is always completed and undone.
func (s *suite) nemesis(ctx context.Context) error {
	if len(s.o.Faults) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	kinds := append([]string(nil), s.o.Faults...)
	injected, quieted := 0, false
	for {
		order := append([]string(nil), kinds...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		retried := map[string]bool{}
		for i := 0; i < len(order); i++ {
			kind := order[i]
			if err := sleepCtx(ctx, jitter(s.o.Gap)); err != nil {
				return err
			}
			if injected > 0 && injected%s.o.QuietEvery == 0 && !quieted {
				s.quiet(ctx, false)
				quieted = true
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
			err := s.inject(kind)
			if err == nil {
				injected++
				quieted = false
			}
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
		rows, err := c.Query(ctx, `SELECT DISTINCT split_part(split_part(a.application_name, ':', 2), '~', 1)
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
		// A Locker closed while its connections hang, with a wait in
		// flight: Close must stay within its bound. Half the time the
		// wait is queued in the server before the hole opens.
		reopen := func() {
			if _, err := io.WriteString(p.stdin, "reopen\n"); err != nil {
				s.note("reopen of %s not sent: %v", p.name, err)
			}
		}
		early := rand.N(2) == 0
		from := now()
		if early {
			reopen()
			time.Sleep(100 * time.Millisecond) // its wait is sent, its Close not yet
		}
		s.proxy.BlackHole()
		defer s.proxy.Heal()
		to := now()
		pause := 500*time.Millisecond + rand.N(1500*time.Millisecond)
		time.Sleep(pause)
		if !early {
			reopen()
		}
		time.Sleep(holeFor - pause)
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

	case FaultCancel:
		return s.cancelBurst(ctx)

	case FaultRoleTimeouts:
		c, err := s.admin.conn(ctx)
		if err != nil {
			return err
		}
		role, db := pgx.Identifier{s.role}.Sanitize(), pgx.Identifier{s.o.DB}.Sanitize()
		lt, st := 1+rand.N(50), 20+rand.N(200) // ms
		from := now()
		reset := func() error {
			_, err := c.Exec(context.Background(), "ALTER ROLE "+role+" IN DATABASE "+db+" RESET lock_timeout; ALTER ROLE "+role+" IN DATABASE "+db+" RESET statement_timeout")
			return err
		}
		defer func() { _ = reset() }() // undone whatever happens
		if _, err := c.Exec(ctx, fmt.Sprintf("ALTER ROLE %s IN DATABASE %s SET lock_timeout = '%dms'; ALTER ROLE %s IN DATABASE %s SET statement_timeout = '%dms'", role, db, lt, role, db, st)); err != nil {
			return err
		}
		to := now()
		time.Sleep(roleFor)
		if err := reset(); err != nil {
			return err
		}
		s.record(history.Fault{Kind: kind, TakesLocks: false, From: from, To: to, Until: now(),
			Note: fmt.Sprintf("lock_timeout %dms, statement_timeout %dms for new sessions", lt, st)})
		return nil

	case FaultConnLimit:
		c, err := s.admin.conn(ctx)
		if err != nil {
			return err
		}
		role := pgx.Identifier{s.role}.Sanitize()
		from := now()
		lift := func() error {
			_, err := c.Exec(context.Background(), "ALTER ROLE "+role+" CONNECTION LIMIT -1")
			return err
		}
		defer func() { _ = lift() }() // undone whatever happens
		if _, err := c.Exec(ctx, "ALTER ROLE "+role+" CONNECTION LIMIT 1"); err != nil {
			return err
		}
		to := now()
		time.Sleep(limitFor)
		if err := lift(); err != nil {
			return err
		}
		s.record(history.Fault{Kind: kind, TakesLocks: false, From: from, To: to, Until: now(), Note: "new connections of the workers refused"})
		return nil
	}
	return fmt.Errorf("unknown fault kind %q", kind)
}

// cancelBurst sends pg_cancel_backend to lock sessions, one every few
// milliseconds for cancelFor: two in three to a session waiting for a lock
// (where a cancel races the grant), the others to any lock session that is
// running a statement. A cancel takes no lock away; what it may do is end
// a statement that was granted its lock.
func (s *suite) cancelBurst(ctx context.Context) error {
	c, err := s.admin.conn(ctx)
	if err != nil {
		return err
	}
	var from time.Time
	if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&from); err != nil {
		return err
	}
	sent, waiting := 0, 0
	end := time.Now().Add(cancelFor)
	for time.Now().Before(end) {
		inWait := rand.N(3) != 0
		var pid int
		var ok bool
		err := c.QueryRow(ctx, `SELECT pid, pg_cancel_backend(pid) FROM (
				SELECT pid FROM pg_stat_activity
				WHERE datname = current_database() AND application_name LIKE 'pgbaton:%' AND state = 'active'
				  AND pid <> pg_backend_pid() AND (NOT $1 OR wait_event_type = 'Lock')
				ORDER BY random() LIMIT 1) s`, inWait).Scan(&pid, &ok)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return err
		case ok:
			sent++
			if inWait {
				waiting++
			}
		}
		time.Sleep(jitter(4 * time.Millisecond))
	}
	var to time.Time
	if err := c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&to); err != nil {
		return err
	}
	if sent == 0 {
		return errors.New("no lock session was running a statement")
	}
	s.record(history.Fault{Kind: FaultCancel, TakesLocks: false, From: from, To: to, Note: fmt.Sprintf("%d cancels, %d of them in a lock wait", sent, waiting)})
	return nil
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
		WHERE datname = current_database() AND application_name LIKE 'pgbaton:' || $1 || '~%' AND client_port > 0`, p.name)
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
			  AND a.application_name LIKE 'pgbaton:' || $1 || '~%')`, p.name).Scan(&holds)
		if err != nil || holds {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
