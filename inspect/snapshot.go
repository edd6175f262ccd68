package inspect

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// Version is the version of the [Snapshot] schema (the JSON that
// `pgbaton locks --json` prints). It changes when a field is removed or its
// meaning changes; new fields keep it.
const Version = 1

// Querier is what Take needs: a *pgx.Conn, a *pgxpool.Pool or a pgx.Tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options tunes what Take reads and how it classifies. The zero value uses
// the defaults written next to each field.
type Options struct {
	// Schema is pgbaton's schema, where key names (pgbaton.key_names) and
	// periodic jobs live. Default pgbaton.DefaultSchema. A schema that does
	// not exist, or that the role may not read, only costs the names.
	Schema string
	// Names are extra key names (from `--name`), matched by their
	// pgbaton.KeyName key.
	Names []string

	// HeartbeatInterval is the pgbaton lock connections'
	// Config.HeartbeatInterval. Default pgbaton.DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// StaleAfter: a pgbaton lock connection holding a lock whose
	// pg_stat_activity.state_change is older than this, while idle, has
	// stopped heartbeating (a frozen process, or a partition the server has
	// not noticed yet): stale-holder. Default 5 × HeartbeatInterval.
	StaleAfter time.Duration
	// StuckAfter: a session lock held by a non-pgbaton session that has been
	// idle this long is leaked; a waiter that has waited this long is stuck.
	// Default 5m.
	StuckAfter time.Duration
	// IdleInTransactionAfter: a holder idle in a transaction this long is
	// classified idle-in-transaction. Default 10s.
	IdleInTransactionAfter time.Duration
	// LongWaitAfter: a waiter that has waited this long is reported as a
	// long wait (a warning for `--check`). Default 30s.
	LongWaitAfter time.Duration
}

func (o Options) withDefaults() Options {
	if o.Schema == "" {
		o.Schema = pgbaton.DefaultSchema
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = pgbaton.DefaultHeartbeatInterval
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 5 * o.HeartbeatInterval
	}
	if o.StuckAfter <= 0 {
		o.StuckAfter = 5 * time.Minute
	}
	if o.IdleInTransactionAfter <= 0 {
		o.IdleInTransactionAfter = 10 * time.Second
	}
	if o.LongWaitAfter <= 0 {
		o.LongWaitAfter = 30 * time.Second
	}
	return o
}

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ErrSnapshot wraps every error of Take: the query failed (the message names
// the step and, for a permission problem, the grant that is missing).
var ErrSnapshot = errors.New("inspect: snapshot failed")

// row is one pg_locks advisory row with its backend's activity.
type row struct {
	objsubid       int
	classid, objid uint32
	pid            int
	mode           string
	granted        bool
	waitStart      *time.Time
	blockedBy      []int32
	activityRow
}

// activityRow is a backend's pg_stat_activity row.
type activityRow struct {
	hasActivity   bool
	appName       string
	clientAddr    *string
	clientPort    *int32
	state         string
	stateChange   *time.Time
	xactStart     *time.Time
	backendStart  *time.Time
	query         string
	user          string
	waitEventType string
	waitEvent     string
	backendType   string
}

// The lock query: every advisory row of the current database, with
// pg_blocking_pids for waiters only (it takes the lock manager's partition
// locks, so it is not called for the thousands of holders). %s is
// l.waitstart on PostgreSQL 14+ and NULL before.
const lockQuery = `SELECT statement_timestamp(), l.objsubid::int, l.classid::int8, l.objid::int8, l.pid, l.mode, l.granted,
	%s::timestamptz, CASE WHEN NOT l.granted THEN pg_blocking_pids(l.pid) END
FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`

// The activity query: one row per backend seen in the locks.
const activityQuery = `SELECT pid, coalesce(application_name, ''), host(client_addr), client_port,
	coalesce(state, ''), state_change, xact_start, backend_start, coalesce(left(query, 200), ''),
	coalesce(usename::text, ''), coalesce(wait_event_type, ''), coalesce(wait_event, ''), coalesce(backend_type, '')
FROM pg_stat_activity WHERE pid = ANY($1)`

// Take reads one snapshot in a fixed number of statements: the server's
// version and pgbaton's tables, the advisory locks, the backends that hold or
// wait for them, then the names of the keys from pgbaton's schema when it
// exists. It never changes anything on the server. Run it on a connection or
// a pool, not inside a transaction: a missing privilege on pgbaton's tables
// is reported as a note, and in a transaction it would abort it.
//
// pg_locks and pg_stat_activity are read by two statements a moment apart,
// as PostgreSQL itself never reads them atomically together: a backend that
// ended in between shows as not visible.
//
// What the role sees: pg_locks shows every lock of the cluster to any role;
// pg_stat_activity hides other roles' state, query and client address unless
// the role has pg_read_all_stats (or is superuser); such holders are not
// visible and never classified on facts the role cannot see.
func Take(ctx context.Context, q Querier, opts Options) (*Snapshot, error) {
	o := opts.withDefaults()
	if !schemaRE.MatchString(o.Schema) {
		return nil, fmt.Errorf("%w: schema %q is not a plain lower-case identifier", ErrSnapshot, o.Schema)
	}
	var m meta
	sch := o.Schema
	// to_regclass raises an error, not NULL, for a schema the role may not
	// use: such a schema only costs the names.
	if err := q.QueryRow(ctx, `WITH s AS (SELECT has_schema_privilege(oid, 'USAGE') AS usable FROM pg_namespace WHERE nspname = $4)
		SELECT current_setting('server_version_num')::int,
			CASE WHEN (SELECT usable FROM s) THEN to_regclass($1)::text END,
			CASE WHEN (SELECT usable FROM s) THEN to_regclass($2)::text END,
			CASE WHEN (SELECT usable FROM s) THEN to_regclass($3)::text END`,
		sch+".key_names", sch+".periodic_jobs", sch+".periodic_runs", sch).Scan(&m.version, &m.names, &m.jobs, &m.runs); err != nil {
		return nil, fmt.Errorf("%w: reading the server version: %w", ErrSnapshot, err)
	}
	waitstart := "NULL"
	if m.version >= 140000 {
		waitstart = "l.waitstart"
	}
	rows, err := q.Query(ctx, fmt.Sprintf(lockQuery, waitstart))
	if err != nil {
		return nil, fmt.Errorf("%w: reading pg_locks: %w", ErrSnapshot, err)
	}
	var taken time.Time
	var rs []row
	pids := map[int]bool{}
	for rows.Next() {
		var r row
		var classid, objid int64
		if err := rows.Scan(&taken, &r.objsubid, &classid, &objid, &r.pid, &r.mode, &r.granted, &r.waitStart, &r.blockedBy); err != nil {
			rows.Close()
			return nil, fmt.Errorf("%w: reading pg_locks: %w", ErrSnapshot, err)
		}
		r.classid, r.objid = uint32(classid), uint32(objid)
		rs = append(rs, r)
		pids[r.pid] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%w: reading pg_locks: %w", ErrSnapshot, err)
	}
	if taken.IsZero() {
		if err := q.QueryRow(ctx, "SELECT statement_timestamp()").Scan(&taken); err != nil {
			return nil, fmt.Errorf("%w: reading the clock: %w", ErrSnapshot, err)
		}
	}
	if len(pids) > 0 {
		acts, err := readActivity(ctx, q, pids)
		if err != nil {
			return nil, err
		}
		for i := range rs {
			if a, ok := acts[rs[i].pid]; ok {
				rs[i].activityRow = a
			}
		}
	}
	s := build(rs, taken, o)
	if err := lookupNames(ctx, q, s, o, m); err != nil {
		return nil, err
	}
	classify(s, o)
	return s, nil
}

type meta struct {
	version           int
	names, jobs, runs *string
}

func readActivity(ctx context.Context, q Querier, pids map[int]bool) (map[int]activityRow, error) {
	list := make([]int32, 0, len(pids))
	for p := range pids {
		list = append(list, int32(p))
	}
	rows, err := q.Query(ctx, activityQuery, list)
	if err != nil {
		return nil, fmt.Errorf("%w: reading pg_stat_activity: %w", ErrSnapshot, err)
	}
	defer rows.Close()
	acts := make(map[int]activityRow, len(list))
	for rows.Next() {
		var a activityRow
		var pid int
		if err := rows.Scan(&pid, &a.appName, &a.clientAddr, &a.clientPort, &a.state, &a.stateChange, &a.xactStart, &a.backendStart,
			&a.query, &a.user, &a.waitEventType, &a.waitEvent, &a.backendType); err != nil {
			return nil, fmt.Errorf("%w: reading pg_stat_activity: %w", ErrSnapshot, err)
		}
		a.hasActivity = true
		acts[pid] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%w: reading pg_stat_activity: %w", ErrSnapshot, err)
	}
	return acts, nil
}

// build groups rows into keys, holders before waiters, waiters in queue
// order (waitstart).
func build(rs []row, taken time.Time, o Options) *Snapshot {
	s := &Snapshot{Version: Version, TakenAt: taken.UTC(), Thresholds: thresholdsOf(o)}
	byKey := map[keyID]*KeyState{}
	var order []keyID
	for _, r := range rs {
		id := keyID{form: r.objsubid, id: int64(uint64(r.classid)<<32 | uint64(r.objid))}
		k := byKey[id]
		if k == nil {
			k = newKeyState(id)
			byKey[id] = k
			order = append(order, id)
		}
		sess := sessionOf(r, taken)
		if r.granted {
			k.Holders = append(k.Holders, Holder{Session: sess, Mode: modeOf(r.mode)})
		} else {
			w := Waiter{Session: sess, Mode: modeOf(r.mode), WaitStart: utc(r.waitStart), BlockedBy: []int{}}
			if r.waitStart != nil {
				w.WaitingFor = dur(taken.Sub(*r.waitStart))
			}
			for _, p := range r.blockedBy {
				w.BlockedBy = append(w.BlockedBy, int(p))
			}
			k.Waiters = append(k.Waiters, w)
		}
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].form != order[j].form {
			return order[i].form < order[j].form
		}
		return order[i].id < order[j].id
	})
	for _, id := range order {
		k := byKey[id]
		sort.SliceStable(k.Holders, func(i, j int) bool { return k.Holders[i].PID < k.Holders[j].PID })
		sort.SliceStable(k.Waiters, func(i, j int) bool {
			a, b := k.Waiters[i].WaitStart, k.Waiters[j].WaitStart
			switch {
			case a != nil && b != nil && !a.Equal(*b):
				return a.Before(*b)
			case (a == nil) != (b == nil):
				return a != nil
			}
			return k.Waiters[i].PID < k.Waiters[j].PID
		})
		s.Keys = append(s.Keys, *k)
	}
	return s
}

type keyID struct {
	form int // pg_locks.objsubid: 1 int8, 2 pair
	id   int64
}

func newKeyState(id keyID) *KeyState {
	k := &KeyState{ID: id.id, Holders: []Holder{}, Waiters: []Waiter{}}
	if id.form == 2 {
		a, b := int32(id.id>>32), int32(uint32(id.id))
		k.Form, k.Pair = FormPair, &[2]int32{a, b}
		k.Key = pgbaton.KeyPair(a, b).String()
	} else {
		k.Form = FormInt8
		k.Key = pgbaton.KeyInt64(id.id).String()
	}
	return k
}

func modeOf(m string) string {
	switch m {
	case "ExclusiveLock":
		return "exclusive"
	case "ShareLock":
		return "shared"
	}
	return m
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func sessionOf(r row, taken time.Time) Session {
	s := Session{PID: r.pid, ApplicationName: r.appName, User: r.user, State: r.state,
		StateChange: utc(r.stateChange), XactStart: utc(r.xactStart), BackendStart: utc(r.backendStart),
		Query: r.query, WaitEvent: strings.Trim(r.waitEventType+":"+r.waitEvent, ":"), Visible: r.hasActivity && r.backendType != ""}
	if r.clientAddr != nil {
		s.ClientAddr = *r.clientAddr
		if r.clientPort != nil && *r.clientPort > 0 {
			s.ClientAddr += ":" + strconv.Itoa(int(*r.clientPort))
		}
	} else if r.clientPort != nil && *r.clientPort == -1 {
		s.ClientAddr = "local"
	}
	if r.stateChange != nil {
		s.InStateFor = dur(taken.Sub(*r.stateChange))
	}
	s.Instance, s.PgbatonConn = parseAppName(r.appName)
	return s
}

// parseAppName reads pgbaton's application_name: "pgbaton:<instance>:<n>"
// for a lock connection (n a number), "pgbaton:<instance>:<role>" for its
// other connections (migrate, names, periodic).
func parseAppName(name string) (instance, conn string) {
	rest, ok := strings.CutPrefix(name, "pgbaton:")
	if !ok {
		return "", ""
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return rest, ""
	}
	instance, conn = rest[:i], rest[i+1:]
	if _, err := strconv.Atoi(conn); err == nil {
		return instance, ConnLock
	}
	return instance, conn
}

// lookupNames names the keys of s: from the name registry
// (<schema>.key_names), from periodic's job table (the job's key is
// KeyName("periodic:"+job)), from running periodic runs (their lock_key and
// start), and from Options.Names. Missing tables or privileges only leave
// keys unnamed, with a note.
func lookupNames(ctx context.Context, q Querier, s *Snapshot, o Options, m meta) error {
	idx := map[keyID]int{}
	var ids []int64
	for i, k := range s.Keys {
		form := 1
		if k.Form == FormPair {
			form = 2
		}
		idx[keyID{form, k.ID}] = i
		ids = append(ids, k.ID)
	}
	add := func(form int, id int64, name, source string) {
		i, ok := idx[keyID{form, id}]
		if !ok || name == "" {
			return
		}
		k := &s.Keys[i]
		for _, n := range append([]string{k.Name}, k.OtherNames...) {
			if n == name {
				return
			}
		}
		if k.Name == "" {
			k.Name, k.NameSource = name, source
		} else {
			k.OtherNames = append(k.OtherNames, name)
		}
	}
	for _, n := range o.Names {
		add(1, pgbaton.KeyName(n).ID(), n, SourceFlag)
	}
	if len(s.Keys) == 0 {
		return nil
	}
	names, jobs, runs := m.names, m.jobs, m.runs
	sch := o.Schema
	qs := pgx.Identifier{sch}.Sanitize()
	if names != nil {
		rows, err := q.Query(ctx, `SELECT form, key_id, name FROM `+qs+`.key_names WHERE key_id = ANY($1) ORDER BY last_seen DESC, name`, uniq(ids))
		if err == nil {
			for rows.Next() {
				var form string
				var id int64
				var name string
				if err = rows.Scan(&form, &id, &name); err != nil {
					break
				}
				f := 1
				if form == FormPair {
					f = 2
				}
				add(f, id, name, SourceRegistry)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			s.Notes = append(s.Notes, "key names not read from "+sch+".key_names: "+grantHint(err, "GRANT SELECT ON "+sch+".key_names TO <role>"))
		}
	} else {
		s.Notes = append(s.Notes, "no name registry ("+sch+".key_names): run 'pgbaton migrate up' so that pgbaton records the names it locks")
	}
	if jobs != nil {
		rows, err := q.Query(ctx, `SELECT job FROM `+qs+`.periodic_jobs`)
		if err == nil {
			for rows.Next() {
				var job string
				if err = rows.Scan(&job); err != nil {
					break
				}
				add(1, pgbaton.KeyName("periodic:"+job).ID(), "periodic:"+job, SourcePeriodic)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			s.Notes = append(s.Notes, "periodic jobs not read: "+grantHint(err, "GRANT SELECT ON "+sch+".periodic_jobs TO <role>"))
		}
	}
	if runs != nil {
		if err := periodicRuns(ctx, q, s, qs, idx, add); err != nil {
			s.Notes = append(s.Notes, "periodic runs not read: "+grantHint(err, "GRANT SELECT ON "+sch+".periodic_runs TO <role>"))
		}
	}
	return nil
}

// periodicRuns reads the running periodic runs: a run's row is written after
// its lock was granted, so started_at is a time by which the lock was held
// (held since at latest), recorded by the lease's own process.
func periodicRuns(ctx context.Context, q Querier, s *Snapshot, qs string, idx map[keyID]int, add func(int, int64, string, string)) error {
	rows, err := q.Query(ctx, `SELECT job, tick, lock_key, instance, started_at FROM `+qs+`.periodic_runs WHERE status = 'running' AND lock_key IS NOT NULL`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var job, instance string
		var tick time.Time
		var key int64
		var started *time.Time
		if err := rows.Scan(&job, &tick, &key, &instance, &started); err != nil {
			return err
		}
		i, ok := idx[keyID{1, key}]
		if !ok {
			continue
		}
		if key != pgbaton.KeyName("periodic:"+job).ID() {
			add(1, key, "periodic:"+job+"@"+tick.UTC().Format("2006-01-02T15:04:05.999999Z"), SourcePeriodic)
		}
		if started == nil {
			continue
		}
		k := &s.Keys[i]
		for h := range k.Holders {
			hd := &k.Holders[h]
			if hd.Instance == instance && hd.HeldSince == nil {
				t := started.UTC()
				hd.HeldSince, hd.HeldSinceSource = &t, HeldSincePeriodicRun
				hd.HeldFor = dur(s.TakenAt.Sub(t))
			}
		}
	}
	return rows.Err()
}

func grantHint(err error, grant string) string {
	var se interface{ SQLState() string }
	if errors.As(err, &se) && se.SQLState() == "42501" {
		return err.Error() + " (" + grant + ")"
	}
	return err.Error()
}

func uniq(ids []int64) []int64 {
	seen := make(map[int64]bool, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}
