// Package browsertest drives Debian's Chromium (through chromedp) against
// pgbaton's dashboard, served by package web from a throwaway PostgreSQL
// cluster that holds a lock, a waiter and periodic history, and checks the
// rendered page as a person sees it.
//
// It is a module of its own so that chromedp and its dependencies stay out
// of pgbaton's go.mod. scripts/test.sh installs the chromium package when it
// is missing and runs it after the main suite; PGBATON_CHROMIUM names
// another browser binary. UPDATE_SCREENSHOT=1 writes the screenshot to
// docs/dashboard.png (the README's); it is always written to the test's
// temporary directory.
package browsertest
