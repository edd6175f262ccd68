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

// A grant that follows the demo stopping the holder (Ctrl-C kills the
// workers; the next one in the queue gets the lock first) is a takeover,
// not the run's first grant.
func TestTraceLabelsGrantsAfterStop(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	tr := newTrace(&out, 0)
	feed(tr, &event{Kind: evGranted, worker: "w1"})
	tr.setStopping(true)
	feed(tr,
		&event{Kind: evExit, worker: "w1", text: "signal: killed"},
		&event{Kind: evGranted, worker: "w2"},
	)
	text := out.String()
	if n := strings.Count(text, "first holder"); n != 1 {
		t.Errorf("%d grants labelled first holder, want 1:\n%s", n, text)
	}
	if !strings.Contains(text, "after w1's process was stopped by the demo") {
		t.Errorf("the grant after the stop does not say it followed w1's exit:\n%s", text)
	}
	if s := tr.stats(); s.Overlaps != 0 {
		t.Errorf("%d overlaps counted after the holder's process exited", s.Overlaps)
	}
}

func TestWrapLine(t *testing.T) {
	t.Parallel()
	long := "  +1.567s  w3    granted    failover 4.94ms after the fault; w1 had stopped 1.46ms earlier [pid 11375]"
	got := wrapLine(long, demoWidth)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], strings.Repeat(" ", traceIndent)+"1.46ms") {
		t.Errorf("trace line wrapped as:\n%s", got)
	}
	word := "  note " + strings.Repeat("x", 200)
	for _, l := range strings.Split(wrapLine(word, demoWidth), "\n") {
		if n := len([]rune(l)); n > demoWidth {
			t.Errorf("a %d-rune line after wrapping", n)
		}
	}
	if got := wrapLine("short line", demoWidth); got != "short line" {
		t.Errorf("short line changed: %q", got)
	}
	if strings.ReplaceAll(strings.Join(strings.Fields(got), " "), "\n", "") == "" {
		t.Error("text lost")
	}
}

func TestVerdict(t *testing.T) {
	t.Parallel()
	if err := verdict(stats{Grants: 9}); err != nil {
		t.Errorf("clean run: %v", err)
	}
	for _, s := range []stats{{Overlaps: 1}, {Spurious: 2}} {
		if err := verdict(s); !errors.Is(err, errDemoBroken) {
			t.Errorf("verdict(%+v) = %v, want errDemoBroken", s, err)
		}
	}
}
