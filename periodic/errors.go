package periodic

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrClosed: the scheduler is shut down (or shutting down).
	ErrClosed = errors.New("periodic: scheduler closed")
	// ErrInvalidConfig matches every [*ConfigError].
	ErrInvalidConfig = errors.New("periodic: invalid config")
	// ErrInvalidJob matches every [*JobError].
	ErrInvalidJob = errors.New("periodic: invalid job")
	// ErrJobExists: a job of that name is already scheduled by this
	// scheduler.
	ErrJobExists = errors.New("periodic: job already added")
	// ErrUnknownJob: no job of that name is scheduled by this scheduler.
	ErrUnknownJob = errors.New("periodic: unknown job")
	// ErrNotMigrated: the schema lacks the periodic tables.
	ErrNotMigrated = errors.New("periodic: the periodic tables do not exist; run pgbaton.Migrate (or (*pgbaton.Locker).Migrate) once before periodic.New")
	// ErrRunTimeout is the cause of a run's context when Job.Timeout
	// expires.
	ErrRunTimeout = errors.New("periodic: run timed out")
	// ErrShutdown is the cause of a run's context when the scheduler shuts
	// down and the grace period has passed.
	ErrShutdown = errors.New("periodic: scheduler shut down")
	// ErrRemoved is the cause of a run's context when its job is removed and
	// the grace period has passed.
	ErrRemoved = errors.New("periodic: job removed")
	// ErrStuck: a job function did not return after its context was
	// cancelled. See [*StuckError].
	ErrStuck = errors.New("periodic: job function did not return after cancellation")
)

// ConfigError names the Config field that failed validation and the fix.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("periodic: invalid config: %s: %s", e.Field, e.Msg)
}

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// JobError names the job and field that failed validation and the fix.
type JobError struct {
	Job   string
	Field string
	Msg   string
	Err   error // underlying cause, e.g. ErrInvalidSchedule
}

func (e *JobError) Error() string {
	return fmt.Sprintf("periodic: invalid job %q: %s: %s", e.Job, e.Field, e.Msg)
}

// Is makes errors.Is(err, ErrInvalidJob) true.
func (e *JobError) Is(target error) bool { return target == ErrInvalidJob }

// Unwrap returns the cause.
func (e *JobError) Unwrap() error { return e.Err }

// PanicError is a run's error when its function panicked: the panic is
// recovered, the run recorded as failed, and the scheduler goes on.
// ErrRunExited: the job function called runtime.Goexit (t.FailNow does)
// instead of returning. The run is recorded failed with it and its lock is
// released, as for a panic ([PanicError]).
var ErrRunExited = errors.New("periodic: the job function exited its goroutine (runtime.Goexit) before returning")

// PanicError: the job function panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("periodic: job panicked: %v", e.Value)
}

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// StuckError lists the runs whose functions had not returned CancelWait
// after their contexts were cancelled. Their runs are recorded as failed and
// their leases released; a transaction-mode function keeps its transaction
// (and lock) until it returns, when it is rolled back. The goroutines are
// still running user code.
type StuckError struct {
	Runs []string // "job@tick"
	Wait time.Duration
}

func (e *StuckError) Error() string {
	return fmt.Sprintf("periodic: %d run(s) did not return within %s of cancellation: %s; make job functions return when their context is cancelled",
		len(e.Runs), e.Wait, strings.Join(e.Runs, ", "))
}

// Is makes errors.Is(err, ErrStuck) true.
func (e *StuckError) Is(target error) bool { return target == ErrStuck }
