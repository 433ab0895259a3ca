# banger: build, install, test and benchmark. Targets match the seed README.

PREFIX ?= $(HOME)/.local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/banger
CARGO ?= cargo
RUNTIME_DIR ?= runtime
RUNTIME_MANIFEST ?= runtime-bundle.toml

.PHONY: all build install test lint unit bench runtime runtime-bundle runtime-package rootfs e2e clean

all: build

## build: release binaries, copied to ./banger and ./bangerd (the source-checkout layout)
build:
	$(CARGO) build --release --bins
	install -m 0755 target/release/banger ./banger
	install -m 0755 target/release/bangerd ./bangerd

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

## test: formatting, lints and every test (the README's test command)
test: lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## bench: latency and memory figures, each next to a baseline from the same run
bench:
	$(CARGO) build --release --bins
	./target/release/banger-bench

runtime runtime-bundle runtime-package rootfs e2e:
	@echo "make $@ is not implemented yet in this version of banger" >&2; exit 1

clean:
	$(CARGO) clean
	rm -f ./banger ./bangerd
