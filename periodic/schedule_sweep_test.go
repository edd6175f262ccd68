package periodic

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The sweep checks wall-clock schedules against an independent oracle at
// every UTC offset change of every zone, 2000-2040: the zones of the
// system's tzdata (/usr/share/zoneinfo) and of Go's copy
// ($GOROOT/lib/time/zoneinfo.zip, the data time/tzdata embeds). Zones whose
// data are byte-identical (links, or the same zone in both copies) are
// checked once.
//
// By default it checks a deterministic sample, in seconds (fewer years
// under the race detector): every zone with a
// change at local midnight, zones with 30-minute or 2-hour changes and the
// zones of the reported faults, at their changes of a few years.
// PERIODIC_SWEEP=full checks every change of every zone, and one window of
// each zone without changes (about ten minutes on two busy cores).
//
// Around each change T, in (T-36h, T+36h], for each schedule of the corpus:
//
//   - the ticks enumerated by Next equal the oracle's: for a fixed-time
//     schedule, the instants at which the local clock first reads a matching
//     wall-clock time or later (scanning every instant of the grid and the
//     clock's high-water mark), for a wildcard one the instants at which the
//     clock reads a matching time;
//   - Next is strictly increasing and Prev(tick[i+1]) = tick[i]; Next and
//     Prev at points between ticks agree with the oracle;
//   - no search fails or exceeds its step bound (the most steps seen is
//     logged);
//   - a daily fixed-time schedule fires exactly once on every local date
//     (a date the zone skips entirely, or whose time falls in a gap that
//     ends on the next date, is counted and logged);
//   - a fixed-time schedule's tick for a skipped wall-clock time is the
//     end of the gap.

const (
	sweepFrom = 2000
	sweepTo   = 2041 // exclusive
	sweepSide = int64(36 * time.Hour / time.Microsecond)
	sweepWarm = int64(32 * time.Hour / time.Microsecond)
)

type sweepCase struct {
	name  string
	wall  func(loc *time.Location) *wallSched
	sched func(loc *time.Location) Schedule // with its jitter
	match func(W int64) bool                // the wall-clock times the schedule names
	fixed bool
	daily bool  // one matching time per local date
	grid  int64 // µs: every matching wall-clock time is a multiple
}

func sweepCorpus(t *testing.T) []sweepCase {
	var out []sweepCase
	for _, expr := range []string{
		"30 2 * * *", "30 1 * * *", "0 2 * * *", "0 1 * * *", "0 3 * * *", "15 0 * * *",
		"0 0 * * *", "59 23 * * *", "45 1 * * *", "0,30 2 * * *", "0 1-3 * * *", "0 0,12 * * *",
		"*/15 * * * *", "0 * * * *", "30 * * * *", "*/30 0-3 * * *", "0 */2 * * *", "*/5 2 * * *",
		"0 0 * * 0", "0 0 * * 1-5", "0 0 1 * *", "0 0 13 * 5", "0 0 */2 * 1", "0 0 29 2 *",
		"0 0 31 * *", "0 0 1 1 *", "30 2 * 3,10 0",
		"@daily", "@hourly", "@weekly", "@monthly", "@yearly",
	} {
		c, err := Cron(expr)
		if err != nil {
			t.Fatal(err)
		}
		spec := c.spec
		restricted := !spec.f[2].star || !spec.f[3].star || !spec.f[4].star
		out = append(out, sweepCase{
			name:  "cron " + expr,
			wall:  func(loc *time.Location) *wallSched { return c.In(loc).wall() },
			sched: func(loc *time.Location) Schedule { return c.In(loc).Jitter(59 * time.Second) },
			match: cronOracle(spec),
			fixed: spec.fixed(),
			daily: !restricted && spec.fixed() && len(spec.tods) == 1,
			grid:  usPerMinute,
		})
	}
	for _, e := range []struct{ d, off time.Duration }{
		{time.Hour, 0}, {15 * time.Minute, 0}, {30 * time.Minute, 10 * time.Minute}, {30 * time.Second, 0},
		{time.Hour, 30 * time.Minute}, {90 * time.Minute, 0}, {2 * time.Hour, time.Hour}, {6 * time.Hour, 0},
		{12 * time.Hour, 150 * time.Minute}, {24 * time.Hour, 0}, {24 * time.Hour, 20 * time.Hour},
		{24 * time.Hour, 150 * time.Minute}, {24 * time.Hour, 90 * time.Minute},
	} {
		if e.d < time.Minute && raceEnabled {
			continue // 8640 ticks a window: most of the sweep's time
		}
		s := Every(e.d).Offset(e.off).Jitter(e.d / 2)
		if err := s.In(time.UTC).Err(); err != nil {
			t.Fatal(err)
		}
		d, off := int64(e.d/time.Microsecond), int64(e.off/time.Microsecond)
		out = append(out, sweepCase{
			name:  s.String() + " in zone",
			wall:  func(loc *time.Location) *wallSched { return s.In(loc).wall() },
			sched: func(loc *time.Location) Schedule { return s.In(loc) },
			match: func(W int64) bool {
				tod := W - floorDiv(W, usPerDay)*usPerDay
				return tod >= off && (tod-off)%d == 0
			},
			fixed: e.d > time.Hour,
			daily: e.d == 24*time.Hour,
			grid:  min(usPerMinute, d),
		})
	}
	return out
}

// cronOracle matches wall-clock times by the fields, with the calendar
// from package time and the Vixie day rule written out again.
func cronOracle(spec *cronSpec) func(W int64) bool {
	return func(W int64) bool {
		if W%usPerMinute != 0 {
			return false
		}
		tm := time.UnixMicro(W).UTC()
		in := func(f int, v int) bool { return spec.f[f].set&(1<<v) != 0 }
		if !in(0, tm.Minute()) || !in(1, tm.Hour()) || !in(3, int(tm.Month())) {
			return false
		}
		dom, dow := in(2, tm.Day()), in(4, int(tm.Weekday()))
		if spec.f[2].star || spec.f[4].star {
			return dom && dow
		}
		return dom || dow
	}
}

type sweepZone struct {
	names []string
	loc   *time.Location
}

type sweepSource struct {
	name  string
	files map[string][]byte
}

func loadZoneSources(t *testing.T) []sweepSource {
	var out []sweepSource
	sys := sweepSource{name: "/usr/share/zoneinfo", files: map[string][]byte{}}
	root := "/usr/share/zoneinfo"
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			// An unreadable entry is left out; the sweep checks the zones it can read.
			t.Logf("tzdata sweep: skipping %s: %v", p, err)
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			if rel == "posix" || rel == "right" {
				return fs.SkipDir
			}
			return nil
		}
		if rel == "posixrules" || rel == "localtime" || rel == "Factory" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.HasPrefix(b, []byte("TZif")) {
			sys.files[rel] = b
		}
		return nil
	})
	if len(sys.files) == 0 {
		t.Logf("no system tzdata under %s", root)
	} else {
		out = append(out, sys)
	}
	goroot := os.Getenv("GOROOT")
	if goroot == "" {
		if b, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
			goroot = strings.TrimSpace(string(b))
		}
	}
	zipPath := filepath.Join(goroot, "lib", "time", "zoneinfo.zip")
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		t.Logf("Go's tzdata copy not checked: %v", err)
		return out
	}
	defer zr.Close()
	gz := sweepSource{name: zipPath, files: map[string][]byte{}}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasPrefix(b, []byte("TZif")) {
			gz.files[f.Name] = b
		}
	}
	return append(out, gz)
}

// offsetChanges returns the instants (µs) in [from, to) years at which the
// zone's UTC offset changes.
func offsetChanges(loc *time.Location) []int64 {
	var out []int64
	x := time.Date(sweepFrom, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	end := time.Date(sweepTo, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	for x < end {
		p := periodAt(loc, x)
		if p.end == math.MaxInt64 || p.end >= end {
			break
		}
		if periodAt(loc, p.end).off != p.off {
			out = append(out, p.end)
		}
		x = p.end
	}
	return out
}

type sweepCounts struct {
	names, zones, steady, changes, windows, ticks, calls, gapTicks, dailyDates, dailyShifted, skippedOdd atomic.Int64
	maxSteps                                                                                             atomic.Int64
}

func TestScheduleSweep(t *testing.T) {
	t.Parallel()
	full := os.Getenv("PERIODIC_SWEEP") == "full"
	corpus := sweepCorpus(t)
	// Distinct zone data across both sources.
	byHash := map[[32]byte]*sweepZone{}
	var zones []*sweepZone
	var counts sweepCounts
	for _, src := range loadZoneSources(t) {
		names := make([]string, 0, len(src.files))
		for n := range src.files {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			counts.names.Add(1)
			h := sha256.Sum256(src.files[n])
			if z := byHash[h]; z != nil {
				z.names = append(z.names, n)
				continue
			}
			loc, err := time.LoadLocationFromTZData(n, src.files[n])
			if err != nil {
				t.Errorf("%s: %s: %v", src.name, n, err)
				continue
			}
			z := &sweepZone{names: []string{n}, loc: loc}
			byHash[h] = z
			zones = append(zones, z)
		}
	}
	if len(zones) == 0 {
		t.Skip("no tzdata")
	}
	type job struct {
		z       *sweepZone
		changes []int64
	}
	var jobs []job
	for _, z := range zones {
		ch := offsetChanges(z.loc)
		switch {
		case !full:
			ch = sampleChanges(z, ch)
		case len(ch) == 0:
			// a zone without changes: one window, as a control
			counts.steady.Add(1)
			ch = []int64{time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC).UnixMicro()}
		}
		if len(ch) > 0 {
			jobs = append(jobs, job{z, ch})
		}
	}
	var wg sync.WaitGroup
	work := make(chan job)
	var mu sync.Mutex
	var failures []string
	fail := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 40 {
			failures = append(failures, fmt.Sprintf(format, a...))
		}
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				counts.zones.Add(1)
				for _, T := range j.changes {
					counts.changes.Add(1)
					win := newSweepWin(j.z.loc, T, &counts)
					if win == nil {
						continue
					}
					for _, c := range corpus {
						sweepWindow(j.z, win, c, &counts, fail)
					}
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	mode := "sample (PERIODIC_SWEEP=full for every change)"
	if full {
		mode = "full"
	}
	t.Logf("sweep %s, %d-%d: %d zone names, %d distinct zones checked (%d of them without changes, one window each), %d offset changes, %d schedules, %d windows, %d ticks, %d Next/Prev calls (at most %d steps each), %d ticks at the end of a gap, %d daily dates checked (%d on another date: the whole date or its time skipped), %d changes skipped (not on whole minutes)",
		mode, sweepFrom, sweepTo-1, counts.names.Load(), counts.zones.Load(), counts.steady.Load(), counts.changes.Load()-counts.steady.Load(), len(corpus), counts.windows.Load(), counts.ticks.Load(), counts.calls.Load(), counts.maxSteps.Load(), counts.gapTicks.Load(), counts.dailyDates.Load(), counts.dailyShifted.Load(), counts.skippedOdd.Load())
}

// sampleChanges picks the changes the default sweep checks: for zones with
// a change at local midnight, one of 30 minutes or one over an hour, and
// the zones in sampleZones, their changes in sampleYears; for zones with a
// change at local midnight, also their first and last such change.
func sampleChanges(z *sweepZone, ch []int64) []int64 {
	var out []int64
	named := false
	for _, n := range z.names {
		named = named || slices.Contains(sampleZones, n)
	}
	hour := int64(time.Hour / time.Microsecond)
	var midnights []int64
	interesting := named
	for _, T := range ch {
		before, after := periodAt(z.loc, T-1), periodAt(z.loc, T)
		jump := after.off - before.off
		lo, hi := T+before.off, T+after.off // wall-clock readings either side
		if hi < lo {
			lo, hi = hi, lo
		}
		if floorDiv(lo, usPerDay) != floorDiv(hi, usPerDay) || floorMod(hi, usPerDay) == 0 {
			midnights = append(midnights, T)
		}
		interesting = interesting || jump%hour != 0 || jump > hour || -jump > hour
	}
	interesting = interesting || len(midnights) > 0
	years := sampleYears
	if raceEnabled {
		years = []int{2026}
	}
	for _, T := range ch {
		y := time.UnixMicro(T).UTC().Year()
		if (interesting && slices.Contains(years, y)) || (len(midnights) > 0 && (T == midnights[0] || T == midnights[len(midnights)-1])) {
			out = append(out, T)
		}
	}
	return out
}

var (
	sampleZones = []string{"America/New_York", "America/Santiago", "America/Havana", "Africa/Cairo", "Asia/Beirut",
		"Europe/Paris", "Australia/Lord_Howe", "Antarctica/Troll", "Pacific/Apia", "Pacific/Chatham", "America/Asuncion"}
	sampleYears = []int{2011, 2026, 2040}
)

// sweepWin is the local clock over a window around a change T, minute by
// minute, from offset lookups alone (not the zone bounds the schedules use).
type sweepWin struct {
	T, warm, from, to int64
	offs              []int64 // offset in force during each minute from warm
}

func newSweepWin(loc *time.Location, T int64, counts *sweepCounts) *sweepWin {
	if T%usPerMinute != 0 {
		counts.skippedOdd.Add(1)
		return nil
	}
	w := &sweepWin{T: T, from: T - sweepSide, to: T + sweepSide}
	w.warm = floorDiv(w.from-sweepWarm, usPerMinute) * usPerMinute
	for u := w.warm; u <= w.to; u += usPerMinute {
		off := offsetAt(loc, u)
		if off%usPerMinute != 0 || offsetAt(loc, u+usPerMinute-1) != off {
			counts.skippedOdd.Add(1)
			return nil
		}
		w.offs = append(w.offs, off)
	}
	return w
}

func (w *sweepWin) wall(u int64) int64 { return u + w.offs[(u-w.warm)/usPerMinute] }

func sweepWindow(z *sweepZone, win *sweepWin, c sweepCase, counts *sweepCounts, fail func(string, ...any)) {
	T, from, to := win.T, win.from, win.to
	counts.windows.Add(1)
	// The oracle: scan every instant of the grid.
	var want []int64
	hw := int64(math.MinInt64)
	gapOf := map[int64]bool{}
	for u := win.warm; u <= to; u += c.grid {
		w := win.wall(u)
		if c.fixed {
			if hw == math.MinInt64 {
				hw = w
				continue
			}
			if w > hw {
				hit, skipped := false, false
				for W := hw + c.grid; W <= w; W += c.grid {
					if c.match(W) {
						hit = true
						skipped = skipped || W < w
					}
				}
				hw = w
				if hit && u > from {
					want = append(want, u)
					if skipped {
						gapOf[u] = true
					}
				}
			}
		} else if u > from && c.match(w) {
			want = append(want, u)
		}
	}
	s := c.wall(z.loc)
	name := fmt.Sprintf("%s, %s, change at %s", c.name, z.names[0], time.UnixMicro(T).UTC().Format(time.RFC3339))
	call := func(next bool, x int64) (int64, bool) {
		var w wallWalk
		var u int64
		var ok bool
		if next {
			u, ok = s.nextMicro(&w, x)
		} else {
			u, ok = s.prevMicro(&w, x)
		}
		counts.calls.Add(1)
		for {
			m := counts.maxSteps.Load()
			if int64(w.steps) <= m || counts.maxSteps.CompareAndSwap(m, int64(w.steps)) {
				break
			}
		}
		if !ok {
			fail("%s: search from %s failed after %d steps", name, time.UnixMicro(x).UTC(), w.steps)
		}
		return u, ok
	}
	// Next enumerates exactly the oracle's ticks; Prev walks them back.
	var got []int64
	for x := from; ; {
		n, ok := call(true, x)
		if !ok || n > to {
			break
		}
		if n <= x {
			fail("%s: Next(%s) = %s is not after it", name, time.UnixMicro(x).UTC(), time.UnixMicro(n).UTC())
			return
		}
		got = append(got, n)
		x = n
	}
	counts.ticks.Add(int64(len(got)))
	if !slices.Equal(got, want) {
		fail("%s: ticks\n  got  %s\n  want %s", name, fmtTicks(got, z.loc), fmtTicks(want, z.loc))
		return
	}
	// Jittered firing stays in [tick, next tick) and in tick order.
	js := c.sched(z.loc)
	stride := 1 + len(got)/300
	for i := 0; i+1 < len(got); i += stride {
		a, b := time.UnixMicro(got[i]), time.UnixMicro(got[i+1])
		if f := fireAt(js, "job", a); f.Before(a) || !f.Before(b) || !f.Before(fireAt(js, "job", b)) {
			fail("%s: tick %s fires at %s, next tick %s at %s", name, a.In(z.loc), f.In(z.loc), b.In(z.loc), fireAt(js, "job", b).In(z.loc))
		}
	}
	// every tick, or 300 of them spread evenly
	for i := 1; i < len(got); i += stride {
		if p, _ := call(false, got[i]-1); p != got[i-1] {
			fail("%s: Prev(%s) = %s, want %s", name, time.UnixMicro(got[i]).In(z.loc), time.UnixMicro(p).In(z.loc), time.UnixMicro(got[i-1]).In(z.loc))
		}
	}
	// Points between ticks, off the grid.
	for x := from + 1; x < to; x += int64(97*time.Minute/time.Microsecond) + 7 {
		i, _ := slices.BinarySearch(want, x+1) // first tick > x
		if i < len(want) {
			if n, _ := call(true, x); n != want[i] {
				fail("%s: Next(%s) = %s, want %s", name, time.UnixMicro(x).In(z.loc), time.UnixMicro(n).In(z.loc), time.UnixMicro(want[i]).In(z.loc))
			}
		}
		j, _ := slices.BinarySearch(want, x) // ticks < x are want[:j]... last tick <= x
		if j < len(want) && want[j] == x {
			j++
		}
		if j > 0 {
			if p, _ := call(false, x); p != want[j-1] {
				fail("%s: Prev(%s) = %s, want %s", name, time.UnixMicro(x).In(z.loc), time.UnixMicro(p).In(z.loc), time.UnixMicro(want[j-1]).In(z.loc))
			}
		}
	}
	for u := range gapOf {
		counts.gapTicks.Add(1)
		if offsetAt(z.loc, u-1) == offsetAt(z.loc, u) {
			fail("%s: tick %s for a skipped time is not the end of the gap", name, time.UnixMicro(u).In(z.loc))
		}
	}
	if c.daily {
		checkDaily(z, from, to, got, name, counts, fail)
	}
}

// checkDaily counts a daily schedule's ticks per local date over the dates
// wholly inside the window: one each, except where the zone skips a whole
// date or the gap that skips its time ends on the next date (that date
// then has two ticks, the first at the end of the gap).
func checkDaily(z *sweepZone, from, to int64, ticks []int64, name string, counts *sweepCounts, fail func(string, ...any)) {
	per := map[string]int{}
	for _, u := range ticks {
		per[time.UnixMicro(u).In(z.loc).Format(time.DateOnly)]++
	}
	first := time.UnixMicro(from).In(z.loc)
	for d := time.Date(first.Year(), first.Month(), first.Day()+1, 12, 0, 0, 0, time.UTC); ; d = d.AddDate(0, 0, 1) {
		// the date must lie wholly inside the window
		end := time.Date(d.Year(), d.Month(), d.Day()+1, 0, 0, 0, 0, z.loc)
		if end.UnixMicro()+int64(3*time.Hour/time.Microsecond) > to {
			break
		}
		counts.dailyDates.Add(1)
		key := d.Format(time.DateOnly)
		switch n := per[key]; n {
		case 1:
		case 0, 2:
			// allowed only if the shift is explained by a gap across midnight
			counts.dailyShifted.Add(1)
			if !gapAcrossMidnight(z.loc, d) {
				fail("%s: %d ticks on local date %s", name, n, key)
			}
		default:
			fail("%s: %d ticks on local date %s", name, n, key)
		}
	}
}

// gapAcrossMidnight reports whether a forward change near date d skips
// wall-clock times on two dates, d being one of them (or the date the gap
// ends on).
func gapAcrossMidnight(loc *time.Location, d time.Time) bool {
	day := floorDiv(time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, time.UTC).UnixMicro(), usPerDay)
	for x := (day - 3) * usPerDay; x < (day+3)*usPerDay; {
		p := periodAt(loc, x)
		if p.end == math.MaxInt64 {
			break
		}
		q := periodAt(loc, p.end)
		gs, ge := floorDiv(p.end+p.off, usPerDay), floorDiv(p.end+q.off, usPerDay)
		if q.off > p.off && gs != ge && gs <= day && day <= ge {
			return true
		}
		x = p.end
	}
	return false
}

func fmtTicks(ts []int64, loc *time.Location) string {
	var b strings.Builder
	for i, u := range ts {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(time.UnixMicro(u).In(loc).Format("01-02T15:04Z07:00"))
	}
	return b.String()
}

// Go reports wrong zone bounds past a zone's last explicit transition (the
// case of Go's own tzdata copy, whose files are slim): on 31 December of a
// leap year, and after a late explicit change such as Ciudad Juárez's on 30
// November 2022. Ticks stay right.
func TestScheduleZoneBoundsOfGoTzdata(t *testing.T) {
	t.Parallel()
	var goData *sweepSource
	for _, src := range loadZoneSources(t) {
		if strings.HasSuffix(src.name, ".zip") {
			goData = &src
		}
	}
	if goData == nil {
		t.Skip("Go's tzdata copy not found")
	}
	load := func(name string) *time.Location {
		loc, err := time.LoadLocationFromTZData(name, goData.files[name])
		if err != nil {
			t.Fatal(err)
		}
		return loc
	}
	ny := load("America/New_York")
	hourly := Every(time.Hour).In(ny)
	at := time.Date(2028, 12, 30, 23, 30, 0, 0, time.UTC)
	for i := 0; i < 30; i++ {
		n, err := hourly.NextTick(at)
		if want := at.Truncate(time.Hour).Add(time.Hour); err != nil || !n.Equal(want) {
			t.Fatalf("hourly in New York (Go's tzdata): Next(%s) = %s, %v; want %s", at, n, err, want)
		}
		if p, err := hourly.PrevTick(n); err != nil || !p.Equal(n.Add(-time.Hour)) {
			t.Fatalf("Prev(%s) = %s, %v", n, p, err)
		}
		at = n
	}
	cj := load("America/Ciudad_Juarez")
	c := MustCron("*/30 0-3 * * *").In(cj)
	if p := c.Prev(time.Date(2022, 11, 30, 7, 0, 0, 0, time.UTC)); !p.Equal(time.Date(2022, 11, 29, 9, 30, 0, 0, time.UTC)) {
		t.Errorf("Ciudad Juárez (Go's tzdata): Prev = %s, want 03:30 CST on 29 November", p.In(cj))
	}
}
