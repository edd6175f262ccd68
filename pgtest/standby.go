package pgtest

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
)

// StartStandby makes a streaming hot standby of c: pg_basebackup -R over
// c's unix socket into a new temp dir, then postgres on its own port with
// hot_standby=on. It returns once the standby accepts read-only
// connections. The standby is a Cluster of its own (Close it, or let c's
// Close close it); write operations on it fail as on any standby.
func (c *Cluster) StartStandby(ctx context.Context) (_ *Cluster, err error) {
	c.life.Lock()
	defer c.life.Unlock()
	if _, err := c.running(); err != nil {
		return nil, err
	}
	s, err := newCluster(ctx, c.opts, c.keep)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.Close() // it removes what was made; the start error is the one to report
		}
	}()
	s.standby = true
	s.template = c.template
	s.version = c.version
	s.settings = maps.Clone(c.settings)
	s.settings["hot_standby"] = "on"

	bbLog := filepath.Join(s.base, "pg_basebackup.log")
	if err := s.runTool(ctx, bbLog, "pg_basebackup",
		"-h", c.base, "-p", strconv.Itoa(c.port), "-U", "postgres",
		"-D", s.dataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return nil, fmt.Errorf("pgtest: pg_basebackup: %w%s", err, fileTail(bbLog))
	}
	if s.baseConf, err = os.ReadFile(filepath.Join(s.dataDir, "postgresql.conf")); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := s.startWithFreePort(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.standbys = append(c.standbys, s)
	c.mu.Unlock()
	c.logf("pgtest: started standby of %s in %s (port %d)", c.base, s.base, s.port)
	return s, nil
}
