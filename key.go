package pgbaton

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// KeySQL is a PostgreSQL expression that derives the same int8 key as
// [KeyName] from a text parameter $1. Any language with SHA-256 can do the
// same: take the first 8 bytes of SHA-256 over the UTF-8 bytes of the name and
// read them as a big-endian two's-complement int64.
//
//	SELECT pg_try_advisory_lock(('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint);
const KeySQL = `('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint`

// MaxKeyNameLen bounds the length of a key name in bytes.
const MaxKeyNameLen = 1024

type keySpace uint8

const (
	spaceInvalid keySpace = iota
	spaceInt64            // pg_advisory_lock(bigint): pg_locks objsubid = 1
	spacePair             // pg_advisory_lock(int, int): pg_locks objsubid = 2
)

// Key identifies an advisory lock. Build one with [KeyName], [KeyInt64] or
// [KeyPair]; the zero Key is invalid. Keys are comparable values.
//
// The two PostgreSQL key spaces never collide: KeyInt64(x) and KeyPair(a, b)
// are different locks even when their bits match.
type Key struct {
	name  string
	space keySpace
	id    int64 // the int8 key, or (a << 32 | uint32(b)) for pairs
}

// KeyName derives a key from a human-readable name, for example
// "incident.dedupe-open-for-system:" + systemID. The derivation is stable
// across versions and reproducible in SQL ([KeySQL]) and other languages: the
// first 8 bytes of SHA-256(name) as a big-endian int64. The name travels with
// the key into logs, errors and inspection.
//
// Distinct names can collide (probability about n²/2⁶⁵ for n names); a
// collision only makes two names share a lock, it never lets two holders in.
func KeyName(name string) Key {
	if name == "" || len(name) > MaxKeyNameLen || !utf8.ValidString(name) {
		return Key{name: name}
	}
	return Key{name: name, space: spaceInt64, id: nameID(name)}
}

// nameID is the int8 key that KeyName derives from name.
func nameID(name string) int64 {
	sum := sha256.Sum256([]byte(name))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// KeyInt64 is the key pg_advisory_lock(bigint) takes, for interoperating with
// code that already uses raw int8 keys.
func KeyInt64(id int64) Key { return Key{space: spaceInt64, id: id} }

// KeyPair is the key pg_advisory_lock(int, int) takes.
func KeyPair(a, b int32) Key {
	return Key{space: spacePair, id: int64(a)<<32 | int64(uint32(b))}
}

// Named returns a copy of k that carries name for logs and inspection without
// changing the lock it identifies.
func (k Key) Named(name string) Key { k.name = name; return k }

// Name returns the human-readable name, or "" for raw keys.
func (k Key) Name() string { return k.name }

// ID returns the int8 key. For pair keys it returns a<<32 | uint32(b), which
// is how pg_locks spreads them over classid and objid.
func (k Key) ID() int64 { return k.id }

// Pair returns the two int4 halves and whether k is a pair key.
func (k Key) Pair() (a, b int32, ok bool) {
	return int32(k.id >> 32), int32(uint32(k.id)), k.space == spacePair
}

// Valid reports whether k identifies a lock.
func (k Key) Valid() bool { return k.space != spaceInvalid }

// String returns the name if any, else the raw form ("int8:42", "pair:1,2").
func (k Key) String() string {
	if k.name != "" {
		return k.name
	}
	return k.raw()
}

func (k Key) raw() string {
	switch k.space {
	case spaceInt64:
		return fmt.Sprintf("int8:%d", k.id)
	case spacePair:
		a, b, _ := k.Pair()
		return fmt.Sprintf("pair:%d,%d", a, b)
	}
	return "invalid"
}

func (k Key) validate() error {
	if k.space != spaceInvalid {
		return nil
	}
	switch {
	case k.name == "":
		return fmt.Errorf("%w: the zero Key; build one with KeyName, KeyInt64 or KeyPair", ErrInvalidKey)
	case len(k.name) > MaxKeyNameLen:
		return fmt.Errorf("%w: name is %d bytes, the limit is %d", ErrInvalidKey, len(k.name), MaxKeyNameLen)
	default:
		return fmt.Errorf("%w: name %q is not valid UTF-8", ErrInvalidKey, k.name)
	}
}

// ident is the lock's identity, ignoring the name.
type ident struct {
	space keySpace
	id    int64
}

func (k Key) ident() ident { return ident{k.space, k.id} }
