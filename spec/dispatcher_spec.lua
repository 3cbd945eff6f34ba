local asyncore = require "asyncore"
local H = require "helpers"

-- An echo server whose handlers record what happened.
local function echo_server(family, addr, events)
  local Echo = asyncore.dispatcher_with_send:extend()
  function Echo:handle_read()
    local data = self:recv(65536)
    if #data > 0 then self:send(data) end
  end
  function Echo:handle_close()
    if events then events[#events + 1] = "server close" end
    self:close()
  end
  local Server = asyncore.dispatcher:extend()
  function Server:init()
    asyncore.dispatcher.init(self)
    self:create_socket(family or "inet", "stream")
    self:set_reuse_addr()
    self:bind(addr or { "127.0.0.1", 0 })
    self:listen(64)
  end
  function Server:handle_accepted(sock, a)
    self.accepted_addr = a
    self.last = Echo(sock)
  end
  return Server()
end

-- A client that sends `payload` and collects what comes back.
local function echo_client(family, addr, payload)
  local Client = asyncore.dispatcher_with_send:extend()
  function Client:init()
    asyncore.dispatcher_with_send.init(self)
    self.got = {}
    self.n = 0
    self:create_socket(family or "inet", "stream")
    self:connect(addr)
    self:send(payload)
  end
  function Client:handle_connect() self.connected_event = true end
  function Client:handle_read()
    local d = self:recv(65536)
    self.got[#self.got + 1] = d
    self.n = self.n + #d
  end
  function Client:handle_close() self.closed = true; self:close() end
  return Client()
end

for _, backend in ipairs(asyncore.backends()) do
  describe("dispatcher (" .. backend .. ")", function()
    local opts = { backend = backend }
    local fds
    before_each(function()
      -- close_all releases the map's poller too: count with none
      asyncore.close_all()
      collectgarbage(); collectgarbage()
      fds = H.fd_count()
    end)
    after_each(function()
      asyncore.close_all()
      assert.is_nil(next(asyncore.socket_map))
      collectgarbage(); collectgarbage()
      assert.equal(fds, H.fd_count(), "a descriptor was left open")
    end)

    it("serves an echo round trip and fires handle_connect", function()
      local server = echo_server()
      local port = server.socket:getsockname()[2]
      local c = echo_client("inet", { "127.0.0.1", port }, "hello asyncore")
      H.run_until(function() return c.n == 14 end, 5, opts)
      assert.equal("hello asyncore", table.concat(c.got))
      assert.is_true(c.connected_event)
      assert.is_true(c.connected)
      assert.is_false(c.connecting)
      assert.equal("127.0.0.1", server.accepted_addr[1])
      assert.same(c.socket:getsockname(), server.last.addr)
      assert.is_true(server.last.connected)
      assert.equal(server, asyncore.socket_map[server:fileno()])
    end)

    it("delivers 8 MiB through dispatcher_with_send intact", function()
      local server = echo_server()
      local port = server.socket:getsockname()[2]
      local blob = H.blob(8 * 1024 * 1024)
      local c = echo_client("inet", { "127.0.0.1", port }, blob)
      H.run_until(function() return c.n >= #blob end, 30, opts)
      assert.equal(#blob, c.n)
      assert.is_true(table.concat(c.got) == blob, "the data came back changed")
      assert.equal(0, c:out_buffer_size())
    end)

    -- A live channel on a raw peer, with stock predicates when it joined the map.
    local function live_channel(Cls)
      local l, port = H.listener()
      local c = Cls()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      local peer = H.accept_one(l)
      H.run_until(function() return c.connected end, 5, opts)
      return c, peer
    end

    it("asks a predicate set on a live instance from the next pass on", function()
      local C = asyncore.dispatcher:extend()
      function C:handle_read() self.reads = (self.reads or 0) + 1; self:recv(100) end
      function C:handle_write() self.writes = (self.writes or 0) + 1 end
      local c, peer = live_channel(C)
      c.readable = function() return false end
      peer:send("hello")
      H.run_for(0.1, opts)
      assert.is_nil(c.reads, "read while readable() said no")
      c.readable = nil                      -- the class's own again
      H.run_until(function() return c.reads end, 5, opts)
      -- dispatcher's own writable() is always true (as in Python)
      H.run_until(function() return (c.writes or 0) >= 3 end, 5, opts)
      c.writable = function() return false end
      local n = c.writes
      H.run_for(0.05, opts)
      assert.equal(n, c.writes)
      c:close(); peer:close()
    end)

    it("asks a predicate set on the class after its channels joined the map", function()
      local C = asyncore.dispatcher:extend()
      function C:handle_read() self.reads = (self.reads or 0) + 1; self:recv(100) end
      local c, peer = live_channel(C)
      C.readable = function() return false end
      peer:send("hello")
      H.run_for(0.1, opts)
      assert.is_nil(c.reads, "read while the class's readable() said no")
      C.readable = nil                      -- inherited from dispatcher again: stock
      H.run_until(function() return c.reads end, 5, opts)
      c:close(); peer:close()
    end)

    it("ends a refused connect in handle_close, through handle_error", function()
      local l, port = H.listener()
      l:close()   -- nothing listens there now
      local C = asyncore.dispatcher:extend()
      local seen = {}
      function C:handle_error(err, tb)
        seen.err = err
        seen.tb = tb
        asyncore.dispatcher.handle_error(self, err, tb)
      end
      function C:handle_close() seen.closed = true; self:close() end
      function C:handle_connect() seen.connected = true end
      function C:log_info(msg, t) seen.log = t end
      local c = C()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      H.run_until(function() return seen.closed end, 5, opts)
      assert.is_nil(seen.connected)
      assert.is_true(asyncore.is_error(seen.err, "ECONNREFUSED"))
      assert.equal("connect", seen.err.op)
      assert.equal("error", seen.log)
      assert.is_nil(next(asyncore.socket_map))
    end)

    it("sends a handler's error to handle_error and keeps serving others", function()
      local server = echo_server()
      local port = server.socket:getsockname()[2]
      local Bad = asyncore.dispatcher:extend()
      local caught
      function Bad:writable() return false end
      function Bad:handle_read() error("boom") end
      function Bad:handle_error(err, tb) caught = { err = err, tb = tb }; self:close() end
      local bad = Bad()
      bad:create_socket()
      bad:connect { "127.0.0.1", port }
      local good = echo_client("inet", { "127.0.0.1", port }, "still alive")
      -- make the bad one readable: the server echoes what it sends
      bad.socket:send("x")
      H.run_until(function() return caught and good.n == 11 end, 5, opts)
      assert.matches("boom", caught.err)
      assert.matches("stack traceback", caught.tb)
      assert.equal("still alive", table.concat(good.got))
    end)

    it("the default handle_error logs with log_info('error') and closes", function()
      local server = echo_server()
      local port = server.socket:getsockname()[2]
      local Bad = asyncore.dispatcher_with_send:extend()
      local logged
      function Bad:handle_read() error("kaput") end
      function Bad:log_info(msg, t) if t == "error" then logged = { msg = msg, t = t } end end
      local bad = Bad()
      bad:create_socket()
      bad:connect { "127.0.0.1", port }
      bad:send("x")
      H.run_until(function() return logged and H.closed(bad.socket) end, 5, opts)
      assert.equal("error", logged.t)
      assert.matches("kaput", logged.msg)
      assert.matches("uncaptured", logged.msg)
    end)

    -- an error while a listener takes a new connection closes that connection
    -- only, is logged, and the listener goes on serving
    for _, where in ipairs { "handle_accepted before the channel", "handle_accepted after the channel",
      "the channel's init", "handle_accept" } do
      it("keeps the listener serving after an error in " .. where, function()
        local Echo = asyncore.dispatcher_with_send:extend()
        function Echo:handle_read()
          local data = self:recv(100)
          if #data > 0 then self:send(data) end
        end
        local Failing = Echo:extend()
        function Failing:init(sock)
          Echo.init(self, sock)
          error("init failed")
        end
        local Server = asyncore.dispatcher:extend()
        local n, logged, errors = 0, {}, 0
        function Server:handle_error() errors = errors + 1 end
        function Server:log_info(msg, kind) logged[#logged + 1] = { msg = msg, kind = kind } end
        if where == "handle_accept" then
          function Server:handle_accept()
            local sock, addr = self:accept()
            if not sock then return end
            n = n + 1
            if n == 1 then error("accept hook failed") end
            self:handle_accepted(sock, addr)
          end
          function Server:handle_accepted(sock) Echo(sock) end
        else
          function Server:handle_accepted(sock)
            n = n + 1
            if n == 1 then
              if where == "handle_accepted before the channel" then error("accepted failed") end
              if where == "the channel's init" then return Failing(sock) end
              Echo(sock)
              error("accepted failed")
            end
            Echo(sock)
          end
        end
        local server = Server()
        server:create_socket()
        server:bind { "127.0.0.1", 0 }
        server:listen(5)
        local port = server.socket:getsockname()[2]
        local bad = asyncore.socket()
        bad:connect { "127.0.0.1", port }
        H.run_until(function() return n >= 1 end, 5, opts)
        -- the failed connection is closed: its peer reads the end of stream
        local eof = false
        H.run_until(function()
          local ok, d = pcall(bad.recv, bad, 10)
          eof = not ok or d == ""
          return eof
        end, 5, opts)
        bad:close()
        -- the listener still serves
        local good = echo_client(nil, { "127.0.0.1", port }, "ping")
        H.run_until(function() return good.n == 4 end, 5, opts)
        assert.equal("ping", table.concat(good.got))
        assert.is_true(server.accepting)
        assert.is_true(not H.closed(server.socket))
        assert.equal(0, errors, "the listener's handle_error must not run")
        assert.equal(1, #logged)
        assert.equal("error", logged[1].kind)
        assert.matches("failed", logged[1].msg)
        assert.matches("127%.0%.0%.1:%d+", logged[1].msg)
        -- only the listener, the good connection's two ends are in the map
        local count = 0
        for _ in pairs(asyncore.socket_map) do count = count + 1 end
        assert.equal(3, count)
        good:close()
      end)
    end

    it("logs a refused connect as one line naming the peer, without a traceback", function()
      local l, port = H.listener()
      l:close()                                  -- nobody listens there
      local C = asyncore.dispatcher:extend()
      local lines, closed = {}, false
      function C:log_info(msg, kind) lines[#lines + 1] = { msg = msg, kind = kind } end
      function C:handle_close() closed = true; self:close() end
      local c = C()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      H.run_until(function() return closed end, 5, opts)
      assert.equal(1, #lines)
      assert.equal("error", lines[1].kind)
      assert.equal("127.0.0.1:" .. port .. ": connect: Connection refused (ECONNREFUSED)", lines[1].msg)
      assert.not_matches("traceback", lines[1].msg)
      assert.not_matches("\n", lines[1].msg)
    end)

    it("returns '' from recv at end of stream after calling handle_close", function()
      local l, port = H.listener()
      local C = asyncore.dispatcher:extend()
      local order = {}
      function C:writable() return false end
      function C:handle_read()
        local d = self:recv(10)
        order[#order + 1] = "read:" .. d
      end
      function C:handle_close() order[#order + 1] = "close"; self:close() end
      local c = C()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      local s
      H.run_until(function() s = s or l:accept(); return s end, 5, opts)
      s:send("abc")
      s:close()
      H.run_until(function() return order[#order] == "read:" end, 5, opts)
      assert.same({ "read:abc", "close", "read:" }, order)
      l:close()
    end)

    it("hands everything a peer sent before closing to handle_read", function()
      local l, port = H.listener()
      local C = asyncore.dispatcher:extend()
      local got, closed = {}, false
      function C:writable() return false end
      function C:handle_read() got[#got + 1] = self:recv(1000) end
      function C:handle_close() closed = true; self:close() end
      local c = C()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      local s
      H.run_until(function() s = s or l:accept(); return s end, 5, opts)
      local blob = H.blob(200000, 7)
      s:setblocking(true)
      -- the client reads only 1000 bytes per event: most of it is still queued at EOF
      local co = coroutine.wrap(function()
        local i = 1
        while i <= #blob do
          local n = s:send(blob, i, i + 65535)
          i = i + n
          coroutine.yield()
        end
        s:close()
      end)
      co()
      H.run_until(function()
        if not H.closed(s) then co() end
        return closed
      end, 10, opts)
      assert.is_true(table.concat(got) == blob, "data was lost at end of stream")
      l:close()
    end)

    it("returns 0 from send and calls handle_close when the peer is gone", function()
      local l, port = H.listener()
      local C = asyncore.dispatcher:extend()
      local closes = 0
      function C:readable() return false end
      function C:writable() return false end
      function C:handle_close() closes = closes + 1; self:close() end
      function C:handle_connect() end
      local c = C()
      c:create_socket()
      c:connect { "127.0.0.1", port }
      local s
      H.run_until(function() s = s or l:accept(); return s end, 5, opts)
      s:setsockopt("rcvbuf", 4096)
      s:close()
      H.run_for(0.05, opts)
      local sent
      -- the first send may still be taken; a later one sees the reset
      for _ = 1, 50 do
        sent = c:send("data after the peer left")
        if closes > 0 then break end
        os.execute("sleep 0.01")
      end
      assert.equal(0, sent)
      assert.equal(1, closes)
      l:close()
    end)

    it("never polls a listener for writing and honours readable()", function()
      local L = asyncore.dispatcher:extend()
      local writes, accepts = 0, 0
      function L:handle_write() writes = writes + 1 end
      function L:handle_accepted(sock) accepts = accepts + 1; sock:close() end
      local l = L()
      l:create_socket()
      l:bind { "127.0.0.1", 0 }
      l:listen(5)
      local port = l.socket:getsockname()[2]
      local Quiet = asyncore.dispatcher:extend()
      local reads = 0
      function Quiet:readable() return false end
      function Quiet:writable() return false end
      function Quiet:handle_read() reads = reads + 1 end
      local q = Quiet()
      q:create_socket()
      q:connect { "127.0.0.1", port }
      H.run_until(function() return accepts == 1 end, 5, opts)
      H.run_for(0.05, opts)
      assert.equal(0, writes)
      assert.equal(0, reads)
    end)

    it("accepts every pending connection on one readiness event", function()
      local L = asyncore.dispatcher:extend()
      local accepted = 0
      function L:handle_accepted(sock) accepted = accepted + 1; sock:close() end
      local l = L()
      l:create_socket()
      l:bind { "127.0.0.1", 0 }
      l:listen(64)
      local port = l.socket:getsockname()[2]
      local clients = {}
      for i = 1, 20 do
        clients[i] = asyncore.socket()
        clients[i]:connect { "127.0.0.1", port }
      end
      os.execute("sleep 0.05")
      asyncore.loop { timeout = 1, count = 1, backend = backend }
      assert.equal(20, accepted)
      for _, c in ipairs(clients) do c:close() end
    end)

    it("the default handle_accepted closes the socket and warns", function()
      local l = asyncore.dispatcher()
      local warned
      function l:log_info(m, t) warned = t .. ": " .. m end
      l:create_socket()
      l:bind { "127.0.0.1", 0 }
      l:listen(5)
      local c = asyncore.socket()
      c:connect { "127.0.0.1", l.socket:getsockname()[2] }
      H.run_until(function() return warned end, 5, opts)
      assert.equal("warning: unhandled accepted event", warned)
      H.run_until(function() return c:recv(1) == "" end, 5, opts)
      c:close()
    end)

    it("runs a UDP dispatcher with sendto/recvfrom", function()
      local U = asyncore.dispatcher:extend()
      local got
      function U:writable() return false end
      function U:handle_read()
        local d, from = self.socket:recvfrom(100)
        got = { d, from }
      end
      local u = U()
      u:create_socket("inet", "dgram")
      u:bind { "127.0.0.1", 0 }
      local s = asyncore.socket("inet", "dgram")
      s:sendto("datagram", u.socket:getsockname())
      H.run_until(function() return got end, 5, opts)
      assert.equal("datagram", got[1])
      assert.equal(s:getsockname()[2], got[2][2])
      s:close()
    end)

    it("serves over a Unix domain socket", function()
      local path = H.tmpname()
      local server = echo_server("unix", path)
      local c = echo_client("unix", path, "unix echo")
      H.run_until(function() return c.n == 9 end, 5, opts)
      assert.equal("unix echo", table.concat(c.got))
      assert.equal(path, c.addr)
      os.remove(path)
      server:close()
    end)

    it("serves over IPv6", function()
      if not H.have_ipv6() then return pending("::1 unavailable") end
      local server = echo_server("inet6", { "::1", 0 })
      local port = server.socket:getsockname()[2]
      local c = echo_client("inet6", { "::1", port }, "v6 echo")
      H.run_until(function() return c.n == 7 end, 5, opts)
      assert.equal("v6 echo", table.concat(c.got))
      assert.equal("::1", server.last.addr[1])
    end)

    it("reads a pipe with file_dispatcher until it ends", function()
      local F = asyncore.file_dispatcher:extend()
      local got, closed = {}, false
      function F:writable() return false end
      function F:handle_read() got[#got + 1] = self:recv(100) end
      function F:handle_close() closed = true; self:close() end
      local p = io.popen("printf 'from a pipe'")
      local f = F(p)
      assert.is_true(f.connected)
      H.run_until(function() return closed end, 5, opts)
      assert.equal("from a pipe", table.concat(got))
      p:close()
    end)

    it("writes to a pipe with file_dispatcher (integer descriptor)", function()
      local out = os.tmpname()
      local p = io.popen("cat > " .. out, "w")
      local fd = asyncore.file_dispatcher(p)
      assert.equal(5, fd:send("piped"))
      fd:close()
      p:close()
      local f = io.open(out)
      assert.equal("piped", f:read("a"))
      f:close()
      os.remove(out)
    end)

    it("leaves and rejoins the map with del_channel/add_channel", function()
      local d = asyncore.dispatcher()
      d:create_socket()
      local fd = d:fileno()
      assert.equal(d, asyncore.socket_map[fd])
      d:del_channel()
      assert.is_nil(asyncore.socket_map[fd])
      local m = {}
      d:add_channel(m)
      assert.equal(d, m[fd])
      d:del_channel(m)
      assert.is_nil(m[fd])
      d:add_channel()
      d:close()
      assert.is_nil(asyncore.socket_map[fd])
    end)

    it("serves a private map given to the constructor and to loop", function()
      local map = {}
      local L = asyncore.dispatcher:extend()
      local accepted
      function L:handle_accepted(sock) accepted = true; sock:close() end
      local l = L(nil, map)
      l:create_socket()
      l:bind { "127.0.0.1", 0 }
      l:listen(5)
      assert.equal(l, map[l:fileno()])
      assert.is_nil(asyncore.socket_map[l:fileno()])
      local c = asyncore.socket()
      c:connect { "127.0.0.1", l.socket:getsockname()[2] }
      H.run_until(function() return accepted end, 5, { map = map, backend = backend })
      asyncore.close_all(map)
      assert.is_nil(next(map))
      c:close()
      map = nil   -- its poller goes with it
    end)

    -- kqueue has no notification of out-of-band data (select's exceptfds, poll's
    -- POLLPRI): there handle_expt is never called
    local it_oob = backend == "kqueue" and pending or it
    it_oob("calls handle_expt for urgent (out-of-band) data", function()
      local script = [[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.send(b"!", socket.MSG_OOB)
import time; time.sleep(2)
]]
      local f = os.tmpname()
      local h = io.open(f, "w"); h:write(script); h:close()
      local L = asyncore.dispatcher:extend()
      local expt
      local C = asyncore.dispatcher:extend()
      function C:writable() return false end
      function C:handle_read() self:recv(10) end
      function C:handle_expt() expt = true; self:close() end
      function L:handle_accepted(sock) C(sock) end
      local l = L()
      l:create_socket()
      l:bind { "127.0.0.1", 0 }
      l:listen(5)
      local p = H.spawn("python3 " .. f .. " " .. l.socket:getsockname()[2], 10)
      H.run_until(function() return expt end, 8, opts)
      p.kill()
      os.remove(f)
    end)

    -- one urgent byte, then the client stays: the default handle_expt must
    -- consume it (and warn once), and an override that does not must not make
    -- the event fire on every pass either
    for _, variant in ipairs { "default", "override" } do
      it_oob("does not fire an unhandled priority event forever (" .. variant .. " handle_expt)", function()
        local script = [[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.send(b"!", socket.MSG_OOB)
time.sleep(3)
]]
        local f = os.tmpname()
        local h = io.open(f, "w"); h:write(script); h:close()
        local L = asyncore.dispatcher:extend()
        local calls, warnings, chan = 0, 0, nil
        local C = asyncore.dispatcher:extend()
        function C:writable() return false end
        function C:handle_read() self:recv(10) end
        function C:log_info(_, kind) if kind == "warning" then warnings = warnings + 1 end end
        if variant == "default" then
          function C:handle_expt() calls = calls + 1; asyncore.dispatcher.handle_expt(self) end
        else
          function C:handle_expt() calls = calls + 1 end
        end
        function L:handle_accepted(sock) chan = C(sock) end
        local l = L()
        l:create_socket()
        l:bind { "127.0.0.1", 0 }
        l:listen(5)
        local p = H.spawn("python3 " .. f .. " " .. l.socket:getsockname()[2], 10)
        H.run_until(function() return calls > 0 end, 8, opts)
        H.run_for(0.3, opts)
        assert.equal(1, calls)
        if variant == "default" then assert.equal(1, warnings) end
        assert.is_true(not H.closed(chan.socket))
        p.kill()
        os.remove(f)
      end)
    end

    it("gives the log and log_info output Python's asyncore gives", function()
      local d = asyncore.dispatcher()
      local out = H.capture([[lua5.4 -e 'package.path="lua/?.lua;"..package.path; package.cpath="./?.so;"..package.cpath
        local d = require("asyncore").dispatcher()
        d:log("hit"); d:log_info("hello"); d:log_info("careful", "warning"); d:log_info("bad", "error")']])
      assert.matches("log: hit\n", out)
      assert.matches("info: hello\n", out)
      assert.not_matches("careful", out)
      assert.matches("error: bad\n", out)
      assert.is_true(d.ignore_log_types.warning)
    end)
  end)
end
