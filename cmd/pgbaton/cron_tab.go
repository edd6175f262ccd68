package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/pgbaton/pgbaton/periodic"
)

// A crontab, as pgbaton cron reads it: the user-crontab format of cron(8)
// (cronie, Vixie cron) unchanged, plus one comment syntax of pgbaton's own.
//
//   - Job lines: five fields (minute hour day-of-month month day-of-week,
//     with names, ranges, steps and lists) or a descriptor (@yearly,
//     @annually, @monthly, @weekly, @daily, @midnight, @hourly), then the
//     command, which runs as $SHELL -c COMMAND (/bin/sh unless the crontab
//     sets SHELL). An unescaped % ends the command: the rest is the
//     command's standard input, each further % a newline; \% is a literal
//     %. There is no user field (that is /etc/crontab's format).
//   - "@every DURATION COMMAND" (an extension, e.g. @every 2s): ticks on a
//     fixed grid anchored at the Unix epoch, whole seconds, at least 1s.
//   - Environment lines, NAME=value (spaces around = allowed, value
//     optionally quoted), apply to the job lines after them. CRON_TZ=Zone
//     sets the zone of the calendar schedules after it (default UTC, never
//     the machine's zone); SHELL sets the shell. MAILTO and MAILFROM are
//     accepted and ignored (output goes to the logs).
//   - Comments (#) and blank lines are ignored, except option comments:
//     "#pgbaton: key=value ..." applies to the next job line (see
//     cronOptionKeys).
//
// @reboot is refused: it has no cluster-wide meaning.

// cronJob is one job line with its options.
type cronJob struct {
	Line     int    // 1-based line number in the file
	Name     string // explicit (name=) or derived from schedule and command
	Explicit bool   // Name came from name=
	Spec     string // the schedule as written: "*/5 * * * *", "@daily", "@every 2s"
	TZ       string // CRON_TZ in effect ("" for UTC, and for @every)
	Command  string // the command, before an unescaped %, with \% unescaped
	Stdin    string // the text after an unescaped %, % turned into newlines
	Shell    string // SHELL in effect, default /bin/sh
	Env      []string
	Schedule periodic.Schedule

	Timeout       time.Duration // 0: periodic's default (1h); negative: none
	Overlap       periodic.Overlap
	Missed        periodic.MissedPolicy
	StartDeadline time.Duration // 0: periodic's default
	Group         string        // lock group ("" for none)

	// DefHash identifies what runs (command, stdin, shell, environment,
	// group): it goes into the schedule's description, so periodic's
	// definition hash covers it and replicas whose crontabs differ report
	// drift.
	DefHash string
}

// cronTab is a parsed crontab.
type cronTab struct {
	Jobs     []cronJob
	Warnings []string
	Hash     string // of the file's bytes
}

// cronOptionKeys are the keys of "#pgbaton:" option comments.
var cronOptionKeys = []string{"name", "timeout", "overlap", "missed", "deadline", "group"}

// ErrCrontab matches every crontab parse error.
var ErrCrontab = errors.New("invalid crontab")

// crontabError is a mistake at a line of the crontab.
type crontabError struct {
	File string
	Line int
	Msg  string
}

func (e *crontabError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

func (e *crontabError) Is(target error) bool { return target == ErrCrontab }

// crontabErrors is every mistake of a crontab (each line is checked).
type crontabErrors []*crontabError

func (es crontabErrors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

func (es crontabErrors) Is(target error) bool { return target == ErrCrontab }

var envLine = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*)$`)

// descriptors are the @ forms cron accepts besides @every.
var descriptors = map[string]bool{
	"@yearly": true, "@annually": true, "@monthly": true, "@weekly": true,
	"@daily": true, "@midnight": true, "@hourly": true,
}

// parseCrontab parses a crontab's text. file names it in errors. Every line
// is checked; the error lists each mistake.
func parseCrontab(file string, data []byte) (*cronTab, error) {
	sum := sha256.Sum256(data)
	tab := &cronTab{Hash: hex.EncodeToString(sum[:8])}
	var errs crontabErrors
	bad := func(line int, format string, args ...any) {
		errs = append(errs, &crontabError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	var env []string
	tz, shell := "", "/bin/sh"
	var pending map[string]string
	pendingLine := 0
	names := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	n := 0
	for sc.Scan() {
		n++
		raw := strings.TrimRight(sc.Text(), " \t\r")
		line := strings.TrimLeft(raw, " \t")
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#"):
			body := strings.TrimSpace(strings.TrimPrefix(line, "#"))
			if !strings.HasPrefix(body, "pgbaton:") {
				continue
			}
			if pending != nil {
				bad(pendingLine, "option comment not followed by a job line (another one at line %d); put each right above its job", n)
			}
			opts, err := parseCronOptions(strings.TrimPrefix(body, "pgbaton:"))
			if err != nil {
				bad(n, "%v", err)
				pending = map[string]string{}
			} else {
				pending = opts
			}
			pendingLine = n
			continue
		}
		if m := envLine.FindStringSubmatch(line); m != nil {
			name, val := m[1], unquoteEnv(m[2])
			switch name {
			case "CRON_TZ":
				if val != "" {
					if _, err := time.LoadLocation(val); err != nil {
						bad(n, "CRON_TZ=%s: %v (use an IANA zone name such as Europe/Paris, or UTC)", val, err)
						continue
					}
				}
				tz = val
				continue
			case "SHELL":
				if !strings.HasPrefix(val, "/") {
					bad(n, "SHELL=%s: give an absolute path, e.g. SHELL=/bin/bash", val)
					continue
				}
				shell = val
			case "MAILTO", "MAILFROM":
				tab.Warnings = append(tab.Warnings, fmt.Sprintf("%s:%d: %s is ignored: job output goes to pgbaton's logs", file, n, name))
				continue
			}
			env = append(env, name+"="+val)
			continue
		}
		job, err := parseJobLine(line)
		if err != nil {
			bad(n, "%v", err)
			pending = nil
			continue
		}
		job.Line, job.TZ, job.Shell = n, tz, shell
		if strings.HasPrefix(job.Spec, "@every") {
			job.TZ = ""
		}
		job.Env = append([]string(nil), env...)
		if err := applyCronOptions(&job, pending); err != nil {
			bad(n, "%v", err)
			pending = nil
			continue
		}
		pending = nil
		if err := finishJob(&job); err != nil {
			bad(n, "%v", err)
			continue
		}
		if prev, dup := names[job.Name]; dup {
			if job.Explicit {
				bad(n, "job name %q is also used at line %d; names identify jobs across the cluster, make them unique", job.Name, prev)
			} else {
				bad(n, "the same schedule and command as line %d (both would be job %s); remove one, or give each a name= option", prev, job.Name)
			}
			continue
		}
		names[job.Name] = n
		tab.Jobs = append(tab.Jobs, job)
	}
	if err := sc.Err(); err != nil {
		bad(n+1, "%v", err)
	}
	if pending != nil {
		bad(pendingLine, "option comment at the end of the file, with no job line after it")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return tab, nil
}

// unquoteEnv strips matching single or double quotes, as cron does.
func unquoteEnv(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}

// fields splits off the first n whitespace-separated fields of s and
// returns them with the rest (leading whitespace removed).
func fields(s string, n int) ([]string, string, bool) {
	var out []string
	for len(out) < n {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return out, "", false
		}
		i := strings.IndexAny(s, " \t")
		if i < 0 {
			out = append(out, s)
			s = ""
			continue
		}
		out = append(out, s[:i])
		s = s[i:]
	}
	return out, strings.TrimLeft(s, " \t"), true
}

// parseJobLine reads the schedule and the command of a job line.
func parseJobLine(line string) (cronJob, error) {
	var job cronJob
	var rest string
	switch {
	case strings.HasPrefix(line, "@every"):
		f, r, ok := fields(line, 2)
		if !ok || f[0] != "@every" {
			return job, fmt.Errorf("want \"@every DURATION COMMAND\", e.g. \"@every 30s /usr/local/bin/poll\"")
		}
		job.Spec, rest = "@every "+f[1], r
	case strings.HasPrefix(line, "@"):
		f, r, _ := fields(line, 1)
		d := strings.ToLower(f[0])
		if d == "@reboot" {
			return job, fmt.Errorf("@reboot is not supported: it has no cluster-wide meaning (which replica's boot?); use a schedule")
		}
		if !descriptors[d] {
			return job, fmt.Errorf("unknown descriptor %s; use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every DURATION", f[0])
		}
		job.Spec, rest = d, r
	default:
		f, r, ok := fields(line, 5)
		if !ok {
			return job, fmt.Errorf("want five schedule fields (minute hour day-of-month month day-of-week) and a command, e.g. \"30 3 * * * /usr/local/bin/backup\"")
		}
		job.Spec, rest = strings.Join(f, " "), r
	}
	if rest == "" {
		return job, fmt.Errorf("schedule %q has no command after it", job.Spec)
	}
	job.Command, job.Stdin = splitPercent(rest)
	if strings.TrimSpace(job.Command) == "" {
		return job, fmt.Errorf("schedule %q has an empty command (the text before %% is the command)", job.Spec)
	}
	return job, nil
}

// splitPercent applies cron's % rule: the command ends at the first
// unescaped %, the rest is standard input with each unescaped % a newline;
// \% is a literal % in both.
func splitPercent(s string) (cmd, stdin string) {
	var b strings.Builder
	inStdin := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '%':
			b.WriteByte('%')
			i++
		case c == '%' && !inStdin:
			cmd, inStdin = b.String(), true
			b.Reset()
		case c == '%':
			b.WriteByte('\n')
		default:
			b.WriteByte(c)
		}
	}
	if !inStdin {
		return b.String(), ""
	}
	stdin = b.String()
	if stdin != "" {
		stdin += "\n"
	}
	return cmd, stdin
}

// parseCronOptions reads the key=value list of an option comment.
func parseCronOptions(s string) (map[string]string, error) {
	opts := map[string]string{}
	for _, kv := range strings.Fields(s) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("option %q: want key=value (keys: %s)", kv, strings.Join(cronOptionKeys, ", "))
		}
		known := false
		for _, key := range cronOptionKeys {
			known = known || key == k
		}
		if !known {
			return nil, fmt.Errorf("unknown option %q (keys: %s)", k, strings.Join(cronOptionKeys, ", "))
		}
		if _, dup := opts[k]; dup {
			return nil, fmt.Errorf("option %q given twice", k)
		}
		opts[k] = v
	}
	if len(opts) == 0 {
		return nil, fmt.Errorf("empty option comment; want e.g. \"#pgbaton: name=backup timeout=30m\"")
	}
	return opts, nil
}

// validName checks a job or group name: printable, no spaces, not
// pgbaton's reserved prefix.
func validName(what, s string) error {
	switch {
	case len(s) > periodic.MaxJobNameLen-10:
		return fmt.Errorf("%s %q: %d bytes; use at most %d", what, s, len(s), periodic.MaxJobNameLen-10)
	case s == "":
		return fmt.Errorf("%s: empty", what)
	case strings.HasPrefix(s, "pgbaton."), strings.HasPrefix(s, "crontab:"):
		return fmt.Errorf("%s %q: the prefixes pgbaton. and crontab: are reserved", what, s)
	case strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
		return fmt.Errorf("%s %q: use printable characters without spaces", what, s)
	}
	return nil
}

// applyCronOptions sets job's options from an option comment.
func applyCronOptions(job *cronJob, opts map[string]string) error {
	for _, k := range cronOptionKeys {
		v, ok := opts[k]
		if !ok {
			continue
		}
		switch k {
		case "name":
			if err := validName("name", v); err != nil {
				return err
			}
			job.Name, job.Explicit = v, true
		case "timeout":
			if v == "none" {
				job.Timeout = -1
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("timeout=%s: want a positive duration such as 30m or 90s, or none", v)
			}
			job.Timeout = d
		case "overlap":
			switch v {
			case "forbid":
				job.Overlap = periodic.OverlapForbid
			case "allow":
				job.Overlap = periodic.OverlapAllow
			default:
				return fmt.Errorf("overlap=%s: want forbid (the default: ticks during a run are skipped) or allow", v)
			}
		case "missed":
			switch {
			case v == "run-once":
				job.Missed = periodic.MissedRunOnce
			case v == "skip":
				job.Missed = periodic.MissedSkip
			case strings.HasPrefix(v, "backfill:"):
				d, err := time.ParseDuration(strings.TrimPrefix(v, "backfill:"))
				if err != nil || d <= 0 {
					return fmt.Errorf("missed=%s: want backfill:WINDOW with a positive duration, e.g. backfill:6h", v)
				}
				job.Missed = periodic.MissedBackfill(d)
			default:
				return fmt.Errorf("missed=%s: want run-once (the default), skip or backfill:WINDOW", v)
			}
		case "deadline":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("deadline=%s: want a positive duration (how late a tick may still start)", v)
			}
			job.StartDeadline = d
		case "group":
			if err := validName("group", v); err != nil {
				return err
			}
			job.Group = v
		}
	}
	return nil
}

// finishJob builds the schedule, the definition hash and the derived name.
func finishJob(job *cronJob) error {
	inner, err := cronInnerSchedule(job.Spec, job.TZ)
	if err != nil {
		return err
	}
	h := sha256.New()
	for _, part := range append([]string{job.Shell, job.Command, job.Stdin, job.Group}, job.Env...) {
		_, _ = fmt.Fprintf(h, "%d:%s;", len(part), part) // a hash.Hash's Write never returns an error
	}
	job.DefHash = hex.EncodeToString(h.Sum(nil)[:8])
	if !job.Explicit {
		sum := sha256.Sum256([]byte(job.TZ + "\n" + job.Spec + "\n" + job.Command + "\n" + job.Stdin))
		job.Name = "cron-" + hex.EncodeToString(sum[:6])
	}
	job.Schedule = &tabSchedule{inner: inner, text: tabScheduleText(job.Spec, job.TZ, job.DefHash)}
	return nil
}

// cronInnerSchedule is the periodic schedule of a crontab schedule.
func cronInnerSchedule(spec, tz string) (periodic.Schedule, error) {
	if d, ok := strings.CutPrefix(spec, "@every "); ok {
		dur, err := time.ParseDuration(d)
		switch {
		case err != nil:
			return nil, fmt.Errorf("@every %s: %w (want e.g. 2s, 90s, 15m)", d, err)
		case dur < time.Second || dur%time.Second != 0:
			return nil, fmt.Errorf("@every %s: use a whole number of seconds, at least 1s", d)
		}
		return periodic.Every(dur), nil
	}
	expr := spec
	if tz != "" {
		expr = "CRON_TZ=" + tz + " " + spec
	}
	s, err := periodic.Cron(expr)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	return s, nil
}

// tabSchedule is a crontab job's schedule: periodic's, described with the
// hash of what the job runs, so that periodic's definition hash (which
// covers the schedule's description) changes when the command does.
type tabSchedule struct {
	inner periodic.Schedule
	text  string
}

func (s *tabSchedule) Next(t time.Time) time.Time { return s.inner.Next(t) }
func (s *tabSchedule) Prev(t time.Time) time.Time { return s.inner.Prev(t) }
func (s *tabSchedule) String() string             { return s.text }

// NextTick passes periodic's bounded next-tick computation through when the
// schedule has one.
func (s *tabSchedule) NextTick(after time.Time) (time.Time, error) {
	if nt, ok := s.inner.(interface {
		NextTick(time.Time) (time.Time, error)
	}); ok {
		return nt.NextTick(after)
	}
	n := s.inner.Next(after)
	if n.IsZero() {
		return n, fmt.Errorf("schedule %s has no tick after %s", s.text, after.UTC().Format(time.RFC3339))
	}
	return n, nil
}

// Err reports the inner schedule's construction error.
func (s *tabSchedule) Err() error {
	if e, ok := s.inner.(interface{ Err() error }); ok {
		return e.Err()
	}
	return nil
}

// tabScheduleText is the schedule's description, which periodic stores in
// pgbaton.periodic_jobs.schedule: `crontab "SPEC" [tz=ZONE] def=HASH`.
// pgbaton cron status parses it back (parseTabScheduleText).
func tabScheduleText(spec, tz, def string) string {
	s := "crontab " + strconv.Quote(spec)
	if tz != "" {
		s += " tz=" + tz
	}
	return s + " def=" + def
}

var tabScheduleRE = regexp.MustCompile(`^crontab ("(?:[^"\\]|\\.)*")(?: tz=(\S+))? def=([0-9a-f]+)$`)

// parseTabScheduleText reads a description written by tabScheduleText.
func parseTabScheduleText(text string) (spec, tz, def string, ok bool) {
	m := tabScheduleRE.FindStringSubmatch(text)
	if m == nil {
		return "", "", "", false
	}
	spec, err := strconv.Unquote(m[1])
	if err != nil {
		return "", "", "", false
	}
	return spec, m[2], m[3], true
}

// nextTicks returns the first n ticks of s after t.
func nextTicks(s periodic.Schedule, t time.Time, n int) ([]time.Time, error) {
	var out []time.Time
	for range n {
		var next time.Time
		if nt, ok := s.(interface {
			NextTick(time.Time) (time.Time, error)
		}); ok {
			var err error
			if next, err = nt.NextTick(t); err != nil {
				return out, err
			}
		} else if next = s.Next(t); next.IsZero() {
			return out, fmt.Errorf("no tick after %s", t.UTC().Format(time.RFC3339))
		}
		out = append(out, next)
		t = next
	}
	return out, nil
}

// optionsText describes a job's options as an option comment would.
func (j *cronJob) optionsText() string {
	var parts []string
	if j.Explicit {
		parts = append(parts, "name="+j.Name)
	}
	switch {
	case j.Timeout < 0:
		parts = append(parts, "timeout=none")
	case j.Timeout > 0:
		parts = append(parts, "timeout="+fmtDuration(j.Timeout))
	default:
		parts = append(parts, "timeout="+fmtDuration(periodic.DefaultTimeout))
	}
	parts = append(parts, "overlap="+j.Overlap.String())
	m := j.Missed.String()
	if w, ok := strings.CutPrefix(m, "backfill "); ok {
		if d, err := time.ParseDuration(w); err == nil {
			w = fmtDuration(d)
		}
		m = "backfill:" + w
	}
	parts = append(parts, "missed="+m)
	if j.StartDeadline > 0 {
		parts = append(parts, "deadline="+fmtDuration(j.StartDeadline))
	}
	if j.Group != "" {
		parts = append(parts, "group="+j.Group)
	}
	return strings.Join(parts, " ")
}

// sameDefinition reports whether two jobs of one name run the same way
// (a reload keeps such a job, and its run in progress, untouched).
func (j *cronJob) sameDefinition(o *cronJob) bool {
	return j.Name == o.Name && j.Spec == o.Spec && j.TZ == o.TZ && j.DefHash == o.DefHash &&
		j.optionsText() == o.optionsText()
}

// fmtDuration is d as written in a crontab: 30m, 1h, 1h30m, 90s.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
