package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgbaton/pgbaton"
)

// connFlags is the connection part of the command line of locks, check and
// migrate: --dsn, else $DATABASE_URL, else the standard PG* variables
// (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSERVICE, PGSSLMODE...)
// and ~/.pgpass, read by pgx as psql reads them.
type connFlags struct {
	dsn     string
	timeout time.Duration
}

func addConnFlags(fs *flag.FlagSet) *connFlags {
	c := &connFlags{}
	fs.StringVar(&c.dsn, "dsn", "", "PostgreSQL connection string (URL or key=value); default $DATABASE_URL, else the PG* variables as psql reads them")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "bound on connecting and on each query")
	return c
}

// connString is a connection string that never prints its password: String
// and LogValue redact it, so it can go into errors and logs as it is.
type connString string

func (c connString) String() string { return redactDSN(string(c)) }

// LogValue redacts the password for log/slog.
func (c connString) LogValue() slog.Value { return slog.StringValue(c.String()) }

func (c *connFlags) connString() connString {
	if c.dsn != "" {
		return connString(c.dsn)
	}
	return connString(os.Getenv("DATABASE_URL"))
}

// connect opens one connection for a CLI command, named pgbaton-cli:<cmd>.
// Every error it returns has the password removed.
func (c *connFlags) connect(ctx context.Context, cmd string) (*pgx.Conn, error) {
	cs := c.connString()
	cfg, err := pgx.ParseConfig(string(cs))
	if err != nil {
		return nil, redactErr(fmt.Errorf("cannot read the connection settings (%s): %w", cs, err), string(cs), "")
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "pgbaton-cli:" + cmd
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, redactErr(fmt.Errorf("connect: %w", err), string(cs), cfg.Password)
	}
	return conn, nil
}

// redactDSN replaces the password of a URL or key=value connection string
// with xxxxx.
func redactDSN(s string) string { return pgbaton.RedactConnString(s) }

// redactedError keeps the chain (errors.Is/As still see the cause) but
// prints a message with the password removed.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr removes the password (and the connection string's password
// fields) from err's message.
func redactErr(err error, dsn, password string) error {
	if err == nil {
		return nil
	}
	msg := redactDSN(err.Error())
	if password == "" {
		if cfg, perr := pgx.ParseConfig(dsn); perr == nil {
			password = cfg.Password
		}
	}
	if len(password) >= 3 {
		msg = strings.ReplaceAll(msg, password, "xxxxx")
		msg = strings.ReplaceAll(msg, url.QueryEscape(password), "xxxxx")
	}
	return &redactedError{msg: msg, err: err}
}

// exitError ends a command with a specific exit status (for --check): its
// message, if any, goes to stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// isExitError reports whether err asks for a specific exit status.
func isExitError(err error) bool {
	var e *exitError
	return errors.As(err, &e)
}

// reportExit prints an exitError's message, if it has one, and returns its
// status.
func reportExit(out *output, name string, err error) int {
	var e *exitError
	if !errors.As(err, &e) {
		return exitFailure
	}
	if e.err != nil {
		printf(out.Stderr, "pgbaton %s: %v\n", name, e.err)
	}
	return e.code
}
