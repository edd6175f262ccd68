package inspect

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -run %s -update rewrites it after review):\n--- got\n%s\n--- want\n%s", name, t.Name(), got, want)
	}
}

// goldenSnapshot is a fixed snapshot with one key of every class, built by
// the same code as Take from pg_locks-shaped rows.
func goldenSnapshot() *Snapshot {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	addr, port, local := "10.0.0.7", int32(51234), int32(-1)
	act := func(app, state string, change time.Duration, xact *time.Time, query string) activityRow {
		return activityRow{hasActivity: true, appName: app, clientAddr: &addr, clientPort: &port, state: state,
			stateChange: ago(change), xactStart: xact, backendStart: ago(time.Hour), query: query, user: "app", backendType: "client backend"}
	}
	int8Row := func(id int64, pid int, granted bool, a activityRow) row {
		return row{objsubid: 1, classid: uint32(uint64(id) >> 32), objid: uint32(id), pid: pid, mode: "ExclusiveLock", granted: granted, activityRow: a}
	}
	leaked := int8Row(-4242424242, 101, true, act("billing-api", "idle", 7*time.Minute, nil, "SELECT pg_advisory_unlock($1)"))
	idle1 := int8Row(11, 201, true, act("audit-worker", "idle in transaction", 40*time.Second, ago(41*time.Second), "SELECT pg_advisory_xact_lock($1)"))
	idle2 := int8Row(12, 202, true, act("audit-worker", "idle in transaction", 39*time.Second, ago(40*time.Second), "SELECT pg_advisory_xact_lock($1)"))
	waiter := int8Row(11, 203, false, act("audit-worker", "active", 35*time.Second, ago(35*time.Second), "SELECT pg_advisory_xact_lock($1)"))
	waiter.waitStart, waiter.blockedBy = ago(35*time.Second), []int32{201}
	waiter.waitEventType, waiter.waitEvent = "Lock", "advisory"
	stale := int8Row(13, 301, true, act("pgbaton:api-2:3", "idle", 12*time.Second, nil, "SELECT 1"))
	healthy := int8Row(14, 302, true, act("pgbaton:api-1:1", "idle", 300*time.Millisecond, nil, "SELECT 1"))
	healthy.clientPort = &local
	healthy.clientAddr = nil
	pair := row{objsubid: 2, classid: uint32(7), objid: uint32(0xfffffff6), pid: 401, mode: "ShareLock", granted: true,
		activityRow: act("reports", "active", 2*time.Second, ago(2*time.Second), "SELECT ...")}
	hidden := int8Row(15, 501, true, activityRow{})
	rs := []row{leaked, idle1, idle2, waiter, stale, healthy, pair, hidden}
	o := Options{}.withDefaults()
	s := build(rs, now, o)
	names := map[int64]string{-4242424242: "incident.dedupe-open-for-system:42", 11: "audit.integrity:1", 12: "audit.integrity:2",
		13: "orders.sync", 14: "periodic:nightly"}
	for i := range s.Keys {
		if n, ok := names[s.Keys[i].ID]; ok && s.Keys[i].Form == FormInt8 {
			s.Keys[i].Name, s.Keys[i].NameSource = n, SourceRegistry
		}
		if s.Keys[i].ID == 14 {
			s.Keys[i].NameSource = SourcePeriodic
			h := &s.Keys[i].Holders[0]
			h.HeldSince, h.HeldSinceSource, h.HeldFor = ago(3*time.Minute), HeldSincePeriodicRun, dur(3*time.Minute)
		}
	}
	classify(s, o)
	return s
}

func TestGoldenTable(t *testing.T) {
	var b bytes.Buffer
	if err := goldenSnapshot().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "table.golden", b.Bytes())
}

func TestGoldenJSON(t *testing.T) {
	b, err := json.MarshalIndent(goldenSnapshot(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "snapshot.golden.json", append(b, '\n'))
	// It reads back to the same snapshot.
	var back Snapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.MarshalIndent(&back, "", "  ")
	if !bytes.Equal(again, b) {
		t.Error("the JSON does not survive a round trip")
	}
}

// TestGoldenSchema pins the JSON schema: every field path and type. A change
// here must come with a decision on Version (removed or changed fields bump
// it; added fields do not).
func TestGoldenSchema(t *testing.T) {
	var lines []string
	var walk func(prefix string, ty reflect.Type)
	walk = func(prefix string, ty reflect.Type) {
		for ty.Kind() == reflect.Pointer {
			ty = ty.Elem()
		}
		switch ty.Kind() {
		case reflect.Struct:
			if ty == reflect.TypeOf(time.Time{}) {
				lines = append(lines, prefix+": string (RFC 3339 time)")
				return
			}
			for i := range ty.NumField() {
				f := ty.Field(i)
				if f.Anonymous {
					walk(prefix, f.Type)
					continue
				}
				tag := f.Tag.Get("json")
				if tag == "" || tag == "-" {
					continue
				}
				name, opts, _ := strings.Cut(tag, ",")
				p := prefix + "." + name
				if opts == "omitempty" {
					p += "?"
				}
				walk(p, f.Type)
			}
		case reflect.Slice, reflect.Array:
			walk(prefix+"[]", ty.Elem())
		case reflect.Map:
			lines = append(lines, prefix+": object of "+ty.Elem().Kind().String())
		default:
			lines = append(lines, prefix+": "+ty.Kind().String())
		}
	}
	walk("", reflect.TypeOf(Snapshot{}))
	sort.Strings(lines)
	golden(t, "schema.golden", []byte(strings.Join(append([]string{"version " + itoa(Version)}, lines...), "\n")+"\n"))
}

func itoa(i int) string { return strconv.Itoa(i) }
