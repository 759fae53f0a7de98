# The two commands that matter (see README):
#   make demo   run the seed walk-through end to end on this machine
#   make test   install every tool the tests need (cached), lint, and run all tests
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
export SECRETS_STORE_CACHE ?= $(HOME)/.cache/secrets-store-rs
export SECRETS_STORE_TOOLS_BIN ?= $(SECRETS_STORE_CACHE)/bin
# The AWS SDK must never reach for instance metadata on a developer machine or in CI.
export AWS_EC2_METADATA_DISABLED := true

.PHONY: test tools lint build unit crds demo bench fuzz soak clean-cache

## test: everything CI runs (.ci/run calls exactly this)
test: tools lint
	$(CARGO) test --workspace --all-targets --locked

## tools: build/cache the real test peers (etcd, kube-apiserver, kube-controller-manager, moto, csi-sanity, ASCP)
tools:
	bash hack/tools.sh core

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build:
	$(CARGO) build --workspace --locked

## crds: regenerate deploy/crds from the Rust types
crds:
	$(CARGO) run -q -p secrets-store -- crds --out-dir deploy/crds

## demo: the seed walk-through on a local cluster (filled in by the shipping issue)
demo: tools
	$(CARGO) build -q -p secrets-store --locked
	$(CARGO) run -q -p secrets-store-testenv --example demo --locked

clean-cache:
	rm -rf $(SECRETS_STORE_CACHE)
