package pgbaton

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"
	"unicode/utf8"

	"github.com/pgbaton/pgbaton/pgtest"
)

// Published vectors: changing the derivation breaks every deployment that
// mixes versions, so these must never change.
func TestKeyNameVectors(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]int64{
		"smoke": 348334952753398317,
		"xact":  -1447194311847666880,
	} {
		if got := KeyName(name).ID(); got != want {
			t.Errorf("KeyName(%q).ID() = %d, want %d", name, got, want)
		}
	}
}

// KeySQL reproduces the Go derivation in the server.
func TestKeySQLMatchesGo(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared().NewDatabase(t)
	c := adminConn(t, dsn)
	names := []string{"a", "incident.dedupe-open-for-system:42", "ключ", "🔒 lock", "x\ty", string(make([]byte, 0, 1)) + "z"}
	for i := range 200 {
		names = append(names, fmt.Sprintf("job:%d:%x", i, i*7919))
	}
	for _, name := range names {
		var got int64
		if err := c.QueryRow(testCtx(t), "SELECT "+KeySQL, name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if want := KeyName(name).ID(); got != want {
			t.Fatalf("SQL derivation of %q = %d, Go = %d", name, got, want)
		}
	}
}

func TestKeyForms(t *testing.T) {
	t.Parallel()
	k := KeyPair(-1, 7)
	if a, b, ok := k.Pair(); !ok || a != -1 || b != 7 {
		t.Fatalf("Pair() = %d, %d, %v", a, b, ok)
	}
	if k.String() != "pair:-1,7" || KeyInt64(-3).String() != "int8:-3" {
		t.Fatalf("String() = %q, %q", k.String(), KeyInt64(-3).String())
	}
	if n := KeyInt64(5).Named("job"); n.String() != "job" || n.ident() != KeyInt64(5).ident() {
		t.Fatal("Named changed the lock or lost the name")
	}
	if KeyPair(0, 1).ident() == KeyInt64(1).ident() {
		t.Fatal("pair and int8 keys share an identity")
	}
	for _, bad := range []Key{{}, KeyName(""), KeyName(string([]byte{0xff})), KeyName(string(make([]byte, MaxKeyNameLen+1)))} {
		if bad.Valid() || bad.validate() == nil {
			t.Fatalf("invalid key %q accepted", bad.name)
		}
	}
}

func FuzzKeyName(f *testing.F) {
	for _, s := range []string{"", "a", "incident:1", "ключ", "\xff", "🔒"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		k := KeyName(name)
		wantValid := name != "" && len(name) <= MaxKeyNameLen && utf8.ValidString(name)
		if k.Valid() != wantValid {
			t.Fatalf("KeyName(%q).Valid() = %v", name, k.Valid())
		}
		if k.Name() != name {
			t.Fatalf("name not kept: %q", k.Name())
		}
		if !wantValid {
			if k.validate() == nil {
				t.Fatal("invalid key validates")
			}
			return
		}
		sum := sha256.Sum256([]byte(name))
		if want := int64(binary.BigEndian.Uint64(sum[:8])); k.ID() != want || KeyName(name) != k {
			t.Fatalf("derivation of %q not stable: %d vs %d", name, k.ID(), want)
		}
		if _, _, pair := k.Pair(); pair {
			t.Fatal("name key reported as pair")
		}
	})
}

func FuzzKeyPair(f *testing.F) {
	f.Add(int32(0), int32(0))
	f.Add(int32(-1), int32(-2147483648))
	f.Fuzz(func(t *testing.T, a, b int32) {
		ga, gb, ok := KeyPair(a, b).Pair()
		if !ok || ga != a || gb != b {
			t.Fatalf("KeyPair(%d, %d) round trip = %d, %d, %v", a, b, ga, gb, ok)
		}
	})
}
