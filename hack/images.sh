#!/usr/bin/env bash
# Assembles the container images a local node needs, without a Docker engine or a registry: each
# is a `docker save`-format tarball (one layer tar, a config JSON, manifest.json with RepoTags),
# which `ctr -n k8s.io images import <tar>` accepts as is.
#
#   hack/images.sh [OUT_DIR [IMAGE...]]   build what changed into OUT_DIR (default
#                                         $SECRETS_STORE_CACHE/images); IMAGE is pause, nginx or
#                                         secrets-store (default: all three)
#
#   pause.tar          localhost/secrets-store-rs/pause:3.10  hack/images/pause.c, gcc -static
#   nginx.tar          docker.io/library/nginx:1.14.2         busybox httpd stand-in for the seed's
#                                                              Deployment (image `nginx:1.14.2`)
#   secrets-store.tar  localhost/secrets-store-rs:dev         the product, laid out as Dockerfile's
#
# Environment:
#   SECRETS_STORE_CACHE  cache root (default $HOME/.cache/secrets-store-rs)
#   SECRETS_STORE_BIN    the secrets-store binary to package (default target/release/secrets-store,
#                        built with `cargo build --release --locked -p secrets-store` only when it
#                        is missing and this variable is unset; an existing binary is NOT rebuilt)
#   CARGO                cargo command (default cargo)
#
# Prints one `<tarball> <tag>` line per image on stdout; progress goes to stderr. Each image is
# rebuilt only when the hash of its inputs (this script, the source files and binaries that go into
# it) differs from the one recorded in OUT_DIR/.stamps/<name>; the tarballs are byte-for-byte
# reproducible from the same inputs (fixed mtimes, owners, order and `created`).
#
# Needs: bash, GNU tar, sha256sum, gcc with static glibc (libc6-dev), strip (binutils), ldd
# (libc-bin), /bin/busybox from the busybox-static package, /etc/ssl/certs/ca-certificates.crt
# (ca-certificates).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

CACHE="${SECRETS_STORE_CACHE:-$HOME/.cache/secrets-store-rs}"
OUT="${1:-$CACHE/images}"
shift || true
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=(pause nginx secrets-store)
for w in "${WANT[@]}"; do
  case "$w" in pause | nginx | secrets-store) ;; *) printf 'hack/images.sh: unknown image %s\n' "$w" >&2; exit 1 ;; esac
done
wanted() { [[ " ${WANT[*]} " == *" $1 "* ]]; }
CARGO="${CARGO:-cargo}"

PAUSE_TAG="localhost/secrets-store-rs/pause:3.10"
NGINX_TAG="docker.io/library/nginx:1.14.2"
PRODUCT_TAG="localhost/secrets-store-rs:dev"

BUSYBOX=/bin/busybox
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Everything in an image carries this time: the layer's mtimes and the config's `created`.
EPOCH_ISO="1970-01-01T00:00:00Z"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'hack/images.sh: %s\n' "$*" >&2; exit 1; }

# Directory modes and fresh files must not depend on the caller's umask.
umask 022

case "$(uname -m)" in
  x86_64) ARCH=amd64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

mkdir -p "$OUT/.stamps"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/secrets-store-images.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }

# json_str S: S as a JSON string literal (the values here hold no control characters).
json_str() {
  local s="${1//\\/\\\\}"
  printf '"%s"' "${s//\"/\\\"}"
}

# json_list A B ...: a JSON array of strings; no arguments gives `null`.
json_list() {
  (($#)) || { printf 'null'; return; }
  local sep='' s
  printf '['
  for s in "$@"; do printf '%s%s' "$sep" "$(json_str "$s")"; sep=','; done
  printf ']'
}

# det_tar DIR OUT NAME...: a reproducible tar of NAMEs relative to DIR (sorted, mtime 0, root:root,
# GNU format so that no PAX atime/ctime headers sneak in).
det_tar() {
  local dir="$1" out="$2"
  shift 2
  tar --create --file "$out" --directory "$dir" --format=gnu --sort=name --mtime=@0 \
    --owner=0 --group=0 --numeric-owner --no-acls --no-xattrs --no-selinux -- "$@"
}

# base_etc ROOTFS: /etc/passwd and /etc/group with root and nonroot (65532, the distroless
# convention), an nsswitch.conf so glibc resolves names from /etc/hosts first, and a world-writable
# /tmp.
base_etc() {
  local r="$1"
  mkdir -p "$r/etc" "$r/tmp"
  chmod 1777 "$r/tmp"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$r/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$r/etc/nsswitch.conf"
}

# config_json ENTRYPOINT CMD [MEMBERS]: an image config's `config` object; ENTRYPOINT and CMD are
# JSON (json_list or null), MEMBERS more JSON members.
config_json() {
  printf '{"Env":%s,"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"%s}' \
    "$(json_list "$PATH_ENV")" "$1" "$2" "${3:+,$3}"
}

# build_image NAME TAG INPUTS STAGE_FN CONFIG_JSON: when INPUTS (a text naming everything the image
# is made of) hashes differently from the stamp, run STAGE_FN ROOTFS, pack ROOTFS as the single
# layer and write $OUT/NAME.tar. CONFIG_JSON is the image config's `config` object.
build_image() {
  local name="$1" tag="$2" inputs="$3" stage="$4" config="$5"
  local tarball="$OUT/$name.tar" stamp="$OUT/.stamps/$name"
  local key
  key="$(printf '%s\n' "$tag" "$config" "$inputs" "$(sha "${BASH_SOURCE[0]}")" | sha256sum)"
  key="${key%% *}"
  if [[ -f "$tarball" && "$(cat "$stamp" 2>/dev/null)" == "$key" ]]; then
    log "$name: up to date ($tag)"
    printf '%s %s\n' "$tarball" "$tag"
    return
  fi
  log "$name: building $tag"

  local w="$WORK/$name" rootfs="$WORK/$name/rootfs" img="$WORK/$name/image"
  mkdir -p "$rootfs" "$img"
  "$stage" "$rootfs"

  # The layer: every top-level entry of the rootfs (no "./" entry, so the layer never touches the
  # permissions of the container's root directory).
  local entries=()
  mapfile -t entries < <(cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' \
    | LC_ALL=C sort)
  det_tar "$rootfs" "$w/layer.tar" "${entries[@]}"
  local diff_id
  diff_id="$(sha "$w/layer.tar")"
  mkdir -p "$img/$diff_id"
  mv "$w/layer.tar" "$img/$diff_id/layer.tar"

  # The config; its file name is its own digest, as `docker save` writes it.
  local rootfs_json history_json
  rootfs_json="{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]}"
  history_json="[{\"created\":\"$EPOCH_ISO\",\"created_by\":\"hack/images.sh $name\"}]"
  printf '{"architecture":"%s","os":"linux","created":"%s","config":%s,"rootfs":%s,"history":%s}' \
    "$ARCH" "$EPOCH_ISO" "$config" "$rootfs_json" "$history_json" >"$w/config.json"
  local config_id
  config_id="$(sha "$w/config.json")"
  mv "$w/config.json" "$img/$config_id.json"

  printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]\n' \
    "$config_id" "$(json_str "$tag")" "$diff_id" >"$img/manifest.json"

  det_tar "$img" "$tarball.tmp" manifest.json "$config_id.json" "$diff_id"
  mv "$tarball.tmp" "$tarball"
  printf '%s\n' "$key" >"$stamp"
  rm -rf "$w"
  log "$name: $tarball ($(du -h "$tarball" | cut -f1), layer sha256:$diff_id)"
  printf '%s %s\n' "$tarball" "$tag"
}

# ---------------------------------------------------------------------------------------------
# pause: the pod sandbox image, a static C program that sleeps, reaps and exits 0 on SIGTERM.

stage_pause() {
  gcc -static -Os -s -Wall -Wextra -o "$1/pause" "$here/images/pause.c" \
    || die "compiling hack/images/pause.c failed (needs static glibc: apt-get install libc6-dev)"
}

# ---------------------------------------------------------------------------------------------
# nginx: stands in for the seed's `nginx:1.14.2` so examples/seed/test-nginx.yaml runs verbatim.
# Debian's static busybox with every applet linked in /bin (sh, cat, env, ls, grep, mount, httpd,
# ...; printenv, which it lacks, is a 3-line script), serving /usr/share/nginx/html on port 80 like
# nginx. busybox httpd as PID 1 ignores SIGTERM (no handler, and the kernel drops default-action
# signals to PID 1), so a pod deletion would wait out the whole grace period: the shell in front of
# it traps TERM and exits at once.
# Like nginx:1.14.2 the command is Cmd with no Entrypoint, so a pod's `command:` replaces it.

NGINX_CMD="trap 'exit 0' TERM INT; httpd -f -p 80 -h /usr/share/nginx/html & wait"

stage_nginx() {
  local r="$1" applet
  base_etc "$r"
  mkdir -p "$r/bin" "$r/root" "$r/usr/share/nginx/html" "$r/var/log/nginx" "$r/var/cache/nginx"
  install -m 0755 "$BUSYBOX" "$r/bin/busybox"
  while read -r applet; do
    [[ "$applet" == busybox || -z "$applet" ]] && continue
    ln -s busybox "$r/bin/$applet"
  done <<<"$APPLETS"
  # Debian's busybox-static has no printenv applet; `kubectl exec ... printenv VAR` should work.
  if [[ ! -e "$r/bin/printenv" ]]; then
    cat >"$r/bin/printenv" <<'SH'
#!/bin/sh
# printenv [NAME...] (hack/images.sh: Debian's busybox-static has no printenv applet)
[ $# -eq 0 ] && exec env
exec awk 'BEGIN {
  for (i = 1; i < ARGC; i++) if (ARGV[i] in ENVIRON) print ENVIRON[ARGV[i]]; else rc = 1
  exit rc
}' "$@"
SH
    chmod 0755 "$r/bin/printenv"
  fi
  cat >"$r/usr/share/nginx/html/index.html" <<'HTML'
<!DOCTYPE html>
<html><head><title>Welcome to nginx!</title></head>
<body><h1>Welcome to nginx!</h1>
<p>busybox httpd standing in for nginx:1.14.2 (hack/images.sh)</p></body></html>
HTML
}

# ---------------------------------------------------------------------------------------------
# secrets-store: the product. The stripped binary at /usr/local/bin/secrets-store, exactly the
# shared libraries `ldd` lists for it (glibc's libc, libm, libgcc_s and the loader), copied as
# regular files at the paths the loader resolves them from (PT_INTERP and the multiarch dir), the
# CA bundle for the AWS and Kubernetes APIs, /etc/passwd + /etc/group (root, nonroot 65532) and
# /tmp. No shell, no busybox. The Dockerfile builds the same layout.
#
# User stays root (0): the node agent mounts tmpfs volumes into pods (a privileged DaemonSet). The
# standalone `provider-aws` mode mounts nothing and can run with `runAsUser: 65532`.

stage_product() {
  local r="$1" lib
  base_etc "$r"
  mkdir -p "$r/usr/local/bin" "$r/etc/ssl/certs"
  strip -o "$r/usr/local/bin/secrets-store" "$BIN"
  chmod 0755 "$r/usr/local/bin/secrets-store"
  while read -r lib; do
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
    chmod 0755 "$r$lib"
  done <<<"$LIBS"
  install -m 0644 "$CA_BUNDLE" "$r/etc/ssl/certs/ca-certificates.crt"
}

# ---------------------------------------------------------------------------------------------
# Prerequisites, all checked before anything is built. (Command output is captured before it is
# grepped: `grep -q` closing a pipe early would fail the pipeline under pipefail.)

command -v gcc >/dev/null || die "gcc is required for the pause image (apt-get install gcc)"
command -v strip >/dev/null || die "strip is required (apt-get install binutils)"
[[ -f "$CA_BUNDLE" ]] || die "$CA_BUNDLE is missing: install the ca-certificates package"

if wanted nginx; then
need_busybox="install the busybox-static package (apt-get install busybox-static)"
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX is missing: $need_busybox"
# A dynamically linked busybox (Debian's `busybox` package) would not run in the image.
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked: $need_busybox"; fi
APPLETS="$("$BUSYBOX" --list)"
for applet in sh cat ls env sleep httpd grep mount test awk; do
  grep -qx "$applet" <<<"$APPLETS" || die "$BUSYBOX lacks the $applet applet: $need_busybox"
done
fi

if wanted secrets-store; then

if [[ -n "${SECRETS_STORE_BIN:-}" ]]; then
  BIN="$SECRETS_STORE_BIN"
  [[ -x "$BIN" ]] || die "SECRETS_STORE_BIN=$BIN is not an executable file"
else
  BIN="${CARGO_TARGET_DIR:-$root/target}/release/secrets-store"
  if [[ ! -x "$BIN" ]]; then
    log "building $BIN (cargo build --release --locked -p secrets-store)"
    (cd "$root" && "$CARGO" build --release --locked -p secrets-store)
  fi
  [[ -x "$BIN" ]] || die "$BIN is missing after the cargo build"
fi
# The libraries, one absolute path a line: `name => /path (addr)` and the loader's `/path (addr)`;
# the vDSO has no file and is skipped.
ldd_out="$(ldd "$BIN")" || die "ldd $BIN failed (not a dynamic executable for this host?)"
if grep -q 'not found' <<<"$ldd_out"; then
  die "$BIN links a library this host lacks: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
fi
LIBS="$(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$ldd_out" \
  | LC_ALL=C sort -u)"
[[ -n "$LIBS" ]] || die "ldd found no shared libraries for $BIN (expected glibc)"
fi

# ---------------------------------------------------------------------------------------------
# The images.

wanted pause && build_image pause "$PAUSE_TAG" \
  "$(sha "$here/images/pause.c") gcc-$(gcc -dumpfullversion)-$(gcc -dumpmachine)" \
  stage_pause \
  "$(config_json "$(json_list /pause)" null)"

wanted nginx && build_image nginx "$NGINX_TAG" \
  "$(sha "$BUSYBOX")" \
  stage_nginx \
  "$(config_json null "$(json_list /bin/sh -c "$NGINX_CMD")" \
    '"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGTERM"')"

wanted secrets-store || exit 0
product_inputs="$(sha "$BIN") $(sha "$CA_BUNDLE")"
while read -r lib; do product_inputs+=" $lib=$(sha "$lib")"; done <<<"$LIBS"
log "secrets-store: $BIN with $(tr '\n' ' ' <<<"$LIBS")"
build_image secrets-store "$PRODUCT_TAG" \
  "$product_inputs" \
  stage_product \
  "$(config_json "$(json_list /usr/local/bin/secrets-store)" "$(json_list node)" '"User":"0"')"
