package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/pgbaton/pgbaton"
)

func init() {
	register(&command{
		Name:    "check",
		Summary: "connection budget and every setting that can end lock sessions, with its source",
		Run:     runCheck,
	})
}

const checkDescription = `Connects once and reports what pgbaton.Check reads: the server's connection
limits, the connection budget pods × (pool + lock pool) against them, and
every setting that can end a lock session or bound a lock wait
(idle_session_timeout, idle_in_transaction_session_timeout,
statement_timeout, lock_timeout, TCP keepalives, tcp_user_timeout,
client_connection_check_interval) with where its value comes from (default,
server, database, role, role in database, connection string).

Connection: --dsn, else $DATABASE_URL, else the PG* variables as psql reads
them. Connect as the service's own role to the service's database: ALTER
ROLE and ALTER DATABASE settings depend on both.

Exit status: 0 when the report has no error finding; 1 when it has one (an
over-budget deployment, say) or the check could not run (stderr says which);
2 for a bad command line. No password is ever printed.`

func runCheck(ctx context.Context, out *output, args []string) error {
	fs := newFlagSet(out, "check", "[flags]", checkDescription)
	cf := addConnFlags(fs)
	cfg := pgbaton.CheckConfig{}
	fs.IntVar(&cfg.Pods, "pods", 1, "processes (pods, instances) that connect")
	fs.IntVar(&cfg.PoolMax, "pool-max", pgbaton.DefaultPoolMaxConns, "each process's application pool size")
	fs.IntVar(&cfg.LockPoolMax, "lock-pool-max", pgbaton.DefaultMaxConns, "each process's lock connections (Config.MaxConns)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for name, v := range map[string]int{"pods": cfg.Pods, "pool-max": cfg.PoolMax, "lock-pool-max": cfg.LockPoolMax} {
		if v <= 0 {
			return usagef("--%s %d: use a positive number", name, v)
		}
	}
	cs := cf.connString()
	cfg.ConnString = string(cs)
	if cfg.ConnString == "" {
		// Everything else comes from the PG* variables, as with psql.
		cfg.ConnString = "application_name=pgbaton-check"
	}
	cfg.Timeout = cf.timeout
	r, err := pgbaton.Check(ctx, cfg)
	if err != nil {
		return redactErr(err, cfg.ConnString, "")
	}
	if *asJSON {
		enc := json.NewEncoder(out.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else if err := writeCheck(out, r); err != nil {
		return err
	}
	if !r.OK {
		n := 0
		for _, f := range r.Findings {
			if f.Severity == "error" {
				n++
			}
		}
		return &exitError{code: exitFailure, err: fmt.Errorf("%d error finding(s); see the report", n)}
	}
	return nil
}

func writeCheck(out *output, r *pgbaton.CheckReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "server %s, database %s, role %s", r.ServerVersion, r.Database, r.Role)
	if r.Superuser {
		b.WriteString(" (superuser)")
	}
	if r.Pooler {
		b.WriteString(", through a connection pooler")
	}
	b.WriteString("\n\n")
	bu := r.Budget
	fmt.Fprintf(&b, "connections: max_connections %d, reserved %d + %d; role limit %s, database limit %s; in use %d (%d in this database)\n",
		r.MaxConnections, r.SuperuserReservedConnections, r.ReservedConnections, limit(r.RoleConnLimit), limit(r.DatabaseConnLimit),
		r.ConnectionsInUse, r.ConnectionsInUseDatabase)
	fmt.Fprintf(&b, "budget: %d pods × (pool %d + lock pool %d) = %d of %d (%s): headroom %d\n\n",
		bu.Pods, bu.PoolMax, bu.LockPoolMax, bu.Need, bu.Limit, bu.LimitedBy, bu.Headroom)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	// tw writes to a strings.Builder, which never fails: nothing to check until Flush.
	_, _ = fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE\tDETAIL\tEFFECT ON LOCK SESSIONS")
	for _, s := range r.Settings {
		_, _ = fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Value, s.Source, s.SourceDetail, dash(s.Effect))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Findings) > 0 {
		b.WriteString("\n")
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "%-7s %s: %s\n", strings.ToUpper(f.Severity), f.Subject, f.Message)
	}
	_, err := fmt.Fprint(out.Stdout, b.String())
	return err
}

func limit(n int) string {
	if n < 0 {
		return "none"
	}
	return fmt.Sprint(n)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
