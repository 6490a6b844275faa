# petrel — build, test, run, install, bench.
# `make run` and `make test` work from a clean clone on Debian 12: they install
# missing packages through scripts/install-deps.sh first.

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CXX     ?= g++

PKGS     := yaml-cpp libevent libevent_openssl openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT      ?= -O2 -g
SANITIZE ?=
override CXXFLAGS += $(OPT) $(SANITIZE) -std=c++20 -Wall -Wextra -Werror -Iinclude $(PKG_CFLAGS) -MMD -MP
override LDFLAGS  += $(SANITIZE)
LDLIBS   += $(PKG_LIBS) -lcrypt -ldl

LIB_SRCS  := $(shell find src -name '*.cpp' ! -path 'src/cli/*' ! -path 'src/plugins/*' | sort)
CLI_SRCS  := $(shell find src/cli -name '*.cpp' | sort)
UNIT_SRCS := $(shell find tests/unit -name '*.cpp' | sort)

LIB_OBJS  := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)

# The shipped rules plugin (src/plugins/rules/ -> rules.so), PCRE2 with JIT.
PCRE2_CFLAGS := $(shell pkg-config --cflags libpcre2-8 2>/dev/null)
PCRE2_LIBS   := $(shell pkg-config --libs libpcre2-8 2>/dev/null)
RULES_SRCS   := $(wildcard src/plugins/rules/*.cpp)
CLI_OBJS  := $(CLI_SRCS:%.cpp=$(BUILD)/%.o)
UNIT_OBJS := $(UNIT_SRCS:%.cpp=$(BUILD)/%.o)

.PHONY: all run test unit integration asan bench install clean deps

all: $(BUILD)/petrel $(BUILD)/rules.so

$(BUILD)/rules.so: $(RULES_SRCS) $(wildcard src/plugins/rules/*.h) include/petrel/filter.h
	@mkdir -p $(dir $@)
	$(CXX) -std=c++20 -Wall -Wextra -Werror -O2 -g -shared -fPIC -fvisibility=hidden -Iinclude \
	    $(PCRE2_CFLAGS) -o $@ $(RULES_SRCS) $(PCRE2_LIBS)

$(BUILD)/libpetrel.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/petrel: $(CLI_OBJS) $(BUILD)/libpetrel.a
	$(CXX) $(CXXFLAGS) -o $@ $(CLI_OBJS) $(BUILD)/libpetrel.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/unit_tests: $(UNIT_OBJS) $(BUILD)/libpetrel.a $(BUILD)/rules.so
	$(CXX) $(CXXFLAGS) -o $@ $(UNIT_OBJS) $(BUILD)/libpetrel.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

deps:
	scripts/install-deps.sh

run:
	scripts/install-deps.sh --build-only
	$(MAKE) all
	$(BUILD)/petrel serve -c etc/petrel.yaml

test:
	scripts/install-deps.sh
	$(MAKE) all $(BUILD)/unit_tests
	scripts/run-tests.sh $(BUILD)

unit: $(BUILD)/unit_tests
	PETREL_RULES_SO=$(abspath $(BUILD)/rules.so) $(BUILD)/unit_tests

integration: all
	PETREL_BIN=$(abspath $(BUILD)/petrel) /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration

# Sanitizer build of the unit tests (and the binary) in build-asan/.
asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" \
	    SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer" build-asan/unit_tests build-asan/petrel
	PETREL_RULES_SO=$(abspath build-asan/rules.so) UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    build-asan/unit_tests

bench:
	scripts/install-deps.sh
	$(MAKE) all
	scripts/bench.sh $(BUILD)/petrel
	scripts/bench-filters.sh $(BUILD)/petrel
	scripts/bench-relay.sh $(BUILD)/petrel

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7 \
	    $(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/share/doc/petrel
	install -m 755 $(BUILD)/petrel $(DESTDIR)$(PREFIX)/sbin/petrel
	install -d $(DESTDIR)$(PREFIX)/lib/petrel/filters $(DESTDIR)$(PREFIX)/include/petrel
	install -m 755 $(BUILD)/rules.so $(DESTDIR)$(PREFIX)/lib/petrel/filters/rules.so
	install -m 644 include/petrel/filter.h $(DESTDIR)$(PREFIX)/include/petrel/filter.h
	install -m 644 etc/rules.conf $(DESTDIR)$(PREFIX)/share/doc/petrel/rules.conf
	for m in man/*.[1-8]; do \
	  s=$${m##*.}; install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man$$s/; done
	install -m 644 etc/petrel.yaml $(DESTDIR)$(PREFIX)/share/doc/petrel/petrel.yaml.example

clean:
	rm -rf build build-asan

-include $(LIB_OBJS:.o=.d) $(CLI_OBJS:.o=.d) $(UNIT_OBJS:.o=.d)
