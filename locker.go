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
	avail   chan struct{} // closed (and replaced) when connection capacity may have changed
	waited  bool          // someone holds avail to wait on it

	closeCtx    context.Context
	closeCancel context.CancelCauseFunc
	wg          sync.WaitGroup

	stats struct {
		acquired, busy, timeouts, released, lost atomic.Int64
	}
}

// hold is the in-process ownership record of one key. Leases are not
// re-entrant: every lease is an independent holder, so a second exclusive
// request for a key this Locker holds is contention like any other, decided
// here without a round trip. This is also what keeps the server's own
// re-entrancy (a session that holds a key is granted it again) from ever
// letting two of our leases share an exclusive lock.
type hold struct {
	mode Mode
	n    int
	free chan struct{} // made when someone waits; closed when n drops to 0
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
// on when this Locker already holds it in a conflicting mode.
func (l *Locker) reserve(id ident, mode Mode) (<-chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrLockerClosed
	}
	h := l.held[id]
	switch {
	case h == nil:
		if len(l.held) >= l.cfg.MaxHeldKeys {
			return nil, fmt.Errorf("%w: %d distinct keys held (Config.MaxHeldKeys)", ErrTooManyLocks, len(l.held))
		}
		h = &hold{mode: mode}
		l.held[id] = h
	case h.mode == Exclusive || mode == Exclusive:
		if h.free == nil {
			h.free = make(chan struct{})
		}
		return h.free, nil
	}
	h.n++
	return nil, nil
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
		delete(l.held, id)
		if h.free != nil {
			close(h.free)
		}
	}
}

// pick chooses a connection for a try: the least busy live connection with
// room, dialing a new one while under MaxConns if every existing one is busy.
// A connection in a blocking wait is never picked. When none is usable but
// one may become so (a dial or a wait in progress), it waits until deadline.
func (l *Locker) pick(ctx context.Context, deadline time.Time) (*lockConn, error) {
	for {
		l.mu.Lock()
		var best *lockConn
		for _, c := range l.conns {
			if c.dead || c.waiting || len(c.leases) >= l.cfg.MaxLocksPerConn {
				continue
			}
			if best == nil || c.inflight < best.inflight || (c.inflight == best.inflight && len(c.leases) < len(best.leases)) {
				best = c
			}
		}
		if (best == nil || best.inflight > 0) && len(l.conns)+l.dialing < l.cfg.MaxConns {
			return l.dialLocked(ctx, false)
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
// one if allowed. It keeps at least one connection free of waits so tries and
// releases always have somewhere to run; nil means "poll instead".
func (l *Locker) pickEmpty(ctx context.Context) (*lockConn, error) {
	l.mu.Lock()
	if l.waiters >= l.cfg.MaxConns-1 {
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
		opt.apply(&o)
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
		opt.apply(&o)
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
	if o.wait < 0 {
		return nil, fmt.Errorf("pgbaton: negative wait %s; use Wait(0) to try once", o.wait)
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
		return nil, err
	}
	lease, err := l.acquireReserved(ctx, key, o, start, deadline)
	if err != nil {
		l.unreserve(key.ident())
		return nil, err
	}
	return lease, nil
}

// reserveWait records an in-process hold on key, waiting (bounded) while
// another lease of this Locker holds it in a conflicting mode.
func (l *Locker) reserveWait(ctx context.Context, key Key, o acquireOptions, start, deadline time.Time) error {
	for {
		wait, err := l.reserve(key.ident(), o.mode)
		if err != nil || wait == nil {
			return err
		}
		if o.wait == 0 {
			return l.busy(key, o.mode, 0, true)
		}
		if err := waitChan(ctx, l.closeCtx, wait, deadline); err != nil {
			return l.waitEnded(ctx, key, o.mode, time.Since(start), err)
		}
	}
}

func (l *Locker) acquireReserved(ctx context.Context, key Key, o acquireOptions, start, deadline time.Time) (*Lease, error) {
	if o.wait > 0 {
		c, err := l.pickEmpty(ctx)
		if err != nil {
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
	for {
		c, err := l.pick(ctx, pickBy)
		if err != nil {
			return nil, err
		}
		ok, token, err := c.tryLock(key, o.mode)
		if ok && err == nil {
			return l.grant(c, key, o.mode, start, token)
		}
		l.done(c)
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
	wctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(l.closeCtx, func() { cancel(ErrLockerClosed) })
	token, err := c.waitLock(wctx, key, mode, time.Until(deadline))
	stop()
	gaveUp := context.Cause(wctx)
	cancel(nil)
	if err == nil {
		err = c.refresh()
	}
	if err == nil && gaveUp != nil {
		// Granted just as the caller gave up: hand it back.
		if _, uerr := c.unlockKey(key, mode); uerr != nil {
			l.log.Error("pgbaton: releasing a lock granted after its caller gave up", "key", key.String(), "err", uerr)
		}
		err = gaveUp
	}
	if err != nil {
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
	return l.grant(c, key, mode, start, token)
}

var errWaitExpired = errors.New("wait expired")

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

	now := ls.acquired
	l.mu.Lock()
	c.inflight--
	if c.waiting {
		c.waiting = false
		l.waiters--
	}
	l.notifyLocked()
	if c.dead {
		l.mu.Unlock()
		ls.cancel(nil)
		return nil, l.lockErr(key, c.failedErr())
	}
	c.addLeaseLocked(ls)
	l.mu.Unlock()
	l.stats.acquired.Add(1)
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

// lockErr maps server errors to the typed ones.
func (l *Locker) lockErr(key Key, err error) error {
	switch {
	case isCode(err, "53200"):
		return fmt.Errorf("%w: key %q: %w", ErrLockTableFull, key, err)
	case isCode(err, "40P01"):
		return fmt.Errorf("%w: key %q: %w", ErrDeadlock, key, err)
	case errors.Is(err, ErrLockerClosed):
		return ErrLockerClosed
	}
	return fmt.Errorf("pgbaton: lock %q: %w", key, err)
}

// WithLock runs fn while holding key (Acquire's options and bounds apply).
// fn's context is cancelled, with the [*LeaseLostError] as its cause, if the
// lease is lost; fn should stop touching the guarded resource then. The lease
// is released when fn returns. The error is fn's, joined with the lease's if
// the lease was lost or its release failed.
func (l *Locker) WithLock(ctx context.Context, key Key, fn func(ctx context.Context) error, opts ...Option) error {
	lease, err := l.Acquire(ctx, key, opts...)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(lease.Context(), func() { cancel(context.Cause(lease.Context())) })
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

// Stats returns a snapshot of the counters.
func (l *Locker) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{
		Acquired: l.stats.acquired.Load(), Busy: l.stats.busy.Load(), WaitTimeouts: l.stats.timeouts.Load(),
		Released: l.stats.released.Load(), Lost: l.stats.lost.Load(),
		Held: len(l.held), Conns: len(l.conns),
	}
}

// Close ends the Locker: waits in progress end with ErrLockerClosed, every
// lock connection is closed (the server frees its locks), and every lease
// still held ends with a [*LeaseLostError] whose cause is ErrLockerClosed.
// Release leases first for a clean log. Close waits for its goroutines to
// exit and is idempotent.
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
	for _, c := range conns {
		c.lock()
		c.failLocked(ErrLockerClosed)
		c.unlock()
	}
	l.wg.Wait()
	return nil
}
