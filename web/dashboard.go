package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pgbaton/pgbaton/inspect"
	"github.com/pgbaton/pgbaton/periodic"
)

// Defaults.
const (
	// DefaultInterval is how often the shared view is refreshed at most,
	// and how often open pages ask for it.
	DefaultInterval = 5 * time.Second
	// MinInterval is the shortest Interval New accepts.
	MinInterval = time.Second
	// DefaultTimeout bounds one refresh.
	DefaultTimeout = 10 * time.Second
	// DefaultRunsPerJob is how many recent runs each job shows.
	DefaultRunsPerJob = 10
)

// ErrRefresh wraps every failed refresh of the view (the page then shows
// the error, with the last good view if there is one, and answers 503).
var ErrRefresh = errors.New("web: refreshing the dashboard failed")

// Config configures a [Dashboard]. Zero fields take the default written next
// to them.
type Config struct {
	// DB is where the dashboard reads: a *pgxpool.Pool (or a *pgx.Conn, used
	// by one refresh at a time). Required. It only ever runs SELECTs, so a
	// role with SELECT on pgbaton's tables (and nothing else) is enough; a
	// role without even that still sees the locks and instances.
	DB inspect.Querier
	// Inspect tunes the lock snapshot (schema, thresholds of the classes).
	Inspect inspect.Options
	// Interval is the refresh interval: every viewer shares one view, read
	// from the database at most once per Interval however many pages are
	// open, and only while someone looks. Default DefaultInterval, at least
	// MinInterval.
	Interval time.Duration
	// Timeout bounds one refresh. Default DefaultTimeout.
	Timeout time.Duration
	// RunsPerJob is how many recent runs each periodic job shows. Default
	// DefaultRunsPerJob.
	RunsPerJob int
	// StaleAfter is the number of intervals without a successful run after
	// which a job shows as stale, when Health does not answer for it.
	// Default periodic.DefaultStaleAfter.
	StaleAfter int
	// Health, if set, is the scheduler's own verdict (pass a
	// *periodic.Scheduler's Health method when mounting the dashboard in a
	// process that runs one): its jobs show its staleness and next tick,
	// which know each job's own StaleAfter. It runs in the same refresh.
	Health func(context.Context) ([]periodic.JobHealth, error)
	// Auth, if set, is required on every route.
	Auth Auth
	// Title heads the page. Default "pgbaton".
	Title string
	// Logger receives failed refreshes. Default slog.Default().
	Logger *slog.Logger
	// now is the clock of the cache (tests).
	now func() time.Time
}

// Auth is the authentication the dashboard requires: a bearer token
// ("Authorization: Bearer <token>", for proxies and scripts), HTTP basic
// authentication (for browsers), or both (either is then accepted). The
// zero value requires nothing.
type Auth struct {
	BearerToken   string
	BasicUser     string
	BasicPassword string
}

// Enabled reports whether any authentication is configured.
func (a Auth) Enabled() bool { return a.BearerToken != "" || a.BasicUser != "" }

func (a Auth) check() error {
	if (a.BasicUser == "") != (a.BasicPassword == "") {
		return fmt.Errorf("%w: Auth.BasicUser and Auth.BasicPassword go together: set both or neither", ErrConfig)
	}
	return nil
}

// allows reports whether r carries the configured credentials, in constant
// time with respect to their contents.
func (a Auth) allows(r *http.Request) bool {
	if !a.Enabled() {
		return true
	}
	eq := func(x, y string) bool {
		hx, hy := sha256.Sum256([]byte(x)), sha256.Sum256([]byte(y))
		return subtle.ConstantTimeCompare(hx[:], hy[:]) == 1
	}
	if a.BearerToken != "" {
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && eq(tok, a.BearerToken) {
			return true
		}
	}
	if a.BasicUser != "" {
		if u, p, ok := r.BasicAuth(); ok && eq(u, a.BasicUser) && eq(p, a.BasicPassword) {
			return true
		}
	}
	return false
}

// CheckListen decides whether the dashboard may listen on addr (host:port):
// a loopback address (127.0.0.0/8, ::1, localhost) always; any other
// address, the unspecified ones (":8080", "0.0.0.0") included, only when
// allowRemote is true and auth is enabled. It returns an error matching
// ErrInsecureListen otherwise, or ErrConfig for an address that is not
// host:port.
func CheckListen(addr string, allowRemote bool, auth Auth) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: listen address %q: %w (want host:port, e.g. 127.0.0.1:8080)", ErrConfig, addr, err)
	}
	if err := auth.check(); err != nil {
		return err
	}
	if isLoopback(host) {
		return nil
	}
	switch {
	case !allowRemote:
		return fmt.Errorf("%w: %q is reachable from other machines; listen on 127.0.0.1, or allow remote access explicitly and set a bearer token or basic authentication", ErrInsecureListen, addr)
	case !auth.Enabled():
		return fmt.Errorf("%w: remote access to %q needs a bearer token or basic authentication", ErrInsecureListen, addr)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// Dashboard is the read-only web dashboard: an http.Handler with GET (and
// HEAD) routes only, relative to where it is mounted:
//
//	/               the page: locks, instances, periodic jobs and runs
//	/api/view       the same view as JSON ([View], version ViewVersion)
//	/static/...     the embedded stylesheet and refresh script
//
// Any other method is answered 405, any other path 404. Mount it under a
// prefix with http.StripPrefix; its links are relative.
type Dashboard struct {
	cfg  Config
	log  *slog.Logger
	page *template.Template
	stat http.Handler

	mu       sync.Mutex
	view     *View     // the last good view
	viewAt   time.Time // when view was read (local clock)
	lastErr  error     // the last refresh's error, nil after a success
	tried    time.Time // when the last refresh ended (local clock)
	inflight chan struct{}
	loads    int
}

//go:embed assets
var assets embed.FS

// New checks cfg and returns a Dashboard. It reads nothing yet: the first
// request does.
func New(cfg Config) (*Dashboard, error) {
	if cfg.DB == nil {
		return nil, fmt.Errorf("%w: Config.DB is required (a *pgxpool.Pool)", ErrConfig)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Interval < MinInterval {
		return nil, fmt.Errorf("%w: Config.Interval %s is below the minimum %s", ErrConfig, cfg.Interval, MinInterval)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RunsPerJob <= 0 {
		cfg.RunsPerJob = DefaultRunsPerJob
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = periodic.DefaultStaleAfter
	}
	if cfg.Title == "" {
		cfg.Title = "pgbaton"
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if err := cfg.Auth.check(); err != nil {
		return nil, err
	}
	d := &Dashboard{cfg: cfg, log: cfg.Logger}
	if d.log == nil {
		d.log = slog.Default()
	}
	t, err := template.New("page.html").Funcs(funcs).ParseFS(assets, "assets/page.html")
	if err != nil {
		return nil, fmt.Errorf("web: parsing the page template: %w", err)
	}
	d.page = t
	sub, err := fs.Sub(assets, "assets/static")
	if err != nil {
		return nil, fmt.Errorf("web: embedded assets: %w", err)
	}
	d.stat = http.StripPrefix("/static/", http.FileServer(http.FS(sub)))
	return d, nil
}

// Interval is the refresh interval in force.
func (d *Dashboard) Interval() time.Duration { return d.cfg.Interval }

// Refreshes is how many times the view was read from the database.
func (d *Dashboard) Refreshes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loads
}

// View returns the shared view, reading it from the database if the last
// one is older than the interval. Concurrent callers share one read: the
// database sees at most one refresh per interval, however many callers. A
// failed refresh is not retried before the interval either; its error is
// returned (wrapping ErrRefresh, or inspect.ErrSnapshot) together with the
// last good view, if any.
func (d *Dashboard) View(ctx context.Context) (*View, error) {
	for {
		d.mu.Lock()
		now := d.cfg.now()
		if !d.tried.IsZero() && now.Sub(d.tried) < d.cfg.Interval {
			v, err := d.view, d.lastErr
			d.mu.Unlock()
			return v, err
		}
		if ch := d.inflight; ch != nil {
			d.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %w", ErrRefresh, context.Cause(ctx))
			}
		}
		ch := make(chan struct{})
		d.inflight = ch
		d.loads++
		d.mu.Unlock()

		// The refresh is shared: a viewer that goes away must not fail it
		// for the others, so it runs detached from ctx, bounded by Timeout.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.Timeout)
		v, err := d.load(lctx)
		cancel()
		if err != nil && !errors.Is(err, ErrRefresh) && !errors.Is(err, inspect.ErrSnapshot) {
			err = fmt.Errorf("%w: %w", ErrRefresh, err)
		}

		d.mu.Lock()
		d.tried, d.lastErr = d.cfg.now(), err
		if err == nil {
			d.view, d.viewAt = v, d.tried
		} else {
			d.log.Warn("web: dashboard refresh failed", "err", err)
		}
		d.inflight = nil
		close(ch)
		v, err = d.view, d.lastErr
		d.mu.Unlock()
		return v, err
	}
}

// ServeHTTP implements http.Handler.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if !d.cfg.Auth.allows(r) {
		if d.cfg.Auth.BasicUser != "" {
			h.Set("WWW-Authenticate", `Basic realm="pgbaton dashboard", charset="UTF-8"`)
		} else {
			h.Set("WWW-Authenticate", `Bearer realm="pgbaton dashboard"`)
		}
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "the dashboard is read-only: only GET and HEAD are served", http.StatusMethodNotAllowed)
		return
	}
	switch p := r.URL.Path; {
	case p == "/" || p == "":
		d.servePage(w, r)
	case p == "/api/view":
		d.serveJSON(w, r)
	case strings.HasPrefix(p, "/static/"):
		h.Set("Cache-Control", "public, max-age=300")
		d.stat.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// pageData is what the template renders.
type pageData struct {
	Title    string
	Interval int // seconds
	View     *View
	Err      string
	Age      time.Duration // of View, when Err is set
	Check    string        // ok, warning, critical
	Findings []inspect.Finding
}

func (d *Dashboard) servePage(w http.ResponseWriter, r *http.Request) {
	v, err := d.View(r.Context())
	pd := pageData{Title: d.cfg.Title, Interval: int(d.cfg.Interval / time.Second), View: v}
	code := http.StatusOK
	if err != nil {
		pd.Err = err.Error()
		code = http.StatusServiceUnavailable
		d.mu.Lock()
		pd.Age = d.cfg.now().Sub(d.viewAt).Round(time.Second)
		d.mu.Unlock()
	}
	if v != nil {
		level, findings := v.Locks.Check()
		pd.Check = [...]string{"ok", "warning", "critical"}[min(max(level, 0), 2)]
		pd.Findings = findings
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	var b strings.Builder
	if err := d.page.Execute(&b, pd); err != nil {
		d.log.Error("web: rendering the dashboard", "err", err)
		http.Error(w, "rendering the page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(b.String())) // the viewer went away: nothing to do
	}
}

func (d *Dashboard) serveJSON(w http.ResponseWriter, r *http.Request) {
	v, err := d.View(r.Context())
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	body := struct {
		*View
		Error string `json:"error,omitempty"`
	}{View: v}
	code := http.StatusOK
	if err != nil {
		body.Error, code = err.Error(), http.StatusServiceUnavailable
	}
	if v == nil {
		body.View = &View{Version: ViewVersion}
	}
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_ = json.NewEncoder(w).Encode(body) // the viewer went away: nothing to do
	}
}
