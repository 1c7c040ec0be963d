# ferry — thin wrapper around meson. `make demo` and `make check` do all
# set-up on a fresh Debian 12 machine (packages are installed when root).
BUILD ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# The test guest's kernel package is downloaded once for all build trees.
export FERRY_GUEST_CACHE ?= $(CURDIR)/.cache/guest
MESON_TEST = meson test --print-errorlogs --no-rebuild

.PHONY: all deps build check check-lists check-unit check-sanitizers check-valgrind check-fuzz demo clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

# Every test: unit and guest kit, then each integration test once (real
# QEMU guests, one at a time) against either the plain or the ASan/UBSan
# agent (below), then the unit tests under ASan/UBSan and valgrind, and
# the fuzzers.
check: build check-lists
	status=0; \
	$(MESON_TEST) -C $(BUILD) --no-suite integration || status=1; \
	$(MESON_TEST) -C $(BUILD) --logbase integration $(PLAIN_INTEGRATION) || status=1; \
	$(MAKE) check-sanitizers || status=1; \
	$(MAKE) check-valgrind || status=1; \
	$(MAKE) check-fuzz || status=1; \
	exit $$status

check-unit: build
	$(MESON_TEST) -C $(BUILD) --suite unit

# Each integration test runs once, to keep make check under 20 minutes on
# two cores. The instrumented agent takes the C-heavy paths: every
# migration phase and failure, bad input, post-copy recovery, disk copies
# with their failures and restarts, storage mirrors, warm passes, a
# multifd stream started again as one; the plain agent (what users run;
# `make demo` too) the rest.
PLAIN_INTEGRATION = test_tls_capture test_restart_offline test_dirtyrate test_strategy test_pools \
	test_cold_migration
ASAN_INTEGRATION = test_live_migration test_failures test_bad_input test_postcopy_recover \
	test_cold_failures test_live_storage test_warm_migration test_strategy_restart \
	test_migrate_timeouts

# Every integration test is in exactly one of the lists above.
check-lists:
	@listed=$$(grep -o "'test_[a-z_]*'" tests/integration/meson.build | tr -d "'" | sort); \
	chosen=$$(echo $(PLAIN_INTEGRATION) $(ASAN_INTEGRATION) | tr ' ' '\n' | sort); \
	if [ "$$listed" != "$$chosen" ]; then \
	    echo "Makefile: PLAIN_INTEGRATION + ASAN_INTEGRATION must list each of tests/integration/meson.build's tests once"; \
	    echo "meson.build: $$listed"; echo "Makefile: $$chosen"; exit 1; fi

# Unit tests with leak checking, then the real-QEMU tests driving an
# instrumented ferryd and ferry (leaks are valgrind's job there: the
# tests kill agents on purpose).
check-sanitizers: deps
	[ -f $(ASAN_BUILD)/build.ninja ] || meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined \
	    -Db_lundef=false
	ninja -C $(ASAN_BUILD)
	status=0; \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
	    $(MESON_TEST) -C $(ASAN_BUILD) --suite unit || status=1; \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=0 \
	    $(MESON_TEST) -C $(ASAN_BUILD) --logbase integration $(ASAN_INTEGRATION) || status=1; \
	exit $$status

check-valgrind: build
	$(MESON_TEST) -C $(BUILD) --suite unit --logbase valgrind \
	    --wrap='valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite --track-origins=yes --suppressions=$(CURDIR)/tests/valgrind.supp' \
	    --timeout-multiplier=10

demo: build
	python3 tests/integration/demo.py

# Every libFuzzer harness, fuzzing briefly from its seed corpus.
check-fuzz: deps
	[ -f $(FUZZ_BUILD)/build.ninja ] || CC=clang meson setup $(FUZZ_BUILD) -Dfuzzing=true \
	    -Dintegration=false -Db_sanitize=address,undefined -Db_lundef=false \
	    -Dc_args=-fsanitize=fuzzer-no-link
	ninja -C $(FUZZ_BUILD)
	$(MESON_TEST) -C $(FUZZ_BUILD) --suite fuzz

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
