//go:build !race

package periodic

const raceEnabled = false
