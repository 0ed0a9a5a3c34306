# shellcheck shell=bash
# Sourced by pg.sh and s3.sh: pick a free port on 127.0.0.1 for a
# throwaway server.

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
