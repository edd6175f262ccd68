package pgbaton

import (
	"encoding/binary"
	"strconv"
	"time"
)

// Statements are prepared once per lock connection, lazily, and then run with
// binary parameters: one round trip each.

type stmtKind uint8

const (
	stmtTry stmtKind = iota
	stmtWait
	stmtUnlock
	stmtXact // the lock of WithXactLock, after BEGIN in the same pipeline
	nStmtKinds
)

type stmtID struct {
	kind  stmtKind
	mode  Mode
	space keySpace
	fence string // SQL expression drawing a token when the session draws fencing tokens
}

// stmtNames[kind][mode][space][fenced] are the prepared statements' names.
var stmtNames = func() (names [nStmtKinds][2][3][2]string) {
	for k := range names {
		for m := range names[k] {
			for sp := range names[k][m] {
				n := "pgbaton_" + strconv.Itoa(k) + "_" + strconv.Itoa(m) + "_" + strconv.Itoa(sp)
				names[k][m][sp] = [2]string{n, n + "_f"}
			}
		}
	}
	return names
}()

func (s stmtID) name() string { return stmtNames[s.kind][s.mode][s.space][s.fenced()] }

func (s stmtID) fenced() int {
	if s.fence != "" && s.kind != stmtUnlock {
		return 1
	}
	return 0
}

// keyArgs is the argument list of the advisory-lock function for a space,
// starting at parameter n.
func keyArgs(space keySpace, n int) string {
	if space == spacePair {
		return "$" + strconv.Itoa(n) + "::int4, $" + strconv.Itoa(n+1) + "::int4"
	}
	return "$" + strconv.Itoa(n) + "::int8"
}

func (s stmtID) sql() string {
	sfx := ""
	if s.mode == Shared {
		sfx = "_shared"
	}
	switch s.kind {
	case stmtTry:
		if s.fence != "" {
			// The token is drawn only on a grant, after it: it orders
			// grants of the same key.
			return "SELECT l, CASE WHEN l THEN " + s.fence + " END FROM pg_try_advisory_lock" + sfx + "(" + keyArgs(s.space, 1) + ") AS l"
		}
		return "SELECT pg_try_advisory_lock" + sfx + "(" + keyArgs(s.space, 1) + ")"
	case stmtWait:
		// set_config(..., true) outside a transaction lasts for this
		// statement only: nothing is left behind on the session. The
		// target list is evaluated left to right: the token is drawn
		// after the grant.
		q := "SELECT set_config('lock_timeout', $1::text, true), pg_advisory_lock" + sfx + "(" + keyArgs(s.space, 2) + ")"
		if s.fence != "" {
			q += ", " + s.fence
		}
		return q
	case stmtXact:
		// Inside the transaction BEGIN opened: both settings last until
		// COMMIT. idle_in_transaction_session_timeout lets the server reap
		// the transaction if this process stops heartbeating it.
		q := "SELECT set_config('idle_in_transaction_session_timeout', $1::text, true), set_config('lock_timeout', $2::text, true), pg_advisory_xact_lock" + sfx + "(" + keyArgs(s.space, 3) + ")"
		if s.fence != "" {
			q += ", " + s.fence
		}
		return q
	case stmtUnlock:
		// Guarded: it can only unlock on the backend that took the lock.
		return "SELECT CASE WHEN pg_backend_pid() = $1::int4 THEN pg_advisory_unlock" + sfx + "(" + keyArgs(s.space, 2) + ") END"
	}
	panic("pgbaton: unknown statement")
}

// keyParams encodes k's arguments in binary.
func keyParams(k Key) [][]byte {
	if k.space == spacePair {
		a, b, _ := k.Pair()
		return [][]byte{be32(uint32(a)), be32(uint32(b))}
	}
	return [][]byte{be64(uint64(k.id))}
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

var (
	fmtBinary1 = []int16{1}
	fmtBinary  = []int16{1, 1, 1}
	fmtWait    = []int16{0, 1, 1}
	fmtXact    = []int16{0, 0, 1, 1}
)

// pgMillis renders d for lock_timeout, rounded up so a wait is never
// shorter than asked, and at least 1ms (0 would mean forever).
func pgMillis(d time.Duration) string {
	ms := (d + time.Millisecond - 1).Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return strconv.FormatInt(ms, 10) + "ms"
}
