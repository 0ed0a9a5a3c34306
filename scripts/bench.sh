#!/usr/bin/env bash
# The benchmark (make bench): builds bin/reconcile and bin/reconcile-bench,
# starts a throwaway PostgreSQL 15 with fsync ON (scripts/pg.sh, PG_FSYNC=on),
# runs
#     reconcile-bench -database-url $PG_URL -reconcile bin/reconcile "$@"
# and stops PostgreSQL. Extra args go to reconcile-bench, e.g.
#     scripts/bench.sh -rows 20000 -runs 3
#     make bench BENCH_ARGS='-rows 20000 -skip-mem'
# With "service" first it runs the service's benchmark instead
# (cmd/reconcile-service-bench: apply throughput against pg_recvlogical,
# memory, purge latency):
#     scripts/bench.sh service -runs 3
#     make bench-service BENCH_ARGS='-rows 200000'
# Progress is on stderr, the figures on stdout. Exit status: the benchmark's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -d /usr/local/go/bin ]]; then
    PATH=/usr/local/go/bin:$PATH
fi

# shellcheck source=scripts/pg.sh
source scripts/pg.sh

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    pg_stop
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench=reconcile-bench
if [[ ${1:-} == service ]]; then
    bench=reconcile-service-bench
    shift
fi
echo "bench.sh: building bin/reconcile and bin/$bench" >&2
go build -o bin/reconcile ./cmd/reconcile
go build -o "bin/$bench" "./cmd/$bench"

PG_FSYNC=on pg_start

"bin/$bench" -database-url "$PG_URL" -reconcile bin/reconcile "$@"
