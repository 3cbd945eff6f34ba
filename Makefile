# lua-asyncore: build, test, check, install.
#   make            build asyncore/core.so (-O2, warnings are errors)
#   make demo       an echo server and client talking over loopback
#   make test       run the busted specs under Lua 5.4; last line "N passed, N failed"
#   make check      the specs under AddressSanitizer + UBSan, then under valgrind memcheck,
#                   then the kqueue backend over an emulation (make check-kqueue)
#   make bench      the examples against Python, luv and redis-server (bench/README.md)
#   make install PREFIX=/usr/local

LUA       ?= lua5.4
LUA_V     ?= 5.4
LUA_INC   ?= $(shell pkg-config --cflags lua$(LUA_V) 2>/dev/null || echo -I/usr/include/lua$(LUA_V))
# the libraries the core links: OpenSSL (1.1.1 or 3.x) for TLS, c-ares for
# name resolution that never blocks
EXT_INC   ?= $(shell pkg-config --cflags openssl libcares 2>/dev/null)
EXT_LIBS  ?= $(shell pkg-config --libs openssl libcares 2>/dev/null || echo -lssl -lcrypto -lcares)
CC        ?= cc
CFLAGS    ?= -O2 -g
LDFLAGS   ?=
WARN       = -Wall -Wextra -Werror -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
             -Wcast-qual -Wwrite-strings -Wundef -Wpointer-arith
ALL_CFLAGS = -std=c99 -fPIC -fvisibility=hidden $(WARN) $(LUA_INC) $(EXT_INC) -Isrc $(CFLAGS)
BUSTED    ?= /usr/bin/busted

PREFIX    ?= /usr/local
LUADIR    ?= $(PREFIX)/share/lua/$(LUA_V)
CMODDIR   ?= $(PREFIX)/lib/lua/$(LUA_V)

SRCS = $(wildcard src/*.c)
OBJS = $(SRCS:.c=.o)
HDRS = $(wildcard src/*.h)
SO   = asyncore/core.so

.PHONY: all demo test check check-asan check-valgrind check-kqueue bench install uninstall clean lint

all: $(SO)

src/%.o: src/%.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(SO): $(OBJS)
	@mkdir -p asyncore
	$(CC) -shared -o $@ $(OBJS) $(LDFLAGS) $(EXT_LIBS)

demo: $(SO)
	@LUA_PATH="$(CURDIR)/lua/?.lua;;" LUA_CPATH="$(CURDIR)/?.so;;" LUA=$(LUA) sh examples/demo.sh

test: $(SO)
	@sh spec/run.sh $(LUA) $(BUSTED)

ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

check: check-asan check-valgrind check-kqueue

# The sanitized build goes to build/asan, apart from the tree's own asyncore/core.so,
# so a failed check leaves `make test` working.
ASAN_DIR = build/asan
check-asan:
	@mkdir -p $(ASAN_DIR)/asyncore
	$(CC) -std=c99 -fPIC -fvisibility=hidden $(WARN) $(LUA_INC) $(EXT_INC) -Isrc $(ASAN_FLAGS) -shared \
	  -o $(ASAN_DIR)/asyncore/core.so $(SRCS) -fsanitize=address,undefined $(EXT_LIBS)
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	AC_CORE_DIR=$(ASAN_DIR) sh spec/run.sh $(LUA) $(BUSTED) --cpath="$(ASAN_DIR)/?.so"

check-valgrind:
	$(MAKE) clean
	$(MAKE) all
	vgdir=$$(mktemp -d) && AC_VALGRIND=1 AC_VGLOG=$$vgdir AC_SPEC_TIMEOUT=$${AC_SPEC_TIMEOUT:-2400} sh spec/run.sh \
	  "valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --num-callers=30 --log-file=$$vgdir/vg.%p $(LUA)" $(BUSTED); \
	  status=$$?; rm -rf "$$vgdir"; exit $$status

# The kqueue backend, compiled on Linux against a BSD-style <sys/event.h> and an
# emulation of kqueue()/kevent() over epoll (spec/kqueue_shim), then run through
# the specs of every backend: the dispatcher and loop specs include "kqueue".
KQ_DIR = build/kqueue
check-kqueue:
	@mkdir -p $(KQ_DIR)/asyncore
	$(CC) $(ALL_CFLAGS) -DAC_HAVE_KQUEUE=1 -Ispec/kqueue_shim -shared -o $(KQ_DIR)/asyncore/core.so \
	  $(SRCS) spec/kqueue_shim/kqueue_shim.c $(LDFLAGS) $(EXT_LIBS)
	AC_CORE_DIR=$(KQ_DIR) sh spec/run.sh $(LUA) $(BUSTED) --cpath="$(KQ_DIR)/?.so" \
	  spec/dispatcher_spec.lua spec/loop_spec.lua spec/flow_spec.lua

bench: $(SO)
	sh bench/run.sh
	sh bench/http.sh
	sh bench/redis.sh
	sh bench/workers.sh

install: $(SO)
	install -d $(DESTDIR)$(LUADIR)/asyncore $(DESTDIR)$(CMODDIR)/asyncore
	install -m 644 lua/*.lua $(DESTDIR)$(LUADIR)/
	install -m 644 lua/asyncore/class.lua lua/asyncore/tasks.lua lua/asyncore/streams.lua lua/asyncore/service.lua $(DESTDIR)$(LUADIR)/asyncore/
	install -m 755 $(SO) $(DESTDIR)$(CMODDIR)/asyncore/

uninstall:
	rm -f $(DESTDIR)$(LUADIR)/asyncore.lua $(DESTDIR)$(LUADIR)/asynchat.lua
	rm -rf $(DESTDIR)$(LUADIR)/asyncore $(DESTDIR)$(CMODDIR)/asyncore

clean:
	rm -f src/*.o $(SO)
	rm -rf build

lint:
	luacheck lua spec examples
