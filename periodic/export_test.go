package periodic

import "time"

// FireAt is when tick of job fires (tick plus its jitter), for tests.
func FireAt(s Schedule, job string, tick time.Time) time.Time { return fireAt(s, job, tick) }
