package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP forwarder for injecting network faults between a client
// and a server: a black hole that keeps every socket open, added latency,
// and connection resets. It listens on 127.0.0.1 at a free port.
//
// A userspace proxy cannot fake everything a real network cut does: its
// own kernel keeps acknowledging TCP segments and keepalives, so under
// BlackHole the server never notices that the client is gone. Use CutPort
// for that.
type Proxy struct {
	target  string
	ln      net.Listener
	done    chan struct{} // closed by Close
	dialCtx context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	latency atomic.Int64 // time.Duration

	mu      sync.Mutex
	closed  bool
	holed   bool
	gate    chan struct{} // closed when holed becomes false
	conns   map[*proxyConn]struct{}
	stalled int           // transfers waiting for Heal
	changed chan struct{} // closed and replaced when conns or stalled change
}

type proxyConn struct {
	client net.Conn
	server net.Conn // set once dialled, under Proxy.mu
	dead   chan struct{}
	once   sync.Once
}

// NewProxy listens on 127.0.0.1:0 and forwards each accepted connection to
// target (host:port, e.g. Cluster.TCPAddr()).
func NewProxy(target string) (*Proxy, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0") // NewProxy takes no context; a loopback listen does not block
	if err != nil {
		return nil, fmt.Errorf("pgtest: proxy listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target:  target,
		ln:      ln,
		done:    make(chan struct{}),
		dialCtx: ctx,
		cancel:  cancel,
		conns:   map[*proxyConn]struct{}{},
		changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Host returns "127.0.0.1".
func (p *Proxy) Host() string { return "127.0.0.1" }

// Port returns the listening port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// ProxyDSN returns a DSN for database db of c that goes through p.
func (c *Cluster) ProxyDSN(p *Proxy, db string) string {
	return "host=" + p.Host() + " port=" + strconv.Itoa(p.Port()) + " user=postgres dbname=" + dsnQuote(db) + " sslmode=disable"
}

// BlackHole stops forwarding in both directions without closing any
// socket: open connections hang, and new ones are accepted (by the kernel)
// but not forwarded to the target until Heal.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.holed {
		p.holed = true
		p.gate = make(chan struct{})
	}
}

// Heal resumes forwarding; bytes held back meanwhile are delivered.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holed {
		p.holed = false
		close(p.gate)
	}
}

// SetLatency delays every chunk of data by d, in each direction.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// ResetAll aborts every open connection with a TCP RST to both peers
// (SO_LINGER 0, then close).
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	p.mu.Unlock()
	for _, pc := range conns {
		p.abort(pc)
	}
}

// Conns returns the number of open client connections.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// WaitConns waits until exactly n client connections are open.
func (p *Proxy) WaitConns(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		have, ch := len(p.conns), p.changed
		p.mu.Unlock()
		if have == n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("pgtest: proxy has %d connections, want %d: %w", have, n, ctx.Err())
		}
	}
}

// Stalled returns how many transfers BlackHole is holding back: chunks of
// data, ends of stream, and new connections not yet forwarded.
func (p *Proxy) Stalled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// WaitStalled waits until BlackHole holds back at least n transfers, e.g.
// to know that a client's request is stuck before asserting on it.
func (p *Proxy) WaitStalled(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		have, ch := p.stalled, p.changed
		p.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("pgtest: proxy holds %d transfers, want %d: %w", have, n, ctx.Err())
		}
	}
}

// Close closes the listener and every connection and returns once all of
// the proxy's goroutines have ended.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	conns := make([]*proxyConn, 0, len(p.conns))
	for pc := range p.conns {
		conns = append(conns, pc)
	}
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	for _, pc := range conns {
		p.finish(pc)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		pc := &proxyConn{client: conn, dead: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = conn.Close() // the proxy is closed; the client just sees the connection end
			return
		}
		p.conns[pc] = struct{}{}
		p.notifyLocked()
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(pc)
	}
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) serve(pc *proxyConn) {
	defer p.wg.Done()
	defer p.finish(pc)
	// Under a black hole the target must not see the connection either.
	if !p.waitOpen(pc) {
		return
	}
	var d net.Dialer
	server, err := d.DialContext(p.dialCtx, "tcp", p.target)
	if err != nil {
		p.abort(pc)
		return
	}
	p.mu.Lock()
	select {
	case <-pc.dead:
		p.mu.Unlock()
		_ = server.Close() // the client side is already gone
		return
	default:
	}
	pc.server = server
	p.mu.Unlock()

	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		p.pump(pc, pc.client, server)
	}()
	p.pump(pc, server, pc.client)
	<-upDone
}

// pump copies src to dst chunk by chunk, applying latency and the black
// hole to data and to end-of-stream alike.
func (p *Proxy) pump(pc *proxyConn, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.delay(pc) || !p.waitOpen(pc) {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				p.abort(pc)
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			} else {
				p.abort(pc)
			}
			return
		}
	}
}

// delay sleeps for the current latency; false if pc or p ended meanwhile.
func (p *Proxy) delay(pc *proxyConn) bool {
	d := time.Duration(p.latency.Load())
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-pc.dead:
		return false
	case <-p.done:
		return false
	}
}

// waitOpen blocks while the proxy is black-holed; false if pc or p ended.
func (p *Proxy) waitOpen(pc *proxyConn) bool {
	counted := false
	defer func() {
		if counted {
			p.mu.Lock()
			p.stalled--
			p.notifyLocked()
			p.mu.Unlock()
		}
	}()
	for {
		p.mu.Lock()
		holed, gate := p.holed, p.gate
		if holed && !counted {
			counted = true
			p.stalled++
			p.notifyLocked()
		}
		p.mu.Unlock()
		if !holed {
			select {
			case <-pc.dead:
				return false
			default:
				return true
			}
		}
		select {
		case <-gate:
		case <-pc.dead:
			return false
		case <-p.done:
			return false
		}
	}
}

// abort resets both sides of pc.
func (p *Proxy) abort(pc *proxyConn) { p.end(pc, true) }

// finish closes both sides of pc.
func (p *Proxy) finish(pc *proxyConn) { p.end(pc, false) }

// end closes both sides of pc (once; with an RST if reset) and forgets it.
func (p *Proxy) end(pc *proxyConn, reset bool) {
	pc.once.Do(func() {
		p.mu.Lock()
		close(pc.dead) // from now on serve will not set pc.server
		server := pc.server
		if _, ok := p.conns[pc]; ok {
			delete(p.conns, pc)
			p.notifyLocked()
		}
		p.mu.Unlock()
		for _, c := range []net.Conn{pc.client, server} {
			if c == nil {
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok && reset {
				_ = tc.SetLinger(0)
			}
			_ = c.Close() // tearing the connection down; nothing to report to
		}
	})
}
