local asyncore = require "asyncore"
local H = require "helpers"

-- A connected pair: our dispatcher of class Cls and the raw peer socket.
local function pair(Cls, map)
  local l, port = H.listener()
  local d = Cls(nil, map)
  d:create_socket()
  d:connect { "127.0.0.1", port }
  return d, H.accept_one(l)
end

for _, backend in ipairs(asyncore.backends()) do
  describe("loop guarantees (" .. backend .. ")", function()
    local opts = { backend = backend }
    after_each(function() asyncore.close_all() end)

    it("delivers no event to a channel closed earlier in the same pass", function()
      local C = asyncore.dispatcher:extend()
      local reads = 0
      function C:writable() return false end
      function C:handle_read()
        reads = reads + 1
        self:recv(100)
        self.other:close()
      end
      local a, pa = pair(C)
      local b, pb = pair(C)
      a.other, b.other = b, a
      pa:send("x"); pb:send("y")
      os.execute("sleep 0.05")   -- both are readable before the pass
      asyncore.loop { timeout = 1, count = 1, backend = backend }
      assert.equal(1, reads)
      pa:close(); pb:close()
    end)

    it("gives a new channel on a recycled descriptor no stale event", function()
      local C = asyncore.dispatcher:extend()
      local reads, fresh_reads, recycled = 0, 0, false
      local Fresh = asyncore.dispatcher:extend()
      function Fresh:writable() return false end
      function Fresh:handle_read() fresh_reads = fresh_reads + 1 end
      function C:writable() return false end
      function C:handle_read()
        reads = reads + 1
        self:recv(100)
        local other = self.other
        if not H.closed(other.socket) then
          local fd = other:fileno()
          other:close()
          -- lower free numbers are taken first: fill them until fd comes back
          for _ = 1, 64 do
            local f = Fresh()
            f:create_socket()
            if f:fileno() == fd then recycled = true break end
          end
        end
      end
      local a, pa = pair(C)
      local b, pb = pair(C)
      a.other, b.other = b, a
      pa:send("x"); pb:send("y")
      os.execute("sleep 0.05")
      asyncore.loop { timeout = 1, count = 1, backend = backend }
      assert.is_true(recycled, "the descriptor number was not reused: test is void")
      assert.equal(1, reads)
      assert.equal(0, fresh_reads)
      pa:close(); pb:close()
    end)

    it("runs exactly `count` passes", function()
      local C = asyncore.dispatcher:extend()
      local writes = 0
      function C:readable() return false end
      function C:handle_write() writes = writes + 1 end
      local c, peer = pair(C)
      H.run_until(function() return c.connected end, 5, opts)
      writes = 0
      asyncore.loop(0.1, false, nil, 3)
      asyncore.loop { timeout = 0.1, count = 2, backend = backend }
      assert.equal(5, writes)
      peer:close()
    end)

    it("returns when the map is empty", function()
      local C = asyncore.dispatcher:extend()
      function C:handle_connect() end
      function C:handle_write() self:close() end
      local c, peer = pair(C)
      local t0 = H.now()
      asyncore.loop { timeout = 5, backend = backend }
      assert.is_true(H.now() - t0 < 2)
      assert.is_nil(next(asyncore.socket_map))
      assert.is_true(H.closed(c.socket))
      peer:close()
    end)

    it("leaves loop() with ExitNow, re-raised to the caller", function()
      local C = asyncore.dispatcher:extend()
      function C:handle_write() error(asyncore.ExitNow) end
      function C:handle_connect() end
      local c, peer = pair(C)
      local ok, err = pcall(asyncore.loop, { timeout = 1, backend = backend })
      assert.is_false(ok)
      assert.equal(asyncore.ExitNow, err)
      assert.is_true(not H.closed(c.socket), "ExitNow must not close the channel")
      peer:close()
    end)

    it("lets Ctrl-C ('interrupted!') leave the loop instead of handle_error", function()
      local C = asyncore.dispatcher:extend()
      local handled = false
      function C:handle_write() error("interrupted!") end
      function C:handle_error() handled = true end
      local c, peer = pair(C)
      local ok, err = pcall(asyncore.loop, { timeout = 1, backend = backend })
      assert.is_false(ok)
      assert.matches("interrupted!$", err)
      assert.is_false(handled)
      c:close()
      peer:close()
    end)

    it("sends an error in readable() to handle_error", function()
      local C = asyncore.dispatcher:extend()
      local caught
      function C:readable() error("predicate failed") end
      function C:handle_error(err) caught = err; self:close() end
      local c, peer = pair(C)
      H.run_until(function() return caught end, 5, opts)
      assert.matches("predicate failed", caught)
      assert.is_true(H.closed(c.socket))
      peer:close()
    end)

    it("closes a channel whose handle_error fails, and goes on", function()
      local C = asyncore.dispatcher:extend()
      function C:handle_write() error("first") end
      function C:handle_error() error("second") end
      local c, peer = pair(C)
      local t = asyncore.call_later(0.05, function() end)
      local out = {}
      H.run_until(function() return H.closed(c.socket) end, 5, opts)
      assert.is_nil(next(asyncore.socket_map))
      t:cancel()
      peer:close()
    end)

    it("survives a nested loop in a handler", function()
      local C = asyncore.dispatcher:extend()
      local nested, writes = 0, 0
      function C:readable() return false end
      function C:handle_write()
        writes = writes + 1
        if writes == 1 then
          asyncore.loop { timeout = 0.01, count = 3, backend = backend }
          nested = nested + 1
        elseif writes > 6 then
          self:close()
        end
      end
      local c, peer = pair(C)
      H.run_until(function() return H.closed(c.socket) end, 5, opts)
      assert.equal(1, nested)
      peer:close()
    end)

    it("leaves an idle loop at once on Ctrl-C (SIGINT)", function()
      local p = H.spawn(H.LUA .. " spec/peers/idle_loop.lua " .. backend .. " 30", 20)
      local pid = p.wait_line("ready pid (%d+)", 10)
      H.run_for(0.2)                      -- it is waiting now, with nothing to do
      local t0 = H.now()
      os.execute("kill -INT " .. pid)
      H.run_until(function() return not p.running() end, 10)
      local took = H.now() - t0
      assert.matches("interrupted!", p.output())
      assert.is_true(took < 1, ("took %.2f s"):format(took))
      p.kill()
    end)

    it("keeps serving with a listener that ran out of descriptors", function()
      local p = H.spawn("sh -c 'ulimit -n 24; exec " .. H.LUA ..
        " spec/peers/emfile_server.lua 30'", 20)
      local port = tonumber(p.wait_line("port (%d+)"))
      local clients = {}
      for i = 1, 30 do
        clients[i] = asyncore.socket()
        clients[i]:connect { "127.0.0.1", port }
      end
      p.wait_line("(done[^\n]*)", 15)
      local out = p.output()
      for _, c in ipairs(clients) do c:close() end
      p.kill()
      -- said once, at "error", with the limit
      assert.matches("error: accept: Too many open files %(EMFILE%)[^\n]*24 descriptors %(ulimit %-n%)", out)
      assert.matches("released", out)
      assert.matches("accepted 30\n", out)
      assert.matches("done ok=false err=asyncore.ExitNow", out)
      assert.equal(1, tonumber(out:match("errors=(%d+)")), out)
      assert.equal(0, tonumber(out:match("warnings=(%d+)")), out)
      local cpu = tonumber(out:match("cpu=([%d.]+)"))
      assert.is_true(cpu < 0.5, "the listener burned CPU while out of descriptors: " .. cpu)
    end)
  end)
end

describe("the loop", function()
  after_each(function() asyncore.close_all() end)

  it("lists its backends, with epoll on Linux", function()
    local b = asyncore.backends()
    assert.is_true(#b >= 2)
    local set = {}
    for _, name in ipairs(b) do set[name] = true end
    assert.is_true(set.select and set.poll)
    if H.capture("uname -s"):match("Linux") then
      assert.is_true(set.epoll)
      assert.equal("epoll", b[1])
    end
  end)

  it("refuses an unknown backend with a clear message", function()
    assert.has_error(function() asyncore.loop { backend = "nope", count = 1 } end)
    local ok, err = pcall(asyncore.loop, { backend = "nope", count = 1 })
    assert.matches("unknown or unavailable backend 'nope'", err)
  end)

  it("makes select refuse a descriptor at or above FD_SETSIZE", function()
    local out = H.capture("sh -c 'ulimit -n 2048 && " .. H.LUA .. " spec/peers/fdsetsize.lua'")
    assert.matches("fd 10%d%d", out)
    assert.matches("select: false select: descriptor 10%d%d too large for select%(%) %(FD_SETSIZE is 1024%)", out)
    assert.matches("poll: true", out)
  end)

  it("does one pass with poll() and poll2()", function()
    local t0 = H.now()
    asyncore.poll(0.05)
    asyncore.poll2(0.05)
    asyncore.poll3(0)
    assert.is_true(H.now() - t0 < 1)
    local C = asyncore.dispatcher:extend()
    local writes = 0
    function C:readable() return false end
    function C:handle_write() writes = writes + 1 end
    local c, peer = pair(C)
    asyncore.poll(0.5)
    asyncore.poll2(0.5)
    asyncore.poll(0.5)
    assert.equal(3, writes)
    peer:close()
  end)

  it("accepts use_poll=true", function()
    local C = asyncore.dispatcher:extend()
    local writes = 0
    function C:readable() return false end
    function C:handle_write() writes = writes + 1; if writes == 2 then self:close() end end
    local c, peer = pair(C)
    asyncore.loop(0.5, true)
    assert.equal(2, writes)
    peer:close()
  end)

  it("leaves no descriptor open after close_all", function()
    asyncore.close_all()
    collectgarbage(); collectgarbage()
    local before = H.fd_count()
    local server = asyncore.dispatcher()
    server:create_socket()
    server:bind { "127.0.0.1", 0 }
    server:listen(5)
    for _ = 1, 10 do
      local d = asyncore.dispatcher_with_send()
      d:create_socket()
      d:connect(server.socket:getsockname())
    end
    H.run_for(0.1)
    asyncore.close_all()
    assert.is_nil(next(asyncore.socket_map))
    collectgarbage(); collectgarbage()
    assert.equal(before, H.fd_count())
  end)

  it("close_all releases the map's poller descriptor; a later loop makes a new one", function()
    collectgarbage(); collectgarbage()
    local before = H.fd_count()
    for _, backend in ipairs(asyncore.backends()) do
      local m = {}
      local server = asyncore.dispatcher(nil, m)
      server:create_socket()
      server:bind { "127.0.0.1", 0 }
      server:listen(5)
      asyncore.loop { count = 1, timeout = 0, map = m, backend = backend }
      asyncore.close_all(m)
      -- no garbage collection in between: the map (still referenced) holds nothing open
      assert.equal(before, H.fd_count(), backend)
      local d = asyncore.dispatcher(nil, m)
      d:create_socket()
      d:bind { "127.0.0.1", 0 }
      d:listen(5)
      asyncore.loop { count = 1, timeout = 0, map = m, backend = backend }
      assert.equal(backend, require("asyncore.core").map_backend(m))
      asyncore.close_all(m)
      assert.equal(before, H.fd_count(), backend)
    end
  end)

  it("close_all re-raises errors unless ignore_all", function()
    local C = asyncore.dispatcher:extend()
    function C:close() error("cannot close") end
    local m = {}
    m[1] = C()
    assert.has_error(function() asyncore.close_all(m) end, "cannot close")
    m[1] = C()
    asyncore.close_all(m, true)
    assert.is_nil(next(m))
  end)
end)
