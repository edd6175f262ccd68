package prometheus_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

// TestMain runs the tests against one throwaway PostgreSQL cluster, then
// checks that no goroutine outlived them.
func TestMain(m *testing.M) {
	code := pgtest.Run(m, pgtest.Options{})
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func quietLogger() *slog.Logger {
	if os.Getenv("PGBATON_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openLocker(t testing.TB, dsn string, mod ...func(*pgbaton.Config)) *pgbaton.Locker {
	t.Helper()
	cfg := pgbaton.Config{ConnString: dsn, Logger: quietLogger(), InstanceName: "test"}
	for _, f := range mod {
		f(&cfg)
	}
	l, err := pgbaton.New(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("pgbaton.New: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// scrape GETs /metrics from a promhttp handler of reg and parses the text
// exposition format, as a Prometheus server would read it.
func scrape(t testing.TB, reg *prom.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("scrape: status %d: %s", w.Code, w.Body.String())
	}
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(w.Body)
	if err != nil {
		t.Fatalf("scrape: parsing the exposition: %v", err)
	}
	return mfs
}

// series returns the series of name with exactly labels (name=value
// pairs, ConstLabels aside), failing if the family is absent, of another
// type, or has no such series.
func series(t testing.TB, mfs map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels ...string) *dto.Metric {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("%s: not exposed (have %v)", name, names(mfs))
	}
	if mf.GetType() != typ {
		t.Fatalf("%s: type %s, want %s", name, mf.GetType(), typ)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range mf.GetMetric() {
		n := 0
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "env" {
				continue
			}
			if v, ok := want[lp.GetName()]; !ok || v != lp.GetValue() {
				continue next
			}
			n++
		}
		if n == len(want) {
			return m
		}
	}
	t.Fatalf("%s: no series %v; have %s", name, want, dump(mf))
	return nil
}

func names(mfs map[string]*dto.MetricFamily) []string {
	var out []string
	for n := range mfs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func dump(mf *dto.MetricFamily) string {
	var b strings.Builder
	for _, m := range mf.GetMetric() {
		b.WriteString("\n  {")
		for _, lp := range m.GetLabel() {
			fmt.Fprintf(&b, "%s=%q ", lp.GetName(), lp.GetValue())
		}
		b.WriteString("}")
	}
	return b.String()
}

// labelValues lists the values label takes in the family name.
func labelValues(mfs map[string]*dto.MetricFamily, name, label string) []string {
	seen := map[string]bool{}
	for _, m := range mfs[name].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				seen[lp.GetValue()] = true
			}
		}
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

const (
	counterType   = dto.MetricType_COUNTER
	gaugeType     = dto.MetricType_GAUGE
	histogramType = dto.MetricType_HISTOGRAM
)
