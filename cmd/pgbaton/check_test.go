//go:build linux

package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgbaton/pgbaton"
	"github.com/pgbaton/pgbaton/pgtest"
)

func TestCheckCommand(t *testing.T) {
	t.Parallel()
	db, _ := pgtest.Shared().NewDB(t)
	dsn := pgtest.Shared().TCPDSN(db)
	code, out, errOut := runCLI(t, "check", "--dsn", dsn, "--pods", "2")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"budget: 2 pods", "idle_session_timeout", "idle_in_transaction_session_timeout", "tcp_user_timeout", "SOURCE", "default"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, "check", "--dsn", dsn, "--json")
	var r pgbaton.CheckReport
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || r.Database != db || len(r.Settings) == 0 {
		t.Fatalf("--json: exit %d %+v\n%s", code, r, out)
	}
	// Over budget: exit 1 with the error finding.
	code, out, errOut = runCLI(t, "check", "--dsn", dsn, "--pods", "1000")
	if code != exitFailure || !strings.Contains(out, "ERROR") || !strings.Contains(errOut, "error finding") {
		t.Errorf("over budget: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := runCLI(t, "check", "--pods", "0"); code != exitUsage {
		t.Errorf("--pods 0: exit %d", code)
	}
}

// No password in output or errors, whatever the failure.
func TestNoPasswordInOutput(t *testing.T) {
	t.Parallel()
	const pw = "hunter2-very-secret"
	for _, dsn := range []string{
		"host=127.0.0.1 port=1 user=u password=" + pw + " connect_timeout=2",
		"postgres://u:" + pw + "@127.0.0.1:1/db?connect_timeout=2",
		"postgres://u@127.0.0.1:1/db?password=" + pw + "&connect_timeout=2",
		"host=127.0.0.1 port=notaport password=" + pw,
	} {
		for _, cmd := range []string{"locks", "check", "migrate"} {
			args := []string{cmd, "--dsn", dsn, "--timeout", "3s"}
			if cmd == "migrate" {
				args = append([]string{cmd, "status"}, args[1:]...)
			}
			code, out, errOut := runCLI(t, args...)
			if code == 0 || strings.Contains(out+errOut, pw) {
				t.Errorf("%s with %q: exit %d, output %q %q", cmd, strings.ReplaceAll(dsn, pw, "PW"), code, out, errOut)
			}
		}
	}
	if got := connString("postgres://u:" + pw + "@h/db").String(); strings.Contains(got, pw) {
		t.Errorf("String: %q", got)
	}
	if got := redactDSN("user=u password='a b " + pw + "' host=h"); strings.Contains(got, pw) {
		t.Errorf("redactDSN: %q", got)
	}
}
