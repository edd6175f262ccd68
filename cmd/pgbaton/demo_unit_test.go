//go:build linux

package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton"
)

// feed processes events in order, as the flusher would.
func feed(tr *trace, evs ...*event) {
	for i, e := range evs {
		e.T = tr.t0 + int64(i+1)*int64(time.Millisecond)
		tr.add(e)
	}
	tr.flush(true)
}

// The trace's mutual-exclusion check is what the demo's "overlaps 0" rests
// on: it must count a grant while another worker holds the lock, and must
// not count one after a release, a loss, or a fault that freed the lock.
func TestTraceCountsOverlaps(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	tr := newTrace(&out, 0)
	feed(tr,
		&event{Kind: evGranted, worker: "w1"},
		&event{Kind: evReleased, worker: "w1", Held: time.Millisecond},
		&event{Kind: evGranted, worker: "w2"}, // handoff
		&event{Kind: evGranted, worker: "w3"}, // w2 never released: overlap
	)
	if s := tr.stats(); s.Overlaps != 1 || len(s.Handoffs) != 1 {
		t.Fatalf("overlaps %d, handoffs %d; want 1 and 1\n%s", s.Overlaps, len(s.Handoffs), out.String())
	}
	if !strings.Contains(out.String(), "OVERLAP") {
		t.Errorf("the overlap is not printed:\n%s", out.String())
	}

	out.Reset()
	tr = newTrace(&out, 0)
	kill := &faultRecord{N: 1, Of: 2, Kind: "kill", Victim: "w1"}
	hole := &faultRecord{N: 2, Of: 2, Kind: "blackhole", Victim: "w2"}
	feed(tr,
		&event{Kind: evGranted, worker: "w1"},
		&event{Kind: evFault, fault: kill},
		&event{Kind: evGranted, worker: "w2"}, // the kill freed w1's lock
		&event{Kind: evFault, fault: hole},
		&event{Kind: evLost, worker: "w2", Reason: "heartbeat"},
		&event{Kind: evFreed, fault: hole},
		&event{Kind: evGranted, worker: "w3"},
		&event{Kind: evLost, worker: "w3", Reason: "heartbeat"}, // nothing done to w3
	)
	s := tr.stats()
	if s.Overlaps != 0 {
		t.Errorf("%d overlaps counted after faults that freed the lock\n%s", s.Overlaps, out.String())
	}
	if s.Spurious != 1 {
		t.Errorf("%d unexplained losses, want 1 (w3's)", s.Spurious)
	}
	f := s.Faults[1]
	if f.Next != "w3" || f.DetectT == 0 || f.FreedT <= f.DetectT || f.GrantT <= f.FreedT {
		t.Errorf("black hole record %+v: want w3 next, loss < freed < grant", f)
	}
	if s.Faults[0].Next != "w2" {
		t.Errorf("kill record %+v: want w2 next", s.Faults[0])
	}
}

func TestWorkerConnConfigPointsAtProxy(t *testing.T) {
	t.Parallel()
	cfg, err := workerConnConfig("postgres://u@db.example:5433/x?sslmode=verify-full", "127.0.0.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "127.0.0.1" || cfg.Port != 40000 {
		t.Errorf("connects to %s:%d, want the proxy", cfg.Host, cfg.Port)
	}
	if cfg.TLSConfig == nil || cfg.TLSConfig.ServerName != "db.example" {
		t.Errorf("TLS no longer verifies the server's own name: %+v", cfg.TLSConfig)
	}

	cfg, err = workerConnConfig("host=a,b port=5432 sslmode=prefer", "127.0.0.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Fallbacks) != 1 || cfg.Fallbacks[0].Host != "127.0.0.1" || cfg.Fallbacks[0].TLSConfig != nil {
		t.Errorf("want only sslmode=prefer's plain attempt, through the proxy; got %d fallbacks", len(cfg.Fallbacks))
		for _, fb := range cfg.Fallbacks {
			t.Logf("fallback %s:%d tls=%v", fb.Host, fb.Port, fb.TLSConfig != nil)
		}
	}
}

func TestErrorsAreShortenedNotLost(t *testing.T) {
	t.Parallel()
	inner := errors.New("connection reset by peer")
	err := fmt.Errorf("%w: %w", pgbaton.ErrConnect, fmt.Errorf("failed to connect to `user=x`: read tcp: %w", inner))
	if got := shortErr(err); got != "pgbaton: cannot open lock connection: connection reset by peer" {
		t.Errorf("shortErr = %q", got)
	}
	if got := lossReason(fmt.Errorf("lost: %w", pgbaton.ErrHeartbeatTimeout)); !strings.Contains(got, "heartbeat") {
		t.Errorf("lossReason = %q", got)
	}
	if got := fmtDur(2 * time.Second); got != "2s" {
		t.Errorf("fmtDur(2s) = %q", got)
	}
	if got := fmtDur(1500 * time.Microsecond); got != "1.50ms" {
		t.Errorf("fmtDur(1.5ms) = %q", got)
	}
}
