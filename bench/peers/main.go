// Command peers measures pgbaton against its peers in one run: raw pgx,
// pgbaton, pgbaton with fencing tokens, go-redsync on a local redis-server,
// and WithXactLock against a plain BEGIN / pg_advisory_xact_lock / COMMIT.
// Every implementation runs an uncontended take+release loop (each
// goroutine its own key) for a fixed time per repetition, in short slices
// (100 ms): the implementations take turns slice by slice, their order
// rotated every slice, so a burst of load elsewhere on a shared machine
// hits all of them alike. Ratios are taken within a repetition, then their
// median and range across repetitions are printed as a Markdown table.
//
// It starts its own throwaway PostgreSQL clusters with pgtest: "durable"
// (fsync, synchronous_commit and full_page_writes on: production settings)
// and "fast" (pgtest's defaults, all three off), and a redis-server with
// persistence off (no RDB snapshots, no AOF) on a unix socket. Everything
// runs over unix sockets. Besides ops/s it reports, per operation, the WAL
// the cluster wrote (pg_stat_wal), this process's CPU, and the servers' CPU
// (the cluster's postmaster and its children plus redis-server, from
// /proc, so a slice's share of the other server's background work is in it).
//
//	cd bench && go run ./peers -reps 5 -dur 2s
//
// BENCHMARKS.md quotes its output; scripts/bench-peers.sh runs it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/jackc/pgx/v5"
	goredislib "github.com/redis/go-redis/v9"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

// worker does one take+release; it is called from one goroutine only.
type worker func(ctx context.Context) error

// impl builds the workers of one implementation for g goroutines on env.
type impl struct {
	name  string
	build func(ctx context.Context, e *env, g int) ([]worker, func(), error)
}

// env is one cluster (and the shared redis).
type env struct {
	name      string
	cluster   *pgtest.Cluster
	plainDSN  string // no pgbaton schema: leases carry no token
	tokensDSN string // migrated: leases carry a fencing token
	redis     *goredislib.Client
	redisPID  int
	keyBase   int64
}

func (e *env) key(implIdx, g, i int) int64 {
	return e.keyBase + int64(implIdx)<<16 + int64(g)<<8 + int64(i)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newLocker(ctx context.Context, dsn, name string) (*pgbaton.Locker, error) {
	return pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: name, Logger: quiet})
}

func impls() []impl {
	var idx int
	next := func() int { idx++; return idx }
	pgxIdx, batonIdx, tokIdx, rsIdx, rawXIdx, xIdx := next(), next(), next(), next(), next(), next()
	return []impl{
		{"pgx", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			var ws []worker
			var conns []*pgx.Conn
			closeAll := func() {
				for _, c := range conns {
					_ = c.Close(context.Background())
				}
			}
			for i := range g {
				c, err := pgx.Connect(ctx, e.plainDSN)
				if err != nil {
					closeAll()
					return nil, nil, err
				}
				conns = append(conns, c)
				key := e.key(pgxIdx, g, i)
				ws = append(ws, func(ctx context.Context) error {
					var ok bool
					if err := c.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::int8)", key).Scan(&ok); err != nil {
						return err
					}
					if !ok {
						return fmt.Errorf("pgx: key %d busy", key)
					}
					if err := c.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", key).Scan(&ok); err != nil {
						return err
					}
					if !ok {
						return fmt.Errorf("pgx: unlock of %d returned false", key)
					}
					return nil
				})
			}
			return ws, closeAll, nil
		}},
		{"pgbaton", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			return batonWorkers(ctx, e.plainDSN, false, func(i int) int64 { return e.key(batonIdx, g, i) }, g)
		}},
		{"pgbaton+tokens", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			return batonWorkers(ctx, e.tokensDSN, true, func(i int) int64 { return e.key(tokIdx, g, i) }, g)
		}},
		{"redsync", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			rs := redsync.New(goredis.NewPool(e.redis))
			var ws []worker
			for i := range g {
				m := rs.NewMutex(fmt.Sprintf("%s-%d", e.name, e.key(rsIdx, g, i)), redsync.WithTries(1))
				ws = append(ws, func(ctx context.Context) error {
					if err := m.TryLockContext(ctx); err != nil {
						return fmt.Errorf("redsync lock: %w", err)
					}
					ok, err := m.UnlockContext(ctx)
					if err != nil {
						return fmt.Errorf("redsync unlock: %w", err)
					}
					if !ok {
						return errors.New("redsync unlock: not held")
					}
					return nil
				})
			}
			return ws, func() {}, nil
		}},
		{"xact-raw", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			var ws []worker
			var conns []*pgx.Conn
			closeAll := func() {
				for _, c := range conns {
					_ = c.Close(context.Background())
				}
			}
			for i := range g {
				c, err := pgx.Connect(ctx, e.plainDSN)
				if err != nil {
					closeAll()
					return nil, nil, err
				}
				conns = append(conns, c)
				key := e.key(rawXIdx, g, i)
				ws = append(ws, func(ctx context.Context) error {
					return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1::int8)", key)
						return err
					})
				})
			}
			return ws, closeAll, nil
		}},
		{"pgbaton-xact", func(ctx context.Context, e *env, g int) ([]worker, func(), error) {
			l, err := newLocker(ctx, e.plainDSN, "peers-xact")
			if err != nil {
				return nil, nil, err
			}
			noop := func(context.Context) error { return nil }
			var ws []worker
			for i := range g {
				key := pgbaton.KeyInt64(e.key(xIdx, g, i))
				ws = append(ws, func(ctx context.Context) error { return l.WithXactLock(ctx, key, noop) })
			}
			return ws, func() { _ = l.Close() }, nil
		}},
	}
}

// batonWorkers: one Locker (default configuration) shared by g goroutines,
// each TryAcquire+Release of its own key.
func batonWorkers(ctx context.Context, dsn string, tokens bool, key func(int) int64, g int) ([]worker, func(), error) {
	l, err := newLocker(ctx, dsn, "peers")
	if err != nil {
		return nil, nil, err
	}
	var ws []worker
	for i := range g {
		k := pgbaton.KeyInt64(key(i))
		ws = append(ws, func(ctx context.Context) error {
			ls, err := l.TryAcquire(ctx, k)
			if err != nil {
				return err
			}
			if _, ok := ls.Token(); ok != tokens {
				_ = ls.Release()
				return fmt.Errorf("pgbaton: Token() ok = %v, want %v", ok, tokens)
			}
			return ls.Release()
		})
	}
	return ws, func() { _ = l.Close() }, nil
}

// sample is one measurement.
type sample struct {
	rep        int
	env        string
	g          int
	impl       string
	ops        int64
	took       time.Duration
	cpu        time.Duration // this process's user+system CPU
	server     time.Duration // the cluster's and redis-server's CPU
	walRecords int64         // cluster-wide pg_stat_wal deltas
	walBytes   int64
	walSyncs   int64
	load       string
}

func (s sample) opsPerSec() float64 { return float64(s.ops) / s.took.Seconds() }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// procCPU is a process's time on a CPU from /proc/PID/schedstat
// (nanoseconds, the scheduler's own accounting).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(n)
}

// serverPIDs returns the postmaster, its children (the backends, from
// /proc/PID/task/PID/children) and redis-server.
func serverPIDs(postmaster, redis int) []int {
	pids := []int{postmaster}
	if redis != 0 {
		pids = append(pids, redis)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", postmaster, postmaster))
	if err != nil {
		return pids
	}
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func serverCPU(pids []int) time.Duration {
	var t time.Duration
	for _, p := range pids {
		t += procCPU(p)
	}
	return t
}

type walStat struct{ records, bytes, syncs int64 }

func readWAL(ctx context.Context, admin *pgx.Conn) (walStat, error) {
	var w walStat
	err := admin.QueryRow(ctx, "SELECT wal_records, wal_bytes::int8, wal_sync FROM pg_stat_wal").Scan(&w.records, &w.bytes, &w.syncs)
	return w, err
}

// measure runs ws concurrently for d and returns the operations done.
func measure(ctx context.Context, ws []worker, d time.Duration) (int64, time.Duration, error) {
	var stop atomic.Bool
	var ops atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, len(ws))
	start := make(chan struct{})
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			n := int64(0)
			for !stop.Load() {
				if err := w(ctx); err != nil {
					errs[i] = err
					stop.Store(true)
					break
				}
				n++
			}
			ops.Add(n)
		}()
	}
	t0 := time.Now()
	close(start)
	timer := time.NewTimer(d)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	stop.Store(true)
	wg.Wait()
	took := time.Since(t0)
	return ops.Load(), took, errors.Join(errs...)
}

func startRedis(ctx context.Context, bin, dir string) (*goredislib.Client, int, func(), error) {
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", //nolint:gosec,noctx // killed by stop below
		"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, 0, nil, fmt.Errorf("start %s: %w (install it with: apt-get install redis-server)", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	client := goredislib.NewClient(&goredislib.Options{Network: "unix", Addr: sock, PoolSize: 16})
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := client.Ping(ctx).Err()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = client.Close()
			stop()
			return nil, 0, nil, fmt.Errorf("redis-server did not answer PING within 10 s: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Say what it runs with, for the record.
	save, _ := client.ConfigGet(ctx, "save").Result()
	aof, _ := client.ConfigGet(ctx, "appendonly").Result()
	fmt.Fprintf(os.Stderr, "redis-server: save=%q appendonly=%q (no persistence)\n", save["save"], aof["appendonly"])
	return client, cmd.Process.Pid, func() { _ = client.Close(); stop() }, nil
}

func startEnv(ctx context.Context, name string, durable bool, redis *goredislib.Client, redisPID int, keyBase int64) (*env, error) {
	c, err := pgtest.Start(ctx, pgtest.Options{Durable: durable})
	if err != nil {
		return nil, err
	}
	e := &env{name: name, cluster: c, redis: redis, redisPID: redisPID, keyBase: keyBase}
	for _, db := range []string{"plain", "tokens"} {
		if err := c.CreateDatabase(ctx, db); err != nil {
			_ = c.Close()
			return nil, err
		}
	}
	e.plainDSN, e.tokensDSN = c.DSN("plain"), c.DSN("tokens")
	conn, err := pgx.Connect(ctx, e.tokensDSN)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if err := pgbaton.Migrate(ctx, conn, ""); err != nil {
		_ = c.Close()
		return nil, err
	}
	var fsync, sc, fpw, ver string
	if err := conn.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('full_page_writes'), current_setting('server_version')").
		Scan(&fsync, &sc, &fpw, &ver); err != nil {
		_ = c.Close()
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "cluster %s: PostgreSQL %s, fsync=%s synchronous_commit=%s full_page_writes=%s\n", name, ver, fsync, sc, fpw)
	return e, nil
}

func run() error {
	reps := flag.Int("reps", 5, "repetitions (the implementations interleaved within each)")
	dur := flag.Duration("dur", 2*time.Second, "measured time per implementation per repetition")
	slice := flag.Duration("slice", 100*time.Millisecond, "the implementations take turns in slices of this long")
	warm := flag.Int("warm", 50, "warm-up operations per goroutine before each measurement")
	gs := flag.String("goroutines", "1,8", "comma-separated goroutine counts")
	envs := flag.String("clusters", "durable,fast", `clusters: "durable" (fsync, synchronous_commit, full_page_writes on) and/or "fast" (all off)`)
	only := flag.String("impls", "", "comma-separated implementations to run (default all): pgx,pgbaton,pgbaton+tokens,redsync,xact-raw,pgbaton-xact")
	redisBin := flag.String("redis-server", "redis-server", "redis-server binary")
	raw := flag.String("raw", "", "if set, append every sample to this file (tab-separated: rep, cluster, goroutines, implementation, ops, ns, client CPU ns, server CPU ns, WAL records, WAL bytes, WAL syncs, load)")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()

	var goroutines []int
	for _, s := range strings.Split(*gs, ",") {
		var g int
		if _, err := fmt.Sscan(s, &g); err != nil || g < 1 {
			return fmt.Errorf("bad -goroutines %q", *gs)
		}
		goroutines = append(goroutines, g)
	}
	all := impls()
	if *only != "" {
		want := strings.Split(*only, ",")
		all = slices.DeleteFunc(all, func(i impl) bool { return !slices.Contains(want, i.name) })
	}
	needRedis := slices.ContainsFunc(all, func(i impl) bool { return i.name == "redsync" })

	dir, err := os.MkdirTemp("", "peers-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	var redis *goredislib.Client
	var redisPID int
	if needRedis {
		var stop func()
		if redis, redisPID, stop, err = startRedis(ctx, *redisBin, dir); err != nil {
			return err
		}
		defer stop()
	}

	var es []*env
	defer func() {
		for _, e := range es {
			_ = e.cluster.Close()
		}
	}()
	for i, name := range strings.Split(*envs, ",") {
		if name != "durable" && name != "fast" {
			return fmt.Errorf("bad -clusters %q", *envs)
		}
		e, err := startEnv(ctx, name, name == "durable", redis, redisPID, int64(0x7eed+i)<<32)
		if err != nil {
			return err
		}
		es = append(es, e)
	}

	// Build every implementation once per cluster and goroutine count.
	type cell struct {
		ws    []worker
		close func()
	}
	cells := map[string]cell{}
	cellKey := func(e *env, g int, im impl) string { return fmt.Sprintf("%s/%d/%s", e.name, g, im.name) }
	defer func() {
		for _, c := range cells {
			c.close()
		}
	}()
	for _, e := range es {
		for _, g := range goroutines {
			for _, im := range all {
				ws, cl, err := im.build(ctx, e, g)
				if err != nil {
					return fmt.Errorf("%s, %s, %d goroutines: %w", e.name, im.name, g, err)
				}
				cells[cellKey(e, g, im)] = cell{ws, cl}
			}
		}
	}
	admins := map[string]*pgx.Conn{}
	for _, e := range es {
		c, err := pgx.Connect(ctx, e.cluster.DSN("postgres"))
		if err != nil {
			return err
		}
		defer func() { _ = c.Close(context.Background()) }()
		admins[e.name] = c
	}

	var rawW *bufio.Writer
	if *raw != "" {
		f, err := os.OpenFile(*raw, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644) //nolint:gosec // the caller's own output file
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		rawW = bufio.NewWriter(f)
		defer func() { _ = rawW.Flush() }()
	}

	fmt.Fprintf(os.Stderr, "start %s, load %s\n", time.Now().UTC().Format(time.RFC3339), loadAvg())
	nSlices := max(1, int(*dur / *slice))
	var samples []sample
	for rep := 1; rep <= *reps; rep++ {
		for _, e := range es {
			for _, g := range goroutines {
				acc := map[string]*sample{}
				for _, im := range all {
					acc[im.name] = &sample{rep: rep, env: e.name, g: g, impl: im.name}
					for _, w := range cells[cellKey(e, g, im)].ws {
						for range *warm {
							if err := w(ctx); err != nil {
								return fmt.Errorf("%s, %s, %d goroutines, warm-up: %w", e.name, im.name, g, err)
							}
						}
					}
				}
				// Short slices, the implementations taking turns in an
				// order rotated every slice, so that a burst of load on
				// the shared machine lands on all of them alike.
				for sl := range nSlices {
					order := slices.Clone(all)
					r := (rep + sl) % len(order)
					order = append(order[r:], order[:r]...)
					for _, im := range order {
						w0, err := readWAL(ctx, admins[e.name])
						if err != nil {
							return err
						}
						pids := serverPIDs(e.cluster.PostmasterPID(), e.redisPID)
						srv0 := serverCPU(pids)
						cpu0 := cpuTime()
						ops, took, err := measure(ctx, cells[cellKey(e, g, im)].ws, *slice)
						cpu := cpuTime() - cpu0
						srv := serverCPU(pids) - srv0
						if err != nil {
							return fmt.Errorf("%s, %s, %d goroutines: %w", e.name, im.name, g, err)
						}
						w1, err := readWAL(ctx, admins[e.name])
						if err != nil {
							return err
						}
						a := acc[im.name]
						a.ops += ops
						a.took += took
						a.cpu += cpu
						a.server += srv
						a.walRecords += w1.records - w0.records
						a.walBytes += w1.bytes - w0.bytes
						a.walSyncs += w1.syncs - w0.syncs
					}
				}
				for _, im := range all {
					s := *acc[im.name]
					s.load = loadAvg()
					samples = append(samples, s)
					fmt.Fprintf(os.Stderr, "rep %d %-7s g=%d %-15s %8.0f ops/s  cpu %5.1f µs/op  server %5.1f µs/op  wal %.3f rec/op %.1f B/op %.4f syncs/op  load %s\n",
						rep, e.name, g, im.name, s.opsPerSec(), float64(s.cpu.Microseconds())/float64(s.ops), float64(s.server.Microseconds())/float64(s.ops),
						float64(s.walRecords)/float64(s.ops), float64(s.walBytes)/float64(s.ops), float64(s.walSyncs)/float64(s.ops), s.load)
					if rawW != nil {
						fmt.Fprintf(rawW, "%d\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", rep, e.name, g, im.name, s.ops, s.took.Nanoseconds(), s.cpu.Nanoseconds(), s.server.Nanoseconds(),
							s.walRecords, s.walBytes, s.walSyncs, s.load)
					}
				}
			}
		}
	}
	fmt.Fprintf(os.Stderr, "end %s, load %s\n", time.Now().UTC().Format(time.RFC3339), loadAvg())
	report(os.Stdout, samples, es, goroutines, all)
	return nil
}

// stats returns the median, min and max.
func stats(v []float64) (med, lo, hi float64) {
	if len(v) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func report(w io.Writer, samples []sample, es []*env, goroutines []int, all []impl) {
	get := func(env string, g int, im string, rep int) (sample, bool) {
		for _, s := range samples {
			if s.env == env && s.g == g && s.impl == im && s.rep == rep {
				return s, true
			}
		}
		return sample{}, false
	}
	reps := 0
	for _, s := range samples {
		reps = max(reps, s.rep)
	}
	// ratio of a to b within each repetition
	ratio := func(env string, g int, a, b string) []float64 {
		var r []float64
		for rep := 1; rep <= reps; rep++ {
			sa, oka := get(env, g, a, rep)
			sb, okb := get(env, g, b, rep)
			if oka && okb && sb.opsPerSec() > 0 {
				r = append(r, sa.opsPerSec()/sb.opsPerSec())
			}
		}
		return r
	}
	fmtR := func(v []float64) string {
		if len(v) == 0 {
			return "-"
		}
		m, lo, hi := stats(v)
		return fmt.Sprintf("%.2fx [%.2f-%.2f]", m, lo, hi)
	}
	for _, e := range es {
		fmt.Fprintf(w, "\n### cluster %s: ops/s, median [min-max] of %d repetitions; ratio to pgbaton within each repetition\n\n", e.name, reps)
		fmt.Fprint(w, "| implementation |")
		for _, g := range goroutines {
			fmt.Fprintf(w, " %d goroutine(s): ops/s | / pgbaton | WAL B/op | client CPU µs/op | server CPU µs/op |", g)
		}
		fmt.Fprint(w, "\n|---|")
		for range goroutines {
			fmt.Fprint(w, "---|---|---|---|---|")
		}
		fmt.Fprintln(w)
		for _, im := range all {
			fmt.Fprintf(w, "| %s |", im.name)
			for _, g := range goroutines {
				var ops, wal, cpu, srv []float64
				for rep := 1; rep <= reps; rep++ {
					if s, ok := get(e.name, g, im.name, rep); ok {
						ops = append(ops, s.opsPerSec())
						wal = append(wal, float64(s.walBytes)/float64(s.ops))
						cpu = append(cpu, float64(s.cpu.Microseconds())/float64(s.ops))
						srv = append(srv, float64(s.server.Microseconds())/float64(s.ops))
					}
				}
				m, lo, hi := stats(ops)
				wm, _, _ := stats(wal)
				cm, _, _ := stats(cpu)
				sm, _, _ := stats(srv)
				fmt.Fprintf(w, " %.0f [%.0f-%.0f] | %s | %.1f | %.0f | %.0f |", m, lo, hi, fmtR(ratio(e.name, g, im.name, "pgbaton")), wm, cm, sm)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "\nTargets, cluster %s (same-run ratios, median [min-max]):\n\n", e.name)
		for _, g := range goroutines {
			fmt.Fprintf(w, "- %d goroutine(s): pgbaton / pgx %s (target >= 0.9 at 8); pgbaton+tokens / pgbaton %s (target >= 0.9); pgbaton+tokens / redsync %s (target >= 1.5 at 8); pgbaton / redsync %s; pgx / redsync %s; pgbaton-xact / xact-raw %s\n",
				g, fmtR(ratio(e.name, g, "pgbaton", "pgx")), fmtR(ratio(e.name, g, "pgbaton+tokens", "pgbaton")),
				fmtR(ratio(e.name, g, "pgbaton+tokens", "redsync")), fmtR(ratio(e.name, g, "pgbaton", "redsync")),
				fmtR(ratio(e.name, g, "pgx", "redsync")), fmtR(ratio(e.name, g, "pgbaton-xact", "xact-raw")))
		}
	}
}
