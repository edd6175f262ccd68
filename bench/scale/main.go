// Command scale measures how pgbaton's costs grow with the keys one process
// holds and with the instances (Lockers) that share a cluster, on a durable
// pgtest cluster (fsync, synchronous_commit and full_page_writes on):
//
//   - keys: one Locker holding K leases (K up to 10,000): Go heap per lease,
//     process RSS, goroutines, lock connections, the process's and its
//     backends' CPU while idle (heartbeats), the time to take and release
//     them all, the latency of a TryAcquire+Release of one more key on the
//     same Locker, and the latency of another session's queries (SELECT 1,
//     a try+unlock of its own advisory key, and a count(*) of pg_locks as a
//     monitoring query would run) with and without the leases held.
//
//   - jobs: J periodic jobs of one scheduler firing at the same instant:
//     start lateness, CPU of the process and of the cluster around the tick
//     and between ticks.
//
//   - instances: N idle Lockers in this process, each holding one lease:
//     connections, heartbeat CPU of the process and of the backends, and the
//     latency of another Locker's TryAcquire+Release.
//
//     cd bench && go run ./scale
//
// BENCHMARKS.md ("Scale") quotes its output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func cpuSelf() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's time on a CPU, in nanoseconds, from
// /proc/PID/schedstat (the scheduler's own accounting, not 10 ms ticks).
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

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// backends returns the PIDs of the sessions whose application_name starts
// with prefix.
func backends(ctx context.Context, admin *pgx.Conn, prefix string) ([]int, error) {
	rows, err := admin.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", prefix)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int])
}

// serverCPU is the CPU used so far by pid and its children (a postmaster
// and its backends).
func serverCPU(pid int) time.Duration {
	total := procCPU(pid)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return total
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			total += procCPU(p)
		}
	}
	return total
}

// idleCPU measures this process's CPU and the CPU of the given backends
// over d, in ms per second.
func idleCPU(pids []int, d time.Duration) (self, server float64) {
	s0 := cpuSelf()
	var b0 time.Duration
	for _, p := range pids {
		b0 += procCPU(p)
	}
	time.Sleep(d)
	s1 := cpuSelf()
	var b1 time.Duration
	for _, p := range pids {
		b1 += procCPU(p)
	}
	sec := d.Seconds()
	return float64(s1-s0) / 1e6 / sec, float64(b1-b0) / 1e6 / sec
}

type lat struct{ p50, p99 time.Duration }

func (l lat) String() string {
	return fmt.Sprintf("%.0f / %.0f µs", float64(l.p50.Nanoseconds())/1e3, float64(l.p99.Nanoseconds())/1e3)
}

func latencies(n int, f func() error) (lat, error) {
	d := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if err := f(); err != nil {
			return lat{}, err
		}
		d = append(d, time.Since(t))
	}
	slices.Sort(d)
	return lat{d[len(d)/2], d[len(d)*99/100]}, nil
}

// other is another session's queries, for their latency.
type other struct {
	conn *pgx.Conn
	key  int64
}

func (o other) measure(ctx context.Context, n int) (sel, adv, locks lat, err error) {
	if sel, err = latencies(n, func() error { _, err := o.conn.Exec(ctx, "SELECT 1"); return err }); err != nil {
		return
	}
	if adv, err = latencies(n, func() error {
		var a, b bool
		if err := o.conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::int8)", o.key).Scan(&a); err != nil {
			return err
		}
		if err := o.conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", o.key).Scan(&b); err != nil {
			return err
		}
		if !a || !b {
			return errors.New("other session: advisory key busy")
		}
		return nil
	}); err != nil {
		return
	}
	locks, err = latencies(max(n/20, 20), func() error {
		var c int
		return o.conn.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").Scan(&c)
	})
	return
}

func acquireAll(ctx context.Context, l *pgbaton.Locker, base int64, k int) ([]*pgbaton.Lease, time.Duration, error) {
	leases := make([]*pgbaton.Lease, k)
	const g = 8
	var wg sync.WaitGroup
	errs := make([]error, g)
	t := time.Now()
	for w := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < k; i += g {
				ls, err := l.TryAcquire(ctx, pgbaton.KeyInt64(base+int64(i)))
				if err != nil {
					errs[w] = fmt.Errorf("lease %d of %d: %w", i, k, err)
					return
				}
				leases[i] = ls
			}
		}()
	}
	wg.Wait()
	return leases, time.Since(t), errors.Join(errs...)
}

func releaseAll(leases []*pgbaton.Lease) (time.Duration, error) {
	t := time.Now()
	var errs []error
	for _, ls := range leases {
		if ls != nil {
			if err := ls.Release(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return time.Since(t), errors.Join(errs...)
}

func run() error {
	keysFlag := flag.String("keys", "0,100,1000,10000", "held-key counts to measure")
	perConn := flag.String("per-conn", "100,500", "MaxLocksPerConn values to measure at the largest key count (MaxConns = keys / per-conn)")
	instFlag := flag.String("instances", "1,16,64", "idle instance counts to measure")
	window := flag.Duration("window", 10*time.Second, "idle CPU measurement window")
	n := flag.Int("n", 2000, "samples per latency")
	jobs := flag.Int("jobs", 1000, "if > 0, this many periodic jobs firing at the same instant")
	jobEvery := flag.Duration("job-every", 10*time.Second, "the jobs' interval (periodic.Every)")
	jobTicks := flag.Int("job-ticks", 3, "ticks to measure")
	tableCheck := flag.Int("table-check", 10000, "if > 0, try this many leases on a cluster with max_connections=100 (the shared lock table's size)")
	durable := flag.Bool("durable", true, "durable cluster (fsync, synchronous_commit, full_page_writes on)")
	flag.Parse()
	ints := func(s string) ([]int, error) {
		var r []int
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("bad list %q", s)
			}
			r = append(r, v)
		}
		return r, nil
	}
	keys, err := ints(*keysFlag)
	if err != nil {
		return err
	}
	pcs, err := ints(*perConn)
	if err != nil {
		return err
	}
	insts, err := ints(*instFlag)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Durable: *durable, Settings: map[string]string{"max_connections": "400"}})
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	if err := c.CreateDatabase(ctx, "scale"); err != nil {
		return err
	}
	dsn := c.DSN("scale")
	admin, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer func() { _ = admin.Close(context.Background()) }()
	oc, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer func() { _ = oc.Close(context.Background()) }()
	o := other{conn: oc, key: 1 << 40}
	var maxLocks, maxConns string
	_ = admin.QueryRow(ctx, "SELECT current_setting('max_locks_per_transaction'), current_setting('max_connections')").Scan(&maxLocks, &maxConns)
	fmt.Printf("cluster: durable=%v max_locks_per_transaction=%s max_connections=%s; load %s\n", *durable, maxLocks, maxConns, load())

	fmt.Printf("\n## keys held by one Locker\n\n")
	fmt.Printf("| leases (K-1 held + 1 taken and released) | MaxConns x MaxLocksPerConn | take all (8 goroutines) | release all (1) | heap/lease | RSS | goroutines | lock conns | idle CPU: process / its backends | TryAcquire+Release of one more key p50 / p99 | other session SELECT 1 p50 / p99 | other session try+unlock p50 / p99 | other session count(pg_locks) p50 / p99 |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	type cfg struct{ k, conns, per int }
	var cfgs []cfg
	top := slices.Max(keys)
	for _, k := range keys {
		if k == top {
			for _, pc := range pcs {
				cfgs = append(cfgs, cfg{k, max(1, (k+pc-1)/pc), pc})
			}
			continue
		}
		cfgs = append(cfgs, cfg{k, max(1, (k+99)/100), 100})
	}
	for i, cf := range cfgs {
		name := fmt.Sprintf("scale-%d", i)
		h0 := heap()
		// Exactly the connections K leases need: K-1 are taken, so the
		// extra key below lands on a connection already carrying
		// MaxLocksPerConn-1 leases, and pays for them.
		l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: name, Logger: quiet,
			MaxConns: cf.conns, MaxLocksPerConn: cf.per, MaxHeldKeys: max(cf.k, 1)})
		if err != nil {
			return err
		}
		leases, took, err := acquireAll(ctx, l, int64(i+1)<<32, max(cf.k-1, 0))
		if err != nil {
			_ = l.Close()
			return err
		}
		h1 := heap()
		time.Sleep(2 * time.Second) // let the start-up burst settle
		pids, err := backends(ctx, admin, "pgbaton:"+name)
		if err != nil {
			_ = l.Close()
			return err
		}
		self, server := idleCPU(pids, *window)
		extra := pgbaton.KeyInt64(int64(i+1)<<32 + int64(cf.k) + 7)
		one, err := latencies(*n, func() error {
			ls, err := l.TryAcquire(ctx, extra)
			if err != nil {
				return err
			}
			return ls.Release()
		})
		if err != nil {
			_ = l.Close()
			return err
		}
		sel, adv, locks, err := o.measure(ctx, *n)
		if err != nil {
			_ = l.Close()
			return err
		}
		st := l.Stats()
		gor := runtime.NumGoroutine()
		rss := rssKB(os.Getpid())
		rel, err := releaseAll(leases)
		if err != nil {
			_ = l.Close()
			return err
		}
		_ = l.Close()
		perLease := "-"
		if cf.k > 0 {
			perLease = fmt.Sprintf("%.0f B", float64(int64(h1)-int64(h0))/float64(cf.k))
		}
		fmt.Printf("| %d | %d x %d | %.2f s | %.2f s | %s | %d MB | %d | %d (%d backends) | %.1f / %.1f ms/s | %s | %s | %s | %s |\n",
			cf.k, cf.conns, cf.per, took.Seconds(), rel.Seconds(), perLease, rss/1024, gor, st.Conns, len(pids), self, server, one, sel, adv, locks)
	}
	sel, adv, locks, err := o.measure(ctx, *n)
	if err != nil {
		return err
	}
	fmt.Printf("\nother session after all released: SELECT 1 %s; try+unlock %s; count(pg_locks) %s; load %s\n", sel, adv, locks, load())

	fmt.Printf("\n## idle instances (Lockers in this process, one lease each)\n\n")
	fmt.Printf("| instances | lock conns | idle CPU: process / backends | per instance | another Locker's TryAcquire+Release p50 / p99 | other session SELECT 1 p50 / p99 |\n|---|---|---|---|---|---|\n")
	probe, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: "probe", Logger: quiet, MaxConns: 1})
	if err != nil {
		return err
	}
	defer func() { _ = probe.Close() }()
	for _, ni := range insts {
		var ls []*pgbaton.Locker
		closeAll := func() {
			for _, l := range ls {
				_ = l.Close()
			}
		}
		conns := 0
		for j := range ni {
			l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: dsn, InstanceName: fmt.Sprintf("inst-%d-%d", ni, j), Logger: quiet})
			if err != nil {
				closeAll()
				return err
			}
			ls = append(ls, l)
			if _, err := l.TryAcquire(ctx, pgbaton.KeyInt64(int64(ni)<<20+int64(j))); err != nil {
				closeAll()
				return err
			}
		}
		for _, l := range ls {
			conns += l.Stats().Conns
		}
		time.Sleep(2 * time.Second)
		pids, err := backends(ctx, admin, fmt.Sprintf("pgbaton:inst-%d-", ni))
		if err != nil {
			closeAll()
			return err
		}
		self, server := idleCPU(pids, *window)
		one, err := latencies(*n, func() error {
			ls, err := probe.TryAcquire(ctx, pgbaton.KeyInt64(1<<41))
			if err != nil {
				return err
			}
			return ls.Release()
		})
		if err != nil {
			closeAll()
			return err
		}
		sel, _, _, err := o.measure(ctx, *n)
		if err != nil {
			closeAll()
			return err
		}
		closeAll() // the leases end with their Lockers
		fmt.Printf("| %d | %d | %.1f / %.1f ms/s | %.3f / %.3f ms/s | %s | %s |\n", ni, conns, self, server, self/float64(ni), server/float64(ni), one, sel)
	}
	if *jobs > 0 {
		if err := jobsBurst(ctx, c, *jobs, *jobEvery, *jobTicks); err != nil {
			return err
		}
	}
	if *tableCheck > 0 {
		if err := lockTable(ctx, *durable, *tableCheck); err != nil {
			return err
		}
	}
	fmt.Printf("\nload at end %s\n", load())
	return nil
}

// lockTable takes k leases on a cluster with PostgreSQL's default
// max_connections (100) and max_locks_per_transaction (64), whose shared
// lock table then has room for about 64 × (100 + background processes)
// locks, and reports how many it got and the error that stopped it.
func lockTable(ctx context.Context, durable bool, k int) error {
	c, err := pgtest.Start(ctx, pgtest.Options{Durable: durable, Settings: map[string]string{"max_connections": "100"}})
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	per := max(100, k/50) // at most about 50 connections, under max_connections
	l, err := pgbaton.New(ctx, pgbaton.Config{ConnString: c.DSN("postgres"), InstanceName: "table", Logger: quiet,
		MaxConns: (k+per-1)/per + 1, MaxLocksPerConn: per, MaxHeldKeys: k})
	if err != nil {
		return err
	}
	defer func() { _ = l.Close() }()
	got := 0
	var stop error
	for i := range k {
		if _, err := l.TryAcquire(ctx, pgbaton.KeyInt64(int64(i))); err != nil {
			stop = err
			break
		}
		got++
	}
	fmt.Printf("\n## shared lock table, max_connections=100, max_locks_per_transaction=64 (PostgreSQL defaults)\n\n")
	fmt.Printf("took %d of %d leases; stopped by: %v; Locker stats %+v\n", got, k, stop, l.Stats())
	return nil
}

func load() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}
