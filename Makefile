# The README's two commands are `make demo` and `make test`.
GO ?= go
BIN := $(CURDIR)/bin
DURATION ?= 30m

.PHONY: demo test lint bench bench-peers chaos fuzz build

## demo: runs several instances contending for a lock, then injects faults,
## on a throwaway local PostgreSQL (or DATABASE_URL / DSN=...).
demo:
	$(GO) run ./cmd/pgbaton demo $(if $(DSN),--dsn '$(DSN)')

## test: installs what is missing, then runs every test with -race.
test:
	./scripts/test.sh

build:
	$(GO) build -o $(BIN)/pgbaton ./cmd/pgbaton

lint:
	@test -x $(BIN)/golangci-lint || GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest
	$(BIN)/golangci-lint run ./...

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
