package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// ErrBlocked matches every refusal of the SSRF guard.
var ErrBlocked = errors.New("ssrf: destination refused")

// BlockedError says which destination the guard refused and why.
type BlockedError struct {
	Host   string     // as written in the URL or redirect
	Addr   netip.Addr // the address it resolved to
	Reason string     // "link-local", "private", "loopback", ...
	Stage  string     // "resolve", "dial" or "redirect"
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("ssrf: refused %s (%s, %s address) at %s; allow it explicitly if it is meant to be reachable", e.Host, e.Addr, e.Reason, e.Stage)
}

// Is makes errors.Is(err, ErrBlocked) true.
func (e *BlockedError) Is(target error) bool { return target == ErrBlocked }

// Guard keeps outbound HTTP calls away from internal addresses: loopback,
// private (RFC 1918, IPv6 unique local), link-local (169.254.0.0/16 with the
// cloud metadata endpoints, fe80::/10), carrier-grade NAT, unspecified,
// multicast and broadcast addresses, including IPv4 addresses embedded in
// IPv6 (mapped, NAT64, 6to4). Destinations are checked three times: after
// DNS resolution (every address the name resolves to must pass), at dial
// time on the address actually being connected (net.Dialer.Control, before
// connect(2): a refused dial sends no packet), and on every redirect.
type Guard struct {
	// Allow lists prefixes reachable despite the rules, e.g. 127.0.0.1/32
	// for a local test server.
	Allow []netip.Prefix
	// Resolver resolves host names; default net.DefaultResolver.
	Resolver interface {
		LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	}
	// OnDial, if set, is called at dial time after the guard accepted the
	// address, before connecting; an error aborts the dial. Tests use it to
	// record what would be connected and to refuse anything but loopback.
	OnDial func(network, address string) error
}

var (
	cgnat     = netip.MustParsePrefix("100.64.0.0/10")
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")
	broadcast = netip.MustParseAddr("255.255.255.255")
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Check reports whether a may be connected and, if not, why.
func (g *Guard) Check(a netip.Addr) (reason string, ok bool) {
	a = a.Unmap()
	for _, p := range g.Allow {
		if p.Contains(a) {
			return "", true
		}
	}
	// IPv4 inside IPv6: judge the embedded address.
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return g.Check(netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}))
		case sixToFour.Contains(a):
			return g.Check(netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}))
		}
	}
	switch {
	case !a.IsValid():
		return "invalid", false
	case a.IsLoopback():
		return "loopback", false
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local", false
	case a.IsPrivate():
		return "private", false
	case a.IsUnspecified(), thisNet.Contains(a):
		return "unspecified", false
	case a.IsMulticast(), a.IsInterfaceLocalMulticast(), a == broadcast:
		return "multicast or broadcast", false
	case cgnat.Contains(a):
		return "shared (carrier-grade NAT)", false
	}
	return "", true
}

func (g *Guard) resolver() interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
} {
	if g.Resolver != nil {
		return g.Resolver
	}
	return net.DefaultResolver
}

// resolve returns host's addresses, all of which must pass.
func (g *Guard) resolve(ctx context.Context, host, stage string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if addrs, err = g.resolver().LookupNetIP(rctx, "ip", host); err != nil {
			return nil, fmt.Errorf("ssrf: resolving %s: %w", host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("ssrf: %s resolves to no address", host)
		}
	}
	for _, a := range addrs {
		if reason, ok := g.Check(a); !ok {
			return nil, &BlockedError{Host: host, Addr: a, Reason: reason, Stage: stage}
		}
	}
	return addrs, nil
}

// control is the dial-time check on the address being connected.
func (g *Guard) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("ssrf: dialing %q: %w", address, err)
	}
	if reason, ok := g.Check(ap.Addr()); !ok {
		return &BlockedError{Host: address, Addr: ap.Addr(), Reason: reason, Stage: "dial"}
	}
	if g.OnDial != nil {
		return g.OnDial(network, address)
	}
	return nil
}

// Dialer returns the dialer whose Control enforces the guard.
func (g *Guard) Dialer() *net.Dialer {
	return &net.Dialer{Timeout: 10 * time.Second, Control: g.control}
}

// DialContext resolves addr's host, checks every address, and dials the
// accepted ones in turn through the guarded dialer.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := g.resolve(ctx, host, "resolve")
	if err != nil {
		return nil, err
	}
	d := g.Dialer()
	var errs []error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// Client returns an HTTP client whose connections and redirects go through
// the guard. It ignores proxy settings from the environment: a proxy would
// connect on our behalf, out of the guard's sight.
func (g *Guard) Client(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           g.DialContext,
			ForceAttemptHTTP2:     false,
			MaxIdleConns:          10,
			IdleConnTimeout:       30 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: timeout,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("ssrf: more than 5 redirects")
			}
			return g.CheckURL(req.Context(), req.URL, "redirect")
		},
	}
}

// CheckURL refuses URLs that are not http(s) or whose host resolves to a
// refused address.
func (g *Guard) CheckURL(ctx context.Context, u *url.URL, stage string) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%w: scheme %q (only http and https)", ErrBlocked, u.Scheme)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%w: port %q", ErrBlocked, p)
		}
	}
	_, err := g.resolve(ctx, u.Hostname(), stage)
	return err
}
