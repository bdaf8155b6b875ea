# p2pshare image: both binaries (index-server, peer) on Debian bookworm-slim.
# Works with `docker build` and with `podman build` (no BuildKit features).
#
#   docker compose build            # what docker-compose.yml does
#   docker build -t p2pshare .      # the same image by hand

############################ builder ############################
FROM docker.io/library/rust:1.95-slim-bookworm AS builder

ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src

# 1) Dependencies first, in their own layer: the manifests and the lock file
#    with stub sources. This layer (all third-party crates fetched and built)
#    is reused as long as no Cargo.toml / Cargo.lock changes, so editing the
#    code rebuilds only the workspace crates. If the workspace gains a member
#    that is not listed here the stub build is skipped and step 2 does it all.
COPY Cargo.toml Cargo.lock ./
COPY common/Cargo.toml common/Cargo.toml
COPY index-server/Cargo.toml index-server/Cargo.toml
COPY peer/Cargo.toml peer/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
RUN for crate in common index-server peer tests; do \
        mkdir -p "$crate/src" \
        && echo 'fn main() {}' >"$crate/src/main.rs" \
        && : >"$crate/src/lib.rs"; \
    done \
    && { cargo build --release --locked -p index-server -p peer \
         || echo "dependency pre-build skipped; the full build below does it"; } \
    && rm -rf common index-server peer tests

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
