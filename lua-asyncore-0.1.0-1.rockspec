rockspec_format = "3.0"
package = "lua-asyncore"
version = "0.1.0-1"
source = {
  url = "git+https://example.invalid/lua-asyncore.git",
  tag = "v0.1.0",
}
description = {
  summary = "Python's asyncore and asynchat for Lua 5.4, with the event loop in C",
  detailed = [[
    Subclass dispatcher or async_chat with plain Lua tables whose methods
    (handle_read, handle_accept, found_terminator, ...) are the callbacks.
    A C core runs the loop (select, poll, epoll, kqueue), the non-blocking
    sockets, the timers and all the buffering.
  ]],
  license = "MIT",
  homepage = "https://example.invalid/lua-asyncore",
  labels = { "networking", "event-loop", "asyncore", "asynchat" },
}
supported_platforms = { "linux", "bsd", "macosx" }
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  -- TLS: OpenSSL 1.1.1 or 3.x (Debian: libssl-dev)
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
  -- name resolution: c-ares (Debian: libc-ares-dev)
  CARES = { header = "ares.h", library = "cares" },
}
test = {
  -- the specs under Lua 5.4 (Debian's `busted` command runs Lua 5.1)
  type = "command",
  command = "make test",
}
build = {
  type = "builtin",
  modules = {
    ["asyncore.core"] = {
      sources = {
        "src/buffer.c", "src/clock.c", "src/errnames.c", "src/lbind.c", "src/lchan.c",
        "src/lchat.c", "src/lcore.c", "src/lerror.c", "src/lflow.c", "src/lloop.c", "src/lmode.c",
        "src/lreg.c", "src/lresolve.c", "src/lsignal.c", "src/lsocket.c", "src/lstream.c", "src/ltask.c", "src/ltimeout.c", "src/ltimer.c", "src/ltls.c", "src/poller.c", "src/poller_epoll.c",
        "src/poller_kqueue.c", "src/poller_poll.c", "src/poller_select.c", "src/sock.c",
        "src/timerheap.c",
      },
      incdirs = { "src", "$(OPENSSL_INCDIR)", "$(CARES_INCDIR)" },
      libdirs = { "$(OPENSSL_LIBDIR)", "$(CARES_LIBDIR)" },
      libraries = { "ssl", "crypto", "cares" },
      defines = {},
    },
    asyncore = "lua/asyncore.lua",
    ["asyncore.class"] = "lua/asyncore/class.lua",
    ["asyncore.tasks"] = "lua/asyncore/tasks.lua",
    ["asyncore.service"] = "lua/asyncore/service.lua",
    ["asyncore.streams"] = "lua/asyncore/streams.lua",
    asynchat = "lua/asynchat.lua",
  },
}
