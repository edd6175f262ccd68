package periodic

import "time"

// Replay makes a scheduler run on a replayed time line, for tests: from
// the real instant real, time runs speed times as fast from start, for the
// local clock, the database's time and the loop's sleeps alike. Schedulers
// given the same arguments share the time line.
func Replay(c *Config, start, real time.Time, speed float64) {
	c.replay = &replay{Start: start, Real: real, Speed: speed}
}
