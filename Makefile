# The README's two commands are `make demo` and `make test`.
GO ?= go
# pipefail: a failed build is not hidden by the progress filter after it.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
BIN := $(CURDIR)/bin
DURATION ?= 30m

.PHONY: demo test lint bench bench-peers chaos fuzz build

## demo: runs several instances contending for a lock, then injects faults,
## on a throwaway local PostgreSQL. DATABASE_URL is ignored: DSN=... runs it
## against that database (--dsn), contention only unless ALLOW_FAULTS=1.
demo:
	@echo "building pgbaton (a first build downloads modules and compiles for a minute or two)..."
	@$(GO) mod download -x 2>&1 | awk '/^# get .*: 200 OK/ {n++} END {if (n) print "  downloaded " n " module files"}'
	@$(GO) build -v -o $(BIN)/pgbaton ./cmd/pgbaton 2>&1 | awk '/^#|:[0-9]+:/ {print; next} {n++; if (n % 20 == 1) print "  compiling " $$0 "..."}'
	$(BIN)/pgbaton demo $(if $(DSN),--dsn '$(DSN)') $(if $(ALLOW_FAULTS),--allow-faults-on-dsn)

## test: installs what is missing, then runs every test with -race.
test:
	@echo "compiling the tests with -race (a first build downloads modules and takes a few minutes)..."
	@$(GO) mod download -x 2>&1 | awk '/^# get .*: 200 OK/ {n++} END {if (n) print "  downloaded " n " module files"}'
	@$(GO) test -race -count=1 -exec /bin/true ./... 2>&1 | awk '/^(ok|---|FAIL)/ {print "  compiled " $$2} !/^(ok|---|FAIL|\?)/ {print}'
	./scripts/test.sh

build:
	$(GO) build -o $(BIN)/pgbaton ./cmd/pgbaton

lint:
	@test -x $(BIN)/golangci-lint || GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest
	$(BIN)/golangci-lint run ./...
# The nested modules (contrib/*, web/browsertest, bench if present): ./... stops at a go.mod.
	for d in $(dir $(wildcard */go.mod */*/go.mod)); do (cd $$d && $(BIN)/golangci-lint run ./...) || exit 1; done

## bench: the benchmarks behind BENCHMARKS.md, several runs, medians.
bench:
	./scripts/bench.sh

## bench-peers: BENCHMARKS.md's first table: pgbaton vs raw pgx, tokens,
## go-redsync (local redis-server) and xact locks, then the cross-process
## handoff, on a durable cluster (REPS, DUR; bench/ is its own module).
bench-peers:
	./scripts/bench-peers.sh

## chaos: the fault-injection safety suite for DURATION (default 30m).
chaos:
	./scripts/chaos.sh $(DURATION)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzKeyName -fuzztime 30s .
	$(GO) test -run '^$$' -fuzz FuzzConfigFromEnv -fuzztime 30s .
