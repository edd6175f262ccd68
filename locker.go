package pgbaton

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Mode is a lock mode. Modes are also options of Acquire and TryAcquire.
type Mode uint8

const (
	// Exclusive conflicts with every other holder. The default.
	Exclusive Mode = iota
	// Shared conflicts only with Exclusive holders. A new Shared request
	// queues behind a waiting Exclusive one, so writers do not starve.
	Shared
)

func (m Mode) String() string {
	if m == Shared {
		return "shared"
	}
	return "exclusive"
}

func (m Mode) apply(o *acquireOptions) { o.mode = m }

// Option adjusts one acquisition: a [Mode] or [Wait].
type Option interface{ apply(*acquireOptions) }

type acquireOptions struct {
	mode    Mode
	wait    time.Duration
	hasWait bool
}

type waitOption time.Duration

func (w waitOption) apply(o *acquireOptions) { o.wait, o.hasWait = time.Duration(w), true }

// Wait bounds how long Acquire and WithLock wait for a busy lock. Wait(0)
// makes them try once. Without it they wait Config.AcquireTimeout.
func Wait(d time.Duration) Option { return waitOption(d) }

// Locker hands out leases on advisory locks. It owns its lock connections,
// separate from any application pool, so lock holders can never starve the
// work they guard. A Locker is safe for concurrent use; make one per process
// and database, and Close it on shutdown.
type Locker struct {
	cfg     Config
	connCfg *pgconn.Config
	log     *slog.Logger

	mu      sync.Mutex
	conns   []*lockConn
	dialing int
	waiters int // conns in a blocking wait
	held    map[ident]*hold
	closed  bool
	connSeq int64
	// dialFailed is when a dial last failed while connections had room.
	dialFailed time.Time
	avail      chan struct{} // closed (and replaced) when connection capacity may have changed
	waited     bool          // someone holds avail to wait on it

	closeCtx    context.Context
	closeCancel context.CancelCauseFunc
	wg          sync.WaitGroup

	stats struct {
		acquired, busy, timeouts, released, lost atomic.Int64
	}
	names lockerNames // key-name registry (names.go)
}

// hold is the in-process ownership record of one key. Leases are not
// re-entrant: every lease is an independent holder, so a second exclusive
// request for a key this Locker holds is contention like any other, decided
// here without a round trip. This is also what keeps the server's own
// re-entrancy (a session that holds a key is granted it again) from ever
// letting two of our leases share an exclusive lock.
type hold struct {
	mode  Mode
	n     int           // leases (or acquisitions in progress) holding it
	xwait int           // Exclusive requests of this Locker waiting for it
	free  chan struct{} // made when someone waits; closed when it may have become free
}

// New opens a Locker and its first lock connection, so a bad connection
// string, a pooler or a standby fails here rather than at the first lock.
func New(ctx context.Context, cfg Config) (*Locker, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	var connCfg *pgconn.Config
	if cfg.ConnConfig != nil {
		connCfg = cfg.ConnConfig.Copy()
	} else if connCfg, err = lockConnConfig(cfg.ConnString); err != nil {
		return nil, err
	}
	if connCfg.RuntimeParams == nil {
		connCfg.RuntimeParams = map[string]string{}
	}
	l := &Locker{cfg: cfg, connCfg: connCfg, log: cfg.Logger, held: map[ident]*hold{}, avail: make(chan struct{})}
	l.closeCtx, l.closeCancel = context.WithCancelCause(context.Background())
	c, err := l.dial(ctx, 1)
	if err != nil {
		l.closeCancel(ErrLockerClosed)
		return nil, err
	}
	l.connSeq = 1
	l.addConnLocked(c)
	return l, nil
}

// Config returns the resolved configuration (defaults filled in).
func (l *Locker) Config() Config { return l.cfg }

// notifyLocked wakes callers waiting for a connection.
func (l *Locker) notifyLocked() {
	if l.waited {
		close(l.avail)
		l.avail = make(chan struct{})
		l.waited = false
	}
}

// availLocked returns the channel closed at the next capacity change.
func (l *Locker) availLocked() <-chan struct{} {
	l.waited = true
	return l.avail
}

func (l *Locker) addConnLocked(c *lockConn) {
	defer l.notifyLocked()
	l.conns = append(l.conns, c)
	l.wg.Add(1)
	go c.watch()
}

func (l *Locker) removeConnLocked(c *lockConn) {
	defer l.notifyLocked()
	for i, x := range l.conns {
		if x == c {
			l.conns = append(l.conns[:i], l.conns[i+1:]...)
			return
		}
	}
}

// reserve records an in-process hold on id, or returns the channel to wait
// on when this Locker already holds it in a conflicting mode. As in the
// server's queue, a new Shared request waits behind a waiting Exclusive one
// of this Locker, so writers do not starve. queue registers an Exclusive
// caller that is going to wait; queued says it was registered by the
// previous call (and is unregistered now, whatever the outcome).
func (l *Locker) reserve(id ident, mode Mode, queue, queued bool) (<-chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.held[id]
	if queued && h != nil {
		h.xwait--
	}
	if l.closed {
		l.dropIdleHoldLocked(id, h)
		return nil, ErrLockerClosed
	}
	switch {
	case h == nil:
		if len(l.held) >= l.cfg.MaxHeldKeys {
			return nil, fmt.Errorf("%w: %d distinct keys held (Config.MaxHeldKeys)", ErrTooManyLocks, len(l.held))
		}
		h = &hold{mode: mode}
		l.held[id] = h
	case h.n == 0 && (mode == Exclusive || h.xwait == 0):
		h.mode = mode // kept for waiters, and free: take it
	case h.n > 0 && h.mode == Shared && mode == Shared && h.xwait == 0:
	default:
		if h.free == nil {
			h.free = make(chan struct{})
		}
		if queue && mode == Exclusive {
			h.xwait++
		}
		return h.free, nil
	}
	h.n++
	return nil, nil
}

// unqueue unregisters an Exclusive waiter that gave up.
func (l *Locker) unqueue(id ident) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.held[id]
	if h == nil {
		return
	}
	h.xwait--
	if h.xwait == 0 && h.free != nil {
		// Shared requests queued behind it may go now.
		close(h.free)
		h.free = nil
	}
	l.dropIdleHoldLocked(id, h)
}

// dropIdleHoldLocked forgets a hold nobody holds or waits for.
func (l *Locker) dropIdleHoldLocked(id ident, h *hold) {
	if h != nil && h.n <= 0 && h.xwait <= 0 {
		delete(l.held, id)
		if h.free != nil {
			close(h.free)
			h.free = nil
		}
	}
}

func (l *Locker) unreserve(id ident) {
	l.mu.Lock()
	l.unreserveLocked(id)
	l.mu.Unlock()
}

func (l *Locker) unreserveLocked(id ident) {
	h := l.held[id]
	if h == nil {
		return
	}
	if h.n--; h.n <= 0 {
		h.n = 0
		if h.free != nil {
			close(h.free)
			h.free = nil
		}
		l.dropIdleHoldLocked(id, h)
	}
}

// dialBackoff is how long pick uses the connections it has, with room on
// them, instead of dialing again after a dial failed.
const dialBackoff = time.Second

// pick chooses a connection for a try: the least busy live connection with
// room, preferring one whose session does not hold key already (so an error
// on it can always be cleaned up by unlocking), dialing a new one while under
// MaxConns if every existing one is busy. A failed dial falls back to the
// connections that have room. A connection in a blocking wait is never
// picked. When none is usable but one may become so (a dial or a wait in
// progress), it waits until deadline.
func (l *Locker) pick(ctx context.Context, key ident, deadline time.Time) (*lockConn, error) {
	for {
		l.mu.Lock()
		var best *lockConn
		bestHas := false
		for _, c := range l.conns {
			if c.dead || c.waiting || len(c.leases) >= l.cfg.MaxLocksPerConn {
				continue
			}
			has := c.keys[key] > 0
			switch {
			case best == nil, bestHas && !has:
			case has != bestHas:
				continue
			case c.inflight < best.inflight, c.inflight == best.inflight && len(c.leases) < len(best.leases):
			default:
				continue
			}
			best, bestHas = c, has
		}
		canDial := len(l.conns)+l.dialing < l.cfg.MaxConns && (best == nil || time.Since(l.dialFailed) >= dialBackoff)
		if (best == nil || best.inflight > 0 || bestHas) && canDial {
			c, err := l.dialLocked(ctx, false)
			if err == nil || best == nil || errors.Is(err, ErrLockerClosed) || context.Cause(ctx) != nil {
				return c, err
			}
			// A live connection has room: a failed dial (the role's
			// CONNECTION LIMIT, max_connections) is not this caller's
			// failure. Use what there is, and dial again later.
			l.mu.Lock()
			l.dialFailed = time.Now()
			l.mu.Unlock()
			l.log.Warn("pgbaton: cannot open another lock connection; using the open ones", "conns", len(l.conns), "err", err)
			continue
		}
		if best != nil {
			best.inflight++
			l.mu.Unlock()
			return best, nil
		}
		if l.dialing == 0 && l.waiters == 0 {
			l.mu.Unlock()
			return nil, fmt.Errorf("%w: every lock connection is full (MaxConns %d × MaxLocksPerConn %d)", ErrTooManyLocks, l.cfg.MaxConns, l.cfg.MaxLocksPerConn)
		}
		ch := l.availLocked()
		l.mu.Unlock()
		if err := waitChan(ctx, l.closeCtx, ch, deadline); err != nil {
			if errors.Is(err, errWaitExpired) {
				return nil, fmt.Errorf("%w: no lock connection became free in time (MaxConns %d)", ErrTooManyLocks, l.cfg.MaxConns)
			}
			return nil, err
		}
	}
}

// pickEmpty chooses a connection with no leases for a blocking wait, dialing
// one if allowed. Blocking waits and WithXactLock transactions together use
// at most MaxConns-1 connections, so one is always left for tries (with
// MaxConns 1, Acquire polls with tries instead of waiting in the server's
// queue); nil means "poll instead".
func (l *Locker) pickEmpty(ctx context.Context) (*lockConn, error) { return l.pickEmptyFor(ctx, false) }

// pickEmptyFor is pickEmpty; xact is for a WithXactLock transaction, which
// cannot poll instead: with MaxConns 1 it may take the only connection.
func (l *Locker) pickEmptyFor(ctx context.Context, xact bool) (*lockConn, error) {
	l.mu.Lock()
	limit := l.cfg.MaxConns - 1
	if xact {
		limit = max(limit, 1)
	}
	if l.waiters >= limit {
		l.mu.Unlock()
		return nil, nil
	}
	for _, c := range l.conns {
		if !c.dead && !c.waiting && c.inflight == 0 && len(c.leases) == 0 {
			c.waiting = true
			c.inflight++
			l.waiters++
			l.mu.Unlock()
			return c, nil
		}
	}
	if len(l.conns)+l.dialing < l.cfg.MaxConns {
		return l.dialLocked(ctx, true)
	}
	l.mu.Unlock()
	return nil, nil
}

// dialLocked opens a connection with l.mu held on entry (and released).
func (l *Locker) dialLocked(ctx context.Context, forWait bool) (*lockConn, error) {
	l.dialing++
	if forWait {
		l.waiters++
	}
	l.connSeq++
	seq := l.connSeq
	l.mu.Unlock()
	c, err := l.dial(ctx, seq)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dialing--
	if err != nil {
		if forWait {
			l.waiters--
		}
		return nil, err
	}
	if l.closed {
		if forWait {
			l.waiters--
		}
		c.mu.Lock()
		l.mu.Unlock()
		c.failLocked(ErrLockerClosed)
		c.mu.Unlock()
		l.mu.Lock()
		return nil, ErrLockerClosed
	}
	c.waiting = forWait
	c.inflight++
	l.addConnLocked(c)
	return c, nil
}

// done returns a connection picked by pick or pickEmpty.
func (l *Locker) done(c *lockConn) {
	l.mu.Lock()
	c.inflight--
	if c.waiting {
		c.waiting = false
		l.waiters--
	}
	l.notifyLocked()
	l.mu.Unlock()
}

// TryAcquire takes key in one round trip if it is free. If it is busy it
// returns a [*NotAcquiredError] (errors.Is(err, ErrNotAcquired)) and logs
// "lock busy" at Config.BusyLogLevel. Options: [Shared]; Wait is ignored.
func (l *Locker) TryAcquire(ctx context.Context, key Key, opts ...Option) (*Lease, error) {
	o := acquireOptions{}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	o.wait, o.hasWait = 0, true
	return l.acquire(ctx, key, o)
}

// Acquire takes key, waiting at most the Wait option (default
// Config.AcquireTimeout) or until ctx ends. The wait happens in the server's
// FIFO queue (lock_timeout per statement); cancelling ctx cancels only that
// wait, never other leases. An expired wait returns a [*NotAcquiredError].
func (l *Locker) Acquire(ctx context.Context, key Key, opts ...Option) (*Lease, error) {
	o := acquireOptions{}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	if !o.hasWait {
		o.wait = l.cfg.AcquireTimeout
	}
	return l.acquire(ctx, key, o)
}

func (l *Locker) acquire(ctx context.Context, key Key, o acquireOptions) (*Lease, error) {
	if err := key.validate(); err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	deadline := start.Add(o.wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := l.reserveWait(ctx, key, o, start, deadline); err != nil {
		l.observeAcquire(key, o.mode, start, err)
		return nil, err
	}
	lease, err := l.acquireReserved(ctx, key, o, start, deadline)
	if err != nil {
		l.unreserve(key.ident())
		l.observeAcquire(key, o.mode, start, err)
		return nil, err
	}
	l.observeAcquire(key, o.mode, start, nil)
	return lease, nil
}

// reserveWait records an in-process hold on key, waiting (bounded) while
// another lease of this Locker holds it in a conflicting mode.
func (l *Locker) reserveWait(ctx context.Context, key Key, o acquireOptions, start, deadline time.Time) error {
	id, queued := key.ident(), false
	for {
		wait, err := l.reserve(id, o.mode, o.wait > 0, queued)
		if err != nil || wait == nil {
			return err
		}
		if o.wait == 0 {
			return l.busy(key, o.mode, 0, true)
		}
		queued = o.mode == Exclusive
		if err := waitChan(ctx, l.closeCtx, wait, deadline); err != nil {
			if queued {
				l.unqueue(id)
			}
			if errors.Is(err, errWaitExpired) {
				return l.busy(key, o.mode, time.Since(start), true)
			}
			return l.waitEnded(ctx, key, o.mode, time.Since(start), err)
		}
	}
}

func (l *Locker) acquireReserved(ctx context.Context, key Key, o acquireOptions, start, deadline time.Time) (*Lease, error) {
	if o.wait > 0 {
		c, err := l.pickEmpty(ctx)
		if err != nil && !l.canPoll(err) {
			return nil, err
		}
		if c != nil {
			return l.blockingWait(ctx, c, key, o.mode, start, deadline)
		}
	}
	// Try, and with a wait but no free connection, poll with jittered
	// backoff: still bounded, just not FIFO.
	backoff := 2 * time.Millisecond
	pickBy := deadline
	if o.wait == 0 {
		pickBy = start.Add(l.cfg.ConnectTimeout)
	}
	lostOnce := false
	for {
		c, err := l.pick(ctx, key.ident(), pickBy)
		if err != nil {
			return nil, err
		}
		ok, token, err := c.tryLock(key, o.mode)
		if ok && err == nil {
			return l.grant(c, key, o.mode, start, token)
		}
		l.done(c)
		if err != nil && errors.Is(err, ErrConnLost) && !lostOnce && context.Cause(ctx) == nil && l.closeCtx.Err() == nil {
			// The connection died under this try (a backend terminated
			// while it sat idle, not yet noticed): the server freed
			// everything of that session, so the key is free of us. Try
			// once more on another connection.
			lostOnce = true
			continue
		}
		if err != nil {
			return nil, l.lockErr(key, err)
		}
		if o.wait == 0 {
			return nil, l.busy(key, o.mode, 0, false)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, l.busy(key, o.mode, time.Since(start), false)
		}
		sleep := min(backoff/2+rand.N(backoff), left) // the last try is at the deadline
		if err := waitChan(ctx, l.closeCtx, nil, time.Now().Add(sleep)); err != nil && !errors.Is(err, errWaitExpired) {
			return nil, l.waitEnded(ctx, key, o.mode, time.Since(start), err)
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

func (l *Locker) blockingWait(ctx context.Context, c *lockConn, key Key, mode Mode, start, deadline time.Time) (*Lease, error) {
	for {
		wctx, cancel := context.WithCancelCause(ctx)
		stop := context.AfterFunc(l.closeCtx, func() { cancel(ErrLockerClosed) })
		token, err := c.waitLock(wctx, key, mode, time.Until(deadline))
		stop()
		gaveUp := context.Cause(wctx)
		cancel(nil)
		if err == nil {
			// A server error answering the confirmation (a cancel landing
			// on it) still confirms the connection, and the session lock
			// is held: only a failed connection ends the grant here.
			if rerr := c.refresh(); rerr != nil && !c.answered(rerr) {
				err = rerr
			}
		}
		if err == nil && gaveUp != nil {
			// Granted just as the caller gave up: hand it back.
			if ferr := c.forgetKey(key, mode); ferr != nil {
				l.log.Error("pgbaton: releasing a lock granted after its caller gave up", "key", key.String(), "err", ferr)
			}
			err = gaveUp
		}
		if err == nil {
			return l.grant(c, key, mode, start, token)
		}
		if gaveUp == nil && isCode(err, "57014") && c.failedErr() == nil && time.Until(deadline) > 0 {
			// Someone else cancelled the statement (an operator's
			// pg_cancel_backend): the key is known free of this session
			// (doKey), so wait again for what is left of the bound.
			l.log.Warn("pgbaton: lock wait cancelled by the server; waiting again", "key", key.String(), "conn", c.name, "err", err)
			continue
		}
		l.done(c)
		switch {
		case isCode(err, "55P03"):
			return nil, l.busy(key, mode, time.Since(start), false)
		case errors.Is(gaveUp, ErrLockerClosed) || l.closeCtx.Err() != nil:
			return nil, ErrLockerClosed
		case gaveUp != nil && c.failedErr() == nil:
			return nil, l.waitEnded(ctx, key, mode, time.Since(start), gaveUp)
		}
		return nil, l.lockErr(key, err)
	}
}

var errWaitExpired = errors.New("wait expired")

// canPoll reports whether a failed dial for a blocking wait can fall back to
// polling on the connections already open.
func (l *Locker) canPoll(err error) bool {
	if !errors.Is(err, ErrConnect) {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		if !c.dead {
			l.dialFailed = time.Now()
			return true
		}
	}
	return false
}

func waitChan(ctx, closeCtx context.Context, ch <-chan struct{}, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return errWaitExpired
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-closeCtx.Done():
		return ErrLockerClosed
	}
}

func (l *Locker) waitEnded(ctx context.Context, key Key, mode Mode, waited time.Duration, err error) error {
	if errors.Is(err, errWaitExpired) {
		return l.busy(key, mode, waited, false)
	}
	if errors.Is(err, ErrLockerClosed) {
		return ErrLockerClosed
	}
	return fmt.Errorf("pgbaton: waiting for %q: %w", key, err)
}

// grant turns a server grant on c into a Lease. If c failed in between, the
// lock is already gone with it.
func (l *Locker) grant(c *lockConn, key Key, mode Mode, start time.Time, token int64) (*Lease, error) {
	ls := newLease(connBackend{c}, key, mode, c.name, c.pid, l.log)
	ls.token, ls.hasToken = token, c.fence != ""
	ls.observe = l.cfg.Observer

	now := ls.acquired
	l.mu.Lock()
	c.inflight--
	if c.waiting {
		c.waiting = false
		l.waiters--
	}
	l.notifyLocked()
	if c.dead {
		lost := c.lostErrLocked()
		l.mu.Unlock()
		ls.cancel(nil)
		return nil, l.lockErr(key, lost)
	}
	c.addLeaseLocked(ls)
	l.mu.Unlock()
	l.stats.acquired.Add(1)
	l.noteName(key)
	if waited := now.Sub(start); waited > time.Millisecond {
		l.log.Debug("pgbaton: lock acquired", "key", key.String(), "key_id", key.ID(), "mode", mode.String(), "waited", waited, "conn", c.name)
	}
	return ls, nil
}

func (l *Locker) busy(key Key, mode Mode, waited time.Duration, local bool) error {
	if waited > 0 {
		l.stats.timeouts.Add(1)
	} else {
		l.stats.busy.Add(1)
	}
	l.log.Log(context.Background(), l.cfg.BusyLogLevel, "pgbaton: lock busy",
		"key", key.String(), "key_id", key.ID(), "mode", mode.String(), "waited", waited, "instance", l.cfg.InstanceName)
	return &NotAcquiredError{Key: key, Mode: mode, Waited: waited, Local: local}
}

// lockErr maps the failure of a lock statement to the typed errors. Whatever
// it is, the caller holds nothing and the key is free of this Locker.
func (l *Locker) lockErr(key Key, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%w: key %q: failed without a cause", ErrLockFailed, key)
	case isCode(err, "53200"):
		return fmt.Errorf("%w: key %q: %w", ErrLockTableFull, key, err)
	case isCode(err, "40P01"):
		return fmt.Errorf("%w: key %q: %w", ErrDeadlock, key, err)
	case isCode(err, "57014"):
		return fmt.Errorf("%w: key %q: %w", ErrStatementCanceled, key, err)
	case isCode(err, "42501"):
		return fmt.Errorf("%w: key %q: %w (pgbaton migrate sql prints the grants)", ErrPermission, key, err)
	case errors.Is(err, ErrLockerClosed):
		return ErrLockerClosed
	case errors.Is(err, ErrConnLost), errors.Is(err, ErrConnect), errors.Is(err, ErrTooManyLocks):
		return fmt.Errorf("pgbaton: lock %q: %w", key, err)
	}
	return fmt.Errorf("%w: key %q: %w", ErrLockFailed, key, err)
}

// WithLock runs fn while holding key (Acquire's options and bounds apply).
// fn's context is cancelled, with the [*LeaseLostError] as its cause, if the
// lease is lost; fn should stop touching the guarded resource then. The lease
// is released when fn returns, and also when fn panics or calls
// runtime.Goexit (t.FailNow), after which the panic goes on unchanged. The
// error is fn's, joined with the lease's if the lease was lost or its
// release failed.
func (l *Locker) WithLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error {
	lease, err := l.Acquire(ctx, key, opts...)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(lease.Context(), func() { cancel(context.Cause(lease.Context())) })
	defer func() { // after a panic or runtime.Goexit in fn; Release is idempotent
		stop()
		cancel(errFnAborted)
		_ = lease.Release()
	}()
	ferr := fn(fctx)
	stop()
	cancel(nil)
	return errors.Join(ferr, lease.Release())
}

// Stats are counters since New.
type Stats struct {
	Acquired     int64 // leases granted
	Busy         int64 // tries that found the lock held
	WaitTimeouts int64 // bounded waits that expired
	Released     int64 // leases released normally
	Lost         int64 // leases lost
	Held         int   // distinct keys held now
	Conns        int   // open lock connections
}

func (l *Locker) heldLocked() int {
	n := 0
	for _, h := range l.held {
		if h.n > 0 {
			n++
		}
	}
	return n
}

// Stats returns a snapshot of the counters.
func (l *Locker) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{
		Acquired: l.stats.acquired.Load(), Busy: l.stats.busy.Load(), WaitTimeouts: l.stats.timeouts.Load(),
		Released: l.stats.released.Load(), Lost: l.stats.lost.Load(),
		Held: l.heldLocked(), Conns: len(l.conns),
	}
}

// closeGoodbye bounds the Terminate message Close sends on each connection;
// the socket is closed after it either way.
const closeGoodbye = 100 * time.Millisecond

// Close ends the Locker: waits in progress end with ErrLockerClosed, every
// lock connection is closed (the server frees its locks), and every lease
// still held ends with a [*LeaseLostError] whose cause is ErrLockerClosed.
// Release leases first for a clean log. Close is idempotent.
//
// Close does not wait for the network: statements in flight (a blocking
// wait, a heartbeat) are ended through their contexts, and every connection
// is closed at once, in parallel, each after at most 100 ms spent saying
// goodbye to an unresponsive server, and pgconn's own clean-up of a
// connection it abandoned is waited for at most another 100 ms (pgconn
// bounds that goroutine of its own at 15 s); alongside, the key-name
// registry's last flush gets at most 200 ms. Close returns within about
// 300 ms even when the network is a black hole
// (TestCloseBoundedUnderBlackHole), well inside Kubernetes' default 30 s
// grace.
func (l *Locker) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.wg.Wait()
		return nil
	}
	l.closed = true
	conns := append([]*lockConn(nil), l.conns...)
	l.mu.Unlock()
	l.closeCancel(ErrLockerClosed)
	var wg sync.WaitGroup
	wg.Go(l.closeNames)
	for _, c := range conns {
		wg.Go(func() {
			c.lock()
			c.failLocked(ErrLockerClosed)
			c.unlock()
		})
	}
	wg.Wait()
	l.wg.Wait()
	return nil
}
