#!/bin/bash
# Health check of the p2pshare image: `p2pshare-healthcheck index|peer`.
#   index: the index server answers a real stats request (`peer stats`).
#   peer:  the peer accepts connections on the port it listens on.
# The ports come from the same environment variables the binaries read.
set -euo pipefail

port_of() { # "0.0.0.0:6699" or "[::]:6699" -> 6699
    local addr="$1"
    printf '%s\n' "${addr##*:}"
}

case "${1:-}" in
index)
    port="$(port_of "${INDEX_LISTEN:-0.0.0.0:8888}")"
    exec timeout 5 peer stats --index "127.0.0.1:$port" >/dev/null
    ;;
peer)
    port="$(port_of "${PEER_LISTEN:-0.0.0.0:6699}")"
    exec timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    ;;
*)
    echo "usage: p2pshare-healthcheck index|peer" >&2
    exit 2
    ;;
esac
