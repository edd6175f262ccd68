package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/fence"
	"github.com/pgbaton/pgbaton/internal/history"
)

// WorkerEnv carries a worker's configuration (JSON) into a re-executed test
// binary; TestMain runs [WorkerMain] when it is set.
const WorkerEnv = "PGBATON_CHAOS_WORKER"

// Worker modes.
const (
	// ModeCorrect uses pgbaton as documented: it checks Done before every
	// write and stops at a loss.
	ModeCorrect = "correct"
	// ModeIgnoreDone never looks at Done: it goes on writing for its whole
	// critical section after a loss (deliberately broken).
	ModeIgnoreDone = "ignore-done"
	// ModePoolLock takes session locks through a plain connection pool and
	// unlocks through it too (the first seed's bug, deliberately broken).
	ModePoolLock = "pool-lock"
	// ModeForgetOnError takes session locks on a pinned connection of its
	// own and, when the lock statement ends in an error, forgets the key
	// while the connection stays open and keeps serving: the lock survives
	// the statement's error (deliberately broken). One statement in eight
	// fails right after its grant, so the leak happens in every run.
	ModeForgetOnError = "forget-on-error"
	// ModePanicLeak takes transaction-scoped locks on a pinned connection
	// and does not end the transaction when the critical section panics
	// (the worker recovers the panic): the lock stays held (deliberately
	// broken). One critical section in four panics.
	ModePanicLeak = "panic-leak"
	// ModeUnboundedWait waits for a lock with no lock_timeout and ignores
	// the wait the caller asked for (20ms), while a third of the holders
	// keep the key for 8 s (deliberately broken): its calls outlive their
	// bound (7.02s).
	ModeUnboundedWait = "unbounded-wait"
)

// modeStuck is a worker whose goroutine blocks forever in a call and which
// therefore never stops: the harness must end it with SIGQUIT and report
// its goroutines (deliberately broken; for TestStuckWorkerDumped).
const modeStuck = "stuck"

// rawMode reports whether mode takes locks with raw pgx on pinned
// connections instead of a Locker.
func rawMode(mode string) bool {
	return mode == ModeForgetOnError || mode == ModePanicLeak || mode == ModeUnboundedWait
}

// resource is the fenced table; every applied write is logged by a trigger
// in commit order (seq).
const resourceDDL = `
CREATE TABLE chaos_resource (key text PRIMARY KEY, value bigint NOT NULL DEFAULT 0,
	writer text NOT NULL DEFAULT '', fence_token bigint NOT NULL DEFAULT 0);
CREATE TABLE chaos_writes (seq bigserial PRIMARY KEY, key text NOT NULL, token bigint NOT NULL,
	lease text NOT NULL, at timestamptz NOT NULL);
CREATE FUNCTION chaos_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO chaos_writes (key, token, lease, at) VALUES (NEW.key, NEW.fence_token, NEW.writer, clock_timestamp());
	RETURN NEW;
END $$;
CREATE TRIGGER chaos_log AFTER UPDATE ON chaos_resource FOR EACH ROW EXECUTE FUNCTION chaos_log_write();`

var resource = fence.Table{Name: "chaos_resource", KeyColumn: "key"}

type workerConfig struct {
	Proc       string        `json:"proc"`
	LockDSN    string        `json:"lock_dsn"`
	AppDSN     string        `json:"app_dsn"`
	Keys       []string      `json:"keys"`
	Out        string        `json:"out"`
	Mode       string        `json:"mode"`
	Unfenced   bool          `json:"unfenced"`
	Goroutines int           `json:"goroutines"`
	Lockers    int           `json:"lockers"` // Lockers per process; goroutine g uses Locker g mod Lockers
	Pace       time.Duration `json:"pace"`    // pause between writes in a critical section
	Backoff    time.Duration `json:"backoff"` // pause after a busy try
	// Slop is added to every documented bound of a call: scheduling delays
	// of a busy machine (stalls over 200ms are recorded and not counted).
	Slop time.Duration `json:"slop"`
	// PanicOneIn: one WithLock/WithXactLock section in PanicOneIn panics
	// (the worker recovers it, as an HTTP server would); 0 never.
	PanicOneIn int  `json:"panic_one_in"`
	Verbose    bool `json:"verbose"`
}

// Locker settings of the workers. ConnectTimeout is short so that a call
// that waits on a connection it cannot open stands out against its bound;
// idle lock connections are retired quickly so that new ones keep being
// opened (and pick up the role settings the nemesis changes).
const (
	workerConnectTimeout  = 2 * time.Second
	workerMaxConnIdleTime = 3 * time.Second
)

// WorkerMain runs one worker process: it contends for the keys until told
// to stop (a "stop" line or EOF on stdin), recording every lease and every
// call to its history file. It returns the process exit code.
//
// Commands on stdin, one a line: "stop"; "hog <ms>" (hold the application
// pool); "reopen" (close a Locker, preferably one with a call in flight,
// and open it again); "pause <n>" (finish the current operation, start no
// new one, and answer "paused <n>" on stdout once every goroutine is idle
// and no Locker is being reopened); "resume".
func WorkerMain() int {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(os.Getenv(WorkerEnv)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker: bad config:", err)
		return 2
	}
	if err := runWorker(cfg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chaos worker:", err)
		return 1
	}
	return 0
}

type worker struct {
	cfg     workerConfig
	rec     *history.Recorder
	lcfg    []pgbaton.Config // of each Locker, to open it again
	lmu     sync.Mutex
	lockers []*pgbaton.Locker // (lmu) nil while being opened again
	inCall  []atomic.Int32    // goroutines in a call, per Locker
	app     *pgxpool.Pool     // fenced writes (and the locks, in ModePoolLock)
	clock   *pgxpool.Pool     // server time and the after-error checks; immune to the role's timeouts
	offset  atomic.Int64      // server minus local clock, ns
	seq     atomic.Int64
	calls   atomic.Int64

	outMu sync.Mutex
	out   io.Writer // stdout: "ready", "paused <n>"

	mu        sync.Mutex
	cond      *sync.Cond
	active    map[string]int           // goroutines in a call on the key or holding it
	pending   map[string]int           // after-error checks of the key waiting for active to drop to 0
	heldBy    map[string]int           // key -> Locker index of a goroutine holding it
	relCh     map[string]chan struct{} // closed when a goroutine of this process starts releasing the key
	reported  map[[2]int64]bool        // (pid, key id) leaks already recorded
	paused    bool
	pauseID   string
	idle      int
	reopening int // Lockers being closed and opened again
}

func runWorker(cfg workerConfig, stdin io.Reader, stdout io.Writer) (err error) {
	f, err := os.OpenFile(cfg.Out, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if cfg.Lockers == 0 {
		cfg.Lockers = 2
	}
	if cfg.Slop == 0 {
		cfg.Slop = time.Second
	}
	w := &worker{cfg: cfg, rec: history.NewRecorder(f), out: stdout,
		active: map[string]int{}, pending: map[string]int{}, heldBy: map[string]int{},
		relCh: map[string]chan struct{}{}, reported: map[[2]int64]bool{}}
	w.cond = sync.NewCond(&w.mu)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if cfg.Verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	setup, cancelSetup := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSetup()
	if w.app, err = newPool(setup, cfg.AppDSN, "chaos-app:"+cfg.Proc, int32(cfg.Goroutines), false); err != nil {
		return err
	}
	defer w.app.Close()
	if w.clock, err = newPool(setup, cfg.AppDSN, "chaos-clock:"+cfg.Proc, int32(cfg.Goroutines)+1, true); err != nil {
		return err
	}
	defer w.clock.Close()
	if cfg.Mode != ModePoolLock && !rawMode(cfg.Mode) {
		w.inCall = make([]atomic.Int32, cfg.Lockers)
		for i := range cfg.Lockers {
			lc := pgbaton.Config{ConnString: cfg.LockDSN, InstanceName: lockerName(cfg.Proc, i),
				MaxConns: 4, Logger: logger, ConnectTimeout: workerConnectTimeout, MaxConnIdleTime: workerMaxConnIdleTime}
			l, err := pgbaton.New(setup, lc)
			if err != nil {
				return err
			}
			w.lcfg = append(w.lcfg, lc)
			w.lockers = append(w.lockers, l)
		}
		defer w.closeLockers()
	}
	w.now(setup) // prime the clock offset
	if err := w.say("ready"); err != nil {
		return err
	}

	// Commands from the harness.
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "stop":
				w.stop(cancel)
			case len(f) == 2 && f[0] == "hog":
				ms, _ := strconv.Atoi(f[1])
				go w.hog(ctx, time.Duration(ms)*time.Millisecond)
			case len(f) == 2 && f[0] == "pause":
				w.pause(f[1])
			case len(f) == 1 && f[0] == "reopen":
				w.mu.Lock()
				w.reopening++
				w.mu.Unlock()
				go w.reopen(ctx)
			case len(f) == 1 && f[0] == "resume":
				w.mu.Lock()
				w.paused = false
				w.cond.Broadcast()
				w.mu.Unlock()
			}
		}
		w.stop(cancel) // EOF: the harness is gone
	}()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchStalls(ctx)
	}()
	for g := range cfg.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop(ctx, g)
		}()
	}
	wg.Wait()
	return w.rec.Err()
}

// lockerName is the InstanceName of Locker i of a process: its lock
// sessions are "pgbaton:<proc>~<letter>:<n>", which the nemesis finds by
// the prefix "pgbaton:<proc>~".
func lockerName(proc string, i int) string { return proc + "~" + string(rune('a'+i)) }

func (w *worker) say(line string) error {
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_, err := fmt.Fprintln(w.out, line)
	return err
}

func (w *worker) stop(cancel context.CancelFunc) {
	cancel()
	w.mu.Lock()
	w.paused = false
	w.cond.Broadcast()
	w.mu.Unlock()
}

// pause makes the goroutines stop between operations; the last one to
// stop answers "paused <id>".
func (w *worker) pause(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.paused, w.pauseID = true, id
	w.ackPauseLocked()
}

// ackPauseLocked answers a pause once everything is idle. w.mu is held.
func (w *worker) ackPauseLocked() {
	if w.paused && w.idle == w.cfg.Goroutines && w.reopening == 0 {
		_ = w.say("paused " + w.pauseID) // the harness reads it; a broken pipe means it is gone
	}
}

// waitResumed blocks while the process is paused. It returns false when
// the process is stopping.
func (w *worker) waitResumed(ctx context.Context) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.paused {
		return ctx.Err() == nil
	}
	w.idle++
	w.ackPauseLocked()
	for w.paused && ctx.Err() == nil {
		w.cond.Wait()
	}
	w.idle--
	return ctx.Err() == nil
}

// closeLockers closes every Locker, recording each Close as a call.
func (w *worker) closeLockers() {
	w.lmu.Lock()
	ls := append([]*pgbaton.Locker(nil), w.lockers...)
	w.lmu.Unlock()
	for _, l := range ls {
		if l != nil {
			w.closeLocker(l)
		}
	}
}

// closeLocker closes l, recording the call. Close's bound: its waits end
// at once, and closing a connection is bounded by the lease bound; a
// cancel request for a wait in flight may need a connection
// (ConnectTimeout).
func (w *worker) closeLocker(l *pgbaton.Locker) {
	cfg := l.Config()
	c := w.callStart("Close", "", 0, cfg.ConnectTimeout+cfg.LeaseTimeout)
	err := l.Close()
	w.callEnd(c, err, false, 0)
}

// lockerAt returns Locker li, or nil while it is being opened again.
func (w *worker) lockerAt(li int) *pgbaton.Locker {
	w.lmu.Lock()
	defer w.lmu.Unlock()
	return w.lockers[li]
}

// reopen closes one Locker, preferably one with a call in flight (the
// nemesis sends it during a black hole), with a wait of its own in flight
// on it, and opens it again, retrying
// until the server can be reached. The Close is recorded as a fault that
// takes locks (its leases are lost) and as a call against its bound.
func (w *worker) reopen(ctx context.Context) {
	defer func() {
		w.mu.Lock()
		w.reopening--
		w.ackPauseLocked()
		w.mu.Unlock()
	}()
	li := rand.N(len(w.lcfg))
	for i := range w.inCall {
		if w.inCall[i].Load() > 0 {
			li = i
			break
		}
	}
	w.lmu.Lock()
	old := w.lockers[li]
	w.lockers[li] = nil
	w.lmu.Unlock()
	if old == nil {
		return
	}
	// A wait in flight on it for sure, with the default wait (30s): the
	// harness's own Acquire, which Close must end without waiting for it.
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		key := w.randKey()
		if k, ok := w.siblingKey(-1); ok {
			key = k // held: the wait stays in the server's queue
		}
		w.begin(key)
		defer w.end(key)
		cfg := old.Config()
		c := w.callStart("Acquire", key, cfg.AcquireTimeout, boundsOf(cfg).acquire(cfg.AcquireTimeout))
		lease, err := old.Acquire(ctx, pgbaton.KeyName(key)) // the default wait, AcquireTimeout (30s)
		w.callEnd(c, err, false, 0)
		if err == nil {
			_ = lease.Release() // not a lease of the run: granted before Close, given back
		}
	}()
	w.sleep(ctx, 200*time.Millisecond) // let it reach the server's queue
	from := w.estimate()
	w.closeLocker(old)
	<-waited
	w.rec.Fault(history.Fault{Kind: FaultLockerClose, Proc: w.cfg.Proc, TakesLocks: true, From: from, To: w.estimate(),
		Note: lockerName(w.cfg.Proc, li)})
	for ctx.Err() == nil {
		nctx, cancel := context.WithTimeout(ctx, 2*workerConnectTimeout)
		l, err := pgbaton.New(nctx, w.lcfg[li])
		cancel()
		if err == nil {
			w.lmu.Lock()
			w.lockers[li] = l
			w.lmu.Unlock()
			return
		}
		w.sleep(ctx, 200*time.Millisecond) // the server cannot be reached yet
	}
}

// newPool opens a pool. An immune pool's sessions override the role's
// lock_timeout and statement_timeout (settings sent at connection start
// take precedence over ALTER ROLE ... SET), so the harness's own clock reads
// and checks are not the ones that fail under the role-timeouts fault.
func newPool(ctx context.Context, dsn, app string, size int32, immune bool) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = size
	pc.ConnConfig.RuntimeParams["application_name"] = app
	if immune {
		pc.ConnConfig.RuntimeParams["lock_timeout"] = "0"
		pc.ConnConfig.RuntimeParams["statement_timeout"] = "0"
	}
	// Accepted writes must survive a server crash like the tokens do.
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	return pgxpool.NewWithConfig(ctx, pc)
}

// now reads the server's clock, or estimates it from the local clock and
// the last known offset when the server cannot be reached (ok false).
func (w *worker) now(ctx context.Context) (t time.Time, ok bool) {
	var sent time.Time
	var err error
	for attempt := 0; attempt < 2; attempt++ { // a second try gets a fresh connection after a restart
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		sent = time.Now()
		err = w.clock.QueryRow(qctx, "SELECT clock_timestamp()").Scan(&t)
		cancel()
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return w.estimate(), false
	}
	mid := sent.Add(time.Since(sent) / 2)
	w.offset.Store(int64(t.Sub(mid)))
	return t, true
}

func (w *worker) estimate() time.Time { return w.toServer(time.Now()) }

func (w *worker) toServer(t time.Time) time.Time { return t.Add(time.Duration(w.offset.Load())) }

// stallAfter is the gap in a 20ms ticker that counts as a stall.
const stallAfter = 200 * time.Millisecond

// watchStalls records the stretches in which this process could not run
// (CPU starvation, a VM pause, SIGSTOP) as history.Stall faults: a holder
// that looks at Done late because it could not run is not ignoring it.
func (w *worker) watchStalls(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := time.Now() // the tick's time is when it was due, not when we ran
			if gap := now.Sub(last); gap > stallAfter {
				w.rec.Fault(history.Fault{Kind: history.Stall, Proc: w.cfg.Proc,
					From: w.toServer(last), To: w.toServer(last), Until: w.toServer(now), Note: gap.Round(time.Millisecond).String()})
			}
			last = now
		}
	}
}

// hog holds every connection of the application pool for d: the pool
// exhaustion fault. Leases live on their own connections and must not
// notice.
func (w *worker) hog(ctx context.Context, d time.Duration) {
	hctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var held []*pgxpool.Conn
	for range w.app.Config().MaxConns {
		c, err := w.app.Acquire(hctx)
		if err != nil {
			break
		}
		held = append(held, c)
	}
	<-hctx.Done()
	for _, c := range held {
		c.Release()
	}
}

func (w *worker) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d+1) }
