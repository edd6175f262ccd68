package pgbaton

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// DefaultSchema is where pgbaton keeps its tables and sequences.
const DefaultSchema = "pgbaton"

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migration is one versioned schema change.
type Migration struct {
	Version int
	Name    string
	SQL     string // with {{schema}} for the schema name
}

var schemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Migrations returns pgbaton's migrations in order.
func Migrations() []Migration {
	files, _ := fs.Glob(migrationFS, "migrations/*.sql")
	ms := make([]Migration, 0, len(files))
	for _, f := range files {
		base := strings.TrimSuffix(strings.TrimPrefix(f, "migrations/"), ".sql")
		num, name, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			panic("pgbaton: migration file without a version: " + f)
		}
		b, _ := migrationFS.ReadFile(f)
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms
}

// Migrate creates or upgrades pgbaton's schema (default [DefaultSchema]) on
// conn. It is idempotent and safe to run from many instances at once: all
// pending migrations apply in one transaction that holds an advisory
// transaction lock, so concurrent callers apply them once, in order. Without
// the schema, leases work and report no fencing token.
func Migrate(ctx context.Context, conn *pgx.Conn, schema string) error {
	if schema == "" {
		schema = DefaultSchema
	}
	if !schemaRE.MatchString(schema) {
		return &ConfigError{Field: "Schema", Msg: fmt.Sprintf("%q is not a plain lower-case identifier", schema)}
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		lockKey := KeyName("pgbaton.migrate:" + schema)
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey.ID()); err != nil {
			return fmt.Errorf("pgbaton: migrate: taking the migration lock: %w", err)
		}
		q := pgx.Identifier{schema}.Sanitize()
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q+
			"; CREATE TABLE IF NOT EXISTS "+q+".migrations (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"); err != nil {
			return fmt.Errorf("pgbaton: migrate: creating schema %s: %w", schema, err)
		}
		applied := map[int]bool{}
		rows, err := tx.Query(ctx, "SELECT version FROM "+q+".migrations")
		if err != nil {
			return fmt.Errorf("pgbaton: migrate: %w", err)
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("pgbaton: migrate: %w", err)
		}
		for _, v := range vs {
			applied[int(v)] = true
		}
		for _, m := range Migrations() {
			if applied[m.Version] {
				continue
			}
			if _, err := tx.Exec(ctx, strings.ReplaceAll(m.SQL, "{{schema}}", q)); err != nil {
				return fmt.Errorf("pgbaton: migrate: %03d_%s: %w", m.Version, m.Name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+q+".migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
				return fmt.Errorf("pgbaton: migrate: recording %03d_%s: %w", m.Version, m.Name, err)
			}
		}
		return nil
	})
}

// Migrate runs [Migrate] on a short-lived connection made from the Locker's
// connection settings, in Config.Schema. Lock connections opened afterwards
// hand out fencing tokens; existing ones keep their state until they close.
func (l *Locker) Migrate(ctx context.Context) error {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return err
	}
	cfg.Config = *l.connCfg.Copy()
	cfg.RuntimeParams["application_name"] = "pgbaton:" + l.cfg.InstanceName + ":migrate"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConnect, err)
	}
	defer func() {
		// The migration's own result is what the caller needs; a failed close
		// only drops this short-lived connection.
		_ = conn.Close(context.WithoutCancel(ctx))
	}()
	return Migrate(ctx, conn, l.cfg.Schema)
}
