// Package history records what lock holders believed and what the resource
// accepted, and checks the record for violations of mutual exclusion and of
// liveness (bounded calls, no lock left behind).
//
// # Model
//
// A history has three kinds of safety events, all stamped with the SERVER's clock
// (clock_timestamp() of the one PostgreSQL server, read on a connection
// other than the lock connection, or by the fenced write itself), so that
// events of different processes compare without trusting their clocks:
//
//   - [Lease]: one grant. Before is a server time read before the acquire
//     call and Grant one read after it returned, so the real grant lies in
//     [Before, Grant]. End is when the holder stopped believing it held the
//     lock: read just before it sent the unlock (a clean release), or when it
//     observed the loss. Signalled is when the library reported the loss
//     (Done closed), read by an observer independent of the holder's logic.
//     The believed interval is [Grant, End].
//   - [Write]: one fenced write attempt, with the token it carried, whether
//     the resource accepted it, and for accepted ones the resource's own
//     commit order (Seq) and time.
//   - [Fault]: one injected fault, with the server-time window [From, To]
//     within which it took effect (and Until for faults that last, such as
//     a freeze or a partition), and whom it affected: a process, a backend
//     pid, or everyone (server restart or crash).
//
// and two kinds of liveness events:
//
//   - [Call]: one call into the lock library, with its duration on the
//     caller's monotonic clock and the bound its documentation gives it,
//     and, if it failed, whether the key stayed locked by the caller's
//     process afterwards (LeftHeld).
//   - [Quiet]: a quiet point, at which every caller had ended every call
//     and lease, and the locks the server still held on the run's keys.
//
// # Checks
//
// [Check] reports:
//
//	(a) overlap: two exclusive leases on one key whose believed intervals
//	    overlap while both holders were healthy. The earlier holder is the
//	    one with the smaller token. An overlap is excused only while that
//	    holder was in the window between a fault that took its lock (From of
//	    a fault aimed at it, or its own lease bound expiring) and the moment
//	    the loss was signalled to it, plus Options.Grace (one step of its
//	    critical section: it cannot know before its next look at Done). A
//	    holder that released cleanly is never excused, and any part of an
//	    overlap later than signal + Grace is a violation (acted-after-loss:
//	    the holder ignored Done). Excused overlaps are counted: they are
//	    what fencing is for.
//	(b) stale write accepted: an accepted write whose token is smaller than
//	    one the resource accepted before it on the same key. Rejected stale
//	    attempts are counted, not reported.
//	(c) unreported loss: a lease that ended as cleanly released although a
//	    fault that takes locks away hit it while it was believed held, or
//	    whose unlock found the lock already gone.
//	(d) token order: two leases on a key whose grants are certainly ordered
//	    (one's Grant before the other's Before) with tokens in the other
//	    order.
//	(e) call bound: a [Call] that took longer than its Bound, not counting
//	    time its process could not run (freezes and recorded stalls), or
//	    that never returned while its process lived (a call whose process
//	    was killed, Died, is not judged).
//	(f) error left held: a failed (or panicked) call after which the key
//	    stayed locked by a session of the caller's process, with no lease
//	    of the process on it or being acquired, for longer than the
//	    server's release time (the caller records this as LeftHeld).
//	(g) leaked lock: at a [Quiet] point (every worker idle, no fault in
//	    progress) a session held a lock on a key of the run through the
//	    settle time. The report names the pid, the application_name and the
//	    last failed call of the owning process on that key.
//
// # What it does NOT prove
//
// A history is a sample: a clean check says these runs had no violation,
// not that none can happen. Times read after an event bound it from above
// only, so excused windows and detection times are upper bounds, and an
// overlap shorter than a clock read could go unseen.
package history
