package prometheus

import (
	"fmt"
	"testing"
)

// TestBoundedMemory: however many distinct values arrive, at most max get
// series of their own and the lookup map stays within (overflowFactor+1)*max
// entries; values beyond stay counted under Other.
func TestBoundedMemory(t *testing.T) {
	t.Parallel()
	made := map[string]int{}
	b := bounded[string]{max: 3, make: func(l string) *string { made[l]++; return &l }}
	for round := range 2 {
		for i := range 1000 {
			v := fmt.Sprintf("f%d", i)
			got := *b.get(v)
			if i < 3 && got != v || i >= 3 && got != Other {
				t.Fatalf("round %d: get(%q) = %q", round, v, got)
			}
		}
	}
	if n := len(*b.known.Load()); n > (overflowFactor+1)*3 {
		t.Fatalf("map holds %d values, want at most %d", n, (overflowFactor+1)*3)
	}
	if len(made) != 4 || made[Other] != 1 {
		t.Fatalf("made series for %v, want 3 values and Other once", made)
	}
}
