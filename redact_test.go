package pgbaton

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestConfigsNeverLogPasswords(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"postgres://app:s3cr3t-pw@db.internal:5432/app?sslmode=disable",
		"postgres://app@db.internal/app?password=s3cr3t-pw",
		"host=db.internal user=app password=s3cr3t-pw dbname=app",
		"host=db.internal user=app password='s3cr3t-pw' dbname=app",
	} {
		var b bytes.Buffer
		log := slog.New(slog.NewJSONHandler(&b, nil))
		log.Info("config", "locker", Config{ConnString: dsn}, "pool", PoolConfig{ConnString: dsn}, "check", CheckConfig{ConnString: dsn})
		if strings.Contains(b.String(), "s3cr3t-pw") {
			t.Errorf("password logged for %q:\n%s", dsn, b.String())
		}
		if !strings.Contains(b.String(), "db.internal") {
			t.Errorf("host missing for %q:\n%s", dsn, b.String())
		}
	}
}
