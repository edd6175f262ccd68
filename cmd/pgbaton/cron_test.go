//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// cronProc is a pgbaton cron daemon: the test binary re-executed as the CLI.
type cronProc struct {
	t        *testing.T
	instance string
	cmd      *exec.Cmd
	stderr   *safeBuffer
	done     chan struct{}
}

// startCron starts pgbaton cron with a bounded life: the test's cleanup
// SIGQUITs it (stacks on stderr) if it is still running, then kills it.
func startCron(t *testing.T, dsn, crontab, instance string, extra ...string) *cronProc {
	t.Helper()
	return startCronWith(t, nil, dsn, crontab, instance, extra...)
}

func startCronWith(t *testing.T, wrapper []string, dsn, crontab, instance string, extra ...string) *cronProc {
	t.Helper()
	args := append([]string{"cron", "--crontab", crontab, "--dsn", dsn, "--instance", instance, "--grace", "3s", "--poll", "200ms"}, extra...)
	var cmd *exec.Cmd
	if wrapper != nil {
		cmd = exec.Command(wrapper[0], append(append(wrapper[1:], os.Args[0]), args...)...)
	} else {
		cmd = exec.Command(os.Args[0], args...)
	}
	p := &cronProc{t: t, instance: instance, cmd: cmd, stderr: &safeBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		t.Logf("%s was still running at the end; its stderr:\n%s", instance, p.stderr.String())
	})
	p.waitLog("cron: started", 30*time.Second)
	return p
}

// waitLog waits until the daemon's stderr contains s.
func (p *cronProc) waitLog(s string, within time.Duration) {
	p.t.Helper()
	waitUntil(p.t, within, fmt.Sprintf("%s logs %q", p.instance, s), func() bool {
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before logging %q; stderr:\n%s", p.instance, p.cmd.ProcessState, s, p.stderr.String())
		default:
		}
		return strings.Contains(p.stderr.String(), s)
	})
}

// exit waits for the daemon to exit and returns its status; past within it
// is SIGQUIT for its stacks and the test fails.
func (p *cronProc) exit(within time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		<-p.done
		p.t.Fatalf("%s did not exit within %s; stderr:\n%s", p.instance, within, p.stderr.String())
		return -1
	}
}

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", within, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// runRow is a row of pgbaton.periodic_runs.
type runRow struct {
	Job, Status, Instance, Error string
	Tick, Through                time.Time
	Ticks                        int64
}

func (r runRow) key() string { return r.Job + " " + fmtLedgerTick(r.Tick) }

func fmtLedgerTick(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func readRuns(t *testing.T, admin *pgx.Conn) []runRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := admin.Query(ctx, `SELECT job, status, instance, coalesce(error, ''), tick, through_tick, ticks
		FROM pgbaton.periodic_runs WHERE job NOT LIKE 'pgbaton.%' ORDER BY job, tick`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (runRow, error) {
		var x runRow
		err := r.Scan(&x.Job, &x.Status, &x.Instance, &x.Error, &x.Tick, &x.Through, &x.Ticks)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ledgerLine is a line the jobs append: "JOB EVENT TICK INSTANCE [VERSION]".
type ledgerLine struct{ Job, Event, Tick, Instance, Version string }

func readLedger(t *testing.T, path string) []ledgerLine {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []ledgerLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue // a line being written
		}
		l := ledgerLine{Job: fs[0], Event: fs[1], Tick: fs[2], Instance: fs[3]}
		if len(fs) > 4 {
			l.Version = fs[4]
		}
		out = append(out, l)
	}
	return out
}

// ledgerJob is a crontab line whose command appends start and end lines to
// $LEDGER, sleeping between them.
func ledgerJob(opts, spec, job, sleep, version string) string {
	w := func(ev string) string {
		return fmt.Sprintf(`echo "%s %s $PGBATON_TICK $PGBATON_INSTANCE %s" >> "$LEDGER"`, job, ev, version)
	}
	cmd := w("start")
	if sleep != "" {
		cmd += "; sleep " + sleep
	}
	cmd += "; " + w("end")
	return fmt.Sprintf("#pgbaton: %s\n%s %s\n", opts, spec, cmd)
}

func clusterCrontab(ledger, tickVersion string) string {
	return "LEDGER=" + ledger + "\n" +
		ledgerJob("name=tick", "@every 1s", "tick", "", tickVersion) +
		ledgerJob("name=slow", "@every 2s", "slow", "1.5", "v1") +
		ledgerJob("name=g1 group=g", "@every 2s", "g1", "0.3", "v1") +
		ledgerJob("name=g2 group=g", "@every 3s", "g2", "0.3", "v1")
}

// writeAtomically replaces path as editors and config management do.
func writeAtomically(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".tmp"
	writeFile(t, tmp, text)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// runningSlow waits until a run of the slow job is in progress (its row
// says running and its process has written its start line) and returns it.
func runningSlow(t *testing.T, admin *pgx.Conn, ledger string) runRow {
	t.Helper()
	var got runRow
	waitUntil(t, 20*time.Second, "a run of job slow is in progress", func() bool {
		for _, r := range readRuns(t, admin) {
			if r.Job != "slow" || r.Status != "running" {
				continue
			}
			for _, l := range readLedger(t, ledger) {
				if l.Job == "slow" && l.Event == "start" && l.Tick == fmtLedgerTick(r.Tick) {
					got = r
					return true
				}
			}
		}
		return false
	})
	return got
}

func rowStatus(t *testing.T, admin *pgx.Conn, key string) runRow {
	t.Helper()
	for _, r := range readRuns(t, admin) {
		if r.key() == key {
			return r
		}
	}
	return runRow{}
}

// Three daemons on one database run a four-job crontab: every tick runs
// exactly once across them, checked on the run history and on the ledger
// the jobs write, through a daemon SIGKILLed mid-run and restarted, a
// reload mid-run, and a shutdown that records the outcome of the run it
// interrupts. Jobs g1 and g2 share a lock group: they never run together.
func TestCronCluster(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, true)
	dir := t.TempDir()
	ledger, crontab := filepath.Join(dir, "ledger"), filepath.Join(dir, "crontab")
	writeFile(t, crontab, clusterCrontab(ledger, "v1"))
	procs := map[string]*cronProc{}
	for i, inst := range []string{"d1", "d2", "d3"} {
		var extra []string
		if i == 0 {
			extra = []string{"--health-listen", "127.0.0.1:0"}
		}
		procs[inst] = startCron(t, dsn, crontab, inst, extra...)
	}

	// Steady state: every job has succeeded twice.
	waitUntil(t, 20*time.Second, "every job succeeded twice", func() bool {
		n := map[string]int{}
		for _, r := range readRuns(t, admin) {
			if r.Status == "succeeded" {
				n[r.Job]++
			}
		}
		return n["tick"] >= 2 && n["slow"] >= 2 && n["g1"] >= 2 && n["g2"] >= 2
	})

	// cron status, from the database.
	code, out, errOut := runCLI(t, "cron", "status", "--dsn", dsn, "--json", "--runs", "2")
	if code != 0 {
		t.Fatalf("cron status: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep cronStatusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("cron status --json: %v\n%s", err, out)
	}
	if len(rep.Jobs) != 5 || rep.Jobs[0].Job != "crontab:default" {
		t.Fatalf("cron status lists %d jobs, want the 4 and the crontab's fingerprint:\n%s", len(rep.Jobs), out)
	}
	for _, j := range rep.Jobs[1:] {
		if j.Health != "ok" || j.NextTick.IsZero() || !j.NextTick.After(rep.Now) || j.LastSuccess.IsZero() || len(j.Runs) == 0 || j.Drift != "" {
			t.Fatalf("cron status, job %s: %+v", j.Job, j)
		}
	}
	// The health endpoint of d1.
	addr := healthAddr(t, procs["d1"])
	if code, body := httpGet(t, "http://"+addr+"/"); code != http.StatusOK || !strings.Contains(body, `"job":"slow"`) {
		t.Fatalf("health: %d %s", code, body)
	}

	// A daemon SIGKILLed while it runs the slow job: its process dies with
	// it (parent-death signal), the run is recorded abandoned, and the
	// daemon restarts into the cluster.
	victim := runningSlow(t, admin, ledger)
	vp := procs[victim.Instance]
	if err := vp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	vp.exit(10 * time.Second)
	waitUntil(t, 20*time.Second, "the killed run is recorded abandoned", func() bool {
		return rowStatus(t, admin, victim.key()).Status == "abandoned"
	})
	procs[victim.Instance] = startCron(t, dsn, crontab, victim.Instance)
	waitUntil(t, 10*time.Second, "the restarted daemon registered every job", func() bool {
		var n int
		err := admin.QueryRow(context.Background(), `SELECT count(*) FROM pgbaton.periodic_jobs
			WHERE job NOT LIKE 'pgbaton.%' AND definition_instance = $1`, victim.Instance).Scan(&n)
		return err == nil && n == 5
	})
	t.Logf("killed %s during slow@%s; restarted", victim.Instance, fmtLedgerTick(victim.Tick))

	// A reload while the slow job runs: the changed job (tick, a new
	// command) is replaced on every daemon; the run in progress goes on.
	inFlight := runningSlow(t, admin, ledger)
	registered := definitionsAt(t, admin)
	writeAtomically(t, crontab, clusterCrontab(ledger, "v2"))
	for _, p := range procs {
		p.waitLog(`"msg":"cron: crontab reloaded"`, 10*time.Second)
	}
	if err := procs["d2"].cmd.Process.Signal(syscall.SIGHUP); err != nil { // no change: nothing restarts
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the run in flight during the reload succeeds", func() bool {
		return rowStatus(t, admin, inFlight.key()).Status == "succeeded"
	})
	waitUntil(t, 10*time.Second, "the reloaded job runs its new command", func() bool {
		for _, l := range readLedger(t, ledger) {
			if l.Job == "tick" && l.Version == "v2" {
				return true
			}
		}
		return false
	})
	after := definitionsAt(t, admin)
	for job, at := range registered {
		if changed := !after[job].Equal(at); changed != (job == "tick" || job == "crontab:default") {
			t.Fatalf("job %s re-registered by the reload: %v (only tick changed)", job, changed)
		}
	}
	for _, p := range procs {
		if !strings.Contains(p.stderr.String(), `"changed":["tick"]`) {
			t.Fatalf("%s: reload did not report tick changed:\n%s", p.instance, p.stderr.String())
		}
	}

	// Shutdown while the slow job runs: every daemon exits 0, the
	// interrupted run is recorded failed (shutdown), nothing stays running.
	last := runningSlow(t, admin, ledger)
	for _, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		if code := p.exit(20 * time.Second); code != 0 {
			t.Fatalf("%s: exit %d after SIGTERM; stderr:\n%s", p.instance, code, p.stderr.String())
		}
	}
	if r := rowStatus(t, admin, last.key()); r.Status != "failed" || !strings.Contains(r.Error, "shut down") {
		t.Fatalf("the run interrupted by the shutdown is recorded %+v", r)
	}

	checkExactlyOnce(t, readRuns(t, admin), readLedger(t, ledger), map[string]time.Duration{
		"tick": time.Second, "slow": 2 * time.Second, "g1": 2 * time.Second, "g2": 3 * time.Second})
}

// definitionsAt returns when each job's definition was last registered
// (by a replica adding it).
func definitionsAt(t *testing.T, admin *pgx.Conn) map[string]time.Time {
	t.Helper()
	rows, err := admin.Query(context.Background(), `SELECT job, definition_at FROM pgbaton.periodic_jobs WHERE job NOT LIKE 'pgbaton.%'`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for rows.Next() {
		var job string
		var at time.Time
		if err := rows.Scan(&job, &at); err != nil {
			t.Fatal(err)
		}
		out[job] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkExactlyOnce checks the run history and the ledger against each
// other: every tick of each job, from its first to its last, has exactly one
// row; a tick's process ran at most once, on the instance its row names,
// and wrote its end line exactly when the row says succeeded; and the
// group's jobs never overlapped.
func checkExactlyOnce(t *testing.T, runs []runRow, ledger []ledgerLine, every map[string]time.Duration) {
	t.Helper()
	byKey := map[string]runRow{}
	perJob := map[string][]runRow{}
	statuses := map[string]int{}
	instances := map[string]int{}
	for _, r := range runs {
		byKey[r.key()] = r
		perJob[r.Job] = append(perJob[r.Job], r)
		statuses[r.Status]++
		if r.Status == "succeeded" {
			instances[r.Instance]++
		}
	}
	for job, d := range every {
		rs := perJob[job]
		if len(rs) < 3 {
			t.Fatalf("job %s: only %d rows", job, len(rs))
		}
		for i, r := range rs {
			if want := int64(r.Through.Sub(r.Tick)/d) + 1; r.Ticks != want {
				t.Errorf("job %s: row %s covers %d ticks but says %d", job, r.key(), want, r.Ticks)
			}
			if i > 0 && !r.Tick.Equal(rs[i-1].Through.Add(d)) {
				t.Errorf("job %s: ticks between %s and %s have no row", job, fmtLedgerTick(rs[i-1].Through), fmtLedgerTick(r.Tick))
			}
			if r.Status == "running" {
				t.Errorf("job %s: %s still running after every daemon stopped", job, r.key())
			}
		}
	}
	starts, ends := map[string]ledgerLine{}, map[string]int{}
	for _, l := range ledger {
		k := l.Job + " " + l.Tick
		switch l.Event {
		case "start":
			if prev, dup := starts[k]; dup {
				t.Errorf("tick %s ran twice: on %s and on %s", k, prev.Instance, l.Instance)
			}
			starts[k] = l
			r, ok := byKey[k]
			switch {
			case !ok:
				t.Errorf("tick %s ran on %s but has no row", k, l.Instance)
			case r.Instance != l.Instance:
				t.Errorf("tick %s ran on %s but its row names %s", k, l.Instance, r.Instance)
			}
		case "end":
			ends[k]++
		}
	}
	for k, r := range byKey {
		if _, ok := every[r.Job]; !ok {
			continue
		}
		_, started := starts[k]
		switch r.Status {
		case "succeeded":
			if !started || ends[k] != 1 {
				t.Errorf("tick %s recorded succeeded, but the ledger has start %v, %d end lines", k, started, ends[k])
			}
		case "failed", "abandoned":
			if ends[k] != 0 {
				t.Errorf("tick %s recorded %s (%s), but its process finished", k, r.Status, r.Error)
			}
			if r.Status == "failed" && !started && !strings.Contains(r.Error, "lock group") && !strings.Contains(r.Error, "shut down") {
				t.Errorf("tick %s failed without running: %s", k, r.Error)
			}
		default: // skipped, missed
			if started {
				t.Errorf("tick %s recorded %s, but it ran", k, r.Status)
			}
		}
	}
	// Lock group g: between a start and its end, no other start of g.
	var open *ledgerLine
	for _, l := range ledger {
		if l.Job != "g1" && l.Job != "g2" {
			continue
		}
		k := l.Job + " " + l.Tick
		switch {
		case l.Event == "start" && open != nil && byKey[open.Job+" "+open.Tick].Status == "succeeded":
			t.Errorf("lock group g: %s %s started while %s %s ran", l.Job, l.Tick, open.Job, open.Tick)
		case l.Event == "end" && (open == nil || open.Job+" "+open.Tick != k):
			t.Errorf("lock group g: %s ended but the run in progress was %v", k, open)
		}
		if l.Event == "start" {
			open = &l
		} else {
			open = nil
		}
	}
	var names []string
	for k := range instances {
		names = append(names, k)
	}
	sort.Strings(names)
	t.Logf("%d rows %v; ledger %d lines; successes per instance %v", len(runs), statuses, len(ledger), instances)
}

// healthAddr reads the address the daemon serves health on from its log.
func healthAddr(t *testing.T, p *cronProc) string {
	t.Helper()
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "cron: serving health" {
			return m["addr"].(string)
		}
	}
	t.Fatalf("no health address in the log:\n%s", p.stderr.String())
	return ""
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
	}
	return resp.StatusCode, b.String()
}

// runCronProc runs pgbaton cron to completion (bounded) and returns its exit
// status and stderr.
func runCronProc(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"cron"}, args...)...)
	var e safeBuffer
	cmd.Stderr = &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		<-done
		t.Fatalf("pgbaton cron did not end within 60s; stderr:\n%s", e.String())
	}
	return cmd.ProcessState.ExitCode(), e.String()
}

// The daemon's exit statuses when it cannot start.
func TestCronStartFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	crontab := filepath.Join(dir, "crontab")
	writeFile(t, crontab, "@every 1s true\n")
	bad := filepath.Join(dir, "bad")
	writeFile(t, bad, "@every 1s\n")
	unmigrated, _ := execDB(t, false)
	migrated, _ := execDB(t, true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // after the parallel subtests
	for _, tc := range []struct {
		name string
		args []string
		want int
		msg  string
	}{
		{"invalid crontab", []string{"--crontab", bad, "--dsn", migrated}, cronExitCrontab, "no command"},
		{"no database", []string{"--crontab", crontab, "--dsn", "postgres://nobody@127.0.0.1:1/x?connect_timeout=2"}, cronExitStart, "cannot start"},
		{"schema not migrated", []string{"--crontab", crontab, "--dsn", unmigrated}, cronExitStart, "pgbaton migrate up"},
		{"health address in use", []string{"--crontab", crontab, "--dsn", migrated, "--health-listen", ln.Addr().String()}, cronExitStart, "--health-listen"},
		{"kill-after beyond the margin", []string{"--crontab", crontab, "--dsn", migrated, "--kill-after", "1h"}, cronExitUsage, "safety margin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, errOut := runCronProc(t, tc.args...)
			if code != tc.want || !strings.Contains(errOut, tc.msg) {
				t.Fatalf("exit %d, want %d with %q; stderr:\n%s", code, tc.want, tc.msg, errOut)
			}
		})
	}
}

// Replicas whose crontabs differ report the drift (logs, cron status); a
// run past its timeout gets SIGTERM and is recorded as timed out; a job
// that keeps failing makes the health endpoint answer 503 and cron status
// exit 1.
func TestCronDriftTimeoutHealth(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, true)
	dir := t.TempDir()
	marks := filepath.Join(dir, "marks")
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, "#pgbaton: name=shared\n@every 1s echo a\n"+
		"#pgbaton: name=slowpoke timeout=1s\n@every 2s trap 'echo term >> "+marks+"; exit 9' TERM; sleep 30 & wait\n"+
		"#pgbaton: name=broken\n@every 1s echo 'something is wrong' >&2; exit 1\n")
	writeFile(t, b, "#pgbaton: name=shared\n@every 1s echo b\n")
	pa := startCron(t, dsn, a, "replica-a", "--health-listen", "127.0.0.1:0")
	pb := startCron(t, dsn, b, "replica-b")
	addr := healthAddr(t, pa)

	waitUntil(t, 20*time.Second, "a replica reports the drift", func() bool {
		return strings.Contains(pa.stderr.String()+pb.stderr.String(), "periodic: definition drift")
	})
	waitUntil(t, 20*time.Second, "cron status shows the drift", func() bool {
		code, out, _ := runCLI(t, "cron", "status", "--dsn", dsn, "--job", "shared")
		return code == 0 && strings.Contains(out, "DRIFT")
	})
	// The crontabs differ as a whole: the replica that registered its
	// crontab's fingerprint second says so at once.
	pb.waitLog(`"msg":"periodic: definition drift","job":"crontab:default"`, 10*time.Second)
	waitUntil(t, 20*time.Second, "slowpoke's run is recorded timed out", func() bool {
		for _, r := range readRuns(t, admin) {
			if r.Job == "slowpoke" && r.Status == "failed" && strings.Contains(r.Error, "timed out") {
				return true
			}
		}
		return false
	})
	if m, _ := os.ReadFile(marks); !strings.Contains(string(m), "term") {
		t.Fatalf("the timed-out run never saw SIGTERM (marks %q)", m)
	}
	if !strings.Contains(pa.stderr.String(), `"line":"something is wrong"`) || !strings.Contains(pa.stderr.String(), `"stream":"stderr"`) {
		t.Fatalf("broken's stderr is not in the logs:\n%s", pa.stderr.String())
	}
	waitUntil(t, 20*time.Second, "the health endpoint answers 503", func() bool {
		code, _ := httpGet(t, "http://"+addr+"/")
		return code == http.StatusServiceUnavailable
	})
	if code, body := httpGet(t, "http://"+addr+"/?job=shared"); code != http.StatusOK {
		t.Fatalf("health of a healthy job: %d %s", code, body)
	}
	code, out, _ := runCLI(t, "cron", "status", "--dsn", dsn)
	if code != exitFailure || !strings.Contains(out, "broken") || !strings.Contains(out, "stale") {
		t.Fatalf("cron status with a stale job: exit %d\n%s", code, out)
	}
	t.Logf("cron status:\n%s", out)
	for _, p := range []*cronProc{pa, pb} {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.exit(20 * time.Second); code != 0 {
			t.Fatalf("%s: exit %d\n%s", p.instance, code, p.stderr.String())
		}
	}
}

// Processes a job leaves behind are reaped, as PID 1 in a PID namespace
// (a container) and as a child subreaper otherwise: no zombie stays.
func TestCronReapsOrphans(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		wrapper []string
	}{
		{"subreaper", nil},
		{"pid 1", []string{"unshare", "--pid", "--fork", "--kill-child"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.wrapper != nil {
				if err := exec.Command("unshare", "--pid", "--fork", "--kill-child", "true").Run(); err != nil {
					t.Skipf("no PID namespaces here (unshare: %v)", err)
				}
			}
			dsn, _ := execDB(t, true)
			crontab := filepath.Join(t.TempDir(), "crontab")
			// setsid: the helper leaves the job's process group, outlives
			// the job's shell, and is re-parented to pgbaton.
			writeFile(t, crontab, "@every 1s setsid sleep 0.2 & echo spawned\n")
			p := startCronWith(t, tc.wrapper, dsn, crontab, "reaper", "--log-level", "debug")
			daemon := p.cmd.Process.Pid
			if tc.wrapper != nil {
				p.waitLog(`"pid":1,`, 5*time.Second)
				daemon = childOf(t, daemon)
			}
			p.waitLog("cron: reaped an orphaned process", 20*time.Second)
			p.waitLog("cron: reaped an orphaned process", 20*time.Second)
			// No zombie among the daemon's children for long: each is reaped
			// within the reaper's one-second sweep at worst.
			waitUntil(t, 5*time.Second, "the daemon has no zombie child", func() bool { return len(zombieChildren(t, daemon)) == 0 })
			if err := syscall.Kill(daemon, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := p.exit(20 * time.Second); code != 0 {
				t.Fatalf("exit %d\n%s", code, p.stderr.String())
			}
		})
	}
}

// childOf returns the only child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var child int
	waitUntil(t, 5*time.Second, fmt.Sprintf("process %d has a child", pid), func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		_, err := fmt.Sscan(string(b), &child)
		return err == nil
	})
	return child
}

// zombieChildren lists the zombie processes whose parent is pid.
func zombieChildren(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscan(s[i+1:], &state, &ppid); err == nil && ppid == pid && state == "Z" {
			var p int
			_, _ = fmt.Sscan(e.Name(), &p)
			out = append(out, p)
		}
	}
	return out
}

// The lock of a running job is lost (its connection's backend terminated):
// the job's process gets SIGTERM at once, and the run is recorded failed
// with the loss.
func TestCronLeaseLoss(t *testing.T) {
	t.Parallel()
	dsn, admin := execDB(t, true)
	dir := t.TempDir()
	marks, crontab := filepath.Join(dir, "marks"), filepath.Join(dir, "crontab")
	writeFile(t, crontab, "#pgbaton: name=holder\n@every 1s echo \"pid $$\" >> "+marks+"; trap 'echo term >> "+marks+"; exit 7' TERM; sleep 30 & wait\n")
	p := startCron(t, dsn, crontab, "lossy")
	waitForFile(t, marks)
	var tick time.Time
	waitUntil(t, 10*time.Second, "the run is recorded running", func() bool {
		return admin.QueryRow(context.Background(), `SELECT tick FROM pgbaton.periodic_runs WHERE job = 'holder' AND status = 'running'`).Scan(&tick) == nil
	})
	// The job's lease lives on a lock connection of the Locker (not the
	// scheduler's bookkeeping pool): terminate the backend holding it.
	var n int
	if err := admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
		JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'pgbaton:lossy%'`).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminated %d lock holders (%v)", n, err)
	}
	waitUntil(t, 10*time.Second, "the job's process got SIGTERM", func() bool {
		b, _ := os.ReadFile(marks)
		return strings.Contains(string(b), "term")
	})
	var status, errText string
	waitUntil(t, 10*time.Second, "the run is recorded with the loss", func() bool {
		err := admin.QueryRow(context.Background(), `SELECT status, coalesce(error, '') FROM pgbaton.periodic_runs WHERE job = 'holder' AND tick = $1`, tick).Scan(&status, &errText)
		return err == nil && status != "running"
	})
	if status != "failed" || !strings.Contains(errText, "lost") {
		t.Fatalf("the run whose lock was lost is recorded %s: %q", status, errText)
	}
	t.Logf("recorded %s: %s", status, errText)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.exit(20 * time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.stderr.String())
	}
}
