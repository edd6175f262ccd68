package pgbaton

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// parkDelay is how long a lock connection stays unwatched after its last
// statement before its watcher parks on the socket. Back-to-back operations
// never pay to interrupt a park; an idle connection is read within this delay.
const parkDelay = 5 * time.Millisecond

// lockConn is one dedicated lock session. It is never returned to any pool:
// it lives until it fails or the Locker closes, and then it is closed, which
// frees every lock on it.
//
// Fields marked (l.mu) are guarded by the Locker's mutex; c.mu serialises use
// of pg. Lock order: c.mu before l.mu.
type lockConn struct {
	l     *Locker
	pg    *pgconn.PgConn
	pid   uint32
	name  string // application_name
	fence string // SQL expression drawing a fencing token when the schema exists, else ""

	mu       sync.Mutex // held while using pg
	prepared [nStmtKinds][2][3]bool

	leases   map[*Lease]struct{} // (l.mu)
	keys     map[ident]int       // (l.mu) leases per key on this session
	nleases  atomic.Int32        // len(leases), readable without l.mu
	waiting  bool                // (l.mu) in a blocking wait; not selectable
	inflight int                 // (l.mu) operations picked for this conn
	dead     bool                // (l.mu)

	parkMu     sync.Mutex
	parkCancel context.CancelFunc
	wanters    atomic.Int32

	pauseHeartbeats atomic.Bool // tests: simulate a stalled process

	lastConfirmed atomic.Int64 // unix nanos at which the last confirmed round trip was sent
	lastUse       atomic.Int64 // unix nanos
	closed        chan struct{}
	failOnce      sync.Once
	cause         error // set once failed, before closed is closed
}

func (l *Locker) dial(ctx context.Context, seq int64) (*lockConn, error) {
	cfg := l.connCfg.Copy()
	name := fmt.Sprintf("pgbaton:%s:%d", l.cfg.InstanceName, seq)
	cfg.RuntimeParams["application_name"] = name
	ctx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
	defer cancel()
	pg, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	c := &lockConn{l: l, pg: pg, pid: pg.PID(), name: name, leases: map[*Lease]struct{}{}, keys: map[ident]int{}, closed: make(chan struct{})}
	if err := c.setup(ctx); err != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = pg.Close(closeCtx) // the setup error is what the caller needs
		return nil, err
	}
	now := time.Now().UnixNano()
	c.lastConfirmed.Store(now)
	c.lastUse.Store(now)
	return c, nil
}

// setup refuses poolers and standbys, then pins the session settings that
// could otherwise end a lock session behind the holder's back.
func (c *lockConn) setup(ctx context.Context) error {
	if c.pg.ParameterStatus("in_hot_standby") == "on" {
		return ErrHotStandby
	}
	schema := c.l.cfg.Schema
	res := c.pg.ExecParams(ctx, "SELECT pg_backend_pid()::int8, pg_is_in_recovery(), to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
		[][]byte{[]byte(schema + ".fence_token"), []byte(schema + ".fence_counter")}, nil, nil, nil).Read()
	if res.Err != nil {
		if isCode(res.Err, "42501") {
			return fmt.Errorf("%w: %w (GRANT USAGE ON SCHEMA %s TO <role>; pgbaton migrate sql prints every grant)", ErrPermission, res.Err, schema)
		}
		return fmt.Errorf("%w: checking the server: %w", ErrConnect, res.Err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 4 {
		return fmt.Errorf("%w: unexpected answer to the server check", ErrConnect)
	}
	pid, _ := strconv.ParseUint(string(res.Rows[0][0]), 10, 32)
	if string(res.Rows[0][1]) == "t" {
		return ErrHotStandby
	}
	if uint32(pid) != c.pg.PID() {
		if !c.l.cfg.AllowPooler {
			return fmt.Errorf("%w (the protocol reported backend pid %d, the server says %d; point ConnString at PostgreSQL itself, not at the pooler)", ErrPoolerDetected, c.pg.PID(), pid)
		}
		c.pid = uint32(pid)
	}
	fastTokens := string(res.Rows[0][3]) == "t"
	switch {
	case fastTokens:
		// (epoch << 44) | counter: see migrations/005_fast_tokens.sql. The
		// session's epoch is known after setup (fence_settle) and set below.
		c.fence = schema + ".fence_next()"
	case string(res.Rows[0][2]) == "t":
		c.fence = "nextval('" + schema + ".fence_token')"
	}
	cfg := c.l.cfg
	set := []string{
		// A token handed out must survive a crash: its commit is flushed.
		"SET synchronous_commit = on",
		"SET statement_timeout = 0",
		"SET lock_timeout = 0",
		"SET idle_in_transaction_session_timeout = 0",
		fmt.Sprintf("SET tcp_keepalives_idle = %d", int(cfg.KeepaliveIdle.Seconds()+0.999)),
		fmt.Sprintf("SET tcp_keepalives_interval = %d", int(cfg.KeepaliveInterval.Seconds()+0.999)),
		fmt.Sprintf("SET tcp_keepalives_count = %d", cfg.KeepaliveCount),
		fmt.Sprintf("SET tcp_user_timeout = %d", cfg.TCPUserTimeout.Milliseconds()),
	}
	if v, _ := strconv.Atoi(c.pg.ParameterStatus("server_version_num")); v == 0 || v >= 140000 || serverMajor(c.pg.ParameterStatus("server_version")) >= 14 {
		set = append(set,
			"SET idle_session_timeout = 0",
			fmt.Sprintf("SET client_connection_check_interval = %d", cfg.ClientConnectionCheckInterval.Milliseconds()))
	}
	if _, err := c.pg.Exec(ctx, strings.Join(set, "; ")).ReadAll(); err != nil {
		return fmt.Errorf("%w: pinning session settings: %w", ErrConnect, err)
	}
	if fastTokens {
		// Before this session draws a token: bump the epoch if the unlogged
		// counter was reset (a crash, a promotion), durably. And refuse now,
		// by name, a role that could not draw one at its first grant.
		grants := fmt.Sprintf("GRANT SELECT ON %[1]s.fence_epoch TO <role>; GRANT SELECT, USAGE ON SEQUENCE %[1]s.fence_counter TO <role>; GRANT EXECUTE ON FUNCTION %[1]s.fence_prepare(), %[1]s.fence_settle(), %[1]s.fence_next() TO <role>; pgbaton migrate sql prints every grant", schema)
		res := c.pg.ExecParams(ctx, "SELECT has_table_privilege($1, 'SELECT') AND has_sequence_privilege($2, 'SELECT') AND has_sequence_privilege($2, 'USAGE')",
			[][]byte{[]byte(schema + ".fence_epoch"), []byte(schema + ".fence_counter")}, nil, nil, nil).Read()
		if res.Err == nil && (len(res.Rows) != 1 || string(res.Rows[0][0]) != "t") {
			return fmt.Errorf("%w: this role cannot draw fencing tokens (%s)", ErrPermission, grants)
		}
		if res.Err == nil {
			// Two statements, two transactions: the bump commits (durably)
			// before the counter is marked used (see the migration).
			_, res.Err = c.pg.Exec(ctx, "SELECT "+schema+".fence_prepare()").ReadAll()
		}
		var settled *pgconn.Result
		if res.Err == nil {
			settled = c.pg.ExecParams(ctx, "SELECT "+schema+".fence_settle()", nil, nil, nil, nil).Read()
			res.Err = settled.Err
		}
		if res.Err == nil {
			if len(settled.Rows) != 1 || len(settled.Rows[0]) != 1 {
				return fmt.Errorf("%w: unexpected answer to fence_settle", ErrConnect)
			}
			epoch, err := strconv.ParseInt(string(settled.Rows[0][0]), 10, 64)
			if err != nil || epoch < 0 || epoch >= 1<<19 {
				return fmt.Errorf("%w: fencing epoch %q out of range", ErrConnect, settled.Rows[0][0])
			}
			// No table on the grant path: this session's epoch is fixed
			// until the server's next crash or promotion, which ends it.
			c.fence = fmt.Sprintf("(%d::int8 | nextval('%s.fence_counter'))", epoch<<44, schema)
		}
		if isCode(res.Err, "42501") {
			return fmt.Errorf("%w: preparing fencing tokens: %w (%s)", ErrPermission, res.Err, grants)
		}
		if res.Err != nil {
			return fmt.Errorf("%w: preparing fencing tokens: %w", ErrConnect, res.Err)
		}
	}
	return nil
}

func serverMajor(v string) int {
	n, _ := strconv.Atoi(strings.SplitN(v, ".", 2)[0])
	return n
}

// interruptPark wakes the watcher out of its socket read so that a caller can
// take c.mu. Callers must have incremented c.wanters first.
func (c *lockConn) interruptPark() {
	c.parkMu.Lock()
	if c.parkCancel != nil {
		c.parkCancel()
	}
	c.parkMu.Unlock()
}

func (c *lockConn) lock() {
	c.lastUse.Store(time.Now().UnixNano())
	c.wanters.Add(1)
	c.interruptPark()
	c.mu.Lock()
	c.wanters.Add(-1)
}

func (c *lockConn) unlock() {
	c.lastUse.Store(time.Now().UnixNano())
	c.mu.Unlock()
}

func (c *lockConn) confirm(sent time.Time) {
	s := sent.UnixNano()
	for {
		old := c.lastConfirmed.Load()
		if s <= old || c.lastConfirmed.CompareAndSwap(old, s) {
			return
		}
	}
}

// bound is the deadline of the lease bound: the last confirmed round trip's
// send time plus LeaseTimeout.
func (c *lockConn) bound() time.Time {
	return time.Unix(0, c.lastConfirmed.Load()).Add(c.l.cfg.LeaseTimeout)
}

// lostErrLocked is the error for an operation that finds c dead; l.mu must
// be held. The cause is set before dead.
func (c *lockConn) lostErrLocked() error {
	cause := c.cause
	if cause == nil {
		cause = errors.New("connection closing")
	}
	return &connLostError{Conn: c.name, PID: c.pid, Cause: cause}
}

// forgetKey makes sure this session holds k no more (see forgetKeyLocked).
func (c *lockConn) forgetKey(k Key, mode Mode) error {
	return c.do(time.Now().Add(c.l.cfg.ReleaseTimeout), func(ctx context.Context) error {
		return c.forgetKeyLocked(ctx, k, mode, nil)
	})
}

// errConnFailed is returned by operations on a connection that already failed.
func (c *lockConn) failedErr() error {
	select {
	case <-c.closed:
		return &connLostError{Conn: c.name, PID: c.pid, Cause: c.cause}
	default:
		return nil
	}
}

// do runs fn on the connection with c.mu held, under deadline. A round trip
// the server answered (even with an error) confirms the connection; a
// network error or timeout fails the connection and every lease on it.
// Closing the Locker ends fn at once: its context is the Locker's.
func (c *lockConn) do(deadline time.Time, fn func(ctx context.Context) error) error {
	c.lock()
	defer c.unlock()
	if err := c.failedErr(); err != nil {
		return err
	}
	sent := time.Now()
	if c.hasLeases() && sent.After(c.bound()) {
		c.failLocked(ErrHeartbeatTimeout)
		return c.failedErr()
	}
	ctx, cancel := context.WithDeadline(c.l.closeCtx, deadline)
	err := fn(ctx)
	cancel()
	c.settleErrLocked(sent, err)
	if err := c.failedErr(); err != nil {
		return err
	}
	return err
}

// settleErrLocked classifies the outcome of a round trip sent at sent: an
// answer from the server (even an error) confirms the connection; anything
// else (a closed connection, a timeout, the Locker closing) fails it.
// c.mu must be held.
func (c *lockConn) settleErrLocked(sent time.Time, err error) {
	var pgErr *pgconn.PgError
	switch {
	case err == nil || (errors.As(err, &pgErr) && !c.pg.IsClosed()):
		c.confirm(sent)
	case c.l.closeCtx.Err() != nil:
		c.failLocked(ErrLockerClosed)
	case c.pg.IsClosed() || pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded):
		cause := err
		if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
			cause = fmt.Errorf("%w: %w", ErrHeartbeatTimeout, err)
		}
		c.failLocked(cause)
	}
}

// doKey is do for a statement that can change this session's hold on k (a
// lock or an unlock). Session advisory locks outlive statement errors, and
// PostgreSQL can grant a queued lock and still end the statement with an
// error (lock_timeout firing at the grant, a cancel landing after it, a
// failing nextval after the grant). So after ANY error on a connection that
// stays open, the session's hold on k is unknown, and it is made known, free
// of us, before the connection serves anything else (see forgetKeyLocked).
// except is the lease being released, if any.
func (c *lockConn) doKey(deadline time.Time, k Key, mode Mode, except *Lease, fn func(ctx context.Context) error) error {
	return c.do(deadline, func(ctx context.Context) error {
		err := fn(ctx)
		if err != nil && !c.pg.IsClosed() {
			if ferr := c.forgetKeyLocked(ctx, k, mode, except); ferr != nil {
				return ferr
			}
		}
		return err
	})
}

// errLockStateUnknown is the cause given to the leases of a connection closed
// because a failed statement left its hold on a key unknown.
var errLockStateUnknown = errors.New("lock state unknown after a failed lock statement")

// forgetKeyLocked makes sure the session holds k no more: it repeats the
// guarded unlock until the server answers false. When other leases on this
// session hold k too (shared), the session's count cannot be known, and the
// connection is closed instead (its leases are reported lost); the same when
// the unlock fails otherwise or past the statement's deadline. A late or
// repeated cancel (57014) is retried within that deadline. It returns nil when the key is known free of this session, or the
// connection's failure. c.mu must be held.
func (c *lockConn) forgetKeyLocked(ctx context.Context, k Key, mode Mode, except *Lease) error {
	id := k.ident()
	c.l.mu.Lock()
	others := c.keys[id]
	if except != nil {
		if _, ok := c.leases[except]; ok {
			others--
		}
	}
	c.l.mu.Unlock()
	if others > 0 {
		c.failLocked(fmt.Errorf("%w: %w (key %q is also held by other leases on this session)", ErrLeaseLost, errLockStateUnknown, k))
		return c.failedErr()
	}
	unlocks := 0
	for ctx.Err() == nil {
		held, err := c.execUnlock(ctx, k, mode)
		switch {
		case err == nil && !held:
			return nil
		case err == nil && unlocks < 8:
			unlocks++
			continue // it was held: unlock again until the server says false
		case err == nil:
			err = fmt.Errorf("key %q still held after %d unlocks", k, unlocks)
		case isCode(err, "57014") && !c.pg.IsClosed():
			continue // another cancel: the unlock is idempotent, run it again
		}
		if c.pg.IsClosed() {
			return err // do fails the connection
		}
		c.failLocked(fmt.Errorf("%w: %w", errLockStateUnknown, err))
		return c.failedErr()
	}
	c.failLocked(fmt.Errorf("%w: %w", errLockStateUnknown, context.Cause(ctx)))
	return c.failedErr()
}

// execUnlock runs the guarded unlock of k once. c.mu must be held.
func (c *lockConn) execUnlock(ctx context.Context, k Key, mode Mode) (bool, error) {
	s := stmtID{stmtUnlock, mode, k.space, c.fence}
	if err := c.prepare(ctx, s); err != nil {
		return false, err
	}
	params := append([][]byte{be32(c.pid)}, keyParams(k)...)
	res := c.pg.ExecPrepared(ctx, s.name(), params, fmtBinary[:len(params)], fmtBinary1).Read()
	if res.Err != nil {
		return false, res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return false, fmt.Errorf("pgbaton: unexpected answer to an unlock: %d rows", len(res.Rows))
	}
	return len(res.Rows[0][0]) == 1 && res.Rows[0][0][0] == 1, nil
}

func (c *lockConn) hasLeases() bool { return c.nleases.Load() > 0 }

// addLeaseLocked records ls on c; l.mu must be held.
func (c *lockConn) addLeaseLocked(ls *Lease) {
	c.leases[ls] = struct{}{}
	c.keys[ls.key.ident()]++
	c.nleases.Store(int32(len(c.leases)))
}

// removeLeaseLocked drops ls from c; l.mu must be held.
func (c *lockConn) removeLeaseLocked(ls *Lease) bool {
	if _, ok := c.leases[ls]; !ok {
		return false
	}
	delete(c.leases, ls)
	id := ls.key.ident()
	if c.keys[id]--; c.keys[id] <= 0 {
		delete(c.keys, id)
	}
	c.nleases.Store(int32(len(c.leases)))
	return true
}

// prepare makes sure statement s exists on the session. c.mu must be held.
func (c *lockConn) prepare(ctx context.Context, s stmtID) error {
	if c.prepared[s.kind][s.mode][s.space] {
		return nil
	}
	if _, err := c.pg.Prepare(ctx, s.name(), s.sql(), nil); err != nil {
		return err
	}
	c.prepared[s.kind][s.mode][s.space] = true
	return nil
}

// tryLock runs pg_try_advisory_lock[_shared] in one round trip, drawing a
// fencing token on a grant when the session has the schema.
func (c *lockConn) tryLock(k Key, mode Mode) (ok bool, token int64, err error) {
	deadline := time.Now().Add(c.l.cfg.LeaseTimeout)
	if b := c.bound(); c.hasLeases() && b.Before(deadline) {
		deadline = b
	}
	err = c.doKey(deadline, k, mode, nil, func(ctx context.Context) error {
		s := stmtID{stmtTry, mode, k.space, c.fence}
		if err := c.prepare(ctx, s); err != nil {
			return err
		}
		params := keyParams(k)
		res := c.pg.ExecPrepared(ctx, s.name(), params, fmtBinary[:len(params)], fmtBinary[:1+s.fenced()]).Read()
		if res.Err != nil {
			return res.Err
		}
		if len(res.Rows) != 1 || len(res.Rows[0]) != 1+s.fenced() {
			return fmt.Errorf("pgbaton: unexpected answer to a try-lock: %d rows", len(res.Rows))
		}
		row := res.Rows[0]
		ok = len(row[0]) == 1 && row[0][0] == 1
		if ok && s.fenced() == 1 && len(row[1]) == 8 {
			token = int64(binary.BigEndian.Uint64(row[1]))
		}
		return nil
	})
	if err != nil {
		ok = false
	}
	return ok, token, err
}

// unlockKey runs the guarded pg_advisory_unlock[_shared] for ls. It reports
// whether the server still held the lock. If the unlock statement fails on
// a connection that stays open (an operator's pg_cancel_backend, say), the
// hold is made known by repeating the unlock (forgetKeyLocked): the lock was
// held until this moment either way.
func (c *lockConn) unlockKey(ls *Lease) (bool, error) {
	k, mode := ls.key, ls.mode
	var ok bool
	deadline := time.Now().Add(c.l.cfg.ReleaseTimeout)
	if b := c.bound(); b.Before(deadline) {
		deadline = b
	}
	err := c.do(deadline, func(ctx context.Context) error {
		var err error
		ok, err = c.execUnlock(ctx, k, mode)
		if err != nil && !c.pg.IsClosed() {
			if ferr := c.forgetKeyLocked(ctx, k, mode, ls); ferr != nil {
				return ferr
			}
			ok, err = true, nil
		}
		return err
	})
	return ok, err
}

// waitLock blocks in the server's FIFO lock queue for at most wait
// (lock_timeout, set for this statement only). The connection holds no
// leases while it waits. If ctx is cancelled first, a cancel request ends the
// wait with 57014 and the connection survives.
func (c *lockConn) waitLock(ctx context.Context, k Key, mode Mode, wait time.Duration) (token int64, err error) {
	deadline := time.Now().Add(wait + c.l.cfg.LeaseTimeout)
	err = c.doKey(deadline, k, mode, nil, func(opCtx context.Context) error {
		s := stmtID{stmtWait, mode, k.space, c.fence}
		if err := c.prepare(opCtx, s); err != nil {
			return err
		}
		cancelled := c.cancelOn(ctx)
		params := append([][]byte{[]byte(pgMillis(wait))}, keyParams(k)...)
		res := c.pg.ExecPrepared(opCtx, s.name(), params, fmtWait[:len(params)], nil).Read()
		cancelled(opCtx)
		if res.Err == nil && s.fenced() == 1 {
			if len(res.Rows) != 1 || len(res.Rows[0]) != 3 {
				return fmt.Errorf("pgbaton: unexpected answer to a lock wait: %d rows", len(res.Rows))
			}
			token, _ = strconv.ParseInt(string(res.Rows[0][2]), 10, 64)
		}
		return res.Err
	})
	return token, err
}

// heartbeat proves the connection alive, within the lease bound.
func (c *lockConn) heartbeatLocked() error {
	sent := time.Now()
	deadline := c.bound()
	if !c.hasLeasesOrWaiting() {
		deadline = sent.Add(c.l.cfg.LeaseTimeout)
	}
	ctx, cancel := context.WithDeadline(c.l.closeCtx, deadline)
	defer cancel()
	_, err := c.pg.Exec(ctx, "SELECT 1").ReadAll()
	var pgErr *pgconn.PgError
	if err != nil && (!errors.As(err, &pgErr) || c.pg.IsClosed()) {
		// An error the server answered on an open connection (a cancel
		// from an operator's script: 57014) still proves it alive, and
		// SELECT 1 holds no lock; anything else ends the connection.
		if c.l.closeCtx.Err() != nil {
			return ErrLockerClosed
		}
		if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w: %w", ErrHeartbeatTimeout, err)
		}
		return err
	}
	c.confirm(sent)
	return nil
}

// refresh confirms the connection with a fresh round trip when its last
// confirmation is old, as after a long blocking wait: the wait's answer only
// proves the connection was alive when the wait began, and a lease handed
// out on that proof alone could start out already past its bound.
func (c *lockConn) refresh() error {
	if time.Until(c.bound()) > c.l.cfg.LeaseTimeout/2 {
		return nil
	}
	return c.do(time.Now().Add(c.l.cfg.LeaseTimeout), func(ctx context.Context) error {
		_, err := c.pg.Exec(ctx, "SELECT 1").ReadAll()
		return err
	})
}

// answered reports whether err is the server's answer on a connection that
// is still open (an operator's cancel landing on a statement, say): the
// round trip confirmed the connection, and a session lock it holds is held.
func (c *lockConn) answered(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && c.failedErr() == nil
}

// endXact rolls back the transaction a failed WithXactLock acquisition left
// open (its xact lock is already gone with the error, or goes now), so the
// connection is reused idle; if that fails the connection is closed.
func (c *lockConn) endXact() {
	_ = c.do(time.Now().Add(c.l.cfg.ReleaseTimeout), func(ctx context.Context) error {
		if c.pg.TxStatus() == 'I' {
			return nil
		}
		if _, err := c.pg.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			c.failLocked(fmt.Errorf("%w: ending a failed lock transaction: %w", errLockStateUnknown, err))
		} else if st := c.pg.TxStatus(); st != 'I' {
			c.failLocked(fmt.Errorf("%w: ending a failed lock transaction: transaction status %q after ROLLBACK", errLockStateUnknown, st))
		}
		return nil
	})
}

func (c *lockConn) hasLeasesOrWaiting() bool {
	if c.hasLeases() {
		return true
	}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	return c.waiting
}

// watch parks the idle connection on its socket, so a terminated backend, a
// server restart or a crash is seen within milliseconds, and heartbeats it so
// that a silent network is seen within LeaseTimeout.
func (c *lockConn) watch() {
	defer c.l.wg.Done()
	hb := c.l.cfg.HeartbeatInterval
	timer := time.NewTimer(parkDelay)
	defer timer.Stop()
	for {
		idle := time.Since(time.Unix(0, c.lastUse.Load()))
		if idle < parkDelay {
			timer.Reset(parkDelay - idle)
			select {
			case <-c.closed:
				return
			case <-timer.C:
			}
			continue
		}
		c.mu.Lock()
		if c.failedErr() != nil {
			c.mu.Unlock()
			return
		}
		// Someone wants the connection, or used it while this goroutine
		// waited for c.mu (a long wait): parking now would only make the
		// next statement interrupt the park.
		if c.wanters.Load() > 0 || time.Since(time.Unix(0, c.lastUse.Load())) < parkDelay {
			c.mu.Unlock()
			continue
		}
		if idle >= c.l.cfg.MaxConnIdleTime && c.l.retire(c) {
			c.failLocked(errRetired)
			c.mu.Unlock()
			return
		}
		if time.Since(time.Unix(0, c.lastConfirmed.Load())) >= hb && !c.pauseHeartbeats.Load() {
			if err := c.heartbeatLocked(); err != nil {
				c.failLocked(err)
				c.mu.Unlock()
				return
			}
		}
		next := time.Unix(0, c.lastConfirmed.Load()).Add(hb)
		if c.pauseHeartbeats.Load() {
			next = time.Now().Add(hb)
		}
		ctx, cancel := context.WithDeadline(context.Background(), next)
		c.parkMu.Lock()
		c.parkCancel = cancel
		park := c.wanters.Load() == 0
		c.parkMu.Unlock()
		var err error
		if park {
			err = c.pg.WaitForNotification(ctx)
		}
		c.parkMu.Lock()
		c.parkCancel = nil
		c.parkMu.Unlock()
		cancel()
		if c.pg.IsClosed() {
			if err == nil {
				err = errors.New("connection closed")
			}
			c.failLocked(err)
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
	}
}

// failLocked ends the connection: it is closed (the server frees its locks),
// removed from the Locker, and every lease on it is reported lost with cause.
// c.mu must be held.
func (c *lockConn) failLocked(cause error) {
	c.failOnce.Do(func() {
		if cause == nil {
			cause = errors.New("connection failed")
		}
		c.cause = cause
		l := c.l
		l.mu.Lock()
		c.dead = true
		l.removeConnLocked(c)
		leases := make([]*Lease, 0, len(c.leases))
		for ls := range c.leases {
			leases = append(leases, ls)
			l.unreserveLocked(ls.key.ident())
		}
		c.leases = nil
		c.keys = nil
		c.nleases.Store(0)
		// pgconn may finish closing in a goroutine of its own (after a
		// timed-out statement); Close waits for it, bounded.
		l.wg.Add(1)
		l.mu.Unlock()
		close(c.closed)
		// Tell the holders before closing the socket: closing it lets the
		// server free the locks for someone else, and the holders must
		// know first.
		lost := &connLostError{Conn: c.name, PID: c.pid, Cause: cause}
		if !errors.Is(cause, ErrLockerClosed) && !errors.Is(cause, errRetired) {
			l.log.Warn("pgbaton: lock connection lost", "conn", c.name, "backend_pid", c.pid, "leases", len(leases), "err", cause)
		}
		l.stats.lost.Add(int64(len(leases)))
		for _, ls := range leases {
			ls.lose(lost)
		}
		ctx, cancel := context.WithTimeout(context.Background(), closeGoodbye)
		_ = c.pg.Close(ctx) // the connection is being discarded; the cause is what matters
		cancel()
		go func() {
			// pgconn may still be cleaning up a connection it abandoned
			// (after a statement's context ended it sends a cancel request
			// and a goodbye, bounded by pgconn at 15 s). Wait for it, but
			// once the Locker is closing, not past closeGoodbye: that
			// goroutine is pgconn's, and its bound is pgconn's.
			defer l.wg.Done()
			t := time.NewTimer(15 * time.Second)
			defer t.Stop()
			select {
			case <-c.pg.CleanupDone():
				return
			case <-t.C:
				return
			case <-l.closeCtx.Done():
			}
			t.Reset(closeGoodbye)
			select {
			case <-c.pg.CleanupDone():
			case <-t.C:
			}
		}()
	})
}

// errRetired closes a lock connection that stayed empty and idle for
// Config.MaxConnIdleTime.
var errRetired = errors.New("idle lock connection retired")

// retire marks c dead if it is empty, idle and not the Locker's last
// connection, so nothing picks it while it closes.
func (l *Locker) retire(c *lockConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(c.leases) > 0 || c.waiting || c.inflight > 0 || len(l.conns) <= 1 {
		return false
	}
	c.dead = true
	return true
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// connBackend releases leases held on a lock connection.
type connBackend struct{ c *lockConn }

func (b connBackend) Unlock(ls *Lease) (bool, error) {
	ok, err := b.c.unlockKey(ls)
	if ok && err == nil {
		b.c.l.stats.released.Add(1)
	} else if err == nil {
		b.c.l.stats.lost.Add(1)
	}
	return ok, err
}

func (b connBackend) Forget(ls *Lease) bool {
	c, l := b.c, b.c.l
	l.mu.Lock()
	mine := c.removeLeaseLocked(ls)
	if mine {
		l.unreserveLocked(ls.key.ident())
		l.notifyLocked()
	}
	l.mu.Unlock()
	return mine
}
