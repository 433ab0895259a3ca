# banger: build, install, test and benchmark. Targets match the seed README.

PREFIX ?= $(HOME)/.local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/banger
CARGO ?= cargo
RUNTIME_DIR ?= runtime
RUNTIME_MANIFEST ?= runtime-bundle.toml
# The shipped binaries, built on their own so no test fake is compiled into
# them (the bench enables the `testing` feature of banger-host and banger-vmm).
RELEASE_BINS = --release -p banger-cli -p banger-daemon --bins

.PHONY: all deps build install test lint unit bench runtime runtime-bundle runtime-package rootfs e2e e2e-firecracker clean

all: build

## deps: Debian packages and vhost-device-vsock that banger, make runtime and the tests need (root)
deps:
	scripts/deps.sh

## build: release binaries, copied to ./banger and ./bangerd (the source-checkout layout),
## and a fresh static banger-vsock-pingd in ./runtime, with its bundle.json entry, when
## the bundle exists (images keep the copy baked into them: make runtime rebuilds those)
build:
	$(CARGO) build $(RELEASE_BINS)
	install -m 0755 target/release/banger ./banger
	install -m 0755 target/release/bangerd ./bangerd
	@if [ -f $(RUNTIME_DIR)/bundle.json ]; then \
		scripts/runtime/build-pingd.sh $(RUNTIME_DIR)/banger-vsock-pingd && \
		scripts/runtime/write-manifest.sh --refresh $(RUNTIME_DIR) vsock_ping_helper banger-vsock-pingd; \
	fi

## install: banger and bangerd into $(BINDIR), the runtime bundle into $(LIBDIR); never downloads
install: build
	install -d $(BINDIR)
	install -m 0755 ./banger $(BINDIR)/banger
	install -m 0755 ./bangerd $(BINDIR)/bangerd
	@if [ -d $(RUNTIME_DIR) ]; then \
		rm -rf $(LIBDIR).new && mkdir -p $(LIBDIR).new && cp -a $(RUNTIME_DIR)/. $(LIBDIR).new/ && \
		rm -rf $(LIBDIR) && mv $(LIBDIR).new $(LIBDIR) && echo "runtime bundle installed in $(LIBDIR)"; \
	else \
		echo "no ./$(RUNTIME_DIR) bundle to install: run 'make runtime' or 'make runtime-bundle' first"; \
	fi

## test: formatting, lints, every unit and integration test, then the end-to-end suite
test: lint unit e2e

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## unit: every test; tests whose requirement (root, a tool) is missing say SKIPPED,
## and fail instead when BANGER_REQUIRE_ALL=1 (CI). The Firecracker contract
## tests are #[ignore]d and run here only when BANGER_TEST_FIRECRACKER names a binary.
unit:
	$(CARGO) build --bins
	$(CARGO) test --workspace
	@if [ -n "$$BANGER_TEST_FIRECRACKER" ]; then \
		$(CARGO) test -p banger-vmm --test firecracker_contract -- --ignored; \
	else \
		echo "SKIPPED: Firecracker contract tests: BANGER_TEST_FIRECRACKER is not set"; \
	fi

## bench: latency and memory figures, each next to a baseline from the same run
bench:
	$(CARGO) build --release --bins
	./target/release/banger-bench $(BENCH)

## runtime: build ./runtime from Debian packages (idempotent; needs root)
runtime:
	scripts/runtime/build.sh $(RUNTIME_DIR)

## rootfs: rebuild ./runtime/rootfs-docker.ext4 when packages.apt changed
rootfs:
	@[ -d $(RUNTIME_DIR) ] || { echo "no ./$(RUNTIME_DIR): run make runtime or make runtime-bundle first" >&2; exit 1; }
	scripts/runtime/build.sh --only rootfs-docker $(RUNTIME_DIR)

## runtime-package: dist/banger-runtime.tar.gz from ./runtime, and its SHA-256
runtime-package:
	@scripts/runtime/package.sh $(RUNTIME_DIR) dist/banger-runtime.tar.gz

## runtime-bundle: install ./runtime from the archive RUNTIME_MANIFEST names
runtime-bundle:
	scripts/runtime/bootstrap.sh $(RUNTIME_MANIFEST) $(RUNTIME_DIR)

## e2e: real guests on the qemu backend, driven through the CLI (needs root and make runtime)
e2e: runtime
	$(CARGO) build --bins
	scripts/e2e.sh
	scripts/e2e-image.sh

## e2e-firecracker: the same suite on real Firecracker guests, inside a banger VM on
## the qemu backend that serves as their KVM host. Needs BANGER_TEST_FIRECRACKER (a
## firecracker binary); without it, says SKIPPED.
e2e-firecracker: runtime
	$(CARGO) build $(RELEASE_BINS)
	scripts/e2e-firecracker.sh

clean:
	$(CARGO) clean
	rm -f ./banger ./bangerd
