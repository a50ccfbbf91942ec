# Two commands do everything on a fresh Debian machine: `make run` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
NEBULA := $(BUILD)/nebula

.PHONY: all deps configure build run test test-unit test-e2e bench clean format

all: build

deps:
	@scripts/install-deps

configure: deps
	@test -f $(BUILD)/build.ninja || cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@echo "CLI: export PATH=$(CURDIR)/$(BUILD):\$$PATH   (then: nebula ls)"
	$(NEBULA) up --sim-gpus 1xH100-80GB --demo llama-3.1-8b-instruct

test: build
	cd $(BUILD) && ctest --output-on-failure

test-unit: build
	$(BUILD)/nebula_unit_tests

test-e2e: build
	$(BUILD)/nebula_e2e_tests

bench: build
	@scripts/bench

format:
	@clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.h' 'tests/*.cpp' 'tests/*.h' 'bench/*.cpp')

clean:
	rm -rf $(BUILD)
