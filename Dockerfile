# syntax=docker/dockerfile:1
#
# The secrets-store image: one binary (`secrets-store node | provider-aws | check | crds`) on an
# empty base, with exactly what it needs and nothing else: no shell, no package manager.
#
#   /usr/local/bin/secrets-store        the stripped release binary (ENTRYPOINT, CMD ["node"])
#   /lib/x86_64-linux-gnu/*, /lib64/*   the shared libraries `ldd` lists for it (glibc's libc, libm,
#                                       libgcc_s and the loader), as regular files
#   /etc/ssl/certs/ca-certificates.crt  CA bundle for the AWS and Kubernetes APIs
#   /etc/passwd, /etc/group             root and nonroot (65532); /etc/nsswitch.conf; /tmp (1777)
#
# hack/images.sh builds the same image without a Docker engine (a `docker save` tarball for
# `ctr images import`, tag localhost/secrets-store-rs:dev); keep the two layouts in step.
#
# Size, measured on the image hack/images.sh built (rustc 1.95, x86_64, glibc 2.36): 37.8 MB
# (36.0 MiB) uncompressed in one layer, 14.4 MB gzipped. The stripped binary is 34.4 MB of that
# (47.9 MB unstripped), the four libraries 3.2 MB, the CA bundle 0.2 MB; on distroless/cc (~23 MB)
# it was ~56 MB. A fully static build would need musl; `lto = "fat"` + `codegen-units = 1` in
# [profile.release] is the next lever if the image must shrink. The same binary comes from
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
    && install -D -m 0755 target/release/secrets-store /out/secrets-store

# The root filesystem, laid out exactly as hack/images.sh lays it out (bookworm's glibc 2.36).
RUN <<'SH'
set -eu
r=/rootfs
mkdir -p "$r/usr/local/bin" "$r/etc/ssl/certs" "$r/tmp"
chmod 1777 "$r/tmp"
strip -o "$r/usr/local/bin/secrets-store" /out/secrets-store
chmod 0755 "$r/usr/local/bin/secrets-store"
if ldd /out/secrets-store | grep 'not found'; then exit 1; fi
for lib in $(ldd /out/secrets-store \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' | sort -u); do
  mkdir -p "$r$(dirname "$lib")"
  cp -L "$lib" "$r$lib"
  chmod 0755 "$r$lib"
done
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$r/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$r/etc/nsswitch.conf"
SH

FROM scratch
COPY --from=build /rootfs /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Root (see above); provider-aws alone can run as 65532.
USER 0
ENTRYPOINT ["/usr/local/bin/secrets-store"]
CMD ["node"]
