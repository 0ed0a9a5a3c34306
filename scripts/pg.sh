#!/usr/bin/env bash
# Throwaway PostgreSQL 15 for tests, the demo and the benchmark.
#
# Sourced (the usual way):
#     source scripts/pg.sh
#     pg_start            # initdb in a temp dir, start on a free 127.0.0.1 port
#     psql "$PG_URL" ...  # or: pg_psql -c 'select 1'
#     pg_restart MODE     # pg_ctl restart -m fast|immediate, same port
#     pg_halt             # pg_ctl stop -m fast, keeping the data (pg_resume starts it again)
#     pg_resume           # pg_ctl start after pg_halt, same port
#     pg_stop             # pg_ctl stop -m fast, rm -rf the temp dir (idempotent)
#
# Run directly:
#     scripts/pg.sh run CMD [ARGS...]   start, run CMD with PG_URL/DATABASE_URL set, stop;
#                                       exits with CMD's status
#     scripts/pg.sh shell               start and open psql on it; stops when psql exits
#
# Options (environment, read by pg_start):
#     PG_FSYNC=off|on      fsync (default off: tests only; bench.sh sets on)
#     PG_FIXED_PORT=N      use this port instead of a random free one in 20000-40000
#     PG_BIN=DIR           server binaries (default /usr/lib/postgresql/15/bin)
#     PG_KEEP=1            leave the data dir behind on pg_stop (for debugging)
#
# Exported by pg_start:
#     PG_URL, DATABASE_URL  postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
#     PG_PORT, PG_DIR (temp dir: data/, the socket and postgres.log), PG_BIN, PG_PID
#
# The server: wal_level=logical, max_replication_slots=20, max_wal_senders=20,
# listen_addresses=127.0.0.1 only, socket in the temp dir, trust auth for all
# (replication included) from 127.0.0.1. It refuses to run as root, so as root
# initdb/pg_ctl run as the 'postgres' user (runuser).
#
# The caller owns the traps: pg.sh installs none when sourced, so that a script
# that also starts versitygw can stop both in one EXIT trap.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

_pg_log() { printf 'pg.sh: %s\n' "$*" >&2; }

# _pg_as_owner CMD...: run CMD as the owner of the cluster.
_pg_as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# pg_install: install postgresql-15 when its server binary is missing.
pg_install() {
    if [[ -x $PG_BIN/postgres ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        _pg_log "$PG_BIN/postgres not found; install postgresql-15 (apt-get install postgresql-15) as root"
        return 1
    fi
    _pg_log "installing postgresql-15 (apt-get)..."
    export DEBIAN_FRONTEND=noninteractive
    # Debian's postinst may create and start a 'main' cluster on 5432: harmless,
    # never used here.
    if ! apt-get install -y -q postgresql-15 >/dev/null 2>&1; then
        if ! { apt-get update -q >/dev/null && apt-get install -y -q postgresql-15 >/dev/null; }; then
            _pg_log "apt-get install postgresql-15 failed"
            return 1
        fi
    fi
    [[ -x $PG_BIN/postgres ]] || {
        _pg_log "postgresql-15 installed but $PG_BIN/postgres is missing"
        return 1
    }
}

# shellcheck source=scripts/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

# pg_start: start the throwaway server; see the header for options and exports.
pg_start() {
    if [[ -n ${PG_DIR:-} && -d ${PG_DIR:-} ]]; then
        _pg_log "already started in $PG_DIR"
        return 0
    fi
    pg_install || return 1

    local fsync=${PG_FSYNC:-off}
    case $fsync in on | off) ;; *)
        _pg_log "PG_FSYNC must be on or off, got '$fsync'"
        return 1
        ;;
    esac

    # /tmp so that the postgres user can reach it when we are root; short, for
    # the unix socket path limit.
    PG_DIR=$(mktemp -d /tmp/reconcile-pg.XXXXXX) || return 1
    export PG_DIR
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$PG_DIR" || return 1
    fi

    if ! _pg_as_owner "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 --no-instructions >"$PG_DIR/initdb.log" 2>&1; then
        _pg_log "initdb failed:"
        cat "$PG_DIR/initdb.log" >&2
        pg_stop
        return 1
    fi

    # initdb --auth=trust writes 'host replication all 127.0.0.1/32 trust';
    # make sure of it.
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' \
        "$PG_DIR/data/pg_hba.conf"; then
        echo 'host replication all 127.0.0.1/32 trust' >>"$PG_DIR/data/pg_hba.conf"
    fi

    local attempt port
    for attempt in 1 2 3 4 5; do
        if [[ -n ${PG_FIXED_PORT:-} ]]; then
            port=$PG_FIXED_PORT
        else
            port=$(free_port) || {
                pg_stop
                return 1
            }
        fi
        # postgresql.auto.conf is read after postgresql.conf: rewrite it on
        # every attempt so only the chosen port is set.
        cat >"$PG_DIR/data/postgresql.auto.conf" <<CONF
# written by scripts/pg.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DIR'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
fsync = $fsync
full_page_writes = $fsync
max_connections = 200
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
CONF
        if [[ $(id -u) -eq 0 ]]; then
            chown postgres: "$PG_DIR/data/postgresql.auto.conf"
        fi
        if _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" \
            -w -t 60 start >/dev/null 2>&1; then
            break
        fi
        port=
        if [[ -n ${PG_FIXED_PORT:-} ]] || ! grep -q 'could not bind\|Address already in use' "$PG_DIR/postgres.log" 2>/dev/null; then
            break
        fi
        _pg_log "port taken, retrying (attempt $attempt)"
    done
    if [[ -z $port ]]; then
        _pg_log "postgres failed to start; log:"
        tail -n 30 "$PG_DIR/postgres.log" >&2 2>/dev/null
        pg_stop
        return 1
    fi

    local i
    for ((i = 0; i < 120; i++)); do
        if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
            break
        fi
        sleep 0.25
    done
    if ! "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; then
        _pg_log "postgres not ready on 127.0.0.1:$port; log:"
        tail -n 30 "$PG_DIR/postgres.log" >&2
        pg_stop
        return 1
    fi

    PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null)
    PG_PORT=$port
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
    DATABASE_URL=$PG_URL
    export PG_PORT PG_URL DATABASE_URL PG_PID PG_BIN
    _pg_log "postgres $("$PG_BIN/postgres" -V | awk '{print $3}') ready on 127.0.0.1:$port (pid $PG_PID, fsync=$fsync, dir $PG_DIR)"
}

# pg_psql ARGS...: psql on the throwaway server, quiet, stopping at the first error.
pg_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$PG_URL" "$@"
}

# pg_restart fast|immediate: restart the server started by pg_start (PG_DIR),
# on the same port; tests use it to cut every connection.
pg_restart() {
    local mode=${1:-fast}
    [[ -n ${PG_DIR:-} && -d $PG_DIR/data ]] || {
        _pg_log "pg_restart: no server in PG_DIR"
        return 1
    }
    _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -m "$mode" -w -t 60 restart >/dev/null
}

# pg_halt: stop the server, keeping its data for pg_resume.
pg_halt() {
    [[ -n ${PG_DIR:-} && -d $PG_DIR/data ]] || {
        _pg_log "pg_halt: no server in PG_DIR"
        return 1
    }
    _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >/dev/null
}

# pg_resume: start again a server that pg_halt stopped.
pg_resume() {
    [[ -n ${PG_DIR:-} && -d $PG_DIR/data ]] || {
        _pg_log "pg_resume: no server in PG_DIR"
        return 1
    }
    _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null
}

# pg_stop: stop the server and remove its temp dir; safe to call twice or
# after a failed pg_start.
pg_stop() {
    local dir=${PG_DIR:-}
    [[ -n $dir ]] || return 0
    if [[ -f $dir/data/postmaster.pid ]]; then
        local pid
        pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
        if ! _pg_as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
                _pg_log "pg_ctl stop failed; killing postgres pid $pid"
                kill -QUIT "$pid" 2>/dev/null || true
                sleep 1
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    elif [[ -n ${PG_PID:-} ]] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -INT "$PG_PID" 2>/dev/null || true
    fi
    if [[ ${PG_KEEP:-} == 1 ]]; then
        _pg_log "stopped; kept $dir"
    else
        rm -rf -- "$dir" || true
        _pg_log "stopped; removed $dir"
    fi
    unset PG_DIR PG_PID PG_PORT PG_URL DATABASE_URL
    return 0
}

# Run directly: subcommands.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case ${1:-} in
    run)
        shift
        [[ $# -gt 0 ]] || {
            echo "usage: $0 run CMD [ARGS...]" >&2
            exit 2
        }
        trap pg_stop EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        pg_start
        echo "PG_URL=$PG_URL" >&2
        status=0
        "$@" || status=$?
        exit "$status"
        ;;
    shell)
        trap pg_stop EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        pg_start
        echo "PG_URL=$PG_URL" >&2
        "$PG_BIN/psql" -X "$PG_URL" || true
        ;;
    *)
        echo "usage: source $0 (then pg_start / pg_stop), or $0 run CMD [ARGS...], or $0 shell" >&2
        exit 2
        ;;
    esac
fi
