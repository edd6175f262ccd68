package web

import (
	"fmt"
	"html/template"
	"strconv"
	"time"

	"github.com/pgbaton/pgbaton/inspect"
)

// funcs are the page template's helpers: times in UTC to the second,
// durations short and human.
var funcs = template.FuncMap{
	"ts":    fmtTime,
	"secs":  fmtSecs,
	"dur":   fmtDur,
	"level": func(l int) string { return [...]string{"ok", "warning", "critical"}[min(max(l, 0), 2)] },
	"role": func(i int) string {
		return "waits #" + strconv.Itoa(i+1)
	},
	"pids": func(p []int) string {
		s := ""
		for i, x := range p {
			if i > 0 {
				s += ", "
			}
			s += strconv.Itoa(x)
		}
		return s
	},
	"relto": func(t *time.Time, now time.Time) string {
		if t == nil {
			return ""
		}
		d := t.Sub(now)
		if d >= 0 {
			return "in " + fmtDur(d)
		}
		return fmtDur(-d) + " ago"
	},
	"deref": func(p *int64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatInt(*p, 10)
	},
}

func fmtTime(t any) string {
	switch v := t.(type) {
	case time.Time:
		if v.IsZero() {
			return ""
		}
		return v.UTC().Format("2006-01-02 15:04:05Z")
	case *time.Time:
		if v == nil || v.IsZero() {
			return ""
		}
		return v.UTC().Format("2006-01-02 15:04:05Z")
	}
	return fmt.Sprint(t)
}

func fmtSecs(s *inspect.Seconds) string {
	if s == nil {
		return ""
	}
	return fmtDur(s.Duration())
}

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	default:
		return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
	}
}
