# reconcile: build, test, demo, benchmark.
#
#   make build   bin/reconcile
#   make test    gofmt, go vet, staticcheck, go test -race on a throwaway
#                PostgreSQL 15 and versitygw (scripts/test.sh);
#                make test TEST_ARGS='-run TestX ./reconciler/' for a focused run
#   make demo    the end-to-end demo on a throwaway PostgreSQL (scripts/demo.sh)
#   make bench   the benchmark, PostgreSQL with fsync on (scripts/bench.sh);
#                make bench BENCH_ARGS='-rows 20000 -runs 3'
#   make bench-service  the service's benchmark: applying a million changes
#                against pg_recvlogical, memory, purge latency;
#                make bench-service BENCH_ARGS='-tables 1,3 -rows 200000
#                -tx-rows 10000 -runs 3': one table and three tables in
#                turn, the same changes spread over the three, and the ratios
#   make bench-s3  the S3 path with 10 ms of latency each way (versitygw behind
#                toxiproxy): rows/s of --rescan and of the cron algorithm;
#                make bench-s3 BENCH_ARGS='-baseline-reconcile OLD_BINARY';
#                make bench-s3 BENCH_ARGS='-derived -cron-due 0': with
#                three imagekit files a row, against the same rows without
#   make bench-orphans  the orphan scan against find, \copy, sort and comm:
#                1,000,000 files on local disk (make bench-orphans
#                BENCH_ARGS='-s3': 100,000 objects on versitygw)
#   make check-deploy  check deploy/ with promtool and systemd-analyze
#   make clean   remove bin/
#
# The scripts install what they need when it is missing: postgresql-15
# (apt-get, as root), versitygw, staticcheck and toxiproxy (go install into
# GOPATH/bin).

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
TEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all build test demo bench bench-service bench-s3 bench-orphans check-deploy clean

all: build

build:
	$(GO) build -o bin/reconcile ./cmd/reconcile

test:
	bash scripts/test.sh $(TEST_ARGS)

demo:
	bash scripts/demo.sh

bench:
	bash scripts/bench.sh $(BENCH_ARGS)

bench-service:
	bash scripts/bench.sh service $(BENCH_ARGS)

bench-s3:
	bash scripts/bench.sh s3 $(BENCH_ARGS)

bench-orphans:
	bash scripts/bench.sh orphans $(BENCH_ARGS)

check-deploy:
	bash scripts/check-deploy.sh

clean:
	rm -rf bin
