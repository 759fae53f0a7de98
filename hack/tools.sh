#!/usr/bin/env bash
# Builds, pins and caches every third-party tool the tests need, from the Go module proxy and PyPI.
#
#   hack/tools.sh [core|all|<tool>...]   build what is missing (default: core)
#   hack/tools.sh env                    print `export VAR=path` lines for the Makefile
#
# `node-packages` (in core) is not built: it installs, as root with apt-get and only when missing,
# the Debian packages a real test node runs on (containerd, runc, CNI plugins, busybox-static).
#
# Each tool lands in $SECRETS_STORE_CACHE/tools/<name>-<version>/ (outside the repo, keyed by
# version) and is built only when that directory lacks it; $SECRETS_STORE_CACHE/bin holds symlinks
# to the pinned versions, which is where crates/testenv looks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

CACHE="${SECRETS_STORE_CACHE:-$HOME/.cache/secrets-store-rs}"
TOOLS="$CACHE/tools"
BIN="$CACHE/bin"
mkdir -p "$TOOLS" "$BIN"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'hack/tools.sh: %s\n' "$*" >&2; exit 1; }

need_go() { command -v go >/dev/null || die "go is required to build the test tools (install the Go toolchain)"; }

# link NAME PATH: point $BIN/NAME at the pinned build.
link() { ln -sfn "$2" "$BIN/$1"; }

# go_build DIR OUT PKG [LDFLAGS]: build PKG inside the scratch module DIR into OUT.
go_build() {
  local dir="$1" out="$2" pkg="$3" ldflags="${4:-}"
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
}

build_etcd() {
  local dest="$TOOLS/etcd-$ETCD_VERSION"
  if [[ ! -x "$dest/etcd" ]]; then
    need_go; log "building etcd $ETCD_VERSION"
    local src="$dest/src"; mkdir -p "$src"
    cat >"$src/main.go" <<'GO'
// Thin wrapper so etcd can be built from the Go module proxy despite its replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
    (cd "$src" && rm -f go.mod go.sum && go mod init local/etcd >/dev/null 2>&1 \
      && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 && go mod tidy >/dev/null 2>&1)
    go_build "$src" "$dest/etcd" . 
  fi
  link etcd "$dest/etcd"
}

# The k8s.io/kubernetes module pins its staging repos at v0.0.0 with local replace directives, so it
# cannot be `go install`ed; a scratch module requires it and replaces each staging repo with the
# published version.
kube_module() {
  local src="$TOOLS/kubernetes-$K8S_VERSION/src"
  # The marker names the commands the module was tidied for; adding one re-prepares it.
  local cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
  if [[ "$(cat "$src/.ready" 2>/dev/null)" != "$cmds" ]]; then
    need_go; log "preparing k8s.io/kubernetes $K8S_VERSION module"
    mkdir -p "$src"
    (cd "$src" && rm -f go.mod go.sum && go mod init local/kube >/dev/null 2>&1
      local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
      [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
      go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
      grep -E '=> \./staging/' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
        go mod edit -replace="$m=$m@$K8S_STAGING_VERSION"
      done
      cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
      GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || GOFLAGS=-mod=mod go mod tidy)
    echo "$cmds" >"$src/.ready"
  fi
  echo "$src"
}

kube_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local p=k8s.io/component-base/version
  echo "-X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
}

build_kube() {
  local name="$1" dest="$TOOLS/kubernetes-$K8S_VERSION"
  if [[ ! -x "$dest/$name" ]]; then
    local src; src="$(kube_module)"
    log "building $name $K8S_VERSION (slow the first time)"
    go_build "$src" "$dest/$name" "k8s.io/kubernetes/cmd/$name" "$(kube_ldflags)"
  fi
  link "$name" "$dest/$name"
}

# The upstream driver, for the interop tests and the side-by-side benchmarks. The proxy here serves
# sigs.k8s.io/secrets-store-csi-driver only by exact version (its version list answers 403, which is
# what breaks `go install`), and refuses its logging helper monis.app/mlog outright. So the module
# source is downloaded by version and built in place, with mlog replaced by a shim that does what the
# driver's main needs of it: set klog's verbosity and report fatal errors. Nothing else changes.
build_upstream_driver() {
  local name=secrets-store-csi-driver dest="$TOOLS/secrets-store-csi-driver-$UPSTREAM_DRIVER_VERSION"
  if [[ ! -x "$dest/$name" ]]; then
    need_go; log "building $name $UPSTREAM_DRIVER_VERSION (upstream, for interop tests and benchmarks)"
    local mod="sigs.k8s.io/secrets-store-csi-driver@$UPSTREAM_DRIVER_VERSION" dir
    dir="$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [[ -d "$dir" ]] || { log "the Go module proxy did not serve $mod"; return 1; }
    rm -rf "$dest/src"; mkdir -p "$dest"
    cp -r "$dir" "$dest/src"; chmod -R u+w "$dest/src"
    mkdir -p "$dest/src/.mlog-shim"
    cat >"$dest/src/.mlog-shim/go.mod" <<'GO'
module monis.app/mlog

go 1.22
GO
    cat >"$dest/src/.mlog-shim/mlog.go" <<'GO'
// Package mlog stands in for monis.app/mlog, which the Go module proxy here refuses; the driver
// uses it only to set klog's level at start-up and to report a fatal error.
package mlog

import (
	"context"
	"flag"
	"strconv"

	"k8s.io/klog/v2"
)

type LogFormat string

const (
	FormatText LogFormat = "text"
	FormatJSON LogFormat = "json"
)

func Setup() func() { return klog.Flush }

func ValidateAndSetKlogLevelAndFormatGlobally(_ context.Context, level klog.Level, _ LogFormat) error {
	if f := flag.Lookup("v"); f != nil {
		return f.Value.Set(strconv.Itoa(int(level)))
	}
	return nil
}

func Error(msg string, err error, kv ...any) { klog.ErrorS(err, msg, kv...) }

func Fatal(err error, kv ...any) { klog.ErrorS(err, "fatal", kv...); klog.FlushAndExit(klog.ExitFlushTimeout, 1) }
GO
    (cd "$dest/src" && go mod edit -replace=monis.app/mlog=./.mlog-shim \
      && (cd .mlog-shim && GOFLAGS=-mod=mod go get k8s.io/klog/v2@v2.120.1 >/dev/null 2>&1) \
      && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1) || return 1
    go_build "$dest/src" "$dest/$name" ./cmd/secrets-store-csi-driver \
      "-X sigs.k8s.io/secrets-store-csi-driver/pkg/version.BuildVersion=$UPSTREAM_DRIVER_VERSION" || return 1
  fi
  link "$name" "$dest/$name"
}

# ASCP (aws/secrets-store-csi-driver-provider-aws), a test and benchmark peer only. The Go module
# proxy refuses the module itself (403) but serves every dependency in its go.sum, so it is built,
# unmodified, from a copy of the upstream tree kept next to the repository in
# ../shared/peers/ (read-only in CI, hence the copy).
ASCP_SRC="$here/../../shared/peers/secrets-store-csi-driver-provider-aws-$ASCP_VERSION"
build_ascp() {
  local name=secrets-store-csi-driver-provider-aws dest="$TOOLS/ascp-$ASCP_COMMIT"
  if [[ ! -x "$dest/$name" ]]; then
    [[ -f "$ASCP_SRC/go.mod" ]] \
      || die "ASCP source not found at $ASCP_SRC (expected the unmodified upstream tree, commit $ASCP_COMMIT, in ../shared/peers/ next to the repository)"
    need_go; log "building ASCP $ASCP_VERSION ($ASCP_COMMIT) from $ASCP_SRC (about 5 min the first time)"
    rm -rf "$dest/src"; mkdir -p "$dest"
    cp -r "$ASCP_SRC" "$dest/src" && chmod -R u+w "$dest/src" || return 1
    (cd "$dest/src" && CGO_ENABLED=0 go build -trimpath -o "$dest/$name.tmp" .) || return 1
    mv "$dest/$name.tmp" "$dest/$name"
  fi
  link "$name" "$dest/$name"
}

# go_install NAME MODULE@VERSION PKG: build a Go tool without replace directives.
go_install() {
  local name="$1" version="$2" pkg="$3" dest="$TOOLS/$1-$2"
  if [[ ! -x "$dest/$name" ]]; then
    need_go; log "building $name $version"
    mkdir -p "$dest"
    # Explicit `|| return`: callers use `go_install ... || die`, which disables `set -e` in here.
    GOBIN="$dest" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$pkg@$version" || return 1
  fi
  link "$name" "$dest/$name"
}

build_moto() {
  local dest="$TOOLS/moto-$MOTO_VERSION"
  if [[ ! -x "$dest/venv/bin/moto_server" ]]; then
    command -v python3 >/dev/null || die "python3 is required for moto"
    log "installing moto[server]==$MOTO_VERSION"
    rm -rf "$dest"; mkdir -p "$dest"
    python3 -m venv "$dest/venv"
    "$dest/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  link moto_server "$dest/venv/bin/moto_server"
  link moto-python "$dest/venv/bin/python"
}

# cargo_install NAME VERSION: a cargo subcommand from crates.io, pinned, with its own lock file.
cargo_install() {
  local name="$1" version="$2" dest="$TOOLS/$1-$2"
  if [[ ! -x "$dest/bin/$name" ]]; then
    command -v cargo >/dev/null || die "cargo is required to build $name"
    log "installing $name $version from crates.io"
    # These are lint/dev tools, not products: their release profiles ask for fat LTO and one
    # codegen unit (cargo-deny: ~10 min of a cold 2-core CI run), which buys nothing here.
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
      cargo install --quiet --locked --version "=$version" --root "$dest" "$name" || return 1
  fi
  link "$name" "$dest/bin/$name"
}

# The Debian packages a real test node runs on (crates/testenv's real_node): containerd, runc and
# the CNI plugins, plus the static busybox that hack/images.sh packs into the nginx stand-in.
# apt-get runs only when one is missing, and `apt-get update` only when the install fails without it.
NODE_PACKAGES=(containerd runc containernetworking-plugins busybox-static)
node_packages() {
  local missing=() p status
  for p in "${NODE_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing Debian packages ${missing[*]} and no apt-get: install them by hand"
  [[ $EUID -eq 0 ]] || die "missing Debian packages ${missing[*]}: run as root, or: sudo apt-get install ${missing[*]}"
  log "installing ${missing[*]} (apt-get)"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}")
  if ! "${apt[@]}" >/dev/null 2>&1; then
    log "apt-get install failed; updating the package lists first"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    "${apt[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  fi
}

build_one() {
  case "$1" in
    node-packages) node_packages ;;
    etcd) build_etcd ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kubectl) build_kube "$1" ;;
    csi-sanity) go_install csi-sanity "$CSI_TEST_VERSION" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity ;;
    moto) build_moto ;;
    cargo-deny) cargo_install cargo-deny "$CARGO_DENY_VERSION" || die "could not install cargo-deny $CARGO_DENY_VERSION" ;;
    cargo-fuzz) cargo_install cargo-fuzz "$CARGO_FUZZ_VERSION" || die "could not install cargo-fuzz $CARGO_FUZZ_VERSION" ;;
    helm) go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    upstream-driver) build_upstream_driver || die "could not build sigs.k8s.io/secrets-store-csi-driver $UPSTREAM_DRIVER_VERSION" ;;
    ascp) build_ascp || die "could not build ASCP $ASCP_VERSION ($ASCP_COMMIT)" ;;
    *) die "unknown tool '$1'" ;;
  esac
}

CORE=(moto etcd kube-apiserver kube-controller-manager csi-sanity helm cargo-deny upstream-driver
  ascp node-packages kubelet kube-scheduler kubectl)

case "${1:-core}" in
  env)
    echo "export SECRETS_STORE_TOOLS_BIN=$BIN"
    ;;
  core) for t in "${CORE[@]}"; do build_one "$t"; done ;;
  all) for t in "${CORE[@]}"; do build_one "$t"; done ;;
  *) for t in "$@"; do build_one "$t"; done ;;
esac
