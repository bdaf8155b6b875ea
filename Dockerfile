# p2pshare image: both binaries (index-server, peer) on Debian bookworm-slim.
# Works with `docker build` and with `podman build` (no BuildKit features).
#
#   docker compose build            # what docker-compose.yml does
#   docker build -t p2pshare .      # the same image by hand

############################ planner ############################
# Extracts the dependency skeleton of the workspace: every Cargo.toml (at its
# path) and Cargo.lock, with stub sources and fixed timestamps. It changes
# only when a manifest or the lock file changes, so the dependency layer of
# the builder below is reused across code edits (what cargo-chef does,
# without BuildKit or extra tools).
FROM docker.io/library/rust:1.95-slim-bookworm AS planner
WORKDIR /src
COPY . .
RUN mkdir -p /skeleton \
    && cp Cargo.lock /skeleton/ \
    && find . -name Cargo.toml -not -path './target/*' -not -path '*/target/*' | while read -r manifest; do \
        dir="$(dirname "$manifest")"; \
        mkdir -p "/skeleton/$dir/src"; \
        cp "$manifest" "/skeleton/$manifest"; \
        echo 'fn main() {}' >"/skeleton/$dir/src/main.rs"; \
        : >"/skeleton/$dir/src/lib.rs"; \
    done \
    && find /skeleton -exec touch -h -d @0 {} +

############################ builder ############################
FROM docker.io/library/rust:1.95-slim-bookworm AS builder
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src

# 0) `make`, which the index server's allocator (jemalloc) is built with; the
#    slim image has gcc but not make.
RUN command -v make >/dev/null \
    || { apt-get update && apt-get install -y --no-install-recommends make \
         && rm -rf /var/lib/apt/lists/*; }

# 1) Third-party crates, fetched and built against the stub workspace. If the
#    stub build cannot work for some manifest, the full build below does it all.
COPY --from=planner /skeleton/ ./
RUN { cargo build --release --locked -p index-server -p peer \
      || echo "dependency pre-build skipped; the full build below does it"; } \
    && find . -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +

# 2) The real sources. Touch them so that cargo never takes the stub build's
#    artefacts of the workspace crates for up to date.
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p index-server -p peer \
    && mkdir -p /out \
    && cp target/release/index-server target/release/peer /out/

############################ runtime ############################
FROM docker.io/library/debian:bookworm-slim

RUN groupadd --system --gid 10001 p2p \
    && useradd --system --uid 10001 --gid p2p --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin p2p \
    && mkdir -p /data/share /data/downloads /usr/local/share/p2pshare/samples

COPY --from=builder /out/index-server /out/peer /usr/local/bin/
COPY docker/entrypoint.sh /usr/local/bin/p2pshare-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/p2pshare-healthcheck
COPY docker/samples/ /usr/local/share/p2pshare/samples/

# One 2 MiB sample (8 chunks) that every peer offers, identical everywhere,
# so that a download of it can use several sources.
RUN yes 'p2pshare sample data, the same bytes on every peer.' \
        | head -c 2097152 >/usr/local/share/p2pshare/samples/sample-data-2mib.bin \
    && chmod 0755 /usr/local/bin/p2pshare-entrypoint /usr/local/bin/p2pshare-healthcheck \
    && chmod -R a+rX /usr/local/share/p2pshare \
    && chown -R p2p:p2p /data

# Defaults of the binaries, written out; docker-compose.yml sets them too.
ENV INDEX_LISTEN=0.0.0.0:8888 \
    PEER_LISTEN=0.0.0.0:6699 \
    PEER_SHARE=/data/share \
    PEER_SEED_SAMPLES=1

USER p2p
WORKDIR /data
EXPOSE 8888 6699
# Each container (each scaled peer too) gets its own anonymous volume here.
VOLUME ["/data/share"]

ENTRYPOINT ["/usr/local/bin/p2pshare-entrypoint"]
CMD ["index-server"]
