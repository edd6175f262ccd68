package fence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// Header is a conventional name for carrying a token in HTTP requests and
// message headers.
const Header = "Fencing-Token"

// Token is a fencing token. Tokens handed out by pgbaton are positive; the
// zero Token is smaller than all of them (a fresh row's fence_token is 0).
type Token int64

// Errors.
var (
	// ErrStaleToken: the resource holds a newer token; the writer's lease
	// has been superseded. See [StaleTokenError].
	ErrStaleToken = errors.New("fence: stale fencing token")
	// ErrNoToken: the lease carries no token because the database has no
	// pgbaton schema.
	ErrNoToken = errors.New("fence: lease has no fencing token; run pgbaton.Migrate (or Locker.Migrate) on the lock database so new leases carry one")
	// ErrNoRow: the guarded row does not exist.
	ErrNoRow = errors.New("fence: guarded row not found")
	// ErrInvalidToken: a token's text form is malformed or not positive.
	ErrInvalidToken = errors.New("fence: invalid fencing token")
)

// StaleTokenError reports a rejected write. It matches [ErrStaleToken].
type StaleTokenError struct {
	Table string // the guarded table, or "" for [Check]
	Key   any    // the row's key, if any
	Token Token  // the rejected token
	// Current is the newer token the resource holds, as seen by the
	// rejected statement, or 0 when a concurrent newer write committed
	// after the statement's snapshot.
	Current Token
}

func (e *StaleTokenError) Error() string {
	var b strings.Builder
	b.WriteString("fence: stale fencing token ")
	b.WriteString(e.Token.String())
	if e.Table != "" {
		fmt.Fprintf(&b, " for %s row %v", e.Table, e.Key)
	}
	if e.Current > 0 {
		fmt.Fprintf(&b, ": the resource already holds token %s", e.Current)
	} else {
		b.WriteString(": a newer token has been written")
	}
	b.WriteString("; the lease was superseded, stop working on this resource")
	return b.String()
}

// Is makes errors.Is(err, ErrStaleToken) true.
func (e *StaleTokenError) Is(target error) bool { return target == ErrStaleToken }

// FromLease returns the lease's token, or [ErrNoToken].
func FromLease(l *pgbaton.Lease) (Token, error) {
	t, ok := l.Token()
	if !ok {
		return 0, fmt.Errorf("%w (lease on %q)", ErrNoToken, l.Key())
	}
	return Token(t), nil
}

// String returns the decimal form, for logs, headers and other systems.
func (t Token) String() string { return strconv.FormatInt(int64(t), 10) }

// Int64 returns the token as an int64, for SQL parameters and APIs.
func (t Token) Int64() int64 { return int64(t) }

// LogValue logs the token as an integer.
func (t Token) LogValue() slog.Value { return slog.Int64Value(int64(t)) }

// MarshalText returns the decimal form (JSON encodes it as a string, so
// consumers in languages without 64-bit integers do not round it).
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText parses the decimal form (see [Parse]).
func (t *Token) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// Parse parses the decimal form of a token. It must be a positive integer.
func Parse(s string) (Token, error) {
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%w: %q is not a positive 64-bit integer", ErrInvalidToken, s)
	}
	return Token(v), nil
}

// Check is the comparison a resource makes: incoming may write if it is not
// older than current, the largest token the resource has stored. It returns
// a [*StaleTokenError] otherwise. The resource must store max(current,
// incoming) atomically with the write it admits.
func Check(current, incoming Token) error {
	if incoming < current {
		return &StaleTokenError{Token: incoming, Current: current}
	}
	return nil
}

// Table describes a table guarded by a fencing-token column.
type Table struct {
	// Name is the table, optionally schema-qualified ("app.jobs"): plain
	// lower-case identifiers, quoted when used.
	Name string
	// KeyColumn identifies the row. Default "id".
	KeyColumn string
	// TokenColumn holds the largest token written. Default "fence_token".
	TokenColumn string
	// Strict accepts each token once (fence_token < $1) instead of letting
	// the same lease write the row again (fence_token <= $1).
	Strict bool
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func (t Table) resolve() (name, key, tok string, err error) {
	if t.KeyColumn == "" {
		t.KeyColumn = "id"
	}
	if t.TokenColumn == "" {
		t.TokenColumn = "fence_token"
	}
	parts := strings.Split(t.Name, ".")
	if t.Name == "" || len(parts) > 2 {
		return "", "", "", fmt.Errorf("fence: table name %q: want table or schema.table", t.Name)
	}
	for _, p := range append(parts, t.KeyColumn, t.TokenColumn) {
		if !identRE.MatchString(p) {
			return "", "", "", fmt.Errorf("fence: %q is not a plain lower-case identifier; name tables and columns with [a-z_][a-z0-9_]*", p)
		}
	}
	return pgx.Identifier(parts).Sanitize(), pgx.Identifier{t.KeyColumn}.Sanitize(), pgx.Identifier{t.TokenColumn}.Sanitize(), nil
}

// AddColumnSQL returns the DDL that adds the token column to an existing
// table (idempotent).
func (t Table) AddColumnSQL() (string, error) {
	name, _, tok, err := t.resolve()
	if err != nil {
		return "", err
	}
	return "ALTER TABLE " + name + " ADD COLUMN IF NOT EXISTS " + tok + " bigint NOT NULL DEFAULT 0", nil
}

// UpdateSQL returns the guarded statement [Table.Update] runs: set is the
// SET list of the change (its parameters start at $3), $1 is the token and
// $2 the key. It returns one row: whether the row was updated, and the
// row's token in the statement's snapshot (NULL if there is no such row).
//
//	WITH upd AS (UPDATE t SET <set>, fence_token = $1
//	             WHERE id = $2 AND fence_token <= $1 RETURNING 1)
//	SELECT EXISTS (SELECT 1 FROM upd), (SELECT fence_token FROM t WHERE id = $2)
func (t Table) UpdateSQL(set string) (string, error) {
	name, key, tok, err := t.resolve()
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(set) == "" {
		return "", errors.New("fence: empty SET list; pass the change, e.g. \"state = $3\"")
	}
	op := "<="
	if t.Strict {
		op = "<"
	}
	return "WITH upd AS (UPDATE " + name + " SET " + set + ", " + tok + " = $1" +
		" WHERE " + key + " = $2 AND " + tok + " " + op + " $1 RETURNING 1)" +
		" SELECT EXISTS (SELECT 1 FROM upd), (SELECT " + tok + " FROM " + name + " WHERE " + key + " = $2)", nil
}

// Querier runs a statement returning one row: *pgx.Conn, *pgxpool.Pool and
// pgx.Tx satisfy it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SQLQuerier is the database/sql form: *sql.DB, *sql.Conn and *sql.Tx
// satisfy it (with a driver that takes $n placeholders, such as pgx's
// stdlib).
type SQLQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Update applies the change set (a SET list whose parameters start at $3,
// with args) to the row key, only if the row's token is not newer than
// tok, and records tok. It returns nil if the row was written, a
// [*StaleTokenError] if the row holds a newer token, and an error matching
// [ErrNoRow] if the row does not exist.
func (t Table) Update(ctx context.Context, q Querier, tok Token, key any, set string, args ...any) error {
	query, err := t.UpdateSQL(set)
	if err != nil {
		return err
	}
	var ok bool
	var cur *int64
	if err := q.QueryRow(ctx, query, append([]any{int64(tok), key}, args...)...).Scan(&ok, &cur); err != nil {
		return fmt.Errorf("fence: guarded update of %s: %w", t.Name, err)
	}
	return t.result(ok, cur, tok, key)
}

// UpdateDB is [Table.Update] for database/sql.
func (t Table) UpdateDB(ctx context.Context, q SQLQuerier, tok Token, key any, set string, args ...any) error {
	query, err := t.UpdateSQL(set)
	if err != nil {
		return err
	}
	var ok bool
	var cur sql.NullInt64
	if err := q.QueryRowContext(ctx, query, append([]any{int64(tok), key}, args...)...).Scan(&ok, &cur); err != nil {
		return fmt.Errorf("fence: guarded update of %s: %w", t.Name, err)
	}
	var p *int64
	if cur.Valid {
		p = &cur.Int64
	}
	return t.result(ok, p, tok, key)
}

func (t Table) result(ok bool, cur *int64, tok Token, key any) error {
	switch {
	case ok:
		return nil
	case cur == nil:
		return fmt.Errorf("%w: %s has no row %v", ErrNoRow, t.Name, key)
	}
	e := &StaleTokenError{Table: t.Name, Key: key, Token: tok}
	if Token(*cur) > tok || (t.Strict && Token(*cur) == tok) {
		e.Current = Token(*cur)
	}
	return e
}
