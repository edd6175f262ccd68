package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/internal/history"
	"github.com/pgbaton/pgbaton/pgtest"
)

// Grace is how long a worker may take to look at Done after a loss is
// signalled: one step of its critical section (a few milliseconds of work
// and one write) with room for scheduling delays on a busy machine. The
// deliberately broken worker goes on for seconds.
const Grace = 500 * time.Millisecond

// Options configures a run.
type Options struct {
	Cluster *pgtest.Cluster
	DB      string // a fresh database of Cluster
	Exe     string // the test binary, re-executed as workers
	Dir     string // history and log files

	Workers    int           // worker processes; default 6
	Goroutines int           // contending goroutines per worker; default 2
	Keys       int           // keys contended for; default 4
	Duration   time.Duration // how long the workers run
	Mode       string        // worker mode for every worker; default ModeCorrect
	Unfenced   bool          // writes skip the fence (a control)
	Pace       time.Duration // pause between writes in a critical section; default 5ms
	Backoff    time.Duration // pause after a busy try; default 20ms
	// Slop is added to every call's documented bound (scheduling delays on
	// a busy machine; stalls over 200ms are not counted anyway); default 1s.
	Slop time.Duration
	// PanicOneIn makes one WithLock/WithXactLock section in PanicOneIn
	// panic (recovered by the worker); default 10, negative never.
	PanicOneIn int
	// PauseTimeout bounds how long the workers have to go idle at a quiet
	// point (default 45s); StopTimeout how long they have to exit when
	// stopped before they get SIGQUIT (default 30s).
	PauseTimeout, StopTimeout time.Duration
	// QuietEvery makes a quiet point after every QuietEvery faults
	// (default 4); there is always one at the end of the run.
	QuietEvery int

	// Faults lists the kinds the nemesis injects, in rounds of a shuffled
	// order; nil means every kind, empty (non-nil) means none.
	Faults []string
	// Gap is the pause between faults; default 1s.
	Gap time.Duration

	Logf    func(format string, args ...any)
	Verbose bool // workers log pgbaton warnings to their stderr files
}

// Run is one run of the suite: it starts the workers, lets the nemesis
// inject faults for the duration, stops everything, and checks the history.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Workers == 0 {
		o.Workers = 6
	}
	if o.Goroutines == 0 {
		o.Goroutines = 2
	}
	if o.Keys == 0 {
		o.Keys = 4
	}
	if o.Mode == "" {
		o.Mode = ModeCorrect
	}
	if o.Pace == 0 {
		o.Pace = 5 * time.Millisecond
	}
	if o.Backoff == 0 {
		o.Backoff = 20 * time.Millisecond
	}
	if o.Gap == 0 {
		o.Gap = time.Second
	}
	if o.Slop == 0 {
		o.Slop = time.Second
	}
	if o.PauseTimeout == 0 {
		o.PauseTimeout = pauseBound
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 30 * time.Second
	}
	if o.PanicOneIn == 0 {
		o.PanicOneIn = 10
	}
	if o.QuietEvery == 0 {
		o.QuietEvery = 4
	}
	if o.Faults == nil {
		o.Faults = AllFaults
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	s := &suite{o: o, procs: map[string]*proc{}}
	flog, err := os.Create(filepath.Join(o.Dir, "nemesis.jsonl")) //nolint:gosec // the harness's own file
	if err != nil {
		return nil, err
	}
	defer func() { _ = flog.Close() }() // written line by line; write errors are in faultLog.Err
	s.faultLog = history.NewRecorder(flog)
	var cancelProcs context.CancelFunc
	s.procCtx, cancelProcs = context.WithCancel(context.Background())
	defer cancelProcs()
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	defer s.admin.close()
	started := time.Now()
	if err := s.startWorkers(ctx); err != nil {
		s.stopWorkers()
		return nil, err
	}
	nctx, stopNemesis := context.WithTimeout(ctx, o.Duration)
	nemErr := make(chan error, 1)
	go func() { nemErr <- s.nemesis(nctx) }()
	<-nctx.Done()
	err = <-nemErr
	stopNemesis()
	// The end-of-run quiet point: every worker idle, nothing may be locked.
	qctx, cancelQuiet := context.WithTimeout(context.Background(), 2*time.Minute)
	s.quiet(qctx, true)
	cancelQuiet()
	s.stopWorkers()
	elapsed := time.Since(started)
	if err := s.faultLog.Err(); err != nil {
		s.note("fault log not written: %v", err)
	}
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return nil, fmt.Errorf("chaos: nemesis: %w", err)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	h, err := s.collect(ctx)
	if err != nil {
		return nil, err
	}
	res := history.CheckWith(h, history.Options{Grace: Grace})
	return &Report{Options: o, Elapsed: elapsed, Result: res, History: h, Notes: s.notes, Unsupported: s.unsupported}, nil
}

type suite struct {
	o     Options
	admin *admin
	proxy *pgtest.Proxy
	keys  []string
	keyOf map[[2]int64]string // (classid, objid) of a key's advisory lock -> key
	role  string              // the workers' role (not a superuser, so CONNECTION LIMIT applies)

	mu     sync.Mutex
	procs  map[string]*proc // by proc name, alive or dead
	slots  []*proc          // current process of each slot
	faults []history.Fault
	notes  []string
	// unsupported fault kinds (no packet filter here)
	unsupported []string
	faultLog    *history.Recorder // Dir/nemesis.jsonl
	procCtx     context.Context   // workers' lifetime: the whole run
	quiets      []history.Quiet
	quietSeq    int
	hung        map[string]bool // workers that did not stop and were ended with SIGQUIT
}

type proc struct {
	name    string
	slot    int
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	out     string
	exited  chan struct{}
	paused  chan string // "paused <n>" answers
	killed  bool
	stopped bool // SIGSTOPped right now
}

func (s *suite) setup(ctx context.Context) error {
	s.admin = &admin{dsn: s.o.Cluster.DSN(s.o.DB)}
	conn, err := s.admin.conn(ctx)
	if err != nil {
		return err
	}
	if err := pgbaton.Migrate(ctx, conn, ""); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, resourceDDL); err != nil {
		return fmt.Errorf("chaos: creating the resource: %w", err)
	}
	s.keyOf = map[[2]int64]string{}
	for i := range s.o.Keys {
		k := fmt.Sprintf("chaos/key-%d", i)
		s.keys = append(s.keys, k)
		id := pgbaton.KeyName(k).ID()
		s.keyOf[[2]int64{int64(uint64(id) >> 32), int64(uint32(id))}] = k
		if _, err := conn.Exec(ctx, "INSERT INTO chaos_resource (key) VALUES ($1)", k); err != nil {
			return err
		}
	}
	// The workers connect as a role of their own: not a superuser (whom
	// CONNECTION LIMIT does not apply to), with what they need and
	// pg_read_all_stats for their checks. Roles are per cluster; the name
	// is per database.
	s.role = roleName(s.o.DB)
	role := pgx.Identifier{s.role}.Sanitize()
	for _, q := range []string{
		"DO $$ BEGIN CREATE ROLE " + role + " LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
		"GRANT pg_read_all_stats TO " + role,
		"GRANT USAGE ON SCHEMA pgbaton TO " + role,
		"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public, pgbaton TO " + role,
		"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, pgbaton TO " + role,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("chaos: setting up the workers' role: %w", err)
		}
	}
	if s.proxy, err = pgtest.NewProxy(s.o.Cluster.TCPAddr()); err != nil {
		return err
	}
	return nil
}

func (s *suite) startWorkers(ctx context.Context) error {
	s.slots = make([]*proc, s.o.Workers)
	for i := range s.o.Workers {
		if err := s.spawn(ctx, i, 0); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts generation gen of slot i. Slot 0's lock connections go
// through the proxy (for the black-hole fault).
func (s *suite) spawn(ctx context.Context, slot, gen int) error {
	name := fmt.Sprintf("w%d.%d", slot, gen)
	lockDSN := s.asRole(s.o.Cluster.TCPDSN(s.o.DB))
	if slot == 0 {
		lockDSN = s.asRole(s.o.Cluster.ProxyDSN(s.proxy, s.o.DB))
	}
	cfg := workerConfig{
		Proc: name, LockDSN: lockDSN, AppDSN: s.asRole(s.o.Cluster.TCPDSN(s.o.DB)), Keys: s.keys,
		Out: filepath.Join(s.o.Dir, name+".jsonl"), Mode: s.o.Mode, Unfenced: s.o.Unfenced,
		Goroutines: s.o.Goroutines, Pace: s.o.Pace, Backoff: s.o.Backoff, Verbose: s.o.Verbose, Slop: s.o.Slop,
		PanicOneIn: max(s.o.PanicOneIn, 0),
	}
	if s.o.Mode == ModeIgnoreDone {
		cfg.Pace = 50 * time.Millisecond
	}
	b, _ := json.Marshal(cfg)
	cmd := exec.CommandContext(s.procCtx, s.o.Exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), WorkerEnv+"="+string(b))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := os.Create(filepath.Join(s.o.Dir, name+".stderr")) //nolint:gosec // the harness's own file
	if err != nil {
		return err
	}
	defer func() { _ = stderr.Close() }() // the worker has its own descriptor
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("chaos: start worker %s: %w", name, err)
	}
	p := &proc{name: name, slot: slot, cmd: cmd, stdin: stdin, out: cfg.Out, exited: make(chan struct{}), paused: make(chan string, 8)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := false
		for sc.Scan() {
			line := sc.Text()
			if !once && line == "ready" {
				once = true
				close(ready)
			}
			if id, ok := strings.CutPrefix(line, "paused "); ok {
				select {
				case p.paused <- id:
				default: // nobody waits for it any more
				}
			}
		}
		_ = cmd.Wait()
		close(p.exited)
	}()
	s.mu.Lock()
	s.procs[name] = p
	s.slots[slot] = p
	s.mu.Unlock()
	t := time.NewTimer(60 * time.Second)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-p.exited:
		b, _ := os.ReadFile(filepath.Join(s.o.Dir, name+".stderr")) //nolint:gosec // the harness's own file; the error is already being reported
		return fmt.Errorf("chaos: worker %s exited before it was ready: %s", name, strings.TrimSpace(string(b)))
	case <-t.C:
		tail := s.quit(p)
		return fmt.Errorf("chaos: worker %s not ready within 60s; its goroutines (SIGQUIT) and stderr:\n%s", name, tail)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-p.exited
		return ctx.Err()
	}
}

// stopWorkers asks every live worker to stop. One that does not exit
// within Options.StopTimeout gets SIGQUIT (the Go runtime prints every goroutine's
// stack to its stderr and exits), and SIGKILL 10 seconds later; the tail
// of its stderr goes into the notes.
func (s *suite) stopWorkers() {
	s.mu.Lock()
	var live []*proc
	for _, p := range s.slots {
		if p != nil {
			live = append(live, p)
		}
	}
	s.mu.Unlock()
	for _, p := range live {
		if p.stopped {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
		}
		_, _ = io.WriteString(p.stdin, "stop\n")
	}
	deadline := time.NewTimer(s.o.StopTimeout)
	defer deadline.Stop()
	for _, p := range live {
		select {
		case <-p.exited:
		case <-deadline.C:
			s.mu.Lock()
			if s.hung == nil {
				s.hung = map[string]bool{}
			}
			s.hung[p.name] = true
			s.mu.Unlock()
			s.note("worker %s did not stop within %s; its goroutines (SIGQUIT) and stderr:\n%s", p.name, s.o.StopTimeout, s.quit(p))
		}
		_ = p.stdin.Close()
	}
	if s.proxy != nil {
		s.proxy.Heal()
		_ = s.proxy.Close()
	}
}

// quit ends a worker that does not answer: SIGQUIT first, so that the Go
// runtime writes every goroutine's stack to its stderr, then SIGKILL after
// a grace period. It returns the tail of the worker's stderr.
func (s *suite) quit(p *proc) string {
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a frozen worker cannot dump
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	return stderrTail(filepath.Join(s.o.Dir, p.name+".stderr"), 16<<10)
}

// stderrTail returns the last n bytes of a file (a worker's stderr).
func stderrTail(path string, n int64) string {
	f, err := os.Open(path) //nolint:gosec // the harness's own file
	if err != nil {
		return fmt.Sprintf("(stderr not readable: %v)", err)
	}
	defer func() { _ = f.Close() }() // read-only
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(stderr not readable: %v)", err)
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(stderr not readable: %v)", err)
	}
	if off > 0 {
		return fmt.Sprintf("[... %d bytes before]\n%s", off, b)
	}
	return string(b)
}

// roleName is the workers' role for database db.
func roleName(db string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(db)) // never fails
	return fmt.Sprintf("chaos_worker_%08x", h.Sum32())
}

// asRole makes a DSN of the cluster's (user=postgres) connect as the
// workers' role.
func (s *suite) asRole(dsn string) string {
	return strings.Replace(dsn, "user=postgres", "user="+s.role, 1)
}

func (s *suite) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.o.Logf("chaos: %s", msg)
	s.mu.Lock()
	s.notes = append(s.notes, msg)
	s.mu.Unlock()
}

// collect reads the workers' histories, the resource's write log and the
// nemesis's faults. A lease left open by a killed worker ends as crashed at
// the kill.
func (s *suite) collect(ctx context.Context) (*history.History, error) {
	rd := history.NewReader()
	s.mu.Lock()
	procs := make([]*proc, 0, len(s.procs))
	for _, p := range s.procs {
		procs = append(procs, p)
	}
	faults := append([]history.Fault(nil), s.faults...)
	quiets := append([]history.Quiet(nil), s.quiets...)
	s.mu.Unlock()
	for _, p := range procs {
		f, err := os.Open(p.out)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = rd.Read(f, p.name)
		_ = f.Close() // read-only
		if err != nil {
			return nil, err
		}
	}
	conn, err := s.admin.conn(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, "SELECT seq, key, token, lease, at FROM chaos_writes ORDER BY seq")
	if err != nil {
		return nil, err
	}
	writes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (history.Write, error) {
		var w history.Write
		err := r.Scan(&w.Seq, &w.Key, &w.Token, &w.Lease, &w.At)
		w.Accepted = true
		w.Proc, _, _ = strings.Cut(w.Lease, "-")
		return w, err
	})
	if err != nil {
		return nil, err
	}
	rd.Add(nil, writes, faults)
	rd.AddQuiets(quiets)
	h := rd.History()
	if h.End, err = s.admin.now(ctx); err != nil {
		return nil, err
	}
	kills := map[string]history.Fault{}
	for _, f := range faults {
		if f.Kind == FaultKill {
			kills[f.Proc] = f
		}
	}
	for i := range h.Calls {
		c := &h.Calls[i]
		if _, ok := kills[c.Proc]; ok && !c.Done {
			c.Died = true // the nemesis killed its process
		}
		// Calls of a worker that would not stop (hung) stay unfinished:
		// the checker reports them.
	}
	for i := range h.Leases {
		l := &h.Leases[i]
		if l.Kind != history.Open {
			continue
		}
		if k, ok := kills[l.Proc]; ok {
			l.Kind, l.End, l.Signalled = history.Crashed, k.To, k.To
		}
	}
	return h, nil
}

// admin is the harness's own connection to the database, reopened after
// restarts and crashes.
type admin struct {
	dsn string
	mu  sync.Mutex
	c   *pgx.Conn
}

func (a *admin) conn(ctx context.Context) (*pgx.Conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.c != nil && !a.c.IsClosed() {
		if err := a.c.Ping(ctx); err == nil {
			return a.c, nil
		}
		_ = a.c.Close(context.Background())
	}
	var err error
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		a.c, err = pgx.Connect(cctx, a.dsn+" application_name=chaos-nemesis")
		cancel()
		if err == nil || attempt >= 50 || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // the server is restarting: external state
	}
	if err != nil {
		return nil, fmt.Errorf("chaos: admin connection: %w", err)
	}
	return a.c, nil
}

// now reads the server clock.
func (a *admin) now(ctx context.Context) (time.Time, error) {
	c, err := a.conn(ctx)
	if err != nil {
		return time.Time{}, err
	}
	var t time.Time
	err = c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&t)
	return t, err
}

func (a *admin) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.c != nil {
		_ = a.c.Close(context.Background())
	}
}
