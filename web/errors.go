package web

import "errors"

// ErrConfig matches every error of [New] and [CheckListen] about the
// configuration itself (a missing database, an interval below MinInterval,
// a listen address that is not host:port); the message names the field.
var ErrConfig = errors.New("web: invalid configuration")

// ErrInsecureListen is returned by [CheckListen] for an address that other
// machines could reach without the two explicit choices it needs: the
// caller allowed remote access, and configured a bearer token or basic
// authentication.
var ErrInsecureListen = errors.New("web: refusing to serve the dashboard beyond loopback without explicit permission and authentication")
