# weedblock — replicated block volumes for SeaweedFS.
# `make run` starts a local cluster with a demo volume; `make test` runs every test.

GO        ?= go
# Fast package tests: every package that does not pull in upstream SeaweedFS
# (run with the race detector). The rest — the packages that import upstream
# and the end-to-end suite in test/ — need the slow upstream build.
PKG_DEPS   = $(shell $(GO) list -f '{{.ImportPath}}:{{join .Deps ","}}' ./...)
UNIT_PKGS  = $(foreach p,$(PKG_DEPS),$(if $(findstring github.com/seaweedfs/seaweedfs,$(p)),,$(if $(filter %/test,$(firstword $(subst :, ,$(p)))),,$(firstword $(subst :, ,$(p))))))
E2E_PKGS   = $(filter-out $(UNIT_PKGS),$(shell $(GO) list ./...))

.PHONY: all build test unit e2e bench run compose-up compose-down compose-test fmt vet proto clean

all: build

build:
	@if [ -f weed/main.go ]; then mkdir -p bin && $(GO) build -o bin/weed ./weed && echo "built bin/weed"; else echo "weed binary: not yet"; fi

# Everything: fast package tests (with the race detector) then end-to-end tests.
test: unit e2e

unit:
	$(GO) vet $(UNIT_PKGS)
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

e2e:
	@if [ -n "$(E2E_PKGS)" ]; then $(GO) test -count=1 -timeout 60m $(E2E_PKGS); else echo "e2e: no end-to-end packages yet"; fi

# Package benchmarks, then the product table (test/bench_test.go: fio over
# NBD and iscsi-perf against raw file, nbdkit, tgtd and RF=1/2/3 volumes, as
# ratios; WEEDBLOCK_BENCH_RUNTIME/_ROUNDS/_SIZE/_DIR lengthen or move it).
bench:
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m $(UNIT_PKGS)
	$(GO) test -run '^$$' -bench BenchmarkProduct -benchtime 1x -timeout 30m ./test/

# A local cluster (1 master + 3 volume servers, data in ./data, reused by the
# next run) with a demo block volume; Ctrl-C stops it.
run: build
	bin/weed block dev

# The docker/ cluster (1 master + 3 volume servers) on this host. Its servers
# advertise WEEDBLOCK_IP (default: this host's first address).
COMPOSE      = docker compose -f docker/docker-compose.yml
WEEDBLOCK_IP ?= $(shell hostname -I 2>/dev/null | awk '{print $$1}')

compose-up:
	WEEDBLOCK_IP=$(WEEDBLOCK_IP) $(COMPOSE) up -d --build

compose-down:
	WEEDBLOCK_IP=$(WEEDBLOCK_IP) $(COMPOSE) down -v

# The end-to-end suite against the compose cluster (tests that must kill or
# restart servers need their own cluster and say so).
compose-test: compose-up
	WEEDBLOCK_CLUSTER=master=$(WEEDBLOCK_IP):9333.19333 $(GO) test -count=1 -timeout 60m ./test/...; \
		status=$$?; WEEDBLOCK_IP=$(WEEDBLOCK_IP) $(COMPOSE) down -v; exit $$status

# Regenerate weed/pb/blockpb from weed/pb/block.proto (needs Debian's
# protobuf-compiler; the Go plugins are installed here at pinned versions).
PROTOC_GEN_GO_VERSION      = v1.36.12
PROTOC_GEN_GO_GRPC_VERSION = v1.6.2
proto:
	GOFLAGS= $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOFLAGS= $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc -I weed/pb \
		--go_out=. --go_opt=module=github.com/weedblock/weedblock \
		--go-grpc_out=. --go-grpc_opt=module=github.com/weedblock/weedblock \
		weed/pb/block.proto

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
