package pgbatontest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/pgbaton/pgbaton"
)

// ErrLostByTest is the default cause of a loss forced by Lose or LoseKey.
var ErrLostByTest = errors.New("pgbatontest: lease lost by the test")

// lockID is a lock's identity, ignoring the key's name.
type lockID struct {
	id   int64
	pair bool
}

func idOf(k pgbaton.Key) lockID {
	_, _, pair := k.Pair()
	return lockID{k.ID(), pair}
}

// DB is one database's advisory-lock table. It is safe for concurrent use.
type DB struct {
	mu    sync.Mutex
	locks map[lockID]*lockState
	token int64
}

type lockState struct {
	holders map[*holding]struct{}
	queue   []*waiter
}

// holding is one granted lock.
type holding struct {
	l    *Locker
	key  pgbaton.Key
	mode pgbaton.Mode
}

type waiter struct {
	h       *holding
	granted chan struct{} // closed on grant, under DB.mu
	done    bool          // granted or gave up, under DB.mu
}

// NewDB returns an empty lock table.
func NewDB() *DB { return &DB{locks: map[lockID]*lockState{}} }

func conflicts(a, b pgbaton.Mode) bool { return a == pgbaton.Exclusive || b == pgbaton.Exclusive }

// grantableLocked reports whether mode can be granted on st now: it must
// conflict with no holder and no queued request (PostgreSQL's waitMask rule).
func (st *lockState) grantableLocked(mode pgbaton.Mode) bool {
	for h := range st.holders {
		if conflicts(h.mode, mode) {
			return false
		}
	}
	for _, w := range st.queue {
		if conflicts(w.h.mode, mode) {
			return false
		}
	}
	return true
}

// wakeLocked grants queued requests in FIFO order, as the server does: a
// waiter is granted if it conflicts with no holder and no waiter ahead of it
// that stays queued.
func (db *DB) wakeLocked(id lockID, st *lockState) {
	var ahead []pgbaton.Mode
	kept := st.queue[:0]
	for _, w := range st.queue {
		ok := true
		for h := range st.holders {
			if conflicts(h.mode, w.h.mode) {
				ok = false
				break
			}
		}
		for _, m := range ahead {
			if conflicts(m, w.h.mode) {
				ok = false
				break
			}
		}
		if ok {
			st.holders[w.h] = struct{}{}
			w.done = true
			close(w.granted)
			continue
		}
		ahead = append(ahead, w.h.mode)
		kept = append(kept, w)
	}
	for i := len(kept); i < len(st.queue); i++ {
		st.queue[i] = nil
	}
	st.queue = kept
	if len(st.holders) == 0 && len(st.queue) == 0 {
		delete(db.locks, id)
	}
}

func (db *DB) stateLocked(id lockID) *lockState {
	st := db.locks[id]
	if st == nil {
		st = &lockState{holders: map[*holding]struct{}{}}
		db.locks[id] = st
	}
	return st
}

// unlockLocked frees h and reports whether it was still held.
func (db *DB) unlockLocked(h *holding) bool {
	id := idOf(h.key)
	st := db.locks[id]
	if st == nil {
		return false
	}
	if _, ok := st.holders[h]; !ok {
		return false
	}
	delete(st.holders, h)
	db.wakeLocked(id, st)
	return true
}

// Holders returns how many leases hold k now, in any Locker.
func (db *DB) Holders(k pgbaton.Key) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	if st := db.locks[idOf(k)]; st != nil {
		return len(st.holders)
	}
	return 0
}

// Waiters returns how many Acquire calls wait for k now.
func (db *DB) Waiters(k pgbaton.Key) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	if st := db.locks[idOf(k)]; st != nil {
		return len(st.queue)
	}
	return 0
}

// LoseKey ends every lease on k as lost with cause (ErrLostByTest if nil),
// as when the connections holding it fail, and returns how many it ended.
func (db *DB) LoseKey(k pgbaton.Key, cause error) int {
	db.mu.Lock()
	var hs []*holding
	if st := db.locks[idOf(k)]; st != nil {
		for h := range st.holders {
			hs = append(hs, h)
		}
	}
	db.mu.Unlock()
	n := 0
	for _, h := range hs {
		if ls := h.l.leaseOf(h); ls != nil && h.l.Lose(ls, cause) {
			n++
		}
	}
	return n
}

// Options configures a fake Locker.
type Options struct {
	// Name shows in Lease.Conn as "pgbatontest:<Name>". Default "fake".
	Name string
	// AcquireTimeout bounds Acquire without a Wait option. Default 30s, as
	// pgbaton.Config.
	AcquireTimeout time.Duration
	// Logger receives "lock busy" and "lease lost" events. Default: none.
	Logger *slog.Logger
}

// Locker is the fake of one process's [pgbaton.Locker]. It implements
// [pgbaton.Interface].
type Locker struct {
	db   *DB
	opts Options

	mu     sync.Mutex
	leases map[*pgbaton.Lease]*record
	byHold map[*holding]*pgbaton.Lease
	closed bool
	done   chan struct{} // closed by Close
}

type record struct {
	h    *holding
	lose func(error)
}

var _ pgbaton.Interface = (*Locker)(nil)

// New returns a Locker on a fresh DB of its own.
func New() *Locker { return NewDB().NewLocker(Options{}) }

// NewLocker returns a Locker on db: one more process using the database.
func (db *DB) NewLocker(opts Options) *Locker {
	if opts.Name == "" {
		opts.Name = "fake"
	}
	if opts.AcquireTimeout == 0 {
		opts.AcquireTimeout = pgbaton.DefaultAcquireTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Locker{db: db, opts: opts, leases: map[*pgbaton.Lease]*record{}, byHold: map[*holding]*pgbaton.Lease{}, done: make(chan struct{})}
}

// DB returns the lock table the Locker uses.
func (l *Locker) DB() *DB { return l.db }

// TryAcquire takes key if it is free, else returns a
// [*pgbaton.NotAcquiredError]. Options: pgbaton.Shared; Wait is ignored.
func (l *Locker) TryAcquire(ctx context.Context, key pgbaton.Key, opts ...pgbaton.Option) (*pgbaton.Lease, error) {
	o := pgbaton.ResolveOptions(opts...)
	o.Wait, o.HasWait = 0, true
	return l.acquire(ctx, key, o)
}

// Acquire takes key, waiting at most the Wait option (default
// Options.AcquireTimeout) or until ctx ends.
func (l *Locker) Acquire(ctx context.Context, key pgbaton.Key, opts ...pgbaton.Option) (*pgbaton.Lease, error) {
	o := pgbaton.ResolveOptions(opts...)
	if !o.HasWait {
		o.Wait = l.opts.AcquireTimeout
	}
	return l.acquire(ctx, key, o)
}

func (l *Locker) acquire(ctx context.Context, key pgbaton.Key, o pgbaton.AcquireOptions) (*pgbaton.Lease, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	h := &holding{l: l, key: key, mode: o.Mode}
	id := idOf(key)
	l.db.mu.Lock()
	if l.isClosed() {
		l.db.mu.Unlock()
		return nil, pgbaton.ErrLockerClosed
	}
	st := l.db.stateLocked(id)
	if st.grantableLocked(o.Mode) {
		st.holders[h] = struct{}{}
		l.db.mu.Unlock()
		return l.grant(h)
	}
	if o.Wait == 0 {
		local := false
		for other := range st.holders {
			if other.l == l && conflicts(other.mode, o.Mode) {
				local = true
			}
		}
		l.db.mu.Unlock()
		return nil, l.busy(key, o.Mode, 0, local)
	}
	w := &waiter{h: h, granted: make(chan struct{})}
	st.queue = append(st.queue, w)
	l.db.mu.Unlock()

	timer := time.NewTimer(o.Wait)
	defer timer.Stop()
	var gaveUp error
	select {
	case <-w.granted:
		return l.grant(h)
	case <-timer.C:
	case <-ctx.Done():
		gaveUp = context.Cause(ctx)
	case <-l.done:
		gaveUp = pgbaton.ErrLockerClosed
	}
	l.db.mu.Lock()
	if w.done { // granted just as the caller gave up: hand it back
		l.db.unlockLocked(h)
	} else {
		w.done = true
		st := l.db.locks[id]
		for i, x := range st.queue {
			if x == w {
				st.queue = append(st.queue[:i], st.queue[i+1:]...)
				break
			}
		}
		l.db.wakeLocked(id, st) // the waiters behind it may go now
	}
	l.db.mu.Unlock()
	switch {
	case gaveUp == nil:
		return nil, l.busy(key, o.Mode, time.Since(start), false)
	case errors.Is(gaveUp, pgbaton.ErrLockerClosed):
		return nil, pgbaton.ErrLockerClosed
	}
	return nil, fmt.Errorf("pgbaton: waiting for %q: %w", key, gaveUp)
}

func (l *Locker) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *Locker) busy(key pgbaton.Key, mode pgbaton.Mode, waited time.Duration, local bool) error {
	l.opts.Logger.Info("pgbaton: lock busy", "key", key.String(), "key_id", key.ID(), "mode", mode.String(), "waited", waited, "instance", l.opts.Name)
	return &pgbaton.NotAcquiredError{Key: key, Mode: mode, Waited: waited, Local: local}
}

// grant turns a granted holding into a Lease.
func (l *Locker) grant(h *holding) (*pgbaton.Lease, error) {
	l.db.mu.Lock()
	l.db.token++
	token := l.db.token
	l.db.mu.Unlock()
	ls, lose := pgbaton.NewLease(pgbaton.LeaseInfo{
		Key: h.key, Mode: h.mode, Token: token, HasToken: true,
		Holder: "pgbatontest:" + l.opts.Name, Logger: l.opts.Logger,
	}, backend{l})
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.db.mu.Lock()
		l.db.unlockLocked(h)
		l.db.mu.Unlock()
		return nil, pgbaton.ErrLockerClosed
	}
	l.leases[ls] = &record{h: h, lose: lose}
	l.byHold[h] = ls
	l.mu.Unlock()
	return ls, nil
}

func (l *Locker) leaseOf(h *holding) *pgbaton.Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byHold[h]
}

// forget drops ls from the Locker's records.
func (l *Locker) forget(ls *pgbaton.Lease) (*record, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.leases[ls]
	if ok {
		delete(l.leases, ls)
		delete(l.byHold, r.h)
	}
	return r, ok
}

// Lose ends ls as lost with cause (ErrLostByTest if nil), as when its
// connection fails: the lock is freed, Done is closed, Err and Release
// return a [*pgbaton.LeaseLostError]. It reports false if ls was not held
// by l.
func (l *Locker) Lose(ls *pgbaton.Lease, cause error) bool {
	if cause == nil {
		cause = ErrLostByTest
	}
	r, ok := l.forget(ls)
	if !ok {
		return false
	}
	l.db.mu.Lock()
	l.db.unlockLocked(r.h)
	l.db.mu.Unlock()
	r.lose(cause)
	return true
}

// Drop frees ls's lock without the Locker noticing, as when the server
// ended the session but the process has not looked yet: another holder can
// take the lock, ls still looks held, and its Release returns a
// [*pgbaton.LeaseLostError] (cause pgbaton.ErrUnlockFalse).
func (l *Locker) Drop(ls *pgbaton.Lease) bool {
	l.mu.Lock()
	r, ok := l.leases[ls]
	l.mu.Unlock()
	if !ok {
		return false
	}
	l.db.mu.Lock()
	defer l.db.mu.Unlock()
	return l.db.unlockLocked(r.h)
}

// WithLock runs fn under a lease on key, as [pgbaton.Locker.WithLock]: fn's
// context is cancelled with the [*pgbaton.LeaseLostError] if the lease is
// lost, the lease is released when fn returns, panics or calls
// runtime.Goexit (the panic goes on unchanged), and the error joins fn's
// with the lease's.
func (l *Locker) WithLock(ctx context.Context, key pgbaton.Key, fn func(ctx context.Context) error, opts ...pgbaton.Option) error {
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

// errFnAborted is the cause of fn's context when fn panicked or called
// runtime.Goexit.
var errFnAborted = errors.New("pgbatontest: the function run under the lock panicked or exited its goroutine; the lock was released")

// WithXactLock behaves as WithLock (including on a panic, when the real one
// rolls back): the fake has no transactions and no connections.
func (l *Locker) WithXactLock(ctx context.Context, key pgbaton.Key, fn func(ctx context.Context) error, opts ...pgbaton.Option) error {
	return l.WithLock(ctx, key, fn, opts...)
}

// Held returns how many leases of l are held now.
func (l *Locker) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.leases)
}

// Close ends the Locker as pgbaton.Locker.Close does: waits end with
// pgbaton.ErrLockerClosed and every lease still held is lost with that
// cause. It is idempotent.
func (l *Locker) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	leases := make([]*pgbaton.Lease, 0, len(l.leases))
	for ls := range l.leases {
		leases = append(leases, ls)
	}
	l.mu.Unlock()
	for _, ls := range leases {
		l.Lose(ls, pgbaton.ErrLockerClosed)
	}
	return nil
}

// backend releases the fake's leases.
type backend struct{ l *Locker }

func (b backend) Unlock(ls *pgbaton.Lease) (bool, error) {
	b.l.mu.Lock()
	r, ok := b.l.leases[ls]
	b.l.mu.Unlock()
	if !ok {
		return false, nil
	}
	b.l.db.mu.Lock()
	defer b.l.db.mu.Unlock()
	return b.l.db.unlockLocked(r.h), nil
}

func (b backend) Forget(ls *pgbaton.Lease) bool {
	_, ok := b.l.forget(ls)
	return ok
}
