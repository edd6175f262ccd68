package pgtest

// Internal hooks for the external tests.

// CutPortWith is CutPort restricted to one tool ("nft" or "iptables").
var CutPortWith = cutPort

// TestDBName exposes the database naming of NewDatabase.
var TestDBName = testDBName
