//go:build race

package periodic

// raceEnabled shortens the default schedule sweep under the race detector,
// which slows it tenfold and finds nothing in it (it is single-threaded per
// zone and shares no state).
const raceEnabled = true
