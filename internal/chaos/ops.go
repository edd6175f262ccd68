package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/internal/history"
)

// Operations of a worker goroutine. Each iteration picks a key and one of:
//
//   - try: TryAcquire;
//   - wait: Acquire with Wait(1s);
//   - short wait: Acquire with Wait(1-20ms), on a key another Locker of the
//     process holds when there is one, so that the wait tends to expire as
//     the holder releases;
//   - cancelled wait: Acquire with Wait(1s) and a context cancelled at a
//     random moment of the wait;
//   - hand-off: Acquire with Wait(5s) on a key another Locker of the process
//     holds, with a context cancelled 0-3ms after that holder starts
//     releasing (the grant and the cancel race);
//   - WithLock and WithXactLock with Wait(1s), whose section panics one
//     time in Options.PanicOneIn (recovered by the worker).
//
// The goroutines of a process use different Lockers (goroutine g uses
// Locker g mod Lockers), so they contend through the server like separate
// processes, and the process knows when its own holders release.
type opKind int

const (
	opTry opKind = iota
	opWait
	opShortWait
	opCancelledWait
	opHandoff
	opWithLock
	opWithXactLock
)

var opNames = [...]string{"try", "wait", "short-wait", "cancelled-wait", "hand-off", "with-lock", "with-xact-lock"}

func (o opKind) String() string { return opNames[o] }

func pickOp(mode string) opKind {
	n := rand.N(100)
	if mode == ModeIgnoreDone {
		n = rand.N(40) // only tries and waits: the broken holder is the lease's
	}
	switch {
	case n < 25:
		return opTry
	case n < 40:
		return opWait
	case n < 58:
		return opShortWait
	case n < 68:
		return opCancelledWait
	case n < 78:
		return opHandoff
	case n < 89:
		return opWithLock
	}
	return opWithXactLock
}

// errChaosPanic is what a critical section panics with.
var errChaosPanic = errors.New("chaos: deliberate panic in a critical section")

// bounds are the documented bounds of the calls, from a Locker's
// configuration (see GUARANTEES.md, "Liveness"): a try or a wait may also
// open a lock connection (ConnectTimeout) and confirm it (LeaseTimeout).
type bounds struct{ connect, lease, release time.Duration }

func boundsOf(cfg pgbaton.Config) bounds {
	return bounds{connect: cfg.ConnectTimeout, lease: cfg.LeaseTimeout, release: cfg.ReleaseTimeout}
}

// defaultBounds are those of the workers' Lockers, for the raw modes.
var defaultBounds = bounds{connect: workerConnectTimeout, lease: pgbaton.DefaultLeaseTimeout, release: pgbaton.DefaultReleaseTimeout}

func (b bounds) acquire(wait time.Duration) time.Duration { return wait + b.connect + b.lease }
func (b bounds) with(wait time.Duration) time.Duration {
	return wait + b.connect + b.lease + b.release
}

type callRec struct {
	c  history.Call
	t0 time.Time
}

// callStart records the start of a call; bound gets the slop added.
func (w *worker) callStart(op, key string, wait, bound time.Duration) *callRec {
	c := history.Call{ID: fmt.Sprintf("%s-c%d", w.cfg.Proc, w.calls.Add(1)), Proc: w.cfg.Proc, Op: op, Key: key,
		Wait: wait, Start: w.estimate(), Bound: bound + w.cfg.Slop}
	w.rec.Call(c)
	return &callRec{c: c, t0: time.Now()}
}

// callEnd records the end of a call; inFn is time spent in the caller's
// own function, not counted against the bound.
func (w *worker) callEnd(cr *callRec, err error, panicked bool, inFn time.Duration) *history.Call {
	cr.c.Took = time.Since(cr.t0) - inFn
	cr.c.Done = true
	cr.c.Panicked = panicked
	if err != nil {
		cr.c.Err = err.Error()
	}
	w.rec.Call(cr.c)
	return &cr.c
}

func (w *worker) randKey() string { return w.cfg.Keys[rand.N(len(w.cfg.Keys))] }

// begin marks this goroutine as using key (in a call on it, or holding
// it); it waits while an after-error check of the key is pending.
func (w *worker) begin(key string) {
	w.mu.Lock()
	for w.pending[key] > 0 {
		w.cond.Wait()
	}
	w.active[key]++
	w.mu.Unlock()
}

func (w *worker) end(key string) {
	w.mu.Lock()
	w.active[key]--
	if w.active[key] == 0 {
		w.cond.Broadcast()
	}
	w.mu.Unlock()
}

// holding records that a goroutine on Locker li holds key.
func (w *worker) holding(key string, li int) {
	w.mu.Lock()
	w.heldBy[key] = li
	w.mu.Unlock()
}

// releasing is called just before a holder of key releases it: it wakes
// the hand-off waiters of the process.
func (w *worker) releasing(key string) {
	w.mu.Lock()
	delete(w.heldBy, key)
	if ch := w.relCh[key]; ch != nil {
		close(ch)
		delete(w.relCh, key)
	}
	w.mu.Unlock()
}

// releaseChan is closed when a holder of key in this process next starts
// releasing it.
func (w *worker) releaseChan(key string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := w.relCh[key]
	if ch == nil {
		ch = make(chan struct{})
		w.relCh[key] = ch
	}
	return ch
}

// siblingKey returns a key held right now by a goroutine of this process
// on another Locker than li.
func (w *worker) siblingKey(li int) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, i := range w.heldBy {
		if i != li {
			return k, true
		}
	}
	return "", false
}

// lockerOnce is one iteration of a correct-mode (or ignore-done) goroutine.
func (w *worker) lockerOnce(ctx context.Context, g int) {
	li := g % len(w.lcfg)
	lk := w.lockerAt(li)
	if lk == nil {
		w.sleep(ctx, 50*time.Millisecond) // being opened again
		return
	}
	w.inCall[li].Add(1)
	defer w.inCall[li].Add(-1)
	b := boundsOf(lk.Config())
	key := w.randKey()
	op := pickOp(w.cfg.Mode)
	fromSibling := false
	if op == opShortWait || op == opHandoff {
		if k, ok := w.siblingKey(li); ok {
			key, fromSibling = k, true
		}
	}
	if op == opWithLock || op == opWithXactLock {
		w.withOnce(ctx, li, lk, b, key, op)
		return
	}
	w.begin(key)
	before, ok0 := w.now(ctx)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wait time.Duration
	switch op {
	case opWait:
		wait = time.Second
	case opShortWait:
		wait = time.Duration(1+rand.N(20)) * time.Millisecond
	case opCancelledWait:
		wait = time.Second
		t := time.AfterFunc(rand.N(wait), cancel)
		defer t.Stop()
	case opHandoff:
		wait = 5 * time.Second
		rel := w.releaseChan(key)
		go func() {
			select {
			case <-rel:
				time.Sleep(rand.N(3 * time.Millisecond)) // 0-3ms after the holder starts releasing
				cancel()
			case <-actx.Done():
			}
		}()
		if !fromSibling {
			t := time.AfterFunc(rand.N(200*time.Millisecond), cancel) // nobody to hand off from here
			defer t.Stop()
		}
	}
	var lease *pgbaton.Lease
	var err error
	var c *callRec
	if op == opTry {
		c = w.callStart("TryAcquire", key, 0, b.acquire(0))
		lease, err = lk.TryAcquire(actx, pgbaton.KeyName(key))
	} else {
		c = w.callStart("Acquire", key, wait, b.acquire(wait))
		lease, err = lk.Acquire(actx, pgbaton.KeyName(key), pgbaton.Wait(wait))
	}
	call := w.callEnd(c, err, false, 0)
	cancel()
	if err != nil {
		w.end(key)
		var na *pgbaton.NotAcquiredError
		if !errors.As(err, &na) || (!na.Local && na.Waited > 0) {
			// Not a plain busy answer: the key must not be left locked.
			w.checkLeft(ctx, call, key)
		}
		if errors.Is(err, pgbaton.ErrNotAcquired) || errors.Is(err, context.Canceled) {
			w.sleep(ctx, jitter(w.cfg.Backoff))
		} else {
			w.sleep(ctx, jitter(100*time.Millisecond)) // server down, connection refused...
		}
		return
	}
	w.holdLease(ctx, li, b, lease, key, before, ok0)
}

// signal records when a lease's loss was reported, read independently of
// the holder's logic.
type signal struct {
	done chan struct{}
	at   time.Time
	est  bool
	lost bool
}

// holdLease runs the critical section of a granted lease, releases it,
// and ends the goroutine's use of key.
func (w *worker) holdLease(ctx context.Context, li int, b bounds, lease *pgbaton.Lease, key string, before time.Time, ok0 bool) {
	grant, ok1 := w.now(ctx)
	w.holding(key, li)
	tok, hasTok := lease.Token()
	_, pid := lease.Session()
	l := history.Lease{
		ID: fmt.Sprintf("%s-%d", w.cfg.Proc, w.seq.Add(1)), Proc: w.cfg.Proc, Key: key,
		Token: tok, HasToken: hasTok, PID: int(pid), Before: before, Grant: grant,
		Kind: history.Open, Estimated: !ok0 || !ok1,
	}
	w.rec.Lease(l)

	sig := &signal{done: make(chan struct{})}
	stop := context.AfterFunc(lease.Context(), func() {
		defer close(sig.done)
		if errors.Is(context.Cause(lease.Context()), pgbaton.ErrReleased) {
			return
		}
		sig.lost = true
		var ok bool
		sig.at, ok = w.now(context.Background())
		sig.est = !ok
	})
	defer stop()

	noticed := false // the holder saw Done during its critical section
	writes := 1 + rand.N(3)
	if w.cfg.Mode == ModeIgnoreDone {
		writes = 60 // a long critical section (about 3s), never looking at Done
	}
	for i := 0; i < writes; i++ {
		if w.cfg.Mode == ModeIgnoreDone {
			w.sleep(ctx, jitter(w.cfg.Pace))
		} else {
			t := time.NewTimer(jitter(w.cfg.Pace))
			select {
			case <-lease.Done():
				noticed = true
			case <-t.C:
			}
			t.Stop()
			if noticed {
				break
			}
			// Between the last look at Done and the write reaching the
			// resource there is always a window (preparing the change, a
			// GC pause, the network). A holder frozen in it writes with a
			// token that may be stale by the time it wakes: the fence, not
			// the check, must stop that write.
			w.sleep(ctx, jitter(w.cfg.Pace))
		}
		w.write(l, key, tok)
	}

	if !noticed && w.cfg.Mode == ModeCorrect {
		select { // a last look before leaving the critical section
		case <-lease.Done():
			noticed = true
		default:
		}
	}
	var relCall *history.Call
	release := func() error {
		w.releasing(key)
		c := w.callStart("Release", key, 0, b.release)
		err := lease.Release()
		relCall = w.callEnd(c, err, false, 0)
		return err
	}
	if noticed {
		<-sig.done
		l.End, l.Signalled, l.Kind = sig.at, sig.at, history.Lost
		l.Estimated = l.Estimated || sig.est
		_ = release() // returns the loss we already know about
	} else {
		end, ok := w.now(ctx)
		l.End = end
		l.Estimated = l.Estimated || !ok
		if err := release(); err != nil {
			l.Kind = history.Lost
			<-sig.done
			l.Signalled = sig.at
			l.UnlockFalse = errors.Is(err, pgbaton.ErrUnlockFalse)
		} else {
			l.Kind = history.Released
		}
		if w.cfg.Mode == ModeIgnoreDone {
			<-sig.done
			if sig.lost {
				l.Signalled = sig.at // told long before it stopped
			}
		}
	}
	if err := lease.Err(); l.Kind == history.Lost && err != nil {
		l.Cause = err.Error()
		l.HeartbeatTimeout = errors.Is(err, pgbaton.ErrHeartbeatTimeout)
	}
	w.rec.Lease(l)
	w.end(key)
	if relCall.Err != "" {
		w.checkLeft(ctx, relCall, key)
	}
}

// withOnce is one WithLock or WithXactLock call. The section takes no
// fencing token (neither gives one), so it makes no writes: it is recorded
// as a lease for the overlap check and paces one to three steps, looking at
// its context before each; one time in PanicOneIn it panics at the end.
func (w *worker) withOnce(ctx context.Context, li int, lk *pgbaton.Locker, b bounds, key string, op opKind) {
	w.begin(key)
	before, ok0 := w.now(ctx)
	wait := time.Second
	name := "WithLock"
	with := lk.WithLock
	if op == opWithXactLock {
		name, with = "WithXactLock", lk.WithXactLock
	}
	var (
		inFn     time.Duration
		l        history.Lease
		ran      bool
		sig      = &signal{done: make(chan struct{})}
		stopSig  func() bool
		panicked bool
	)
	c := w.callStart(name, key, wait, b.with(wait))
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r != errChaosPanic { //nolint:errorlint // the value panicked with, not a wrapped error
					panic(r)
				}
				panicked = true
			}
		}()
		return with(ctx, pgbaton.KeyName(key), func(fctx context.Context) error {
			t0 := time.Now()
			defer func() { inFn = time.Since(t0) }()
			ran = true
			grant, ok1 := w.now(ctx)
			w.holding(key, li)
			l = history.Lease{ID: fmt.Sprintf("%s-%d", w.cfg.Proc, w.seq.Add(1)), Proc: w.cfg.Proc, Key: key,
				Before: before, Grant: grant, Kind: history.Open, Estimated: !ok0 || !ok1}
			if held := w.heldByProc(ctx, key); len(held) == 1 {
				l.PID = held[0].PID // for the faults aimed at a backend
			}
			w.rec.Lease(l)
			stopSig = context.AfterFunc(fctx, func() {
				defer close(sig.done)
				if !errors.Is(context.Cause(fctx), pgbaton.ErrLeaseLost) {
					return
				}
				sig.lost = true
				var ok bool
				sig.at, ok = w.now(context.Background())
				sig.est = !ok
			})
			for range 1 + rand.N(3) {
				t := time.NewTimer(jitter(w.cfg.Pace))
				select {
				case <-fctx.Done():
				case <-t.C:
				}
				t.Stop()
				if fctx.Err() != nil {
					break
				}
			}
			end, ok := w.now(ctx)
			l.End = end
			l.Estimated = l.Estimated || !ok
			w.releasing(key)
			if w.cfg.PanicOneIn > 0 && rand.N(w.cfg.PanicOneIn) == 0 {
				l.Kind, l.Panicked = history.Released, true
				w.rec.Lease(l)
				panic(errChaosPanic)
			}
			return nil
		}, pgbaton.Wait(wait))
	}()
	call := w.callEnd(c, err, panicked, inFn)
	if ran && !panicked {
		if !stopSig() {
			<-sig.done
		}
		switch {
		case sig.lost:
			l.Kind, l.Signalled = history.Lost, sig.at
			l.Estimated = l.Estimated || sig.est
		case errors.Is(err, pgbaton.ErrLeaseLost):
			l.Kind, l.Signalled = history.Lost, l.End
			l.UnlockFalse = errors.Is(err, pgbaton.ErrUnlockFalse)
		default:
			l.Kind = history.Released
		}
		if l.Kind == history.Lost && err != nil {
			l.Cause = err.Error()
			l.HeartbeatTimeout = errors.Is(err, pgbaton.ErrHeartbeatTimeout)
		}
		w.rec.Lease(l)
	} else if ran && stopSig != nil {
		stopSig()
	}
	w.end(key)
	if err != nil || panicked {
		var na *pgbaton.NotAcquiredError
		if !errors.As(err, &na) || !na.Local {
			w.checkLeft(ctx, call, key)
		}
		w.sleep(ctx, jitter(w.cfg.Backoff))
	}
}

// settle is how long a lock of this process may outlive the failure of
// the call that took it before it counts as left held: the server frees
// the locks of a connection the client closed at once, but those of a
// session cut off by the network only after its release time.
func (w *worker) settle() time.Duration {
	cfg := pgbaton.Config{}
	if l := w.anyLocker(); l != nil {
		cfg = l.Config()
	} else {
		cfg.KeepaliveIdle, cfg.KeepaliveInterval, cfg.KeepaliveCount = pgbaton.DefaultKeepaliveIdle, pgbaton.DefaultKeepaliveInterval, pgbaton.DefaultKeepaliveCount
		cfg.TCPUserTimeout = pgbaton.DefaultTCPUserTimeout
	}
	return cfg.ServerReleaseTimeout() + 2*time.Second
}

// heldByProcSQL lists the granted advisory locks on one bigint key (high
// half in classid, low half in objid, objsubid 1) held by sessions whose
// application_name matches $3.
const heldByProcSQL = `SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::int8::oid AND l.objid = $2::int8::oid AND a.application_name LIKE $3
ORDER BY l.pid`

// heldByProc lists this process's lock sessions that hold key (nil if the
// server cannot be asked).
func (w *worker) heldByProc(ctx context.Context, key string) []history.Held {
	id := pgbaton.KeyName(key).ID()
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rows, err := w.clock.Query(qctx, heldByProcSQL, int64(uint64(id)>>32), int64(uint32(id)), "pgbaton:"+w.cfg.Proc+"~%")
	if err != nil {
		return nil
	}
	defer rows.Close()
	var held []history.Held
	for rows.Next() {
		h := history.Held{Key: key, Proc: w.cfg.Proc}
		if rows.Scan(&h.PID, &h.App) == nil {
			held = append(held, h)
		}
	}
	if rows.Err() != nil {
		return nil
	}
	return held
}

// checkLeft is the after-error check: call failed on key (or its section
// panicked), and this goroutine no longer uses key. If a session of this
// process still holds key, the check waits until no goroutine of the
// process uses the key (new uses of it wait meanwhile), and then until the
// lock goes away, at most settle. A lock that stays is recorded on the
// call as LeftHeld: nothing of the process believes it holds the key, yet
// the key is locked by the process.
func (w *worker) checkLeft(ctx context.Context, call *history.Call, key string) {
	held := w.heldByProc(ctx, key)
	if len(held) == 0 {
		return
	}
	id := pgbaton.KeyName(key).ID()
	w.mu.Lock()
	fresh := false
	for _, h := range held {
		if !w.reported[[2]int64{int64(h.PID), id}] {
			fresh = true
		}
	}
	if !fresh {
		w.mu.Unlock()
		return // a leak already recorded
	}
	w.pending[key]++
	wake := time.AfterFunc(10*time.Second, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	deadline := time.Now().Add(10 * time.Second)
	for w.active[key] > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		w.cond.Wait()
	}
	alone := w.active[key] == 0
	w.mu.Unlock()
	wake.Stop()
	defer func() {
		w.mu.Lock()
		w.pending[key]--
		w.cond.Broadcast()
		w.mu.Unlock()
	}()
	if !alone {
		return // the key stayed in use: no verdict
	}
	settle := w.settle()
	first := time.Now()
	for {
		held = w.heldByProc(ctx, key)
		if len(held) == 0 || ctx.Err() != nil {
			return
		}
		if time.Since(first) >= settle {
			break
		}
		w.sleep(ctx, 100*time.Millisecond) // lock ownership is the server's state
	}
	h := held[0]
	h.For = time.Since(first)
	w.mu.Lock()
	dup := false
	for _, x := range held {
		dup = dup || w.reported[[2]int64{int64(x.PID), id}]
		w.reported[[2]int64{int64(x.PID), id}] = true
	}
	w.mu.Unlock()
	if dup {
		return // another failed call of the process, checked at the same time, recorded it
	}
	call.LeftHeld = &h
	w.rec.Call(*call)
}

func (w *worker) anyLocker() *pgbaton.Locker {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	for _, l := range w.lockers {
		if l != nil {
			return l
		}
	}
	return nil
}
