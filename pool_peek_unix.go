//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package pgbaton

import (
	"errors"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// idleConnBroken peeks at an idle connection's socket without blocking. An
// idle PostgreSQL connection has nothing to read; pending bytes (typically
// the FATAL a terminated backend sent before closing) or EOF mean it is
// dead or about to be. It costs one non-blocking recv, no round trip.
func idleConnBroken(pg *pgconn.PgConn) bool {
	if pg.IsClosed() {
		return true
	}
	nc := pg.Conn()
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok { // TLS: any pending record counts
		nc = t.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	broken := false
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) || errors.Is(rerr, syscall.EINTR):
		case rerr != nil, n >= 0:
			broken = true // data, EOF (n == 0) or a socket error
		}
		return true
	})
	return broken || err != nil
}
