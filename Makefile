# Two commands do everything on a fresh Debian machine: `make run` and `make test`.
BUILD ?= build
JOBS ?= $(shell nproc)
NEBULA := $(BUILD)/nebula

# Extra CMake flags for the configure step (the sanitizer targets set them).
CMAKE_FLAGS ?=
# `ctest -j 2` keeps the e2e tests reliable on a 2-core machine (each starts real processes).
TEST_JOBS ?= 2

.PHONY: all deps configure build run test test-unit test-e2e test-ui test-asan test-tsan bench chaos clean format

all: build

deps:
	@scripts/install-deps

configure: deps
	@test -f $(BUILD)/build.ninja || cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@echo "CLI: export PATH=$(CURDIR)/$(BUILD):\$$PATH   (then: nebula ls)"
	$(NEBULA) up --sim-gpus 1xH100-80GB --demo llama-3.1-8b-instruct

test: build
	cd $(BUILD) && ctest -j $(TEST_JOBS) --output-on-failure

# The unit and e2e tests built with ASan + UBSan (build-asan) or TSan (build-tsan). Every process
# the tests start inherits the sanitizer options and writes its reports to
# <build>/sanitizer-reports; a report from any of them fails the target (scripts/sanitize).
test-asan:
	@scripts/sanitize address

test-tsan:
	@scripts/sanitize thread

test-unit: build
	$(BUILD)/nebula_unit_tests

test-e2e: build
	$(BUILD)/nebula_e2e_tests

# The dashboard's component tests (vitest) and browser tests (chromium against a real nebula up).
test-ui: build
	cd $(BUILD) && ctest -L ui --output-on-failure

bench: build
	@scripts/bench

# Kill -9 agents, engines and the server under a streaming load (MINUTES=10 by default).
chaos: build
	@scripts/bench chaos --minutes $(or $(MINUTES),10)

format:
	@clang-format -i $$(git ls-files 'src/*.cpp' 'src/*.h' 'tests/*.cpp' 'tests/*.h' 'bench/*.cpp')

clean:
	rm -rf $(BUILD)
