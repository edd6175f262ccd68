package pgtest

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

func (c *Cluster) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Crash makes the postmaster restart every session, as after a backend
// crash: it SIGKILLs one ordinary backend (a fresh idle one it opens), waits
// until another session it holds (running pg_sleep) has been terminated by
// the postmaster, and returns once the server accepts connections again
// (connections refused with 57P03 during recovery are retried). Every
// session open before the call is gone afterwards. It requires
// restart_after_crash=on (the default here) and signalling rights over the
// server processes (root or the same OS user).
func (c *Cluster) Crash(ctx context.Context) error {
	pm, err := c.running()
	if err != nil {
		return err
	}
	witness, err := c.connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("pgtest: crash: connect: %w", err)
	}
	defer closeQuietly(witness)
	victim, err := c.connect(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("pgtest: crash: connect: %w", err)
	}
	defer closeQuietly(victim)

	witnessCtx, cancelWitness := context.WithCancel(ctx)
	defer cancelWitness()
	witnessDone := make(chan struct{})
	go func() {
		defer close(witnessDone)
		// It ends in an error by design: the postmaster terminates it, or it is cancelled.
		_, _ = witness.Exec(witnessCtx, "SELECT pg_sleep(3600)")
	}()
	pid := int(victim.PgConn().PID())
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		cancelWitness()
		<-witnessDone
		return fmt.Errorf("pgtest: crash: kill backend %d: %w", pid, err)
	}
	c.logf("pgtest: crash: killed backend %d", pid)
	select {
	case <-witnessDone:
		// The postmaster has begun terminating every session.
	case <-pm.exited:
		<-witnessDone
		return fmt.Errorf("pgtest: crash: postmaster exited: %w", pm.err)
	case <-ctx.Done():
		cancelWitness()
		<-witnessDone
		return fmt.Errorf("pgtest: crash: waiting for the postmaster to react: %w", ctx.Err())
	}
	if err := c.waitReady(ctx, pm); err != nil {
		return fmt.Errorf("pgtest: crash: server did not come back: %w", err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are terminated,
// data kept). If ctx ends first the server is stopped immediately and
// ctx's error returned. Stopping a stopped cluster is a no-op.
func (c *Cluster) Stop(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("pgtest: cluster is closed")
	}
	pm := c.pm
	c.pm = nil
	c.mu.Unlock()
	if pm == nil {
		return nil
	}
	_ = pm.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pm.exited:
		c.wd.setPID(0)
		c.logf("pgtest: stopped cluster %s", c.base)
		return nil
	case <-ctx.Done():
		c.stopPostmaster(pm, syscall.SIGQUIT, immediateStopWait)
		return fmt.Errorf("pgtest: stop: %w", ctx.Err())
	}
}

// StartAgain starts a stopped cluster on the same port and socket.
func (c *Cluster) StartAgain(ctx context.Context) error {
	c.life.Lock()
	defer c.life.Unlock()
	c.mu.Lock()
	closed, running := c.closed, c.pm != nil
	c.mu.Unlock()
	switch {
	case closed:
		return errors.New("pgtest: cluster is closed")
	case running:
		return errors.New("pgtest: cluster is already running")
	}
	if err := c.startPostmaster(ctx); err != nil {
		return err
	}
	c.logf("pgtest: started cluster %s again (postmaster pid %d)", c.base, c.PostmasterPID())
	return nil
}

// Restart is Stop followed by StartAgain.
func (c *Cluster) Restart(ctx context.Context) error {
	if err := c.Stop(ctx); err != nil {
		return err
	}
	return c.StartAgain(ctx)
}

func closeQuietly(conn interface{ Close(context.Context) error }) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}
