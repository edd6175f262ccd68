package prometheus_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/pgbaton/pgbaton"
	pgbatonprom "github.com/pgbaton/pgbaton/contrib/prometheus"
	"github.com/pgbaton/pgbaton/periodic"
)

func TestKeyFamily(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		key  pgbaton.Key
		want string
	}{
		{pgbaton.KeyName("incident.dedupe-open-for-system:42"), "incident.dedupe-open-for-system"},
		{pgbaton.KeyName("orders:7:items"), "orders"},
		{pgbaton.KeyName("singleton-worker"), "singleton-worker"},
		{pgbaton.KeyName(":leading"), ""},
		{pgbaton.KeyInt64(42), "int8"},
		{pgbaton.KeyPair(1, 2), "pair"},
		{pgbaton.KeyInt64(42).Named("legacy:42"), "legacy"},
	} {
		if got := pgbatonprom.KeyFamily(c.key); got != c.want {
			t.Errorf("KeyFamily(%v) = %q, want %q", c.key, got, c.want)
		}
	}
}

// TestLabelsBounded: past MaxFamilies (MaxJobs) every new family (job)
// counts under "other"; long and invalid-UTF-8 names become valid, short
// label values; the scrape stays parseable.
func TestLabelsBounded(t *testing.T) {
	t.Parallel()
	m, err := pgbatonprom.New(pgbatonprom.Options{MaxFamilies: 3, MaxJobs: 2})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(m)
	long := strings.Repeat("é", pgbatonprom.MaxLabelLen) // 2 bytes each
	keys := []pgbaton.Key{
		pgbaton.KeyName("a:1"), pgbaton.KeyName("a:2"), // one family
		pgbaton.KeyInt64(1).Named("bad\xff:1"), // not UTF-8
		pgbaton.KeyName(long + ":1"),
		pgbaton.KeyName("b:1"), pgbaton.KeyName("c:1"), pgbaton.KeyInt64(5), // beyond the bound
	}
	for i := range 3 { // the overflow path, more than once
		for _, k := range keys {
			m.Observe(pgbaton.Event{Kind: pgbaton.EventAcquire, Key: k, Outcome: pgbaton.OutcomeAcquired, Wait: time.Duration(i) * time.Millisecond})
		}
	}
	for _, j := range []string{"j1", "j2", "j3", "j4"} {
		m.ObservePeriodic(periodic.Event{Kind: periodic.EventSucceeded, Job: j, Duration: time.Second})
	}
	mfs := scrape(t, reg)
	fams := labelValues(mfs, "pgbaton_lease_acquire_duration_seconds", "family")
	if len(fams) != 4 || !slices.Contains(fams, "a") || !slices.Contains(fams, "bad\uFFFD") || !slices.Contains(fams, pgbatonprom.Other) {
		t.Fatalf("families = %q, want a, bad\\uFFFD, the long one cut, other", fams)
	}
	for _, f := range fams {
		if len(f) > pgbatonprom.MaxLabelLen || !utf8.ValidString(f) {
			t.Errorf("family label of %d bytes, valid UTF-8 %v", len(f), utf8.ValidString(f))
		}
	}
	if n := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", "a", "mode", "exclusive", "outcome", "acquired").GetHistogram().GetSampleCount(); n != 6 {
		t.Errorf("family a count = %d, want 6", n)
	}
	if n := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", "other", "mode", "exclusive", "outcome", "acquired").GetHistogram().GetSampleCount(); n != 9 {
		t.Errorf("family other count = %d, want 9 (b, c, int8 three times)", n)
	}
	if jobs := labelValues(mfs, "pgbaton_periodic_runs_total", "job"); !slices.Equal(jobs, []string{"j1", "j2", "other"}) {
		t.Errorf("jobs = %q, want j1 j2 other", jobs)
	}
	if v := series(t, mfs, "pgbaton_periodic_runs_total", counterType, "job", "other", "status", "succeeded").GetCounter().GetValue(); v != 2 {
		t.Errorf("other job successes = %v, want 2", v)
	}
	// No Locker watched: the gauges are not made up.
	if _, ok := mfs["pgbaton_leases_held"]; ok {
		t.Error("pgbaton_leases_held exposed with no Locker watched")
	}
}

// TestObserveEveryKind: each event kind lands in its metric (no database:
// the loss causes that a test cannot easily provoke).
func TestObserveEveryKind(t *testing.T) {
	t.Parallel()
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewPedanticRegistry()
	reg.MustRegister(m)
	k := pgbaton.KeyName("jobs:1")
	m.Observe(pgbaton.Event{Kind: pgbaton.EventLoss, Key: k, Held: 2 * time.Second, Err: pgbaton.ErrHeartbeatTimeout})
	m.Observe(pgbaton.Event{Kind: pgbaton.EventLoss, Key: k, Mode: pgbaton.Shared, Held: time.Second, Err: errors.Join(pgbaton.ErrLeaseLost, pgbaton.ErrLockerClosed)})
	m.Observe(pgbaton.Event{Kind: pgbaton.EventLoss, Key: k, Err: errors.New("something new")})
	m.Observe(pgbaton.Event{Kind: pgbaton.EventAcquire, Key: k, Outcome: "novel", Wait: time.Millisecond})
	m.Observe(pgbaton.Event{Kind: pgbaton.EventAcquire, Key: pgbaton.KeyName(":empty-family"), Outcome: pgbaton.OutcomeAcquired})
	for _, e := range []periodic.Event{
		{Kind: periodic.EventStarted, Job: "j", Lateness: 30 * time.Millisecond},
		{Kind: periodic.EventFailed, Job: "j", Duration: 3 * time.Second},
		{Kind: periodic.EventSkipped, Job: "j", Ticks: 4},
		{Kind: periodic.EventMissed, Job: "j", Ticks: 2},
		{Kind: periodic.EventAbandoned, Job: "j"},
		{Kind: periodic.EventBusy, Job: "j"},
		{Kind: periodic.EventClaimedElsewhere, Job: "j"},
		{Kind: periodic.EventClaimedElsewhere, Job: "j"},
		{Kind: periodic.EventError, Job: "j"},
	} {
		m.ObservePeriodic(e)
	}
	mfs := scrape(t, reg)
	lost := func(cause string) float64 {
		return series(t, mfs, "pgbaton_lease_lost_total", counterType, "family", "jobs", "cause", cause).GetCounter().GetValue()
	}
	if lost("heartbeat_timeout") != 1 || lost("locker_closed") != 1 || lost("other") != 1 || lost("terminated") != 0 {
		t.Errorf("lost: heartbeat %v, closed %v, other %v", lost("heartbeat_timeout"), lost("locker_closed"), lost("other"))
	}
	held := series(t, mfs, "pgbaton_lease_held_duration_seconds", histogramType, "family", "jobs", "mode", "exclusive").GetHistogram()
	if held.GetSampleCount() != 2 || held.GetSampleSum() != 2 {
		t.Errorf("held exclusive: count %d sum %v, want 2 and 2s", held.GetSampleCount(), held.GetSampleSum())
	}
	if n := series(t, mfs, "pgbaton_lease_held_duration_seconds", histogramType, "family", "jobs", "mode", "shared").GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("held shared count = %d", n)
	}
	if n := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", "jobs", "mode", "exclusive", "outcome", "error").GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("an unknown outcome counted as error: %d", n)
	}
	if n := series(t, mfs, "pgbaton_lease_acquire_duration_seconds", histogramType, "family", "none", "mode", "exclusive", "outcome", "acquired").GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("an empty family counted under none: %d", n)
	}
	c := func(name string, labels ...string) float64 {
		return series(t, mfs, name, counterType, labels...).GetCounter().GetValue()
	}
	for _, x := range []struct {
		got, want float64
		what      string
	}{
		{c("pgbaton_periodic_runs_total", "job", "j", "status", "failed"), 1, "failed"},
		{c("pgbaton_periodic_runs_total", "job", "j", "status", "abandoned"), 1, "abandoned"},
		{c("pgbaton_periodic_runs_total", "job", "j", "status", "succeeded"), 0, "succeeded"},
		{c("pgbaton_periodic_ticks_not_run_total", "job", "j", "reason", "skipped"), 4, "skipped"},
		{c("pgbaton_periodic_ticks_not_run_total", "job", "j", "reason", "missed"), 2, "missed"},
		{c("pgbaton_periodic_ticks_elsewhere_total", "job", "j", "reason", "lock_busy"), 1, "busy"},
		{c("pgbaton_periodic_ticks_elsewhere_total", "job", "j", "reason", "tick_already_claimed"), 2, "claimed"},
		{c("pgbaton_periodic_errors_total", "job", "j"), 1, "errors"},
		{series(t, mfs, "pgbaton_periodic_run_duration_seconds", histogramType, "job", "j", "status", "failed").GetHistogram().GetSampleSum(), 3, "failed duration"},
		{series(t, mfs, "pgbaton_periodic_start_lateness_seconds", histogramType, "job", "j").GetHistogram().GetSampleSum(), 0.03, "lateness"},
	} {
		if x.got != x.want {
			t.Errorf("%s = %v, want %v", x.what, x.got, x.want)
		}
	}
}

func TestInvalidOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []pgbatonprom.Options{
		{MaxFamilies: -1},
		{MaxJobs: -1},
		{AcquireBuckets: []float64{1, 0.5}},
		{RunBuckets: []float64{1, 1}},
		{ConstLabels: prom.Labels{"family": "x"}},
		{ConstLabels: prom.Labels{"bad-name": "x"}},
		{ConstLabels: prom.Labels{"env": "\xff"}},
	} {
		if _, err := pgbatonprom.New(o); !errors.Is(err, pgbatonprom.ErrInvalidOptions) {
			t.Errorf("New(%+v) = %v, want ErrInvalidOptions", o, err)
		}
	}
	m, err := pgbatonprom.New(pgbatonprom.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prom.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	var are prom.AlreadyRegisteredError
	if err := m.Register(reg); !errors.As(err, &are) {
		t.Errorf("second Register = %v, want AlreadyRegisteredError", err)
	}
}
