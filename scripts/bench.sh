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
# With "s3" first it runs the S3 benchmark (reconcile-bench -s3): it also
# starts versitygw (scripts/s3.sh, with its access log and keep-alive) and
# toxiproxy (scripts/toxiproxy.sh), which add latency between reconcile and
# the S3 server:
#     scripts/bench.sh s3 -runs 3
#     make bench-s3 BENCH_ARGS='-baseline-reconcile /path/to/older/reconcile'
#     make bench-s3 BENCH_ARGS='-derived -cron-due 0'   # with imagekit files
# With "orphans" first it times the orphan scan (reconcile-bench -orphans)
# on local disk, or with -s3 on versitygw (started then, reached directly):
#     scripts/bench.sh orphans
#     make bench-orphans BENCH_ARGS='-s3'
# Progress is on stderr, the figures on stdout. Exit status: the benchmark's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -d /usr/local/go/bin ]]; then
    PATH=/usr/local/go/bin:$PATH
fi

# shellcheck source=scripts/pg.sh
source scripts/pg.sh
# shellcheck source=scripts/s3.sh
source scripts/s3.sh
# shellcheck source=scripts/toxiproxy.sh
source scripts/toxiproxy.sh

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    toxiproxy_stop
    s3_stop
    pg_stop
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench=reconcile-bench
mode=()
need_s3=0
need_toxiproxy=0
case ${1:-} in
service)
    bench=reconcile-service-bench
    shift
    ;;
s3)
    mode=(-s3)
    need_s3=1
    need_toxiproxy=1
    shift
    ;;
orphans)
    mode=(-orphans)
    shift
    for arg in "$@"; do
        if [[ $arg == -s3 || $arg == --s3 || $arg == -s3=true || $arg == --s3=true ]]; then
            need_s3=1
        fi
    done
    ;;
esac
echo "bench.sh: building bin/reconcile and bin/$bench" >&2
go build -o bin/reconcile ./cmd/reconcile
go build -o "bin/$bench" "./cmd/$bench"

PG_FSYNC=on pg_start
if [[ $need_s3 == 1 ]]; then
    # reconcile-bench -s3 reads TEST_S3_*, S3_ACCESS_LOG_FILE and TOXIPROXY_URL.
    S3_ACCESS_LOG=1 S3_KEEP_ALIVE=1 s3_start
fi
if [[ $need_toxiproxy == 1 ]]; then
    toxiproxy_start
fi

# The orphans' floor runs the server's own psql.
if [[ ${mode[0]:-} == -orphans ]]; then
    mode+=(-psql "$PG_BIN/psql")
fi
"bin/$bench" "${mode[@]}" -database-url "$PG_URL" -reconcile bin/reconcile "$@"
