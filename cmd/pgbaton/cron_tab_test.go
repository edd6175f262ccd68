//go:build unix

package main

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/periodic"
)

func mustTab(t *testing.T, text string) *cronTab {
	t.Helper()
	tab, err := parseCrontab("crontab", []byte(text))
	if err != nil {
		t.Fatalf("parse:\n%v", err)
	}
	return tab
}

func TestCrontabParse(t *testing.T) {
	t.Parallel()
	tab := mustTab(t, `SHELL=/bin/bash
PATH = "/usr/local/bin:/bin"
MAILTO=ops@example.com

*/5 * * * *   /usr/bin/report --daily
CRON_TZ=Europe/Paris
  #pgbaton: name=backup timeout=30m overlap=allow missed=backfill:6h deadline=10s group=db
30 3 * * mon-fri backup
FOO='bar baz'
@daily	date +\%F%first line%second line
@every 2s echo fast
`)
	if len(tab.Jobs) != 4 || len(tab.Warnings) != 1 || !strings.Contains(tab.Warnings[0], "MAILTO") {
		t.Fatalf("jobs %d, warnings %q", len(tab.Jobs), tab.Warnings)
	}
	report, backup, daily, fast := tab.Jobs[0], tab.Jobs[1], tab.Jobs[2], tab.Jobs[3]
	if report.Spec != "*/5 * * * *" || report.Command != "/usr/bin/report --daily" || report.TZ != "" || report.Shell != "/bin/bash" ||
		!strings.HasPrefix(report.Name, "cron-") || report.Explicit || report.Line != 5 {
		t.Fatalf("report: %+v", report)
	}
	if strings.Join(report.Env, "|") != "SHELL=/bin/bash|PATH=/usr/local/bin:/bin" {
		t.Fatalf("env %q (environment lines apply to the lines after them)", report.Env)
	}
	if backup.Name != "backup" || !backup.Explicit || backup.TZ != "Europe/Paris" || backup.Timeout != 30*time.Minute ||
		backup.Overlap != periodic.OverlapAllow || backup.Missed != periodic.MissedBackfill(6*time.Hour) ||
		backup.StartDeadline != 10*time.Second || backup.Group != "db" {
		t.Fatalf("backup: %+v", backup)
	}
	if daily.Command != "date +%F" || daily.Stdin != "first line\nsecond line\n" || daily.Spec != "@daily" ||
		strings.Join(daily.Env, "|") != "SHELL=/bin/bash|PATH=/usr/local/bin:/bin|FOO=bar baz" {
		t.Fatalf("daily: %+v", daily)
	}
	if fast.Spec != "@every 2s" || fast.TZ != "" || fast.Command != "echo fast" {
		t.Fatalf("fast: %+v", fast)
	}
	// The calendar schedule is read in CRON_TZ: 03:30 Paris is 02:30 UTC in winter.
	ticks, err := nextTicks(backup.Schedule, time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), 2)
	if err != nil || ticks[0] != time.Date(2026, 11, 30, 2, 30, 0, 0, time.UTC) || ticks[1] != time.Date(2026, 12, 1, 2, 30, 0, 0, time.UTC) {
		t.Fatalf("backup ticks %v, %v", ticks, err)
	}
	ticks, err = nextTicks(fast.Schedule, time.Date(2026, 11, 30, 0, 0, 1, 0, time.UTC), 2)
	if err != nil || ticks[0] != time.Date(2026, 11, 30, 0, 0, 2, 0, time.UTC) || ticks[1] != time.Date(2026, 11, 30, 0, 0, 4, 0, time.UTC) {
		t.Fatalf("@every 2s ticks %v, %v", ticks, err)
	}
	// The description periodic stores reads back.
	spec, tz, def, ok := parseTabScheduleText(backup.Schedule.String())
	if !ok || spec != backup.Spec || tz != "Europe/Paris" || def != backup.DefHash {
		t.Fatalf("schedule text %q read back as %q %q %q %v", backup.Schedule.String(), spec, tz, def, ok)
	}
	if _, _, _, ok := parseTabScheduleText("every 1h0m0s"); ok {
		t.Fatal("a schedule of another periodic user read as a crontab's")
	}
}

// A job's identity is its name, or a hash of schedule and command; the
// definition hash (in periodic's definition, hence drift detection) covers
// what runs.
func TestCrontabIdentityAndDefinition(t *testing.T) {
	t.Parallel()
	one := func(text string) cronJob { return mustTab(t, text).Jobs[0] }
	a := one("@every 2s echo a\n")
	if b := one("# comment\n\n@every 2s echo a\n"); b.Name != a.Name || b.DefHash != a.DefHash {
		t.Fatalf("same line, different identity: %s/%s vs %s/%s", a.Name, a.DefHash, b.Name, b.DefHash)
	}
	for _, other := range []string{"@every 3s echo a\n", "@every 2s echo b\n", "CRON_TZ=Europe/Paris\n@daily echo a\n"} {
		if one(other).Name == a.Name {
			t.Fatalf("%q has the identity of %q", other, "@every 2s echo a")
		}
	}
	named := one("#pgbaton: name=j\n@every 2s echo a\n")
	for _, text := range []string{
		"#pgbaton: name=j\n@every 2s echo b\n",
		"X=1\n#pgbaton: name=j\n@every 2s echo a\n",
		"SHELL=/bin/bash\n#pgbaton: name=j\n@every 2s echo a\n",
		"#pgbaton: name=j group=g\n@every 2s echo a\n",
		"#pgbaton: name=j\n@every 2s echo a%input\n",
	} {
		j := one(text)
		if j.Name != "j" || j.DefHash == named.DefHash || j.Schedule.String() == named.Schedule.String() || j.sameDefinition(&named) {
			t.Fatalf("%q: same definition as the original (%s)", text, j.DefHash)
		}
	}
	if j := one("#pgbaton: name=j timeout=5m\n@every 2s echo a\n"); j.sameDefinition(&named) {
		t.Fatal("a changed timeout kept the definition")
	}
}

func TestCrontabErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ text, want string }{
		{"* * * *\n", "want five schedule fields"},
		{"* * * * *\n", "no command"},
		{"61 * * * * x\n", "schedule"},
		{"@reboot x\n", "@reboot is not supported"},
		{"@fortnightly x\n", "unknown descriptor"},
		{"@every 500ms x\n", "whole number of seconds"},
		{"@every soon x\n", "@every soon"},
		{"@every 1s %only stdin\n", "empty command"},
		{"CRON_TZ=Mars/Olympus\n@daily x\n", "CRON_TZ=Mars/Olympus"},
		{"SHELL=bash\n", "absolute path"},
		{"#pgbaton: nme=x\n@daily x\n", `unknown option "nme"`},
		{"#pgbaton: timeout=soon\n@daily x\n", "timeout=soon"},
		{"#pgbaton: overlap=maybe\n@daily x\n", "overlap=maybe"},
		{"#pgbaton: missed=backfill:x\n@daily x\n", "missed=backfill:x"},
		{"#pgbaton: name=pgbaton.x\n@daily x\n", "reserved"},
		{"#pgbaton: name=a\n#pgbaton: name=b\n@daily x\n", "not followed by a job line"},
		{"@daily x\n#pgbaton: name=a\n", "end of the file"},
		{"#pgbaton: name=a\n@daily x\n#pgbaton: name=a\n@hourly y\n", "also used at line 2"},
		{"@daily x\n@daily x\n", "same schedule and command as line 1"},
	} {
		_, err := parseCrontab("f", []byte(tc.text))
		if err == nil || !errors.Is(err, ErrCrontab) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.text, err, tc.want)
		}
	}
	// Every mistake is reported, with its line.
	_, err := parseCrontab("f", []byte("@reboot x\n@daily ok\n* * x\n"))
	if err == nil || !strings.Contains(err.Error(), "f:1:") || !strings.Contains(err.Error(), "f:3:") {
		t.Fatalf("want errors at lines 1 and 3, got %v", err)
	}
}

func TestCronCheckCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good, bad := dir+"/good", dir+"/bad"
	writeFile(t, good, "CRON_TZ=America/New_York\n#pgbaton: name=report\n0 9 * * * report\n@every 5s poll\n")
	writeFile(t, bad, "@reboot x\n")
	code, out, errOut := runCLI(t, "cron", "--crontab", good, "--check", "--next", "2")
	if code != 0 || !strings.Contains(out, "2 jobs, valid") || !strings.Contains(out, "job report (line 3)") ||
		!strings.Contains(out, "(09:00 EST)") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "cron", "--crontab", bad, "--check"); code != cronExitCrontab || !strings.Contains(errOut, "bad:1: @reboot") {
		t.Fatalf("invalid crontab: exit %d\n%s", code, errOut)
	}
	if code, _, errOut := runCLI(t, "cron", "--crontab", dir+"/none", "--check"); code != cronExitCrontab || !strings.Contains(errOut, "no such file") {
		t.Fatalf("missing crontab: exit %d\n%s", code, errOut)
	}
	for _, args := range [][]string{{"cron"}, {"cron", "--nope"}, {"cron", "--crontab", good, "--next", "0"}, {"cron", "--crontab", good, "stray"}} {
		if code, _, errOut := runCLI(t, args...); code != cronExitUsage {
			t.Fatalf("%q: exit %d, want %d\n%s", args, code, cronExitUsage, errOut)
		}
	}
	code, _, errOut = runCLI(t, "help", "cron")
	if code != 0 || !strings.Contains(errOut, "Exit status: 0 after a shutdown") || !strings.Contains(errOut, "-health-listen") {
		t.Fatalf("help cron: exit %d\n%s", code, errOut)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
