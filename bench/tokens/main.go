// Command tokens finds where the cost of a fencing token goes: raw pgx
// try-lock + unlock on pinned connections with the lock statement drawing a
// token in different ways, interleaved within each repetition, on a
// durable pgtest cluster (fsync, synchronous_commit and full_page_writes
// on) with pgbaton's schema migrated. For each variant it reports ops/s,
// the server CPU per operation (the backends' user+system time from /proc)
// and the WAL written (pg_stat_wal), each as a median [min-max] across
// repetitions, and the ratio to the variant without a token.
//
//	cd bench && go run ./tokens -reps 5
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

type variant struct {
	name, lock string
	token      bool // the statement returns a token column
	epochArg   bool // $2 is the session's epoch (from fence_prepare at connect)
}

var variants = []variant{
	{"no token", "SELECT pg_try_advisory_lock($1::int8) AS l", false, false},
	{"fence_next() (periodic's draws)", "SELECT l, CASE WHEN l THEN pgbaton.fence_next() END FROM pg_try_advisory_lock($1::int8) AS l", true, false},
	{"inline epoch subquery + nextval", "SELECT l, CASE WHEN l THEN (SELECT (epoch << 44) | nextval('pgbaton.fence_counter') FROM pgbaton.fence_epoch) END FROM pg_try_advisory_lock($1::int8) AS l", true, false},
	{"session epoch + nextval (pgbaton's lock sessions now)", "SELECT l, CASE WHEN l THEN ($2::int8 << 44) | nextval('pgbaton.fence_counter') END FROM pg_try_advisory_lock($1::int8) AS l", true, true},
	{"old logged sequence nextval", "SELECT l, CASE WHEN l THEN nextval('pgbaton.fence_token') END FROM pg_try_advisory_lock($1::int8) AS l", true, false},
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tokens:", err)
		os.Exit(1)
	}
}

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

type worker struct {
	conn  *pgx.Conn
	key   int64
	epoch int64
}

func (w worker) op(ctx context.Context, v variant) error {
	var ok bool
	var tok *int64
	var err error
	switch {
	case !v.token:
		err = w.conn.QueryRow(ctx, v.lock, w.key).Scan(&ok)
	case v.epochArg:
		err = w.conn.QueryRow(ctx, v.lock, w.key, w.epoch).Scan(&ok, &tok)
	default:
		err = w.conn.QueryRow(ctx, v.lock, w.key).Scan(&ok, &tok)
	}
	if err != nil {
		return err
	}
	if !ok || (v.token && tok == nil) {
		return fmt.Errorf("%s: not granted or no token", v.name)
	}
	if err := w.conn.QueryRow(ctx, "SELECT pg_advisory_unlock($1::int8)", w.key).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errors.New("unlock returned false")
	}
	return nil
}

func med(v []float64) (m, lo, hi float64) {
	s := slices.Clone(v)
	sort.Float64s(s)
	n := len(s)
	m = s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return m, s[0], s[n-1]
}

func run() error {
	reps := flag.Int("reps", 5, "repetitions")
	dur := flag.Duration("dur", 2*time.Second, "time per variant per repetition")
	gsFlag := flag.String("goroutines", "1,8", "goroutine counts")
	flag.Parse()
	var gs []int
	for _, s := range strings.Split(*gsFlag, ",") {
		g, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		gs = append(gs, g)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Durable: true})
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	if err := c.CreateDatabase(ctx, "tokens"); err != nil {
		return err
	}
	dsn := c.DSN("tokens")
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer func() { _ = admin.Close(context.Background()) }()
	if err := pgbaton.Migrate(ctx, admin, ""); err != nil {
		return err
	}
	maxG := slices.Max(gs)
	ws := make([]worker, maxG)
	pids := make([]int, maxG)
	for i := range ws {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer func() { _ = conn.Close(context.Background()) }()
		// As a lock session does: durable commits, epoch at connect.
		if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
			return err
		}
		var epoch int64
		if _, err := conn.Exec(ctx, "SELECT pgbaton.fence_prepare()"); err != nil {
			return err
		}
		if err := conn.QueryRow(ctx, "SELECT pgbaton.fence_settle()").Scan(&epoch); err != nil {
			return err
		}
		ws[i] = worker{conn: conn, key: int64(0x70c)<<32 + int64(i), epoch: epoch}
		pids[i] = int(conn.PgConn().PID())
	}
	type res struct{ ops, cpu, wal []float64 }
	results := map[string]*res{}
	fmt.Fprintf(os.Stderr, "load at start %s\n", loadAvg())
	type acc struct {
		ops       int64
		took, cpu time.Duration
		wal       int64
	}
	slice := 100 * time.Millisecond
	nSlices := max(1, int(*dur/slice))
	for rep := 1; rep <= *reps; rep++ {
		for _, g := range gs {
			accs := make([]acc, len(variants))
			for _, v := range variants {
				for _, w := range ws[:g] { // warm up: prepare the statement
					for range 20 {
						if err := w.op(ctx, v); err != nil {
							return err
						}
					}
				}
			}
			// 100 ms slices, the variants taking turns in a rotated order.
			for sl := range nSlices {
				for j := range variants {
					vi := (j + sl + rep) % len(variants)
					v := variants[vi]
					var wal0, wal1 int64
					if err := admin.QueryRow(ctx, "SELECT wal_bytes::int8 FROM pg_stat_wal").Scan(&wal0); err != nil {
						return err
					}
					var cpu0 time.Duration
					for _, p := range pids[:g] {
						cpu0 += procCPU(p)
					}
					var stop atomic.Bool
					var ops atomic.Int64
					var wg sync.WaitGroup
					errs := make([]error, g)
					t0 := time.Now()
					for i, w := range ws[:g] {
						wg.Add(1)
						go func() {
							defer wg.Done()
							n := int64(0)
							for !stop.Load() {
								if err := w.op(ctx, v); err != nil {
									errs[i] = err
									break
								}
								n++
							}
							ops.Add(n)
						}()
					}
					time.Sleep(slice)
					stop.Store(true)
					wg.Wait()
					took := time.Since(t0)
					if err := errors.Join(errs...); err != nil {
						return err
					}
					var cpu1 time.Duration
					for _, p := range pids[:g] {
						cpu1 += procCPU(p)
					}
					if err := admin.QueryRow(ctx, "SELECT wal_bytes::int8 FROM pg_stat_wal").Scan(&wal1); err != nil {
						return err
					}
					a := &accs[vi]
					a.ops += ops.Load()
					a.took += took
					a.cpu += cpu1 - cpu0
					a.wal += wal1 - wal0
				}
			}
			for vi, v := range variants {
				a := accs[vi]
				n := float64(a.ops)
				key := fmt.Sprintf("%d/%s", g, v.name)
				if results[key] == nil {
					results[key] = &res{}
				}
				rr := results[key]
				rr.ops = append(rr.ops, n/a.took.Seconds())
				rr.cpu = append(rr.cpu, float64(a.cpu.Microseconds())/n)
				rr.wal = append(rr.wal, float64(a.wal)/n)
				fmt.Fprintf(os.Stderr, "rep %d g=%d %-34s %7.0f ops/s  server %5.1f µs/op  wal %.2f B/op  load %s\n",
					rep, g, v.name, n/a.took.Seconds(), float64(a.cpu.Microseconds())/n, float64(a.wal)/n, loadAvg())
			}
		}
	}
	fmt.Fprintf(os.Stderr, "load at end %s\n", loadAvg())
	fmt.Printf("| goroutines | lock statement draws the token by | ops/s median [min-max] | / no token, same rep | server CPU µs/op | WAL B/op |\n|---|---|---|---|---|---|\n")
	for _, g := range gs {
		base := results[fmt.Sprintf("%d/%s", g, variants[0].name)]
		for _, v := range variants {
			rr := results[fmt.Sprintf("%d/%s", g, v.name)]
			ratios := make([]float64, len(rr.ops))
			for i := range rr.ops {
				ratios[i] = rr.ops[i] / base.ops[i]
			}
			m, lo, hi := med(rr.ops)
			rm, rlo, rhi := med(ratios)
			cm, clo, chi := med(rr.cpu)
			wm, _, _ := med(rr.wal)
			fmt.Printf("| %d | %s | %.0f [%.0f-%.0f] | %.2fx [%.2f-%.2f] | %.1f [%.1f-%.1f] | %.1f |\n", g, v.name, m, lo, hi, rm, rlo, rhi, cm, clo, chi, wm)
		}
	}
	return nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
