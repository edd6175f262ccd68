// Command seedjobs is a small service that runs the first seed's four
// background jobs with package periodic, on as many instances as you start:
//
//   - integrity-hash-retry (every 30s, transaction mode): hashes pending
//     audit records in batches of 50 (FOR UPDATE SKIP LOCKED) until none is
//     left; GET /v1/audit/{id} answers 202 while a record is pending and 200
//     with its hash once it is done;
//   - activation-drip (every 6h, transaction mode): reminder e-mails to
//     users who did not activate, one small update each;
//   - db-retention (every 24h, transaction mode): five DELETEs in one
//     transaction;
//   - test-scheduler (every 15m, lease mode): calls up to 20 capability URLs
//     through an SSRF guard and records each result independently.
//
// Each tick runs once across all instances; /health/jobs says whether every
// job has succeeded recently, anywhere. Configuration is by environment
// (see configFromEnv); intervals accept Go durations so tests run the jobs
// every second.
//
// # Guarantees and limits
//
// Every tick of every job runs at most once across the instances (see
// package periodic). Transaction-mode jobs commit their writes with their
// run record; the test-scheduler commits each result on its own and stops
// calling out when its lease is lost. The SSRF guard refuses internal
// destinations after DNS resolution, at dial time and on redirects; it does
// not inspect what an allowed server returns, and an allowlist entry opens
// its whole prefix.
package main
