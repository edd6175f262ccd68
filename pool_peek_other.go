//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package pgbaton

import "github.com/jackc/pgx/v5/pgconn"

// idleConnBroken cannot peek without blocking on this platform; a dead idle
// connection fails its next query instead.
func idleConnBroken(pg *pgconn.PgConn) bool { return pg.IsClosed() }
