package pgtest_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgbaton/pgbaton/pgtest"
)

// The orphan tests re-execute this test binary in a helper mode in which
// TestMain's pgtest.Run starts the shared cluster as usual and
// TestHelperProcess then dies without any clean-up running. The parent
// checks that the watchdog stops every postmaster and removes every temp
// dir (and packet filter rule) within a bounded time.

const helperLine = "PGTEST_HELPER"

func TestNoOrphanAfterPanic(t *testing.T) {
	t.Parallel()
	testNoOrphan(t, "panic")
}

func TestNoOrphanAfterExit(t *testing.T) {
	t.Parallel()
	testNoOrphan(t, "exit")
}

func TestNoOrphanAfterSIGKILL(t *testing.T) {
	t.Parallel()
	testNoOrphan(t, "sigkill")
}

// TestHelperProcess is the child's side; it does nothing in a normal run.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper for the TestNoOrphan* tests")
	}
	ctx := testCtx(t, time.Minute)
	c := pgtest.Shared()
	report := func(kind string, c *pgtest.Cluster) {
		fmt.Printf("%s %s pid=%d dir=%s\n", helperLine, kind, c.PostmasterPID(), c.Dir())
	}
	report("cluster", c)
	switch mode {
	case "panic":
		// A second cluster with a standby: every one must go.
		own, err := pgtest.Start(ctx, pgtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		report("cluster", own)
		s, err := own.StartStandby(ctx)
		if err != nil {
			t.Fatal(err)
		}
		report("cluster", s)
		fmt.Printf("%s ready\n", helperLine)
		// A panic in another goroutine skips every defer and t.Cleanup.
		done := make(chan struct{})
		go func() {
			defer close(done)
			panic("pgtest helper: deliberate panic")
		}()
		<-done
	case "exit":
		fmt.Printf("%s ready\n", helperLine)
		os.Exit(3)
	case "sigkill":
		// A network cut must not outlive the process either.
		if cut, err := pgtest.CutPort(ctx, c.Port()); err == nil {
			fmt.Printf("%s cut backend=%s\n", helperLine, cut.Backend())
		}
		fmt.Printf("%s ready\n", helperLine)
		if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL to self: %v", err)
		}
	}
	t.Fatal("helper survived")
}

type helperCluster struct {
	pid int
	dir string
}

func testNoOrphan(t *testing.T, mode string) {
	ctx := testCtx(t, 90*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err == nil {
		t.Fatalf("helper exited 0; output:\n%s\n%s", out, stderr.Bytes())
	}
	var clusters []helperCluster
	ready, cut := false, ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != helperLine {
			continue
		}
		switch f[1] {
		case "ready":
			ready = true
		case "cut":
			cut = strings.TrimPrefix(f[2], "backend=")
		case "cluster":
			pid, _ := strconv.Atoi(strings.TrimPrefix(f[2], "pid="))
			clusters = append(clusters, helperCluster{pid, strings.TrimPrefix(f[3], "dir=")})
		}
	}
	if !ready || len(clusters) == 0 {
		t.Fatalf("helper did not get ready (%v); output:\n%s\nstderr:\n%s", err, out, stderr.Bytes())
	}
	for _, hc := range clusters {
		if hc.pid <= 0 || !strings.HasPrefix(filepath.Base(hc.dir), "pgtest-") {
			t.Fatalf("bad report %+v", hc)
		}
	}
	t.Logf("helper (%s) died: %v; checking %d clusters (network cut: %q)", mode, err, len(clusters), cut)

	// Poll external process and file system state, bounded.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for _, hc := range clusters {
			if alive(hc.pid) {
				left = append(left, fmt.Sprintf("postmaster %d alive", hc.pid))
			}
			if _, err := os.Stat(hc.dir); !os.IsNotExist(err) {
				left = append(left, hc.dir+" exists")
			}
			if procs := processesMentioning(hc.dir); len(procs) > 0 {
				left = append(left, fmt.Sprintf("processes %v mention %s", procs, hc.dir))
			}
		}
		if cut == "nft" && nftHasTablesOf(cmd.Process.Pid) {
			left = append(left, "nft table of the helper still present")
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphans 10s after the helper died: %s", strings.Join(left, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesMentioning lists live processes whose command line contains s.
func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(b, []byte(s)) && alive(pid) && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

func nftHasTablesOf(pid int) bool {
	out, err := exec.Command("nft", "list", "tables").Output()
	return err == nil && bytes.Contains(out, []byte(fmt.Sprintf("pgtest_cut_%d_", pid)))
}
