# shellcheck shell=bash
# Throwaway toxiproxy (a TCP proxy that adds latency and other faults) for the
# S3 benchmark.
#
# Sourced:
#     source scripts/toxiproxy.sh
#     toxiproxy_start    # the server, its HTTP API on a free 127.0.0.1 port
#     ...                # proxies and toxics are made over the API ($TOXIPROXY_URL)
#     toxiproxy_stop     # kill by PID, rm -rf the temp dir (idempotent)
#
# Options (environment):
#     TOXIPROXY_VERSION   module version to go install when missing (default v2.5.0)
#
# Exported by toxiproxy_start:
#     TOXIPROXY_URL       http://127.0.0.1:PORT, the API
#     TOXIPROXY_PID, TOXIPROXY_PORT, TOXIPROXY_DIR
#     TOXIPROXY_LOG       its log: one "Accepted client" line per connection
#                         a proxy accepts
# The server starts with no proxy.
#
# The caller owns the traps: none is installed here, so that one EXIT trap can
# stop PostgreSQL, versitygw and toxiproxy together.

# v2.5.0 is the newest version the Go module proxy serves under this path.
TOXIPROXY_VERSION=${TOXIPROXY_VERSION:-v2.5.0}

_toxiproxy_log() { printf 'toxiproxy.sh: %s\n' "$*" >&2; }

# shellcheck source=scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# _toxiproxy_is_server FILE: true when FILE is a build of toxiproxy's server
# (go install names it plain "server").
_toxiproxy_is_server() {
    go version -m "$1" 2>/dev/null | grep -Eq '^[[:space:]]+path[[:space:]]+github\.com/Shopify/toxiproxy/v2/cmd/server$'
}

# toxiproxy_install: make sure toxiproxy's server is built (go install into
# GOPATH/bin when missing; under a minute). Sets TOXIPROXY_SERVER to its path.
toxiproxy_install() {
    local gobin
    if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
        PATH=/usr/local/go/bin:$PATH
    fi
    gobin=$(go env GOBIN 2>/dev/null)
    [[ -n $gobin ]] || gobin=$(go env GOPATH 2>/dev/null)/bin
    TOXIPROXY_SERVER=$gobin/server
    if [[ -x $TOXIPROXY_SERVER ]]; then
        if _toxiproxy_is_server "$TOXIPROXY_SERVER"; then
            return 0
        fi
        _toxiproxy_log "$TOXIPROXY_SERVER exists and is not toxiproxy's server; not overwriting it"
        return 1
    fi
    _toxiproxy_log "installing toxiproxy $TOXIPROXY_VERSION (go install)..."
    if ! (cd / && GOFLAGS='' go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"); then
        _toxiproxy_log "go install toxiproxy failed"
        return 1
    fi
    [[ -x $TOXIPROXY_SERVER ]] || {
        _toxiproxy_log "toxiproxy not found at $TOXIPROXY_SERVER"
        return 1
    }
}

# toxiproxy_start: start the server; see the header for exports.
toxiproxy_start() {
    if [[ -n ${TOXIPROXY_PID:-} ]] && kill -0 "$TOXIPROXY_PID" 2>/dev/null; then
        _toxiproxy_log "already started (pid $TOXIPROXY_PID)"
        return 0
    fi
    toxiproxy_install || return 1

    TOXIPROXY_DIR=$(mktemp -d /tmp/reconcile-toxiproxy.XXXXXX) || return 1
    TOXIPROXY_LOG=$TOXIPROXY_DIR/toxiproxy.log
    export TOXIPROXY_DIR TOXIPROXY_LOG

    local port attempt up
    for attempt in 1 2 3 4 5; do
        port=$(free_port) || {
            toxiproxy_stop
            return 1
        }
        "$TOXIPROXY_SERVER" -host 127.0.0.1 -port "$port" </dev/null >"$TOXIPROXY_LOG" 2>&1 &
        TOXIPROXY_PID=$!
        export TOXIPROXY_PID
        if wait_port "$TOXIPROXY_PID" "$port" 100; then
            up=1
            break
        fi
        if kill -0 "$TOXIPROXY_PID" 2>/dev/null; then
            kill "$TOXIPROXY_PID" 2>/dev/null || true
        fi
        wait "$TOXIPROXY_PID" 2>/dev/null || true
        TOXIPROXY_PID=
        if ! grep -qi 'address already in use' "$TOXIPROXY_LOG"; then
            break
        fi
        _toxiproxy_log "port taken, retrying (attempt $attempt)"
    done
    if [[ -z $up ]]; then
        _toxiproxy_log "toxiproxy failed to start; log:"
        tail -n 30 "$TOXIPROXY_LOG" >&2
        toxiproxy_stop
        return 1
    fi

    TOXIPROXY_PORT=$port
    TOXIPROXY_URL=http://127.0.0.1:$port
    export TOXIPROXY_PORT TOXIPROXY_URL
    _toxiproxy_log "toxiproxy ready on 127.0.0.1:$port (pid $TOXIPROXY_PID, dir $TOXIPROXY_DIR)"
}

# toxiproxy_stop: stop the server by PID and remove its temp dir; safe to
# call twice or after a failed toxiproxy_start.
toxiproxy_stop() {
    local dir=${TOXIPROXY_DIR:-}
    stop_pid "${TOXIPROXY_PID:-}" toxiproxy
    if [[ -n $dir ]]; then
        rm -rf -- "$dir" || true
        _toxiproxy_log "stopped; removed $dir"
    fi
    unset TOXIPROXY_PID TOXIPROXY_DIR TOXIPROXY_PORT TOXIPROXY_URL TOXIPROXY_LOG
    return 0
}
