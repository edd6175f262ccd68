package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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
)

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
	Pace       time.Duration `json:"pace"`    // pause between writes in a critical section
	Backoff    time.Duration `json:"backoff"` // pause after a busy try
	Verbose    bool          `json:"verbose"`
}

// WorkerMain runs one worker process: it contends for the keys until told
// to stop (a "stop" line or EOF on stdin), recording every lease to its
// history file. It returns the process exit code.
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
	cfg    workerConfig
	rec    *history.Recorder
	locker *pgbaton.Locker
	app    *pgxpool.Pool // fenced writes (and the locks, in ModePoolLock)
	clock  *pgxpool.Pool // server time
	offset atomic.Int64  // server minus local clock, ns
	seq    atomic.Int64
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
	w := &worker{cfg: cfg, rec: history.NewRecorder(f)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if cfg.Verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	setup, cancelSetup := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSetup()
	if w.app, err = newPool(setup, cfg.AppDSN, "chaos-app:"+cfg.Proc, int32(cfg.Goroutines)); err != nil {
		return err
	}
	defer w.app.Close()
	if w.clock, err = newPool(setup, cfg.AppDSN, "chaos-clock:"+cfg.Proc, int32(cfg.Goroutines)+1); err != nil {
		return err
	}
	defer w.clock.Close()
	if cfg.Mode != ModePoolLock {
		w.locker, err = pgbaton.New(setup, pgbaton.Config{ConnString: cfg.LockDSN, InstanceName: cfg.Proc, MaxConns: 4, Logger: logger})
		if err != nil {
			return err
		}
		defer func() { _ = w.locker.Close() }() // Close always returns nil
	}
	w.now(setup) // prime the clock offset
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}

	// Commands from the harness.
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "stop":
				cancel()
			case len(f) == 2 && f[0] == "hog":
				ms, _ := strconv.Atoi(f[1])
				go w.hog(ctx, time.Duration(ms)*time.Millisecond)
			}
		}
		cancel() // EOF: the harness is gone
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

func newPool(ctx context.Context, dsn, app string, size int32) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pc.MaxConns = size
	pc.ConnConfig.RuntimeParams["application_name"] = app
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

func (w *worker) loop(ctx context.Context, g int) {
	for ctx.Err() == nil {
		key := w.cfg.Keys[rand.N(len(w.cfg.Keys))]
		if w.cfg.Mode == ModePoolLock {
			w.poolLockOnce(ctx, key)
		} else {
			w.leaseOnce(ctx, key)
		}
	}
}

// signal records when a lease's loss was reported, read independently of
// the holder's logic.
type signal struct {
	done chan struct{}
	at   time.Time
	est  bool
	lost bool
}

func (w *worker) leaseOnce(ctx context.Context, key string) {
	before, ok0 := w.now(ctx)
	var lease *pgbaton.Lease
	var err error
	if rand.N(2) == 0 {
		lease, err = w.locker.TryAcquire(ctx, pgbaton.KeyName(key))
	} else {
		lease, err = w.locker.Acquire(ctx, pgbaton.KeyName(key), pgbaton.Wait(time.Second))
	}
	if err != nil {
		if errors.Is(err, pgbaton.ErrNotAcquired) {
			w.sleep(ctx, jitter(w.cfg.Backoff))
		} else {
			w.sleep(ctx, jitter(100*time.Millisecond)) // server down, connection refused...
		}
		return
	}
	grant, ok1 := w.now(ctx)
	tok, hasTok := lease.Token()
	_, pid := lease.Conn()
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
	if noticed {
		<-sig.done
		l.End, l.Signalled, l.Kind = sig.at, sig.at, history.Lost
		l.Estimated = l.Estimated || sig.est
		_ = lease.Release() // returns the loss we already know about
	} else {
		end, ok := w.now(ctx)
		l.End = end
		l.Estimated = l.Estimated || !ok
		if err := lease.Release(); err != nil {
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
}

// write makes one fenced write to the key's row (or an unguarded one in the
// unfenced control). Accepted writes are logged by the resource itself;
// rejected ones are recorded here.
func (w *worker) write(l history.Lease, key string, tok int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if w.cfg.Unfenced {
		_, err = w.app.Exec(ctx, "UPDATE chaos_resource SET value = value + 1, writer = $3, fence_token = $1 WHERE key = $2", tok, key, l.ID)
	} else {
		err = resource.Update(ctx, w.app, fence.Token(tok), key, "value = value + 1, writer = $3", l.ID)
	}
	if errors.Is(err, fence.ErrStaleToken) {
		w.rec.Write(history.Write{Lease: l.ID, Proc: l.Proc, Key: key, Token: tok, Accepted: false, At: w.estimate()})
	}
}

// poolLockOnce is the first seed's bug: a session lock taken through a
// pool, work done, and the unlock sent through the pool too, where it may
// land on another connection.
func (w *worker) poolLockOnce(ctx context.Context, key string) {
	id := pgbaton.NameID(key)
	before, ok0 := w.now(ctx)
	var ok bool
	var tok *int64
	err := w.app.QueryRow(ctx, "SELECT l, CASE WHEN l THEN nextval('pgbaton.fence_token') END FROM pg_try_advisory_lock($1) AS l", id).Scan(&ok, &tok)
	if err != nil || !ok || tok == nil {
		w.sleep(ctx, jitter(w.cfg.Backoff))
		return
	}
	grant, ok1 := w.now(ctx)
	l := history.Lease{
		ID: fmt.Sprintf("%s-%d", w.cfg.Proc, w.seq.Add(1)), Proc: w.cfg.Proc, Key: key,
		Token: *tok, HasToken: true, Before: before, Grant: grant, Kind: history.Open, Estimated: !ok0 || !ok1,
	}
	w.rec.Lease(l)
	for range 1 + rand.N(3) {
		w.sleep(ctx, jitter(w.cfg.Pace))
		w.write(l, key, *tok)
	}
	end, ok2 := w.now(ctx)
	var unlocked bool
	if err := w.app.QueryRow(context.Background(), "SELECT pg_advisory_unlock($1)", id).Scan(&unlocked); err != nil {
		unlocked = false
	}
	// The broken code believes it released; the server's answer is kept
	// as evidence.
	l.End, l.Kind, l.UnlockFalse = end, history.Released, !unlocked
	l.Estimated = l.Estimated || !ok2
	w.rec.Lease(l)
}
