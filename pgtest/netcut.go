package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrNetCutUnsupported is returned (wrapped, with the reason) by CutPort
// when packet filtering is not available: not root, neither nft nor
// iptables installed, or a kernel without nf_tables.
var ErrNetCutUnsupported = errors.New("pgtest: network cut unsupported (needs root and nftables or iptables, e.g. apt-get install nftables)")

// Cut is a silent network cut of one local TCP port on the loopback
// interface, made with a packet filter: every segment to or from the port
// is dropped on input, so neither side gets an error or a reset, and
// TCP keepalives and retransmissions go unanswered exactly as across a
// broken network. Unlike Proxy.BlackHole, the server therefore notices the
// cut (after tcp_keepalives_* or tcp_user_timeout) and ends the session,
// releasing its locks.
//
// Cutting a server's port cuts all its TCP clients; cutting a client's
// local (ephemeral) port cuts that one connection only. The rule is
// system-wide (the network namespace of the test process) and is removed
// by Heal, or by a watchdog process if the test process dies.
type Cut struct {
	port    int
	backend string
	heal    [][]string // commands that remove the rule
	wd      *watchdog

	mu     sync.Mutex
	healed bool
	err    error
}

var cutCounter atomic.Uint64

// CutPort drops every TCP segment to or from local port on the loopback
// interface until Heal. It needs root (CAP_NET_ADMIN) and the nft or
// iptables command; otherwise the error wraps ErrNetCutUnsupported.
func CutPort(ctx context.Context, port int) (*Cut, error) {
	return cutPort(ctx, port, "")
}

// cutPort is CutPort with the tool forced ("nft", "iptables"; "" tries
// nft first).
func cutPort(ctx context.Context, port int, only string) (*Cut, error) {
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("pgtest: CutPort: invalid port %d", port)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: not running as root", ErrNetCutUnsupported)
	}
	var reasons []string
	for _, backend := range []string{"nft", "iptables"} {
		if only != "" && backend != only {
			continue
		}
		path := findSbin(backend)
		if path == "" {
			reasons = append(reasons, backend+": not installed")
			continue
		}
		cut, err := cutWith(ctx, backend, path, port)
		if err == nil {
			return cut, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		reasons = append(reasons, err.Error())
	}
	return nil, fmt.Errorf("%w: %s", ErrNetCutUnsupported, strings.Join(reasons, "; "))
}

func cutWith(ctx context.Context, backend, path string, port int) (*Cut, error) {
	p := strconv.Itoa(port)
	var install, heal [][]string
	var stdin string
	switch backend {
	case "nft":
		table := fmt.Sprintf("pgtest_cut_%d_%d", os.Getpid(), cutCounter.Add(1))
		// Priority -300 runs before connection tracking; the input hook
		// sees both directions of loopback traffic, and dropping there (not
		// on output) gives the sender no local error.
		stdin = "table inet " + table + " {\n" +
			"\tchain input {\n" +
			"\t\ttype filter hook input priority -300; policy accept;\n" +
			"\t\tiif \"lo\" tcp dport " + p + " drop\n" +
			"\t\tiif \"lo\" tcp sport " + p + " drop\n" +
			"\t}\n}\n"
		install = [][]string{{path, "-f", "-"}}
		heal = [][]string{{path, "delete", "table", "inet", table}}
	case "iptables":
		// IPv4 only: the harness's servers listen on 127.0.0.1.
		comment := fmt.Sprintf("pgtest-cut-%d-%d", os.Getpid(), cutCounter.Add(1))
		rule := func(op, dir string) []string {
			return []string{path, "-w", op, "INPUT", "-i", "lo", "-p", "tcp", dir, p,
				"-m", "comment", "--comment", comment, "-j", "DROP"}
		}
		install = [][]string{rule("-I", "--dport"), rule("-I", "--sport")}
		heal = [][]string{rule("-D", "--dport"), rule("-D", "--sport")}
	}
	cut := &Cut{port: port, backend: backend, heal: heal}
	// Arm the watchdog first so a rule never outlives the test process.
	var script strings.Builder
	for _, h := range heal {
		script.WriteString(shellJoin(h) + " 2>/dev/null\n")
	}
	wd, err := startWatchdog(script.String())
	if err != nil {
		return nil, err
	}
	cut.wd = wd
	for i, argv := range install {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		if stdin != "" {
			cmd.Stdin = strings.NewReader(stdin)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			for _, undo := range heal[:i] {
				// Undone even when ctx has ended (which may be why install failed).
				_ = exec.CommandContext(context.WithoutCancel(ctx), undo[0], undo[1:]...).Run()
			}
			wd.disarm()
			return nil, fmt.Errorf("%s: %w: %s", backend, err, bytes.TrimSpace(out))
		}
	}
	return cut, nil
}

// Port returns the cut port.
func (c *Cut) Port() int { return c.port }

// Backend returns the tool that made the cut: "nft" or "iptables".
func (c *Cut) Backend() string { return c.backend }

// Heal removes the rule. Segments dropped meanwhile are lost; TCP
// retransmits them if both ends still hold the connection. Idempotent.
func (c *Cut) Heal() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.healed {
		return c.err
	}
	c.healed = true
	var errs []error
	for _, argv := range c.heal {
		// Heal has no caller context: the rule must come off regardless.
		if out, err := exec.CommandContext(context.Background(), argv[0], argv[1:]...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: heal cut of port %d: %s: %w: %s", c.port, c.backend, err, bytes.TrimSpace(out)))
		}
	}
	c.wd.disarm()
	c.err = errors.Join(errs...)
	return c.err
}

// findSbin looks name up on PATH and in the sbin directories, which a
// non-login PATH may lack.
func findSbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		if p := dir + "/" + name; isExecutable(p) {
			return p
		}
	}
	return ""
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
