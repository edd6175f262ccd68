package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgbaton/pgbaton"
)

func init() {
	register(&command{
		Name:    "migrate",
		Summary: "apply pgbaton's schema, show applied and pending versions, or print the SQL and GRANTs",
		Run:     runMigrate,
	})
}

const migrateDescription = `pgbaton migrate up      apply pending migrations (idempotent; safe from many instances)
pgbaton migrate status  show applied and pending versions
pgbaton migrate sql     print every migration as one transaction, and the GRANTs
                        a least-privilege application role needs, for DBAs who
                        apply the schema themselves (no connection needed)

The schema holds the fencing-token sequence, periodic's tables and the
key-name registry. Applications can run with a role that did not create it
and has only the printed GRANTs.

Connection (up, status): --dsn, else $DATABASE_URL, else the PG* variables as
psql reads them. Exit status: 0 on success; 1 when the command failed (stderr
says why); 2 for a bad command line. No password is ever printed.`

func runMigrate(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "migrate", "up|status|sql [flags]", migrateDescription)
	cf := addConnFlags(fs)
	schema := fs.String("schema", pgbaton.DefaultSchema, "pgbaton's schema")
	role := fs.String("role", "app_role", "sql: the application role the GRANTs are for")
	inspector := fs.String("inspector-role", "", "sql: also print the GRANTs for a role that only runs 'pgbaton locks'")
	action := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	if action == "" && fs.NArg() > 0 {
		action = fs.Arg(0)
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			return &usageError{msg: err.Error()}
		}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if !schemaIdent(*schema) {
		return usagef("--schema %q: use a plain lower-case identifier", *schema)
	}
	switch action {
	case "sql":
		printf(out.Stdout, "%s", migrationSQL(*schema, *role, *inspector))
		return nil
	case "up", "status":
	case "":
		return usagef("say what to do: up, status or sql")
	default:
		return usagef("unknown action %q: use up, status or sql", action)
	}
	conn, err := cf.connect(ctx, "migrate")
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // the result is already reported
	}()
	if action == "up" {
		mctx, cancel := context.WithTimeout(ctx, 4*cf.timeout)
		err := pgbaton.Migrate(mctx, conn, *schema)
		cancel()
		if err != nil {
			return fmt.Errorf("%w%s", redactErr(err, string(cf.connString()), ""), grantHintFor(err))
		}
	}
	return migrateStatus(ctx, out, conn, *schema, cf.timeout)
}

func grantHintFor(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" {
		return "\nthe role may not create pgbaton's schema: have a DBA apply 'pgbaton migrate sql' instead"
	}
	return ""
}

func migrateStatus(ctx context.Context, out *output, conn *pgx.Conn, schema string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	applied := map[int]time.Time{}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", schema+".migrations").Scan(&exists); err != nil {
		return fmt.Errorf("reading %s.migrations: %w", schema, err)
	}
	if exists {
		rows, err := conn.Query(ctx, "SELECT version, applied_at FROM "+pgx.Identifier{schema, "migrations"}.Sanitize())
		if err != nil {
			return fmt.Errorf("reading %s.migrations: %w (GRANT SELECT ON %s.migrations TO <role>)", schema, err, schema)
		}
		for rows.Next() {
			var v int32
			var at time.Time
			if err := rows.Scan(&v, &at); err != nil {
				rows.Close()
				return err
			}
			applied[int(v)] = at
		}
		if err := rows.Err(); err != nil {
			return err
		}
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	// tw writes to a strings.Builder, which never fails: nothing to check until Flush.
	_, _ = fmt.Fprintln(tw, "VERSION\tNAME\tSTATUS")
	pending := 0
	for _, m := range pgbaton.Migrations() {
		st := "pending"
		if at, ok := applied[m.Version]; ok {
			st = "applied " + at.UTC().Format(time.RFC3339)
		} else {
			pending++
		}
		_, _ = fmt.Fprintf(tw, "%03d\t%s\t%s\n", m.Version, m.Name, st)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nschema %s: %d applied, %d pending\n", schema, len(applied), pending)
	_, err := fmt.Fprint(out.Stdout, b.String())
	return err
}

// migrationSQL is what Migrate runs, as one script, plus the GRANTs.
func migrationSQL(schema, role, inspector string) string {
	q := pgx.Identifier{schema}.Sanitize()
	r := pgx.Identifier{role}.Sanitize()
	var b strings.Builder
	fmt.Fprintf(&b, "-- pgbaton schema %s: every migration, in one transaction (what 'pgbaton migrate up' runs).\n", schema)
	b.WriteString("BEGIN;\n")
	fmt.Fprintf(&b, "SELECT pg_advisory_xact_lock(%d); -- the migration lock, as Migrate takes it\n", pgbaton.KeyName("pgbaton.migrate:"+schema).ID())
	fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n", q)
	fmt.Fprintf(&b, "CREATE TABLE IF NOT EXISTS %s.migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n", q)
	for _, m := range pgbaton.Migrations() {
		fmt.Fprintf(&b, "\n-- %03d_%s\n%s\n", m.Version, m.Name, strings.TrimSpace(strings.ReplaceAll(m.SQL, "{{schema}}", q)))
		fmt.Fprintf(&b, "INSERT INTO %s.migrations (version, name) VALUES (%d, '%s') ON CONFLICT (version) DO NOTHING;\n", q, m.Version, m.Name)
	}
	b.WriteString("COMMIT;\n\n")
	b.WriteString(grantSQL(q, r, inspector))
	return b.String()
}

// grantSQL is what a least-privilege application role needs to use the
// Locker (fencing tokens), periodic and the name registry in a schema it did
// not create. Advisory locks themselves need no privilege.
func grantSQL(q, r, inspector string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "-- Least privilege: what the application role %s needs (no CREATE, no ownership).\n", r)
	fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %s TO %s;                                  -- Locker: see the schema\n", q, r)
	fmt.Fprintf(&b, "GRANT SELECT ON %s.fence_epoch TO %s;                           -- fencing tokens: the epoch\n", q, r)
	fmt.Fprintf(&b, "GRANT SELECT, USAGE ON SEQUENCE %s.fence_counter TO %s;         -- fencing tokens: the counter\n", q, r)
	fmt.Fprintf(&b, "GRANT EXECUTE ON FUNCTION %s.fence_prepare(), %s.fence_settle(), %s.fence_next() TO %s; -- fencing tokens (PUBLIC has it by default)\n", q, q, q, r)
	fmt.Fprintf(&b, "GRANT SELECT, INSERT, UPDATE, DELETE ON %s.key_names TO %s;     -- key-name registry (writes, pruning)\n", q, r)
	fmt.Fprintf(&b, "GRANT SELECT, INSERT, UPDATE ON %s.periodic_jobs TO %s;         -- periodic: jobs and their cursor\n", q, r)
	fmt.Fprintf(&b, "GRANT SELECT, INSERT, UPDATE, DELETE ON %s.periodic_runs TO %s; -- periodic: history, pruning\n", q, r)
	fmt.Fprintf(&b, "GRANT SELECT ON %s.migrations TO %s;                            -- 'pgbaton migrate status' as this role\n", q, r)
	if inspector != "" {
		i := pgx.Identifier{inspector}.Sanitize()
		fmt.Fprintf(&b, "\n-- 'pgbaton locks' as %s: other roles' sessions, and the names.\n", i)
		fmt.Fprintf(&b, "GRANT pg_read_all_stats TO %s;\n", i)
		fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %s TO %s;\n", q, i)
		fmt.Fprintf(&b, "GRANT SELECT ON %s.key_names, %s.periodic_jobs, %s.periodic_runs TO %s;\n", q, q, q, i)
	}
	return b.String()
}

func schemaIdent(s string) bool {
	// [_a-z][_a-z0-9]*: the loop checks every character; the first is also not a digit.
	if s == "" || len(s) > 63 || s[0] >= '0' && s[0] <= '9' {
		return false
	}
	for _, c := range s {
		if c != '_' && (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
