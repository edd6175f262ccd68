package inspect

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes s for people: one line per holder and waiter, grouped
// by key (named when the name is known, raw otherwise), then what to do
// about each problem. Ages are on the database's clock at TakenAt.
func (s *Snapshot) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "advisory locks at %s: %d keys", s.TakenAt.Format(time.RFC3339), len(s.Keys))
	var parts []string
	for _, c := range Classes() {
		if n := s.Summary[c]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, c))
		}
	}
	if len(parts) > 0 {
		b.WriteString(" (" + strings.Join(parts, ", ") + ")")
	}
	b.WriteString("\n")
	if len(s.Keys) > 0 {
		b.WriteString("\n")
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		// tw writes to a strings.Builder, which never fails.
		_, _ = fmt.Fprintln(tw, "KEY\tCLASS\tPID\tROLE\tMODE\tINSTANCE/APPLICATION\tCLIENT\tSTATE\tIN STATE\tSCOPE\tHELD SINCE")
		for i := range s.Keys {
			k := &s.Keys[i]
			label := k.Label()
			if k.Name != "" {
				label += " (" + k.Key + ")"
			}
			first := true
			line := func(cls Class, pid int, role, mode string, sess Session, scope, since string) {
				kl := ""
				if first {
					kl = label
					first = false
				}
				who := sess.ApplicationName
				if sess.Instance != "" {
					who = "pgbaton:" + sess.Instance
				}
				state, age := sess.State, "-"
				if !sess.Visible {
					state, who = "(hidden)", "(hidden)"
				}
				if sess.InStateFor != nil {
					age = fmtDur(sess.InStateFor.Duration())
				}
				kc := string(cls)
				_, _ = fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
					kl, kc, pid, role, mode, dash(who), dash(sess.ClientAddr), dash(state), age, scope, since)
			}
			for _, h := range k.Holders {
				since := "unknown"
				if h.HeldSince != nil {
					since = h.HeldSince.Format(time.RFC3339)
					if h.HeldFor != nil {
						since = ">= " + fmtDur(h.HeldFor.Duration()) + " (periodic run)"
					}
				}
				line(h.Class, h.PID, "holds", h.Mode, h.Session, h.Scope, since)
			}
			for n, wt := range k.Waiters {
				since := "waits"
				if wt.WaitingFor != nil {
					since += " " + fmtDur(wt.WaitingFor.Duration())
				}
				if len(wt.BlockedBy) > 0 {
					since += " behind " + joinInts(wt.BlockedBy)
				}
				line(wt.Class, wt.PID, fmt.Sprintf("waits#%d", n+1), wt.Mode, wt.Session, "-", since)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, findings := s.Check()
	if len(findings) > 0 {
		b.WriteString("\n")
		for _, f := range findings {
			lv := "WARNING"
			if f.Level == CheckCritical {
				lv = "CRITICAL"
			}
			fmt.Fprintf(&b, "%s %s (pid %d): %s\n", lv, f.Key, f.PID, f.Message)
			if f.Terminate != "" {
				fmt.Fprintf(&b, "  to free it, after checking (pgbaton never runs it): %s\n", f.Terminate)
			}
		}
	}
	for _, h := range s.Hints {
		fmt.Fprintf(&b, "\nhint: %s\n", h)
	}
	for _, n := range s.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
