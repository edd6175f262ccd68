//go:build linux

package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var servingRE = regexp.MustCompile(`at (http://127\.0\.0\.1:\d+/) `)

// `pgbaton web` serves the dashboard on loopback, shows a held lock by
// name, refuses writes, and stops with status 0 when interrupted.
func TestWebServesDashboard(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	dsn := pgtest.Shared().TCPDSN(db)
	ctx := cliCtx(t)
	holder, err := pgx.Connect(ctx, dsn+" application_name=billing-api")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	name := "invoices.close-month"
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", pgbaton.KeyName(name).ID()); err != nil {
		t.Fatal(err)
	}

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var o, e syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(wctx, []string{"web", "--dsn", dsn, "--listen", "127.0.0.1:0", "--name", name, "--interval", "1s"}, &output{Stdout: &o, Stderr: &e})
	}()
	var url string
	deadline := time.Now().Add(30 * time.Second)
	for url == "" {
		if m := servingRE.FindStringSubmatch(o.String()); m != nil {
			url = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("web exited %d before serving: %s %s", code, o.String(), e.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("web did not say where it serves: %q %q", o.String(), e.String())
		}
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `<span class="name">`+name+`</span>`) || !strings.Contains(string(body), "billing-api") {
		t.Errorf("GET %s: %d\n%s", url, resp.StatusCode, body)
	}
	resp, err = http.Post(url, "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST %s: %d, want 405", url, resp.StatusCode)
	}
	stop()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("web exited %d after interruption: %s", code, e.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("web did not stop when interrupted")
	}
}

func TestWebRefusesExposure(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"web", "--listen", "0.0.0.0:0"},
		{"web", "--listen", ":8080", "--allow-remote"},
		{"web", "--listen", "192.0.2.1:8080", "--allow-remote"},
		{"web", "--listen", "8080"},
		{"web", "--interval", "10ms"},
	} {
		code, _, errOut := runCLI(t, append(args, "--dsn", "postgres://nobody:topsecret@127.0.0.1:1/x")...)
		if code != exitUsage || strings.Contains(errOut, "topsecret") {
			t.Errorf("pgbaton %q: exit %d (want %d), stderr %q", args, code, exitUsage, errOut)
		}
	}
	code, _, errOut := runCLI(t, "web", "--dsn", "postgres://nobody:topsecret@127.0.0.1:1/x", "--timeout", "2s")
	if code != exitFailure || strings.Contains(errOut, "topsecret") || !strings.Contains(errOut, "connect") {
		t.Errorf("unreachable database: exit %d, stderr %q", code, errOut)
	}
}
