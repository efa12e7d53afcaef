# ambit — see README.md. Every target runs from a fresh Debian machine after `make setup`.
SHELL := /bin/bash
BPF_SOURCES := $(wildcard bpf/*.bpf.c test/fixtures/bpf/*.bpf.c)
BPF_OBJECTS := $(BPF_SOURCES:.c=.o)
BPF_HEADERS := $(wildcard bpf/*.h)
# -fdebug-prefix-map keeps the checkout's path out of the objects' debug info, so a rebuild in
# any directory produces the committed bytes.
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu \
	-fdebug-prefix-map=$(CURDIR)=.

.PHONY: setup setup-bpf build lint typecheck test test-unit test-integration bpf bpf-check bench fuzz fuzz-ci demo demo-redirect clean

setup:
	scripts/setup.sh

setup-bpf:
	scripts/setup.sh --bpf

build:
	npx tsc -p tsconfig.json

typecheck:
	npx tsc -p tsconfig.json --noEmit

lint: typecheck
	npx eslint .

test:
	scripts/test.sh

test-unit:
	npx vitest run test/unit

test-integration:
	npx vitest run test/integration

# Rebuild the committed objects and the TypeScript layouts generated from their BTF.
bpf: $(BPF_OBJECTS)
	node scripts/gen-layout.mjs

%.bpf.o: %.bpf.c $(BPF_HEADERS)
	clang $(BPF_CFLAGS) -c $< -o $@

# Fails when a committed object or generated layout no longer matches its source.
bpf-check:
	$(MAKE) -B bpf
	git diff --exit-code -- bpf test/fixtures/bpf src/ebpf/layout.generated.ts
	@test -z "$$(git status --porcelain -- bpf test/fixtures/bpf src/ebpf/layout.generated.ts)" || { echo 'uncommitted BPF objects' >&2; exit 1; }

demo:
	scripts/demo.sh

demo-redirect:
	scripts/setup.sh
	npx tsx examples/redirect-demo.ts

bench:
	scripts/setup.sh --bench
	npx tsx bench/connect-latency.ts
	npx tsx bench/ca-issue.ts
	npx tsx bench/discovery.ts
	npx tsx bench/l4-hop.ts

# Fuzzing: every target at 100,000 inputs and the CNI scanner under libFuzzer + ASan
# (bench/results/fuzz.md); fuzz-ci is the short fixed-seed run the unit tests make.
fuzz:
	scripts/setup.sh --fuzz
	npx tsx bench/fuzz.ts --runs $(or $(RUNS),100000) --seed $(or $(SEED),1)

fuzz-ci:
	npx vitest run test/unit/fuzz-*.test.ts

clean:
	rm -rf dist
