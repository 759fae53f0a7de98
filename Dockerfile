# syntax=docker/dockerfile:1
#
# The secrets-store image: one binary (`secrets-store node | provider-aws | check | crds`) on
# distroless/cc, which brings glibc, CA certificates (/etc/ssl/certs, for the AWS and Kubernetes
# APIs) and nothing else: no shell, no package manager.
#
# Size target: under 60 MB uncompressed in total. Measured (workspace release profile, rustc 1.95,
# x86_64): the binary is 46 MB, 33 MB stripped, and links only glibc (libc, libm, libgcc_s), so
# distroless/cc-debian12 (~23 MB) is the smallest base that runs it; a fully static build would
# need musl. `lto = "fat"` + `codegen-units = 1` in [profile.release] is the next lever if the
# image must shrink. The same binary comes from
# `cargo build --release --locked -p secrets-store` (target/release/secrets-store).
#
# It runs as root: the node agent mounts tmpfs volumes into pods (a privileged DaemonSet). The
# standalone `provider-aws` mode mounts nothing and can run with `runAsUser: 65532`.
#
#   docker build -t secrets-store-rs:dev .

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source-only change reuses the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p secrets-store \
    && strip target/release/secrets-store \
    && install -D -m 0755 target/release/secrets-store /out/secrets-store

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/secrets-store /usr/local/bin/secrets-store
ENTRYPOINT ["/usr/local/bin/secrets-store"]
CMD ["node"]
