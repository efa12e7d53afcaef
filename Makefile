# ambit — see README.md. Every target runs from a fresh Debian machine after `make setup`.
SHELL := /bin/bash
BPF_SOURCES := $(wildcard bpf/*.bpf.c test/fixtures/bpf/*.bpf.c)
BPF_OBJECTS := $(BPF_SOURCES:.c=.o)
BPF_HEADERS := $(wildcard bpf/*.h)
# -fdebug-prefix-map keeps the checkout's path out of the objects' debug info, so a rebuild in
# any directory produces the committed bytes.
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -I/usr/include/$(shell uname -m)-linux-gnu \
	-fdebug-prefix-map=$(CURDIR)=.

.PHONY: setup setup-bpf build cni image image-push docs lint typecheck test test-unit test-integration bpf bpf-check bench fuzz fuzz-ci demo demo-redirect clean

setup:
	scripts/setup.sh

setup-bpf:
	scripts/setup.sh --bpf

# What ships (src/ and native/) into dist/; tests and benches run from their sources.
build:
	npx tsc -p tsconfig.build.json

# The CNI plugin as the image has it: static, checked to need no interpreter or shared library.
cni:
	scripts/build-cni.sh --static

# The image (deploy/Dockerfile) through docker buildx, for every platform in PLATFORMS. A
# multi-platform image cannot be loaded into docker's classic image store, so `image` loads it
# only when PLATFORMS names one platform; otherwise it is built (every platform checked, kept in
# the build cache) and `image-push` pushes it. Cross-building needs QEMU's binfmt handlers
# (docker run --privileged --rm tonistiigi/binfmt --install arm64) and a docker-container builder
# (docker buildx create --use).
IMAGE ?= ghcr.io/ambit-mesh/ambit:$(shell node -p "require('./package.json').version")
PLATFORMS ?= linux/amd64,linux/arm64
comma := ,
BUILDX = docker buildx build -f deploy/Dockerfile --platform $(PLATFORMS) -t $(IMAGE)

image:
	$(BUILDX) $(if $(findstring $(comma),$(PLATFORMS)),,--load) .
	@$(if $(findstring $(comma),$(PLATFORMS)),echo "built $(IMAGE) for $(PLATFORMS) (build cache only: make image-push to push it, or PLATFORMS=linux/amd64 to load one platform)",echo "built $(IMAGE) for $(PLATFORMS), loaded into docker")

image-push:
	$(BUILDX) --push .

typecheck:
	npx tsc -p tsconfig.json --noEmit

# docs/CLI.md from the commands themselves, deploy/grafana from the queries (unit tests fail when either is out of date).
docs:
	npx tsx scripts/cli-reference.ts
	npx tsx scripts/dashboards.ts

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
	npx vitest run test/unit/fuzz-*.test.ts test/integration/fuzz-cni-scanner.test.ts

clean:
	rm -rf dist
