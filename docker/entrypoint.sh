#!/bin/sh
# Entrypoint of the p2pshare image.
#
# For `peer serve` it first makes sure the share directory exists and, when it
# holds no visible file yet and PEER_SEED_SAMPLES=1, seeds it with the sample
# files of the image plus one file that only this container has
# (hello-from-<hostname>.txt), so that a fresh network has something to find.
# Any other command (index-server, peer search, a shell, ...) runs unchanged.
set -eu

if [ "${1:-}" = "peer" ] && [ "${2:-}" = "serve" ]; then
    share="${PEER_SHARE:-/data/share}"
    mkdir -p "$share"
    # Names starting with '.' are not shared (the peer keeps its cache in .p2pshare/).
    visible="$(find "$share" -mindepth 1 -maxdepth 1 ! -name '.*' -print -quit)"
    if [ -z "$visible" ] && [ "${PEER_SEED_SAMPLES:-1}" = "1" ]; then
        cp -R /usr/local/share/p2pshare/samples/. "$share"/
        host="$(hostname)"
        printf 'Hello from peer %s.\nThis file exists only on that peer: fetch it from another one.\n' \
            "$host" >"$share/hello-from-$host.txt"
        echo "p2pshare-entrypoint: seeded $share with the sample files and hello-from-$host.txt" >&2
    fi
fi

exec "$@"
