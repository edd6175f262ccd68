package pgtest

// Internal hooks for the external tests.

// CutPortWith is CutPort restricted to one tool ("nft" or "iptables").
var CutPortWith = cutPort

// TestDBName exposes the database naming of NewDatabase.
var TestDBName = testDBName

// EnvOptions exposes how Run applies the environment to its Options.
var EnvOptions = envOptions
