#!/usr/bin/env bash
# Throwaway S3 server (versitygw, posix backend) for tests.
#
# Sourced (the usual way):
#     source scripts/s3.sh
#     s3_start     # versitygw on a free 127.0.0.1 port, data in a temp dir
#     ...          # TEST_S3_ENDPOINT etc. are exported
#     s3_stop      # kill by PID, rm -rf the temp dir (idempotent)
#
# Run directly:
#     scripts/s3.sh run CMD [ARGS...]   start, run CMD with the TEST_S3_* vars, stop;
#                                       exits with CMD's status
#
# Options (environment):
#     VERSITYGW_VERSION   module version to go install when missing (default v1.8.0)
#     S3_FIXED_PORT=N     use this port instead of a random free one in 20000-40000
#     S3_ACCESS_LOG=1     log every request to $S3_DIR/access.log (S3_ACCESS_LOG_FILE)
#     S3_KEEP_ALIVE=1     keep connections open between requests, as S3 does
#                         (versitygw closes each one after its response by default)
#
# Exported by s3_start:
#     TEST_S3_ENDPOINT     127.0.0.1:PORT (plain HTTP, path-style)
#     TEST_S3_ACCESS_KEY   random root access key
#     TEST_S3_SECRET_KEY   random root secret key
#     TEST_S3_REGION       us-east-1
#     S3_DIR, S3_PID, S3_PORT
#     S3_ACCESS_LOG_FILE   with S3_ACCESS_LOG=1: one line per request, the
#                          operation as its 8th field (s3_PutObject, ...)
# No bucket is created: each test makes its own. The data lives under
# $S3_DIR/data (one directory per bucket).

VERSITYGW_VERSION=${VERSITYGW_VERSION:-v1.8.0}

_s3_log() { printf 's3.sh: %s\n' "$*" >&2; }

# shellcheck source=scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# _s3_rand N: N random alphanumeric characters.
_s3_rand() {
    local n=$1 out=
    out=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom 2>/dev/null | head -c "$n") || true
    echo "$out"
}

# s3_install: make sure versitygw is on PATH (go install into GOPATH/bin if
# missing; about 2 minutes on a fresh machine). Sets VERSITYGW to its path.
s3_install() {
    local gobin
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        PATH=/usr/local/go/bin:$PATH
    fi
    gobin=$(go env GOBIN 2>/dev/null)
    [[ -n $gobin ]] || gobin=$(go env GOPATH 2>/dev/null)/bin
    if [[ -x $gobin/versitygw ]]; then
        VERSITYGW=$gobin/versitygw
    elif command -v versitygw >/dev/null 2>&1; then
        VERSITYGW=$(command -v versitygw)
    else
        _s3_log "installing versitygw $VERSITYGW_VERSION (go install, ~2 min on a fresh machine)..."
        if ! (cd / && GOFLAGS='' go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"); then
            _s3_log "go install versitygw failed"
            return 1
        fi
        VERSITYGW=$gobin/versitygw
    fi
    [[ -x $VERSITYGW ]] || {
        _s3_log "versitygw not found at $VERSITYGW"
        return 1
    }
}

# s3_start: start versitygw; see the header for exports.
s3_start() {
    if [[ -n ${S3_PID:-} ]] && kill -0 "$S3_PID" 2>/dev/null; then
        _s3_log "already started (pid $S3_PID)"
        return 0
    fi
    s3_install || return 1

    S3_DIR=$(mktemp -d /tmp/reconcile-s3.XXXXXX) || return 1
    export S3_DIR
    mkdir -p "$S3_DIR/data"

    local access secret port attempt up
    local -a extra=()
    if [[ ${S3_ACCESS_LOG:-} == 1 ]]; then
        S3_ACCESS_LOG_FILE=$S3_DIR/access.log
        export S3_ACCESS_LOG_FILE
        extra+=(--access-log "$S3_ACCESS_LOG_FILE")
    fi
    if [[ ${S3_KEEP_ALIVE:-} == 1 ]]; then
        extra+=(--keep-alive)
    fi
    access=$(_s3_rand 20)
    secret=$(_s3_rand 40)
    if [[ ${#access} -ne 20 || ${#secret} -ne 40 ]]; then
        _s3_log "could not make random keys"
        s3_stop
        return 1
    fi

    for attempt in 1 2 3 4 5; do
        if [[ -n ${S3_FIXED_PORT:-} ]]; then
            port=$S3_FIXED_PORT
        else
            port=$(free_port) || {
                s3_stop
                return 1
            }
        fi
        # Keys through the environment, not argv, so that they stay out of ps.
        ROOT_ACCESS_KEY_ID=$access ROOT_SECRET_ACCESS_KEY=$secret \
            "$VERSITYGW" --port "127.0.0.1:$port" --quiet "${extra[@]}" \
            posix "$S3_DIR/data" </dev/null >"$S3_DIR/versitygw.log" 2>&1 &
        S3_PID=$!
        export S3_PID
        if wait_port "$S3_PID" "$port" 200; then
            up=1
            break
        fi
        if kill -0 "$S3_PID" 2>/dev/null; then
            kill "$S3_PID" 2>/dev/null || true
        fi
        wait "$S3_PID" 2>/dev/null || true
        S3_PID=
        if [[ -n ${S3_FIXED_PORT:-} ]] || ! grep -qi 'address already in use' "$S3_DIR/versitygw.log"; then
            break
        fi
        _s3_log "port taken, retrying (attempt $attempt)"
    done
    if [[ -z $up ]]; then
        _s3_log "versitygw failed to start; log:"
        tail -n 30 "$S3_DIR/versitygw.log" >&2
        s3_stop
        return 1
    fi

    S3_PORT=$port
    TEST_S3_ENDPOINT=127.0.0.1:$port
    TEST_S3_ACCESS_KEY=$access
    TEST_S3_SECRET_KEY=$secret
    TEST_S3_REGION=us-east-1
    export S3_PORT TEST_S3_ENDPOINT TEST_S3_ACCESS_KEY TEST_S3_SECRET_KEY TEST_S3_REGION
    _s3_log "versitygw ready on 127.0.0.1:$port (pid $S3_PID, dir $S3_DIR)"
}

# s3_stop: stop versitygw by PID and remove its temp dir; safe to call twice.
s3_stop() {
    local dir=${S3_DIR:-}
    stop_pid "${S3_PID:-}" versitygw
    if [[ -n $dir ]]; then
        rm -rf -- "$dir" || true
        _s3_log "stopped; removed $dir"
    fi
    unset S3_PID S3_DIR S3_PORT S3_ACCESS_LOG_FILE TEST_S3_ENDPOINT TEST_S3_ACCESS_KEY TEST_S3_SECRET_KEY TEST_S3_REGION
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    run)
        shift
        [[ $# -gt 0 ]] || {
            echo "usage: $0 run CMD [ARGS...]" >&2
            exit 2
        }
        trap s3_stop EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        s3_start
        echo "TEST_S3_ENDPOINT=$TEST_S3_ENDPOINT" >&2
        status=0
        "$@" || status=$?
        exit "$status"
        ;;
    *)
        echo "usage: source $0 (then s3_start / s3_stop), or $0 run CMD [ARGS...]" >&2
        exit 2
        ;;
    esac
fi
