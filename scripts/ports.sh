# shellcheck shell=bash
# Sourced by pg.sh, s3.sh and toxiproxy.sh: pick a free port on 127.0.0.1
# for a throwaway server, and stop one by its PID.

# _port_free PORT: true when nothing listens on 127.0.0.1:PORT.
_port_free() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        if ss -Htan "sport = :$port" 2>/dev/null | grep -q .; then
            return 1
        fi
    fi
    # /dev/tcp probe: a connection that succeeds means the port is taken.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        return 1
    fi
    return 0
}

# free_port: print a free TCP port in 20000-40000.
free_port() {
    local port i
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 20001))
        if _port_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    echo "free_port: no free port found" >&2
    return 1
}

# stop_pid PID NAME: TERM the process, KILL it if it lingers past 5 s, and
# reap it; NAME is for the message.
stop_pid() {
    local pid=$1 name=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        printf '%s pid %s did not stop on TERM; killing\n' "$name" "$pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# wait_port PID PORT TRIES: true once 127.0.0.1:PORT accepts a connection,
# false if PID exits first or TRIES tenths of a second pass.
wait_port() {
    local pid=$1 port=$2 tries=$3 i
    for ((i = 0; i < tries; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
