#!/usr/bin/env bash
# The test command (make test, .ci/run).
#
#     scripts/test.sh                          gofmt, go vet, staticcheck, the deployment
#                                              files (scripts/check-deploy.sh), then go test ./...
#     scripts/test.sh -run TestX ./reconciler/ only go test with these args (no lint;
#                                              LINT=1 to lint as well); list the packages
#
# Starts a throwaway PostgreSQL 15 (scripts/pg.sh) and versitygw (scripts/s3.sh)
# and exports, for the tests:
#     TEST_DATABASE_URL    postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
#                          (superuser; wal_level=logical, 20 replication slots)
#     TEST_S3_ENDPOINT     127.0.0.1:PORT (plain HTTP)
#     TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY, TEST_S3_REGION (us-east-1)
# Both are stopped and their temp dirs removed on exit, Ctrl-C and TERM.
# Exit status: go test's when it fails, else 1 when a lint step failed, else 0.
# Options (environment): SKIP_LINT=1, LINT=1, GO_TEST_TIMEOUT (default 30m),
# NO_RACE=1 (drop -race).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -d /usr/local/go/bin ]]; then
    PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null || {
    echo "test.sh: go not found (expected /usr/local/go/bin/go)" >&2
    exit 1
}
GOBIN_DIR=$(go env GOBIN)
[[ -n $GOBIN_DIR ]] || GOBIN_DIR=$(go env GOPATH)/bin
PATH=$GOBIN_DIR:$PATH
export PATH

# shellcheck source=scripts/pg.sh
source scripts/pg.sh
# shellcheck source=scripts/s3.sh
source scripts/s3.sh

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Quietly: go test's lines should close the output.
    s3_stop 2>/dev/null
    pg_stop 2>/dev/null
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n=== %s\n' "$*"; }

lint=1
if [[ $# -gt 0 && ${LINT:-} != 1 ]]; then
    lint=
fi
if [[ ${SKIP_LINT:-} == 1 ]]; then
    lint=
fi

failed=()
if [[ -n $lint ]]; then
    step "gofmt -l ."
    unformatted=$(gofmt -l . 2>&1) || true
    if [[ -n $unformatted ]]; then
        echo "test.sh: these files need gofmt -w:" >&2
        echo "$unformatted" >&2
        failed+=(gofmt)
    fi

    step "go vet ./..."
    go vet ./... || failed+=("go vet")

    step "staticcheck ./..."
    if ! command -v staticcheck >/dev/null 2>&1; then
        echo "test.sh: installing staticcheck v0.8.2..." >&2
        (cd / && GOFLAGS='' go install honnef.co/go/tools/cmd/staticcheck@v0.8.2) || {
            echo "test.sh: could not install staticcheck" >&2
            failed+=(staticcheck-install)
        }
    fi
    if command -v staticcheck >/dev/null 2>&1; then
        staticcheck ./... || failed+=(staticcheck)
    fi

    step "scripts/check-deploy.sh"
    bash scripts/check-deploy.sh || failed+=(check-deploy)
fi

step "starting PostgreSQL 15 and versitygw"
pg_start
s3_start
export TEST_DATABASE_URL=$PG_URL

if [[ $# -eq 0 ]]; then
    set -- ./...
fi
race=(-race)
if [[ ${NO_RACE:-} == 1 ]]; then
    race=()
fi
step "go test ${race[*]} -count=1 -timeout ${GO_TEST_TIMEOUT:-30m} $*"
test_status=0
go test "${race[@]}" -count=1 -timeout "${GO_TEST_TIMEOUT:-30m}" "$@" || test_status=$?

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
fi
if [[ $test_status -ne 0 ]]; then
    exit "$test_status"
fi
if [[ ${#failed[@]} -gt 0 ]]; then
    exit 1
fi
