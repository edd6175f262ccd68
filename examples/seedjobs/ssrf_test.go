package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// No test here sends a packet to a non-loopback address: refusals are
// asserted before any connection (the dial hook never sees the address),
// and the one public address the guard accepts is stopped by a recording
// dial hook that refuses everything but loopback.

// fakeDNS resolves test names without the network.
type fakeDNS map[string][]string

func (f fakeDNS) LookupNetIP(_ context.Context, _ string, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range f[host] {
		out = append(out, netip.MustParseAddr(s))
	}
	if len(out) == 0 {
		return nil, errors.New("no such host " + host)
	}
	return out, nil
}

// dials records the addresses the guard let through to the dial, and
// refuses every one that is not loopback.
type dials struct {
	mu   sync.Mutex
	seen []string
}

func (d *dials) hook(_, address string) error {
	d.mu.Lock()
	d.seen = append(d.seen, address)
	d.mu.Unlock()
	if ap := netip.MustParseAddrPort(address); !ap.Addr().Unmap().IsLoopback() {
		return errors.New("test hook: not connecting to " + address)
	}
	return nil
}

func (d *dials) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.seen...)
}

func TestGuardClassifiesAddresses(t *testing.T) {
	t.Parallel()
	g := &Guard{}
	for addr, want := range map[string]string{
		"169.254.169.254":        "link-local", // AWS/GCP/Azure metadata
		"169.254.0.1":            "link-local",
		"fe80::1":                "link-local",
		"10.0.0.1":               "private",
		"172.16.5.4":             "private",
		"172.31.255.255":         "private",
		"192.168.1.1":            "private",
		"fd00:ec2::254":          "private", // AWS IPv6 metadata (unique local)
		"127.0.0.1":              "loopback",
		"127.8.9.10":             "loopback",
		"::1":                    "loopback",
		"::ffff:10.0.0.1":        "private",    // IPv4-mapped
		"::ffff:169.254.169.254": "link-local", // IPv4-mapped
		"64:ff9b::a9fe:a9fe":     "link-local", // NAT64 of 169.254.169.254
		"2002:a00:1::":           "private",    // 6to4 of 10.0.0.1
		"0.0.0.0":                "unspecified",
		"::":                     "unspecified",
		"100.64.0.1":             "shared (carrier-grade NAT)",
		"239.1.2.3":              "multicast or broadcast",
		"224.0.0.251":            "link-local", // link-local multicast (mDNS)
		"255.255.255.255":        "multicast or broadcast",
	} {
		reason, ok := g.Check(netip.MustParseAddr(addr))
		if ok || reason != want {
			t.Errorf("%s: ok=%v reason %q, want refused as %q", addr, ok, reason, want)
		}
	}
	for _, addr := range []string{"93.184.216.34", "8.8.8.8", "172.32.0.1", "2606:4700::1111"} {
		if reason, ok := g.Check(netip.MustParseAddr(addr)); !ok {
			t.Errorf("%s refused as %s, want allowed", addr, reason)
		}
	}
	allow := &Guard{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	if _, ok := allow.Check(netip.MustParseAddr("127.0.0.1")); !ok {
		t.Error("127.0.0.1 refused despite the allowlist")
	}
	if _, ok := allow.Check(netip.MustParseAddr("127.0.0.2")); ok {
		t.Error("127.0.0.2 allowed by a /32 for 127.0.0.1")
	}
}

func TestGuardRefusesBeforeConnecting(t *testing.T) {
	t.Parallel()
	d := &dials{}
	g := &Guard{
		Resolver: fakeDNS{
			"metadata.test": {"169.254.169.254"},
			"internal.test": {"10.1.2.3"},
			"mixed.test":    {"93.184.216.34", "10.0.0.5"}, // one bad answer is enough
			"public.test":   {"93.184.216.34"},
		},
		OnDial: d.hook,
	}
	c := g.Client(5 * time.Second)
	get := func(u string) error {
		resp, err := c.Get(u)
		if err == nil {
			_ = resp.Body.Close()
		}
		return err
	}
	for _, u := range []string{
		"http://169.254.169.254/latest/meta-data/",
		"http://10.0.0.1/",
		"http://[::1]:9/",
		"http://[::ffff:169.254.169.254]/",
		"http://metadata.test/computeMetadata/v1/",
		"http://internal.test/",
		"http://mixed.test/",
	} {
		err := get(u)
		var be *BlockedError
		if !errors.As(err, &be) || !errors.Is(err, ErrBlocked) {
			t.Errorf("GET %s: %v, want a *BlockedError", u, err)
		}
	}
	if seen := d.list(); len(seen) != 0 {
		t.Errorf("refused destinations reached the dialer: %v", seen)
	}
	// A public address passes the guard; the test hook records it and
	// does not connect.
	if err := get("http://public.test/"); err == nil || !strings.Contains(err.Error(), "test hook") {
		t.Errorf("GET public: %v, want the test hook's refusal", err)
	}
	if seen := d.list(); len(seen) != 1 || seen[0] != "93.184.216.34:80" {
		t.Errorf("dialer saw %v, want the resolved public address", seen)
	}
	if err := g.CheckURL(context.Background(), mustURL(t, "file:///etc/passwd"), "check"); !errors.Is(err, ErrBlocked) {
		t.Errorf("file URL: %v", err)
	}
}

// TestGuardChecksAtDialTime: the dialer itself refuses a private address
// in its Control hook, before connect, whatever resolved it.
func TestGuardChecksAtDialTime(t *testing.T) {
	t.Parallel()
	d := &dials{}
	g := &Guard{OnDial: d.hook}
	for _, addr := range []string{"10.0.0.1:80", "169.254.169.254:80", "[fe80::1]:80"} {
		_, err := g.Dialer().DialContext(context.Background(), "tcp", addr)
		var be *BlockedError
		if !errors.As(err, &be) || be.Stage != "dial" {
			t.Errorf("dial %s: %v, want refused at dial", addr, err)
		}
	}
	if seen := d.list(); len(seen) != 0 {
		t.Errorf("the dial hook ran for refused addresses: %v", seen)
	}
}

// TestGuardChecksRedirects: an allowed local server redirecting to the
// metadata endpoint, or to a name that resolves to it, is refused at the
// redirect; only the local server is ever dialed.
func TestGuardChecksRedirects(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-metadata":
			http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/", http.StatusFound)
		case "/to-name":
			http.Redirect(w, r, "http://metadata.test/", http.StatusFound)
		case "/to-self":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			w.WriteHeader(http.StatusOK)
		}
	}))
	defer srv.Close()
	d := &dials{}
	g := &Guard{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, OnDial: d.hook,
		Resolver: fakeDNS{"metadata.test": {"169.254.169.254"}}}
	c := g.Client(5 * time.Second)
	defer c.CloseIdleConnections()
	for _, path := range []string{"/to-metadata", "/to-name"} {
		resp, err := c.Get(srv.URL + path)
		if err == nil {
			resp.Body.Close()
		}
		var be *BlockedError
		if !errors.As(err, &be) || be.Stage != "redirect" {
			t.Errorf("GET %s: %v, want refused at the redirect", path, err)
		}
	}
	resp, err := c.Get(srv.URL + "/to-self")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("allowed local redirect: %v", err)
	}
	resp.Body.Close()
	for _, a := range d.list() {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Errorf("dialed %s", a)
		}
	}
}

// TestLoopbackRefusedUnlessAllowed: the local test server is reachable
// only because the configuration allows it.
func TestLoopbackRefusedUnlessAllowed(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	resp, err := (&Guard{}).Client(5 * time.Second).Get(srv.URL)
	if err == nil {
		_ = resp.Body.Close()
	}
	if !errors.Is(err, ErrBlocked) {
		t.Errorf("loopback without an allowlist: %v, want refused", err)
	}
	cfg := Config{AllowTargets: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, DialLoopbackOnly: true}
	c := cfg.guard().Client(5 * time.Second)
	defer c.CloseIdleConnections()
	resp, err = c.Get(srv.URL)
	if err != nil {
		t.Fatalf("allowed loopback: %v", err)
	}
	resp.Body.Close()
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
