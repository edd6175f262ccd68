package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgbaton/pgbaton/pgtest"
)

const secret = "test-secret"

// instance is one service process (the test binary re-executed).
type instance struct {
	name   string
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

func startInstance(t *testing.T, name string, env []string) *instance {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"=1", "SEEDJOBS_INSTANCE="+name), env...)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in := &instance{name: name, cmd: cmd, exited: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				ready <- a
			}
		}
		close(ready)
		in.err = cmd.Wait()
		logf.Close()
		close(in.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-in.exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(0, len(lines)-25):], "\n"))
		}
	})
	select {
	case a, ok := <-ready:
		if !ok {
			<-in.exited
			t.Fatalf("instance %s exited before listening: %v", name, in.err)
		}
		in.addr = a
	case <-time.After(30 * time.Second):
		t.Fatalf("instance %s not listening after 30s", name)
	}
	return in
}

func (in *instance) url(path string) string { return "http://" + in.addr + path }

func (in *instance) stop(t *testing.T) {
	t.Helper()
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.exited:
		if in.err != nil {
			t.Errorf("instance %s: graceful stop: %v", in.name, in.err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("instance %s did not stop within 20s of SIGTERM", in.name)
	}
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, m
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServiceEndToEnd runs the service on three processes with second
// cadences and checks the first seed's jobs from the outside: the audit
// API goes 202 -> 200 once the retry worker hashed a record (and stays 202
// while the record is locked by someone else: SKIP LOCKED), every record is
// hashed once across the three instances, the drip sends each due reminder
// once, retention's five DELETEs ran, the test-scheduler called each
// capability once per tick through the SSRF guard (the metadata endpoint
// refused before any connection), the jobs go on when an instance is
// killed, health is green, and graceful stops leave no lock behind.
func TestServiceEndToEnd(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.Shared().NewDB(t)

	var mu sync.Mutex
	calls := map[string]int{} // path|tick -> calls
	capSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.URL.Path+"|"+r.Header.Get("X-Seedjobs-Tick")]++
		mu.Unlock()
		if r.URL.Path == "/broken" {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer capSrv.Close()

	env := []string{"DATABASE_URL=" + dsn, "SEEDJOBS_LISTEN=127.0.0.1:0", "SEEDJOBS_HMAC_SECRET=" + secret,
		"SEEDJOBS_HASH_RETRY_EVERY=1s", "SEEDJOBS_DRIP_EVERY=1s", "SEEDJOBS_DRIP_DELAY=1h",
		"SEEDJOBS_RETENTION_EVERY=2s", "SEEDJOBS_RETENTION_AGE=1h", "SEEDJOBS_TEST_EVERY=2s", "SEEDJOBS_TEST_TIMEOUT=10s",
		"SEEDJOBS_ALLOW_TARGETS=127.0.0.1/32", "SEEDJOBS_DIAL_LOOPBACK_ONLY=1"}
	a := startInstance(t, "a", env) // creates the schema
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO capabilities (name, url) VALUES ('alpha', $1), ('beta', $2), ('broken', $3),
		('metadata', 'http://169.254.169.254/latest/meta-data/iam/security-credentials/')`,
		capSrv.URL+"/alpha", capSrv.URL+"/beta", capSrv.URL+"/broken")
	exec(`INSERT INTO users (email, created_at, activated_at, drip_stage, last_drip_at) VALUES
		('due@x', now() - interval '2 hours', NULL, 0, NULL),
		('new@x', now() - interval '5 minutes', NULL, 0, NULL),
		('active@x', now() - interval '2 hours', now(), 0, NULL),
		('second@x', now() - interval '4 hours', NULL, 1, now() - interval '2 hours')`)
	exec(`INSERT INTO rate_limit_counters VALUES ('old', now() - interval '2 hours', 1), ('new', now(), 1)`)
	exec(`INSERT INTO sessions VALUES ('expired', 1, now() - interval '1 minute'), ('valid', 1, now() + interval '1 hour')`)
	exec(`INSERT INTO idempotency_keys VALUES ('old', now() - interval '2 hours'), ('new', now())`)
	exec(`INSERT INTO test_results (capability, tick, token, instance, ok, created_at) VALUES ('old', now() - interval '2 hours', 0, 'x', true, now() - interval '2 hours')`)
	b := startInstance(t, "b", env)
	c := startInstance(t, "c", env)

	// The audit flow: 202 while pending, 200 with the hash once hashed.
	resp, err := http.Post(a.url("/v1/audit"), "application/json", strings.NewReader(`{"txn_id": "a2360b09", "payload": {"amount": 42}}`))
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		ID     int64  `json:"id"`
		Status string `json:"status"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || created.Status != "pending" || created.ID == 0 {
		t.Fatalf("POST /v1/audit: %d %+v", resp.StatusCode, created)
	}
	// Hold the record's row lock: the retry worker must skip it, not wait
	// for it nor hash it, while the API keeps answering 202.
	lockTx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var locked time.Time
	if err := lockTx.QueryRow(ctx, `SELECT clock_timestamp() FROM audit_records WHERE id = $1 FOR UPDATE`, created.ID).Scan(&locked); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/v1/audit/%d", created.ID)
	if code, body := getJSON(t, b.url(path)); code != http.StatusAccepted || body["status"] != "pending" {
		t.Fatalf("GET %s while pending: %d %v", path, code, body)
	}
	waitUntil(t, "a retry run after the lock", 15*time.Second, func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM pgbaton.periodic_runs WHERE job = 'integrity-hash-retry' AND status = 'succeeded' AND started_at > $1`, locked).Scan(&n)
		return n >= 2
	})
	if code, _ := getJSON(t, c.url(path)); code != http.StatusAccepted {
		t.Fatalf("GET %s while its row is locked elsewhere: %d, want 202 (the worker skips locked rows)", path, code)
	}
	_ = lockTx.Rollback(ctx)
	var hash string
	waitUntil(t, "the audit record hashed", 15*time.Second, func() bool {
		code, body := getJSON(t, c.url(path))
		if code == http.StatusOK {
			hash, _ = body["hash"].(string)
		}
		return code == http.StatusOK
	})
	var payload string
	_ = pool.QueryRow(ctx, `SELECT payload::text FROM audit_records WHERE id = $1`, created.ID).Scan(&payload)
	if want := hashOf([]byte(secret), created.ID, "a2360b09", payload); hash != want {
		t.Errorf("hash %q, want %q", hash, want)
	}

	// A burst through all three instances: each record hashed exactly once.
	for i := 0; i < 120; i++ {
		in := []*instance{a, b, c}[i%3]
		resp, err := http.Post(in.url("/v1/audit"), "application/json", strings.NewReader(fmt.Sprintf(`{"txn_id": "t%d", "payload": {"i": %d}}`, i, i)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	waitUntil(t, "every record hashed", 20*time.Second, func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_records WHERE hash_status = 'pending'`).Scan(&n)
		return n == 0
	})
	var badAttempts int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_records WHERE hash_attempts <> 1`).Scan(&badAttempts)
	if badAttempts != 0 {
		t.Errorf("%d records hashed more than once", badAttempts)
	}

	// Kill one instance: the others keep every job going.
	_ = a.cmd.Process.Kill()
	<-a.exited
	var since time.Time
	_ = pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&since)
	waitUntil(t, "every job succeeding after the kill", 20*time.Second, func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(DISTINCT job) FROM pgbaton.periodic_runs WHERE status = 'succeeded' AND started_at > $1
			AND job IN ('integrity-hash-retry', 'activation-drip', 'db-retention', 'test-scheduler')`, since).Scan(&n)
		return n == 4
	})
	code, body := getJSON(t, b.url("/health/jobs"))
	if code != http.StatusOK || body["status"] != "ok" {
		t.Errorf("GET /health/jobs: %d %v", code, body)
	}
	b.stop(t)
	c.stop(t)

	// Activation drip: each due reminder once.
	rows, err := pool.Query(ctx, `SELECT u.email || ':' || o.template FROM email_outbox o JOIN users u ON u.id = o.user_id ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var sent []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		sent = append(sent, s)
	}
	rows.Close()
	if got := strings.Join(sent, ","); got != "due@x:activation-reminder-1,second@x:activation-reminder-2" {
		t.Errorf("reminders sent: %s", got)
	}
	// Retention: the five tables trimmed, recent rows kept.
	var left string
	_ = pool.QueryRow(ctx, `SELECT (SELECT string_agg(key, ',') FROM rate_limit_counters) || '|' || (SELECT string_agg(id, ',') FROM sessions)
		|| '|' || (SELECT string_agg(key, ',') FROM idempotency_keys) || '|' || (SELECT count(*) FROM test_results WHERE capability = 'old')`).Scan(&left)
	if left != "new|valid|new|0" {
		t.Errorf("after retention: %s, want new|valid|new|0", left)
	}
	// Test-scheduler: every capability once per tick, SSRF refused before
	// connecting (the guard's refusal, not the test safety net's).
	mu.Lock()
	for k, n := range calls {
		if n != 1 {
			t.Errorf("capability call %s made %d times", k, n)
		}
	}
	ncalls := len(calls)
	mu.Unlock()
	var okAlpha, brokenFail, ssrf, other int
	rows, err = pool.Query(ctx, `SELECT capability, ok, coalesce(error, '') FROM test_results WHERE capability <> 'old'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var capName, errText string
		var ok bool
		_ = rows.Scan(&capName, &ok, &errText)
		switch {
		case capName == "alpha" && ok:
			okAlpha++
		case capName == "broken" && !ok:
			brokenFail++
		case capName == "metadata" && !ok && strings.Contains(errText, "ssrf: refused") && strings.Contains(errText, "link-local") && !strings.Contains(errText, "safety net"):
			ssrf++
		case capName == "beta" && ok:
		default:
			other++
			t.Errorf("unexpected result %s ok=%v %q", capName, ok, errText)
		}
	}
	rows.Close()
	if okAlpha < 2 || brokenFail < 2 || ssrf < 2 || ncalls < 6 {
		t.Errorf("test-scheduler results: alpha ok %d, broken %d, metadata refused %d, local calls %d", okAlpha, brokenFail, ssrf, ncalls)
	}
	// Nothing left behind by the graceful stops.
	var locks, running int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&locks)
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM pgbaton.periodic_runs WHERE status = 'running' AND instance <> 'a'`).Scan(&running)
	if locks != 0 || running != 0 {
		t.Errorf("after stopping: %d advisory locks, %d running rows of the stopped instances", locks, running)
	}
}
