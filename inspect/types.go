package inspect

import (
	"math"
	"strconv"
	"time"
)

// Snapshot is every advisory lock of one database at one instant, grouped by
// key, named where a name is known, and classified. Its JSON form is what
// `pgbaton locks --json` prints; Version says which schema it follows.
type Snapshot struct {
	// Version is the schema version ([Version]).
	Version int `json:"version"`
	// TakenAt is the database's statement_timestamp() of the lock query:
	// every age in the snapshot is measured from it, on the server's clock.
	TakenAt time.Time `json:"taken_at"`
	// Thresholds are the limits the classes were decided with.
	Thresholds Thresholds `json:"thresholds"`
	// Keys are the locked or awaited keys, the most severe class first, then
	// int8 keys before pairs, by id.
	Keys []KeyState `json:"keys"`
	// Summary counts keys per class.
	Summary map[Class]int `json:"summary"`
	// Hints are findings about several keys at once (many idle-in-transaction
	// holders from one application, the second incident's shape).
	Hints []string `json:"hints,omitempty"`
	// Notes say what could not be read (a missing table or privilege).
	Notes []string `json:"notes,omitempty"`
}

// Thresholds are [Options]' limits, in seconds.
type Thresholds struct {
	StaleAfter             Seconds `json:"stale_after_s"`
	StuckAfter             Seconds `json:"stuck_after_s"`
	IdleInTransactionAfter Seconds `json:"idle_in_transaction_after_s"`
	LongWaitAfter          Seconds `json:"long_wait_after_s"`
}

func thresholdsOf(o Options) Thresholds {
	return Thresholds{StaleAfter: secs(o.StaleAfter), StuckAfter: secs(o.StuckAfter),
		IdleInTransactionAfter: secs(o.IdleInTransactionAfter), LongWaitAfter: secs(o.LongWaitAfter)}
}

// Key forms: which of PostgreSQL's two advisory key spaces (pg_locks.objsubid
// 1 or 2).
const (
	FormInt8 = "int8" // pg_advisory_lock(bigint): objsubid 1, classid high 32 bits, objid low 32 bits
	FormPair = "pair" // pg_advisory_lock(int, int): objsubid 2, classid the first key, objid the second
)

// Name sources.
const (
	SourceRegistry = "registry" // <schema>.key_names, written by pgbaton's processes
	SourcePeriodic = "periodic" // <schema>.periodic_jobs and running periodic_runs
	SourceFlag     = "flag"     // Options.Names (--name)
)

// KeyState is one advisory key: who holds it and who waits for it.
type KeyState struct {
	// Form is FormInt8 or FormPair.
	Form string `json:"form"`
	// ID is the int8 key; for pairs, a<<32 | uint32(b), as pgbaton.Key.ID.
	ID int64 `json:"id"`
	// Pair is the two int4 keys of a pair key.
	Pair *[2]int32 `json:"pair,omitempty"`
	// Key is the raw form, "int8:<id>" or "pair:<a>,<b>".
	Key string `json:"key"`
	// Name is the key's name when known ("" otherwise), and NameSource where
	// it came from. OtherNames are further names with the same key (a
	// collision of KeyName, or the same key named twice with Key.Named).
	Name       string   `json:"name,omitempty"`
	NameSource string   `json:"name_source,omitempty"`
	OtherNames []string `json:"other_names,omitempty"`
	// Class is the most severe class among holders and waiters.
	Class   Class    `json:"class"`
	Holders []Holder `json:"holders"`
	// Waiters are in queue order (pg_locks.waitstart), oldest first.
	Waiters []Waiter `json:"waiters"`
}

// Label is the name if known, else the raw key.
func (k *KeyState) Label() string {
	if k.Name != "" {
		return k.Name
	}
	return k.Key
}

// Session is a backend as pg_stat_activity shows it.
type Session struct {
	PID int `json:"pid"`
	// Visible is false when pg_stat_activity hid the backend's details from
	// this role (another role's backend without pg_read_all_stats): State,
	// times and client are then unknown, not empty.
	Visible         bool   `json:"visible"`
	ApplicationName string `json:"application_name"`
	// Instance is the pgbaton instance ("pgbaton:<instance>:<n>"), "" for
	// other applications.
	Instance string `json:"instance,omitempty"`
	// PgbatonConn is ConnLock for a pgbaton lock connection, another word
	// (migrate, names, periodic) for pgbaton's other connections, "" for
	// everything else.
	PgbatonConn string `json:"pgbaton_conn,omitempty"`
	User        string `json:"user,omitempty"`
	// ClientAddr is host:port, "local" for a unix socket, "" when unknown.
	ClientAddr string `json:"client_addr,omitempty"`
	// State is pg_stat_activity.state: "active", "idle", "idle in
	// transaction", "idle in transaction (aborted)", ...
	State        string     `json:"state"`
	StateChange  *time.Time `json:"state_change,omitempty"`
	InStateFor   *Seconds   `json:"in_state_for_s,omitempty"`
	XactStart    *time.Time `json:"xact_start,omitempty"`
	BackendStart *time.Time `json:"backend_start,omitempty"`
	// Query is the first 200 characters of the backend's current or last
	// statement.
	Query     string `json:"query,omitempty"`
	WaitEvent string `json:"wait_event,omitempty"`
}

// ConnLock is Session.PgbatonConn for a pgbaton lock connection.
const ConnLock = "lock"

// Scopes of a held lock.
const (
	// ScopeSession: held by a backend outside any transaction, so it can only
	// be a session lock (pg_advisory_lock): it stays until unlocked on that
	// backend or the backend ends.
	ScopeSession = "session"
	// ScopeTransaction: a pgbaton lock connection in a transaction, which is
	// WithXactLock's pg_advisory_xact_lock.
	ScopeTransaction = "transaction"
	// ScopeUnknown: held by a backend inside a transaction; pg_locks does not
	// say whether the lock is the transaction's or the session's.
	ScopeUnknown = "unknown"
)

// HeldSincePeriodicRun is Holder.HeldSinceSource when the time is a running
// periodic run's started_at: the run's process wrote it after the lock was
// granted, so the lock has been held at least since then.
const HeldSincePeriodicRun = "periodic run started_at (granted at or before)"

// Holder is one backend holding the key.
type Holder struct {
	Session
	// Mode is "exclusive" or "shared".
	Mode string `json:"mode"`
	// Scope is ScopeSession, ScopeTransaction or ScopeUnknown.
	Scope string `json:"scope"`
	// HeldSince is known only when a pgbaton process recorded it (see
	// HeldSinceSource); PostgreSQL records no grant time. It is never a
	// query, transaction or state start passed off as a grant.
	HeldSince       *time.Time `json:"held_since"`
	HeldSinceSource string     `json:"held_since_source,omitempty"`
	HeldFor         *Seconds   `json:"held_for_s,omitempty"`
	// Class is this holder's class, and Why says what it was decided on.
	Class Class  `json:"class"`
	Why   string `json:"why,omitempty"`
	// Terminate is the statement that would end a leaked holder's session
	// (and free its locks). pgbaton prints it and never runs it.
	Terminate string `json:"terminate,omitempty"`
}

// Waiter is one backend waiting for the key.
type Waiter struct {
	Session
	Mode string `json:"mode"`
	// WaitStart is pg_locks.waitstart (PostgreSQL 14+; nil before, or in the
	// instant before the server records it).
	WaitStart  *time.Time `json:"wait_start"`
	WaitingFor *Seconds   `json:"waiting_for_s,omitempty"`
	// BlockedBy is pg_blocking_pids: the holders, and earlier waiters in
	// a conflicting mode, that this waiter queues behind.
	BlockedBy []int  `json:"blocked_by"`
	Class     Class  `json:"class"`
	Why       string `json:"why,omitempty"`
}

// Seconds is a duration in seconds, with millisecond precision in JSON.
type Seconds float64

func secs(d time.Duration) Seconds { return Seconds(math.Round(d.Seconds()*1000) / 1000) }

func dur(d time.Duration) *Seconds {
	s := secs(max(d, 0))
	return &s
}

// Duration converts back.
func (s Seconds) Duration() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }

// MarshalJSON writes the number with at most 3 decimals.
func (s Seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, float64(s), 'f', -1, 64), nil
}
