package pgbaton

import (
	"errors"
	"strconv"
	"testing"
	"time"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	base := Config{ConnString: "host=/tmp dbname=x"}
	if err := base.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cases := map[string]func(*Config){
		"ConnString":        func(c *Config) { c.ConnString = "" },
		"MaxConns":          func(c *Config) { c.MaxConns = -1 },
		"MaxHeldKeys":       func(c *Config) { c.MaxConns = 2; c.MaxLocksPerConn = 2; c.MaxHeldKeys = 5 },
		"LeaseTimeout":      func(c *Config) { c.LeaseTimeout = 10 * time.Second }, // longer than the server's release time
		"HeartbeatInterval": func(c *Config) { c.HeartbeatInterval = -time.Second },
		"XactIdleTimeout":   func(c *Config) { c.XactIdleTimeout = 100 * time.Millisecond },
		"Schema":            func(c *Config) { c.Schema = "Bad-Name" },
		"InstanceName":      func(c *Config) { c.InstanceName = string(make([]byte, 60)) },
		"KeepaliveIdle":     func(c *Config) { c.KeepaliveIdle = 1500 * time.Microsecond },
	}
	for field, mod := range cases {
		c := base
		mod(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: Validate() = %v, want a ConfigError on %s", field, err, field)
		}
	}
	// The lease bound must stay below the server's release time, so raising
	// the keepalives makes a longer LeaseTimeout valid.
	c := base
	c.LeaseTimeout = 10 * time.Second
	c.KeepaliveIdle, c.TCPUserTimeout = 20*time.Second, 20*time.Second
	if err := c.Validate(); err != nil {
		t.Fatalf("longer keepalives: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		EnvDatabaseURL:      "postgres://u@localhost/db",
		EnvLockPoolMax:      "3",
		EnvLockTimeoutMS:    "2500",
		EnvConnectTimeoutMS: "1000",
		EnvLockIdleTxMS:     "7000",
		EnvInstanceName:     "api-1",
	}
	c, err := ConfigFromEnv(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxConns != 3 || c.AcquireTimeout != 2500*time.Millisecond || c.ConnectTimeout != time.Second ||
		c.XactIdleTimeout != 7*time.Second || c.InstanceName != "api-1" {
		t.Fatalf("ConfigFromEnv = %+v", c)
	}
	env[EnvLockPoolMax] = "ten"
	_, err = ConfigFromEnv(func(k string) string { return env[k] })
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != EnvLockPoolMax {
		t.Fatalf("malformed %s: %v", EnvLockPoolMax, err)
	}
	if _, err := ConfigFromEnv(func(string) string { return "" }); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("no DATABASE_URL: %v", err)
	}
}

func FuzzConfigFromEnv(f *testing.F) {
	f.Add("postgres://localhost/db", "10", "30000", "1000", "4000", "1000", "x")
	f.Add("host=/tmp", "-1", "", "0", "99999999999", "abc", "")
	f.Fuzz(func(t *testing.T, url, poolMax, lockMS, connMS, leaseMS, hbMS, inst string) {
		env := map[string]string{
			EnvDatabaseURL: url, EnvLockPoolMax: poolMax, EnvLockTimeoutMS: lockMS,
			EnvConnectTimeoutMS: connMS, EnvLeaseTimeoutMS: leaseMS, EnvHeartbeatMS: hbMS, EnvInstanceName: inst,
		}
		c, err := ConfigFromEnv(func(k string) string { return env[k] })
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field == "" || ce.Msg == "" {
				t.Fatalf("error without a named field: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ConfigFromEnv returned an invalid config: %v", err)
		}
		if v, err := strconv.Atoi(poolMax); err == nil && v > 0 && c.MaxConns != v {
			t.Fatalf("MaxConns = %d, env says %d", c.MaxConns, v)
		}
	})
}
