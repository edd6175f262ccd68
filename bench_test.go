package pgbaton

// Benchmarks of the core, each against raw pgx running the same statements
// on pinned connections in the same run. BENCHMARKS.md explains the figures
// and gives the commands (scripts/bench.sh runs them all several times and
// summarises them with benchstat).
//
// Latency benchmarks report their own metrics (p50-us, max-ms, ...) and set
// ns/op to 0: one iteration is one repetition of a scenario whose setup is
// not what is measured. None of them asserts a duration; they fail only on
// wrong results or wrong orderings (two holders at once, a loss reported
// after the server freed the lock).

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton/pgtest"
)

// benchKeyBase keeps benchmark keys away from anything else in the database.
const benchKeyBase = int64(0x5eed) << 32

// benchWait bounds every wait in the benchmarks.
const benchWait = 30 * time.Second

// benchIO observes a client's socket: writes counted, when the last write
// started and the last read ended, and the total time spent waiting for
// answers (from sending a request to the first read after it). pgconn
// flushes each request (Bind/Execute/Sync or a simple Query) in one write,
// so writes per operation is round trips per operation, and an operation's
// time minus its waits is the time spent in the client libraries.
type benchIO struct {
	writes              atomic.Int64
	lastWrite, lastRead atomic.Int64 // nanoseconds since benchEpoch
	pending             atomic.Int64 // when an unanswered request was sent, or 0
	waited              atomic.Int64 // nanoseconds
}

var benchEpoch = time.Now()

func benchNow() time.Duration { return time.Since(benchEpoch) }

type benchConn struct {
	net.Conn
	io *benchIO
}

func (c benchConn) Write(p []byte) (int, error) {
	now := int64(benchNow())
	c.io.writes.Add(1)
	c.io.lastWrite.Store(now)
	c.io.pending.CompareAndSwap(0, now)
	return c.Conn.Write(p)
}

func (c benchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	now := int64(benchNow())
	c.io.lastRead.Store(now)
	if sent := c.io.pending.Swap(0); sent != 0 {
		c.io.waited.Add(now - sent)
	}
	return n, err
}

// benchObserve makes cfg's connections report to o.
func benchObserve(cfg *pgconn.Config, o *benchIO) {
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return benchConn{c, o}, nil
	}
}

func benchPgconnConfig(tb testing.TB, dsn string, o *benchIO) *pgconn.Config {
	tb.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	if o != nil {
		benchObserve(cfg, o)
	}
	return cfg
}

// benchPgx opens a pinned pgx connection (pgx's default statement cache:
// each query is one round trip once prepared).
func benchPgx(tb testing.TB, dsn string, o *benchIO) *pgx.Conn {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	if o != nil {
		benchObserve(&cfg.Config, o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// benchLocker opens a Locker whose lock connections report to o (if set).
func benchLocker(tb testing.TB, dsn string, o *benchIO, mod ...func(*Config)) *Locker {
	tb.Helper()
	cfg := benchPgconnConfig(tb, dsn, o)
	return newTestLocker(tb, dsn, append([]func(*Config){func(c *Config) {
		c.ConnConfig = cfg
		c.InstanceName = "bench"
	}}, mod...)...)
}

// benchRawTryUnlock is raw pgx: pg_try_advisory_lock then pg_advisory_unlock on
// one pinned *pgx.Conn.
func benchRawTryUnlock(c *pgx.Conn, key int64) func() error {
	ctx := context.Background()
	return func() error {
		var ok bool
		if err := c.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::int8)", key).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("raw try-lock of %d: not acquired", key)
		}
		if err := c.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", key).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("raw unlock of %d: false", key)
		}
		return nil
	}
}

// benchPgconnTryUnlock is the same on a *pgconn.PgConn with prepared statements
// and binary parameters, which is what a Locker's lock connection runs.
func benchPgconnTryUnlock(tb testing.TB, dsn string, o *benchIO, key int64) func() error {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), benchWait)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, benchPgconnConfig(tb, dsn, o))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close(context.Background()) })
	for name, sql := range map[string]string{
		"bench_try":    "SELECT pg_try_advisory_lock($1::int8)",
		"bench_unlock": "SELECT pg_advisory_unlock($1::int8)",
	} {
		if _, err := c.Prepare(ctx, name, sql, nil); err != nil {
			tb.Fatal(err)
		}
	}
	params := [][]byte{binary.BigEndian.AppendUint64(nil, uint64(key))}
	binaryFmt := []int16{1}
	run := func(stmt string) error {
		res := c.ExecPrepared(context.Background(), stmt, params, binaryFmt, binaryFmt).Read()
		if res.Err != nil {
			return res.Err
		}
		if len(res.Rows) != 1 || len(res.Rows[0][0]) != 1 || res.Rows[0][0][0] != 1 {
			return fmt.Errorf("pgconn %s of %d: not true", stmt, key)
		}
		return nil
	}
	return func() error {
		if err := run("bench_try"); err != nil {
			return err
		}
		return run("bench_unlock")
	}
}

func benchLockerTryRelease(l *Locker, key int64) func() error {
	ctx := context.Background()
	k := KeyInt64(key)
	return func() error {
		ls, err := l.TryAcquire(ctx, k)
		if err != nil {
			return err
		}
		return ls.Release()
	}
}

// benchUncontendedOps returns one operation per goroutine, each on its own
// key (and, for the raw implementations, its own pinned connection).
func benchUncontendedOps(b *testing.B, impl, dsn string, g int, o *benchIO) []func() error {
	ops := make([]func() error, g)
	var l *Locker
	if impl == "pgbaton" {
		l = benchLocker(b, dsn, o)
	}
	for i := range ops {
		key := benchKeyBase + int64(i)
		switch impl {
		case "pgx":
			ops[i] = benchRawTryUnlock(benchPgx(b, dsn, o), key)
		case "pgconn":
			ops[i] = benchPgconnTryUnlock(b, dsn, o, key)
		case "pgbaton":
			ops[i] = benchLockerTryRelease(l, key)
		}
	}
	return ops
}

// benchRunOps runs n operations split over the goroutines of ops, all
// starting together, and returns how long they took and the first error.
func benchRunOps(ops []func() error, n int) (time.Duration, error) {
	g := len(ops)
	var wg sync.WaitGroup
	errs := make(chan error, g)
	gate := make(chan struct{})
	for i, op := range ops {
		k := n / g
		if i < n%g {
			k++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			for range k {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(start)
	close(errs)
	return took, <-errs
}

// benchImpls are the implementations compared, the raw baselines first.
var benchImpls = []string{"pgx", "pgconn", "pgbaton"}

// BenchmarkUncontended: TryAcquire+Release of a free key, against raw pgx
// (pg_try_advisory_lock then pg_advisory_unlock on a pinned *pgx.Conn) and
// the same on a *pgconn.PgConn with prepared statements. With goroutines=8
// each goroutine has its own key, and each raw goroutine its own
// connection; the pgbaton goroutines share one Locker, as the goroutines of
// a process would.
//
// The machine is shared, so the implementations run in the same benchmark,
// interleaved in blocks of 100 operations (rotating which goes first): a
// burst of load elsewhere hits all of them alike. b.N operations are run
// for EACH implementation. Metrics: <impl>-ops/s; speed-vs-pgx and
// speed-vs-pgconn (pgbaton's ops/s divided by the raw one's: 1 = as fast);
// <impl>-writes/op, the client's socket writes per operation, which is
// round trips per operation; <impl>-cpu-us/op, the whole process's CPU
// time per operation; with goroutines=1, <impl>-client-us/op, the time per
// operation not spent waiting for the server's answers (the library's own
// cost, less sensitive to the machine's load than ops/s); pgbaton-allocs/op
// and pgbaton-B/op.
func BenchmarkUncontended(b *testing.B) {
	name, unixDSN := pgtest.Shared().NewDB(b)
	for _, transport := range []string{"unix", "tcp"} {
		dsn := unixDSN
		if transport == "tcp" {
			dsn = pgtest.Shared().TCPDSN(name)
		}
		for _, g := range []int{1, 8} {
			b.Run(fmt.Sprintf("transport=%s/goroutines=%d", transport, g), func(b *testing.B) {
				var obs [3]benchIO
				var ops [3][]func() error
				for i, impl := range benchImpls {
					ops[i] = benchUncontendedOps(b, impl, dsn, g, &obs[i])
					// Warm up: prepare statements, dial the Locker's connections.
					if _, err := benchRunOps(ops[i], 50*g); err != nil {
						b.Fatal(err)
					}
				}
				const block = 100
				var took, cpu, waited [3]time.Duration
				var wrote [3]int64
				var mallocs, bytes uint64
				var ms runtime.MemStats
				b.ResetTimer()
				for done, round := 0, 0; done < b.N; round++ {
					n := min(block, b.N-done)
					for j := range ops {
						i := (round + j) % len(ops)
						if benchImpls[i] == "pgbaton" {
							runtime.ReadMemStats(&ms)
							mallocs, bytes = mallocs-ms.Mallocs, bytes-ms.TotalAlloc
						}
						w, wt, c0 := obs[i].writes.Load(), obs[i].waited.Load(), benchCPU()
						d, err := benchRunOps(ops[i], n)
						if err != nil {
							b.Fatalf("%s: %v", benchImpls[i], err)
						}
						cpu[i] += benchCPU() - c0
						waited[i] += time.Duration(obs[i].waited.Load() - wt)
						took[i] += d
						wrote[i] += obs[i].writes.Load() - w
						if benchImpls[i] == "pgbaton" {
							runtime.ReadMemStats(&ms)
							mallocs, bytes = mallocs+ms.Mallocs, bytes+ms.TotalAlloc
						}
					}
					done += n
				}
				b.StopTimer()
				opsPerSec := func(i int) float64 { return float64(b.N) / took[i].Seconds() }
				b.ReportMetric(0, "ns/op")
				for i, impl := range benchImpls {
					b.ReportMetric(opsPerSec(i), impl+"-ops/s")
					b.ReportMetric(float64(wrote[i])/float64(b.N), impl+"-writes/op")
					b.ReportMetric(benchUS(cpu[i])/float64(b.N), impl+"-cpu-us/op")
					if g == 1 { // with more, waits overlap
						b.ReportMetric(benchUS(took[i]-waited[i])/float64(b.N), impl+"-client-us/op")
					}
				}
				b.ReportMetric(opsPerSec(2)/opsPerSec(0), "speed-vs-pgx")
				b.ReportMetric(opsPerSec(2)/opsPerSec(1), "speed-vs-pgconn")
				b.ReportMetric(float64(mallocs)/float64(b.N), "pgbaton-allocs/op")
				b.ReportMetric(float64(bytes)/float64(b.N), "pgbaton-B/op")
			})
		}
	}
}

// TestBenchRoundTrips: TryAcquire+Release costs exactly the two round trips
// of raw pgx and of prepared pgconn statements, once warmed up. The raw rows
// are the control showing that the counter counts round trips.
func TestBenchRoundTrips(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	quiet := func(c *Config) { // no heartbeat during the count
		c.HeartbeatInterval = time.Minute
		c.LeaseTimeout = 2 * time.Minute
		c.XactIdleTimeout = 5 * time.Minute
		c.KeepaliveIdle = 3 * time.Minute
		c.TCPUserTimeout = 4 * time.Minute
	}
	for _, impl := range []string{"pgx", "pgconn", "pgbaton"} {
		var o benchIO
		var op func() error
		switch impl {
		case "pgx":
			op = benchRawTryUnlock(benchPgx(t, dsn, &o), 1)
		case "pgconn":
			op = benchPgconnTryUnlock(t, dsn, &o, 2)
		case "pgbaton":
			op = benchLockerTryRelease(benchLocker(t, dsn, &o, quiet), 3)
		}
		for range 3 {
			if err := op(); err != nil {
				t.Fatalf("%s: %v", impl, err)
			}
		}
		before := o.writes.Load()
		const n = 50
		for range n {
			if err := op(); err != nil {
				t.Fatalf("%s: %v", impl, err)
			}
		}
		if got := o.writes.Load() - before; got != 2*n {
			t.Errorf("%s: %d round trips for %d try+release, want %d", impl, got, n, 2*n)
		}
	}
}

// benchHandoffRec is one grant on the contended key.
type benchHandoffRec struct {
	inst                      int
	acqStart, grant, relStart time.Duration
	parked                    bool // the lock connection's watcher was parked on the socket at release
	// Client-side time around the socket: lock's last read -> lock
	// returned (post), and unlock called -> unlock written (pre).
	post, pre time.Duration
}

type benchHandoffInst struct {
	lock   func() error
	unlock func() error
	parked func() bool // nil for raw
	io     *benchIO
}

func benchHandoffInstance(b *testing.B, impl, dsn string, key int64) benchHandoffInst {
	o := new(benchIO)
	switch impl {
	case "pgx", "pgx-bounded":
		c := benchPgx(b, dsn, o)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		b.Cleanup(cancel)
		lock := func() error {
			_, err := c.Exec(ctx, "SELECT pg_advisory_lock($1::int8)", key)
			return err
		}
		if impl == "pgx-bounded" {
			// The statement a Locker waits with: lock_timeout for this
			// statement only.
			lock = func() error {
				_, err := c.Exec(ctx, "SELECT set_config('lock_timeout', $1::text, true), pg_advisory_lock($2::int8)", "30000ms", key)
				return err
			}
		}
		return benchHandoffInst{
			io:   o,
			lock: lock,
			unlock: func() error {
				var ok bool
				if err := c.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", key).Scan(&ok); err != nil {
					return err
				}
				if !ok {
					return errors.New("raw unlock returned false")
				}
				return nil
			},
		}
	default:
		l := benchLocker(b, dsn, o)
		k := KeyInt64(key)
		var ls *Lease
		return benchHandoffInst{
			io: o,
			lock: func() (err error) {
				ls, err = l.Acquire(context.Background(), k, Wait(benchWait))
				return err
			},
			unlock: func() error { return ls.Release() },
			parked: func() bool {
				c := ls.conn()
				c.parkMu.Lock()
				defer c.parkMu.Unlock()
				return c.parkCancel != nil
			},
		}
	}
}

// BenchmarkHandoff: instances take turns on one key, each holding it for
// hold, each in its own goroutine: separate Lockers (pgbaton), or separate
// pinned pgx connections running a blocking pg_advisory_lock (pgx), or the
// same with the statement a Locker waits with, set_config('lock_timeout')
// included (pgx-bounded, to separate the statement's cost from the
// library's). A sample is the time from the holder calling Release (raw:
// sending pg_advisory_unlock) to the next instance's Acquire (raw: its
// pg_advisory_lock) returning, counted only when that instance had started
// waiting before the release (<impl>-handoffs/grant says how many grants
// qualified). The implementations alternate in rounds of 50 grants; b.N
// grants are made with each. It fails if two instances ever held the key at
// once.
//
// Metrics, per implementation: p50-us, p90-us, grants/s, cpu-us/grant (the
// whole process's CPU time), client-p50-us (time spent in the library
// around the socket: Release called -> unlock written, plus grant read ->
// Acquire returned). For pgbaton also parked/handoff, the fraction of
// releases that found the lock connection's watcher parked on the socket
// and had to interrupt it, and parked-p50-us, the handoff p50 of those.
// p50-vs-pgx and p90-vs-pgx: pgbaton's latency divided by raw pgx's (1 =
// as fast).
func BenchmarkHandoff(b *testing.B) {
	dsn := pgtest.Shared().NewDatabase(b)
	impls := []string{"pgx", "pgbaton", "pgx-bounded"}
	for _, hold := range []time.Duration{0, time.Millisecond} {
		for _, n := range []int{2, 4, 8} {
			b.Run(fmt.Sprintf("hold=%s/instances=%d", hold, n), func(b *testing.B) {
				key := benchKeyBase + 100
				insts := make([][]benchHandoffInst, len(impls))
				for i, impl := range impls {
					for range n {
						in := benchHandoffInstance(b, impl, dsn, key)
						if err := in.lock(); err != nil { // warm up
							b.Fatal(err)
						}
						if err := in.unlock(); err != nil {
							b.Fatal(err)
						}
						insts[i] = append(insts[i], in)
					}
				}
				const round = 50
				samples := make([][]time.Duration, len(impls))
				client := make([][]time.Duration, len(impls))
				var parked []time.Duration // pgbaton handoffs whose releasing connection was parked
				grants := make([]int, len(impls))
				took := make([]time.Duration, len(impls))
				cpu := make([]time.Duration, len(impls))
				b.ResetTimer()
				for done, r := 0, 0; done < b.N; r++ {
					want := min(round, b.N-done)
					for j := range impls {
						i := (r + j) % len(impls)
						c0 := benchCPU()
						recs, d, err := benchHandoffRun(insts[i], want, hold)
						if err != nil {
							b.Fatalf("%s: %v", impls[i], err)
						}
						cpu[i] += benchCPU() - c0
						s, p, cl, err := benchHandoffSamples(recs)
						if err != nil {
							b.Fatalf("%s: %v", impls[i], err)
						}
						samples[i] = append(samples[i], s...)
						parked = append(parked, p...)
						client[i] = append(client[i], cl...)
						grants[i] += len(recs)
						took[i] += d
					}
					done += want
				}
				b.StopTimer()
				b.ReportMetric(0, "ns/op")
				var p50, p90 [3]time.Duration
				for i, impl := range impls {
					b.ReportMetric(float64(grants[i])/took[i].Seconds(), impl+"-grants/s")
					b.ReportMetric(benchUS(cpu[i])/float64(grants[i]), impl+"-cpu-us/grant")
					b.ReportMetric(float64(len(samples[i]))/float64(grants[i]), impl+"-handoffs/grant")
					if len(samples[i]) == 0 {
						continue
					}
					p50[i], p90[i] = benchPercentile(samples[i], 0.5), benchPercentile(samples[i], 0.9)
					b.ReportMetric(benchUS(p50[i]), impl+"-p50-us")
					b.ReportMetric(benchUS(p90[i]), impl+"-p90-us")
					b.ReportMetric(benchUS(benchPercentile(client[i], 0.5)), impl+"-client-p50-us")
				}
				if len(samples[1]) > 0 {
					b.ReportMetric(float64(len(parked))/float64(len(samples[1])), "pgbaton-parked/handoff")
				}
				if len(parked) > 0 {
					b.ReportMetric(benchUS(benchPercentile(parked, 0.5)), "pgbaton-parked-p50-us")
				}
				if p50[0] > 0 && p90[0] > 0 {
					b.ReportMetric(float64(p50[1])/float64(p50[0]), "p50-vs-pgx")
					b.ReportMetric(float64(p90[1])/float64(p90[0]), "p90-vs-pgx")
				}
			})
		}
	}
}

// benchHandoffRun lets insts take turns on their key until want grants
// were made (a few more: the instances already waiting finish their turn).
func benchHandoffRun(insts []benchHandoffInst, want int, hold time.Duration) ([]benchHandoffRec, time.Duration, error) {
	var grants atomic.Int64
	var wg sync.WaitGroup
	per := make([][]benchHandoffRec, len(insts))
	errs := make(chan error, len(insts))
	gate := make(chan struct{})
	var base time.Time
	for i, in := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			for {
				acq := time.Since(base)
				if err := in.lock(); err != nil {
					errs <- err
					return
				}
				now := benchNow()
				r := benchHandoffRec{inst: i, acqStart: acq, grant: time.Since(base), post: now - time.Duration(in.io.lastRead.Load())}
				n := grants.Add(1)
				if hold > 0 {
					time.Sleep(hold)
				}
				if in.parked != nil {
					r.parked = in.parked()
				}
				r.relStart = time.Since(base)
				rel := benchNow()
				if err := in.unlock(); err != nil {
					errs <- err
					return
				}
				r.pre = time.Duration(in.io.lastWrite.Load()) - rel
				per[i] = append(per[i], r)
				if n >= int64(want) {
					return
				}
			}
		}()
	}
	base = time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(base)
	close(errs)
	if err := <-errs; err != nil {
		return nil, 0, err
	}
	var recs []benchHandoffRec
	for _, p := range per {
		recs = append(recs, p...)
	}
	return recs, took, nil
}

// benchHandoffSamples orders grants and returns release->next-grant latencies
// for waiters that were already waiting. Overlapping holds are an error.
func benchHandoffSamples(recs []benchHandoffRec) (all, parked, client []time.Duration, err error) {
	slices.SortFunc(recs, func(a, b benchHandoffRec) int { return int(a.grant - b.grant) })
	for i := 0; i+1 < len(recs); i++ {
		cur, next := recs[i], recs[i+1]
		if next.grant < cur.relStart {
			return nil, nil, nil, fmt.Errorf("instance %d was granted at %s while instance %d held the key until %s", next.inst, next.grant, cur.inst, cur.relStart)
		}
		if next.inst != cur.inst && next.acqStart < cur.relStart {
			all = append(all, next.grant-cur.relStart)
			client = append(client, cur.pre+next.post)
			if cur.parked {
				parked = append(parked, next.grant-cur.relStart)
			}
		}
	}
	return all, parked, client, nil
}

// BenchmarkHandoffProcesses is BenchmarkHandoff (hold=1ms) with every
// instance a separate process (internal/benchproc -mode=contend), so the
// instances do not share a Go scheduler. Each iteration runs one round per
// implementation: the processes start, warm up, are released together, and
// each takes the key 120/instances times (at least 20). Metrics as in
// BenchmarkHandoff.
func BenchmarkHandoffProcesses(b *testing.B) {
	bin := buildBenchProc(b)
	dsn := pgtest.Shared().NewDatabase(b)
	impls := []string{"pgx", "pgbaton"}
	const hold = time.Millisecond
	for _, n := range []int{2, 4, 8} {
		b.Run(fmt.Sprintf("hold=%s/instances=%d", hold, n), func(b *testing.B) {
			key := benchKeyBase + 150
			per := max(20, 120/n)
			samples := make([][]time.Duration, len(impls))
			for it := range b.N {
				for j := range impls {
					i := (it + j) % len(impls)
					recs := benchContendProcs(b, bin, impls[i], dsn, key, n, per, hold)
					s, _, _, err := benchHandoffSamples(recs)
					if err != nil {
						b.Fatalf("%s: %v", impls[i], err)
					}
					samples[i] = append(samples[i], s...)
				}
			}
			b.ReportMetric(0, "ns/op")
			for i, impl := range impls {
				if len(samples[i]) == 0 {
					b.Fatalf("%s: no handoff to a waiting process", impl)
				}
				b.ReportMetric(benchUS(benchPercentile(samples[i], 0.5)), impl+"-p50-us")
				b.ReportMetric(benchUS(benchPercentile(samples[i], 0.9)), impl+"-p90-us")
			}
			b.ReportMetric(float64(benchPercentile(samples[1], 0.5))/float64(benchPercentile(samples[0], 0.5)), "p50-vs-pgx")
			b.ReportMetric(float64(benchPercentile(samples[1], 0.9))/float64(benchPercentile(samples[0], 0.9)), "p90-vs-pgx")
		})
	}
}

// benchContendProcs runs n contending processes, each taking key grants
// times, and returns their merged records (times relative to the earliest).
func benchContendProcs(b *testing.B, bin, impl, dsn string, key int64, n, grants int, hold time.Duration) []benchHandoffRec {
	b.Helper()
	type line struct {
		proc int
		text string
	}
	lines := make(chan line, n*(grants+4)) // room for every line: readers never block
	stdins := make([]io.WriteCloser, n)
	cmds := make([]*exec.Cmd, n)
	defer func() {
		for i, cmd := range cmds {
			if cmd == nil {
				continue
			}
			_ = stdins[i].Close()
			_ = cmd.Process.Kill() // no-op once it exited
			_ = cmd.Wait()
		}
	}()
	for i := range n {
		cmd := exec.Command(bin, "-mode=contend", "-impl="+impl, "-dsn="+dsn, fmt.Sprintf("-key=%d", key),
			fmt.Sprintf("-grants=%d", grants), "-hold="+hold.String())
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		cmds[i], stdins[i] = cmd, stdin
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- line{i, sc.Text()}
			}
			lines <- line{i, "eof"}
		}()
	}
	deadline := time.After(benchWait)
	next := func() line {
		select {
		case l := <-lines:
			return l
		case <-deadline:
			b.Fatalf("%s: contending processes did not finish in time", impl)
		}
		return line{}
	}
	for ready := 0; ready < n; {
		switch l := next(); l.text {
		case "ready":
			ready++
		default:
			b.Fatalf("%s: process %d: %q before ready", impl, l.proc, l.text)
		}
	}
	for _, w := range stdins {
		if _, err := io.WriteString(w, "go\n"); err != nil {
			b.Fatal(err)
		}
	}
	var recs []benchHandoffRec
	var abs [][3]int64
	finished := make([]bool, n)
	for done := 0; done < n; {
		l := next()
		switch {
		case l.text == "done":
			finished[l.proc] = true
			done++
		case l.text == "eof" && finished[l.proc]:
		case strings.HasPrefix(l.text, "rec "):
			var r [3]int64
			if _, err := fmt.Sscanf(l.text, "rec %d %d %d", &r[0], &r[1], &r[2]); err != nil {
				b.Fatalf("%s: process %d: %q: %v", impl, l.proc, l.text, err)
			}
			abs = append(abs, r)
			recs = append(recs, benchHandoffRec{inst: l.proc})
		default:
			b.Fatalf("%s: process %d: unexpected %q", impl, l.proc, l.text)
		}
	}
	base := abs[0][0]
	for _, r := range abs {
		base = min(base, r[0])
	}
	for i, r := range abs {
		recs[i].acqStart = time.Duration(r[0] - base)
		recs[i].grant = time.Duration(r[1] - base)
		recs[i].relStart = time.Duration(r[2] - base)
	}
	return recs
}

func benchPercentile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func benchUS(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchReportLatencies reports p50 and max of samples in milliseconds.
func benchReportLatencies(b *testing.B, prefix string, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	b.ReportMetric(benchMS(benchPercentile(samples, 0.5)), prefix+"p50-ms")
	b.ReportMetric(benchMS(slices.Max(samples)), prefix+"max-ms")
}

// buildBenchProc builds internal/benchproc, the holder process.
func buildBenchProc(b *testing.B) string {
	b.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		// go test puts GOROOT/bin first on PATH; this is only for a test binary run by hand.
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // fallback when go is not on PATH
	}
	out := filepath.Join(b.TempDir(), "benchproc")
	cmd := exec.Command(goBin, "build", "-o", out, "./internal/benchproc")
	if _, file, _, ok := runtime.Caller(0); ok { // the module root, wherever the test binary runs
		cmd.Dir = filepath.Dir(file)
	}
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building the holder process: %v\n%s", err, msg)
	}
	return out
}

// benchHolder is a running holder process.
type benchHolder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startBenchHolder starts the holder process and waits until it holds key.
func startBenchHolder(b *testing.B, bin, impl, dsn string, key int64) *benchHolder {
	b.Helper()
	cmd := exec.Command(bin, "-mode=hold", "-impl="+impl, "-dsn="+dsn, fmt.Sprintf("-key=%d", key))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	h := &benchHolder{cmd: cmd, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if !strings.HasPrefix(s, "held ") {
			h.kill()
			b.Fatalf("holder process: %q, want \"held <pid>\"", s)
		}
	case <-time.After(benchWait):
		h.kill()
		b.Fatal("holder process did not take the lock in time")
	}
	return h
}

func (h *benchHolder) kill() {
	_ = h.cmd.Process.Kill()
	_ = h.stdin.Close()
	_ = h.cmd.Wait()
}

// benchLockRows counts advisory locks on key in the current database,
// granted or waiting.
func benchLockRows(ctx context.Context, admin *pgx.Conn, key int64, granted bool) (int, error) {
	var n int
	err := admin.QueryRow(ctx, `
		SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND granted = $2 AND objsubid = 1
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND ((classid::bigint << 32) | objid::bigint) = $1`, key, granted).Scan(&n)
	return n, err
}

// benchPoll polls cond (external state) every interval until it holds.
func benchPoll(b *testing.B, what string, interval time.Duration, cond func() (bool, error)) {
	b.Helper()
	deadline := time.Now().Add(benchWait)
	for {
		ok, err := cond()
		if err != nil {
			b.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}

// BenchmarkHolderKilled: a holder process (internal/benchproc, taking the
// lock the same way as the waiter) holds the key; this process waits for it
// (pgbaton: Acquire on a Locker; raw: pg_advisory_lock on a pinned pgx
// connection); once the waiter shows in pg_locks the holder is SIGKILLed.
// The sample is kill -> the waiter's grant. One iteration is one
// repetition with each implementation, alternating which goes first.
// Metrics: <impl>-p50-ms, <impl>-max-ms, p50-vs-pgx.
func BenchmarkHolderKilled(b *testing.B) {
	bin := buildBenchProc(b)
	dsn := pgtest.Shared().NewDatabase(b)
	admin := benchPgx(b, dsn, nil)
	key := benchKeyBase + 200
	impls := []string{"pgx", "pgbaton"}
	waiters := make([]func() (release func() error, err error), len(impls))
	raw := benchPgx(b, dsn, nil)
	waiters[0] = func() (func() error, error) {
		ctx, cancel := context.WithTimeout(context.Background(), benchWait)
		defer cancel()
		if _, err := raw.Exec(ctx, "SELECT pg_advisory_lock($1::int8)", key); err != nil {
			return nil, err
		}
		return func() error {
			_, err := raw.Exec(context.Background(), "SELECT pg_advisory_unlock($1::int8)", key)
			return err
		}, nil
	}
	l := benchLocker(b, dsn, nil)
	waiters[1] = func() (func() error, error) {
		ls, err := l.Acquire(context.Background(), KeyInt64(key), Wait(benchWait))
		if err != nil {
			return nil, err
		}
		return ls.Release, nil
	}
	samples := make([][]time.Duration, len(impls))
	for it := range b.N {
		for j := range impls {
			i := (it + j) % len(impls)
			d := benchKillOnce(b, bin, impls[i], dsn, key, admin, waiters[i])
			samples[i] = append(samples[i], d)
		}
	}
	b.ReportMetric(0, "ns/op")
	for i, impl := range impls {
		benchReportLatencies(b, impl+"-", samples[i])
	}
	b.ReportMetric(float64(benchPercentile(samples[1], 0.5))/float64(benchPercentile(samples[0], 0.5)), "p50-vs-pgx")
}

// benchKillOnce: holder process takes key, wait() queues behind it, the
// holder is killed; it returns kill -> grant.
func benchKillOnce(b *testing.B, bin, impl, dsn string, key int64, admin *pgx.Conn, wait func() (func() error, error)) time.Duration {
	h := startBenchHolder(b, bin, impl, dsn, key)
	defer h.kill() // a no-op unless the benchmark failed first
	type grant struct {
		at      time.Time
		release func() error
		err     error
	}
	granted := make(chan grant, 1)
	go func() {
		rel, err := wait()
		granted <- grant{time.Now(), rel, err}
	}()
	benchPoll(b, "the waiter to queue", time.Millisecond, func() (bool, error) {
		n, err := benchLockRows(context.Background(), admin, key, false)
		return n == 1, err
	})
	killed := time.Now()
	h.kill()
	var g grant
	select {
	case g = <-granted:
	case <-time.After(benchWait):
		b.Fatal("waiter not granted after the holder was killed")
	}
	if g.err != nil {
		b.Fatal(g.err)
	}
	if err := g.release(); err != nil {
		b.Fatal(err)
	}
	return g.at.Sub(killed)
}

// BenchmarkLossDetection: how soon a held, idle lease reports its loss
// (Done closed), per fault. One iteration is one repetition.
//
//   - terminate: pg_terminate_backend of the lease's backend, on the shared
//     cluster, over the unix socket; measured from sending it.
//   - crash: SIGKILL of another backend of a private cluster, which makes
//     the postmaster end every session; measured from the kill.
//   - blackhole: a silent network cut (pgtest.CutPort) of the lease's TCP
//     connection, with heartbeat 100ms and LeaseTimeout 600ms (server
//     release after ~2 s); measured from the start of the cut. It also
//     measures when the server frees the lock (polling pg_locks) and fails
//     if the loss was reported after that.
func BenchmarkLossDetection(b *testing.B) {
	b.Run("fault=terminate", func(b *testing.B) {
		dsn := pgtest.Shared().NewDatabase(b)
		admin := benchPgx(b, dsn, nil)
		l := benchLocker(b, dsn, nil)
		benchLoss(b, l, func(ls *Lease) (time.Time, func(time.Time)) {
			_, pid := ls.Session()
			t0 := time.Now()
			if _, err := admin.Exec(context.Background(), "SELECT pg_terminate_backend($1)", int(pid)); err != nil {
				b.Fatal(err)
			}
			return t0, nil
		})
	})
	b.Run("fault=crash", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := pgtest.Start(ctx, pgtest.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		dsn := c.DSN("postgres")
		l := benchLocker(b, dsn, nil)
		benchLoss(b, l, func(ls *Lease) (time.Time, func(time.Time)) {
			victim := benchPgx(b, dsn, nil)
			p, err := os.FindProcess(int(victim.PgConn().PID()))
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if err := p.Kill(); err != nil {
				b.Fatal(err)
			}
			return t0, func(time.Time) {
				// Done fired, so the postmaster is restarting: wait until
				// it accepts connections again.
				benchPoll(b, "the server to come back", 20*time.Millisecond, func() (bool, error) {
					cctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					conn, err := pgx.Connect(cctx, dsn)
					if err != nil {
						return false, nil
					}
					_ = conn.Close(cctx)
					return true, nil
				})
			}
		})
	})
	b.Run("fault=blackhole", func(b *testing.B) {
		name, dsn := pgtest.Shared().NewDB(b)
		admin := benchPgx(b, dsn, nil)
		l := newTestLocker(b, pgtest.Shared().TCPDSN(name), fastLoss)
		var frees, margins []time.Duration
		// pgconn closes a connection that timed out in a goroutine of its
		// own that can outlive the Locker until the network heals; wait
		// for those before the test binary looks for leaked goroutines.
		var cleanups []<-chan struct{}
		defer func() {
			for _, done := range cleanups {
				select {
				case <-done:
				case <-time.After(benchWait):
					b.Error("a cut connection was not cleaned up in time")
				}
			}
		}()
		benchLoss(b, l, func(ls *Lease) (time.Time, func(time.Time)) {
			port := ls.conn().pg.Conn().LocalAddr().(*net.TCPAddr).Port
			cleanups = append(cleanups, ls.conn().pg.CleanupDone())
			key := ls.Key().ID()
			t0 := time.Now()
			cut, err := pgtest.CutPort(context.Background(), port)
			if errors.Is(err, pgtest.ErrNetCutUnsupported) {
				b.Skip(err)
			}
			if err != nil {
				b.Fatal(err)
			}
			// Watch the server's side from an admin connection (unix
			// socket, not cut) from the moment of the cut.
			type freed struct {
				at  time.Time
				err error
			}
			freedAt := make(chan freed, 1)
			go func() {
				deadline := time.Now().Add(benchWait)
				for time.Now().Before(deadline) {
					n, err := benchLockRows(context.Background(), admin, key, true)
					if err != nil || n == 0 {
						freedAt <- freed{time.Now(), err}
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
				freedAt <- freed{err: errors.New("the server did not free the lock in time")}
			}()
			return t0, func(done time.Time) {
				f := <-freedAt
				if err := cut.Heal(); err != nil {
					b.Fatal(err)
				}
				if f.err != nil {
					b.Fatal(f.err)
				}
				if !done.Before(f.at) {
					b.Fatalf("loss reported %s after the cut, but the server had freed the lock %s after it", done.Sub(t0), f.at.Sub(t0))
				}
				frees = append(frees, f.at.Sub(t0))
				margins = append(margins, f.at.Sub(done))
			}
		})
		if len(frees) > 0 {
			benchReportLatencies(b, "free-", frees)
			b.ReportMetric(benchMS(slices.Min(margins)), "margin-min-ms")
		}
	})
}

// benchLoss runs b.N repetitions of: take a lease, leave it idle, inject a
// fault (which returns when it started and an optional step to run once the
// loss was reported, given when), measure fault -> Done.
func benchLoss(b *testing.B, l *Locker, fault func(ls *Lease) (time.Time, func(done time.Time))) {
	var samples []time.Duration
	for i := range b.N {
		ls, err := l.TryAcquire(context.Background(), KeyInt64(benchKeyBase+300+int64(i)))
		if err != nil {
			b.Fatal(err)
		}
		// An idle holder: past the watcher's park delay and a few heartbeats
		// of the fast-loss configuration.
		time.Sleep(150 * time.Millisecond)
		doneAt := make(chan time.Time, 1)
		go func() {
			<-ls.Done()
			doneAt <- time.Now()
		}()
		t0, after := fault(ls)
		var t1 time.Time
		select {
		case t1 = <-doneAt:
		case <-time.After(benchWait):
			b.Fatal("loss not reported")
		}
		if err := ls.Err(); !errors.Is(err, ErrLeaseLost) {
			b.Fatalf("Err() = %v, want ErrLeaseLost", err)
		}
		samples = append(samples, t1.Sub(t0))
		if after != nil {
			after(t1)
		}
	}
	b.ReportMetric(0, "ns/op")
	benchReportLatencies(b, "", samples)
}

// benchCPU is the process's CPU time so far (user and system).
func benchCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
