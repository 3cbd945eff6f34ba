-- Streams: open_stream, serve and the stream methods, driven by tasks.
local asyncore = require "asyncore"
local asynchat = require "asynchat"
local H = require "helpers"

local PY = "python3 spec/peers/py_pieces.py "

-- a py_pieces.py peer sending these pieces: the process and its port
local function pieces(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = "'" .. a .. "'" end
  local p = H.spawn(PY .. table.concat(args, " "), 30)
  return p, tonumber(p.wait_line("port (%d+)"))
end

-- the sha256 of a string, by sha256sum (as the Python peer prints it)
local function sha256(data)
  local path = os.tmpname()
  local f = io.open(path, "wb")
  f:write(data)
  f:close()
  local hex = H.capture("sha256sum " .. path):match("^(%x+)")
  os.remove(path)
  return hex
end

-- run fn as a task and wait (bounded) for its results
local function run(fn, seconds)
  local t = asyncore.spawn(fn)
  H.run_until(function() return t.status ~= "running" and t.status ~= "waiting" end, seconds or 10)
  local r = table.pack(t:join())
  assert(r[1], tostring(r[2]))
  return table.unpack(r, 2, r.n)
end

describe("streams", function()
  after_each(H.cleanup)

  it("read formats as file:read, across small delayed segments", function()
    local p, port = pieces("one\\r\\ntw", "o\\nthree\\rst", "ill\\nab", "cdefg", "hij\\n", "tail\\r\\n", "A", "B", "C")
    local got = run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      local r = {}
      r[#r + 1] = s:read()            -- "one": \r\n ends a line
      r[#r + 1] = s:read("l")         -- "two"
      r[#r + 1] = s:read("L")         -- "three\rstill\n": a lone \r does not end a line
      r[#r + 1] = s:read(3)           -- "abc"
      r[#r + 1] = s:read_until("g")   -- "def"
      r[#r + 1] = s:read_some()       -- what is there: "hij\n" or part of it
      r[#r + 1] = s:read_until("\r\n")
      r[#r + 1] = s:read(10)          -- fewer at the end: "ABC"
      r[#r + 1] = tostring(s:read())  -- nil at the end
      r[#r + 1] = s:read("a")         -- "" at the end
      s:write("thanks")
      s:close()
      return r
    end)
    assert.equal("one", got[1])
    assert.equal("two", got[2])
    assert.equal("three\rstill\n", got[3])
    assert.equal("abc", got[4])
    assert.equal("def", got[5])
    assert.matches("^hi?j?\n?$", got[6])
    assert.equal("tail", got[7]:gsub("^j?\n?", ""))
    assert.equal("ABC", got[8])
    assert.equal("nil", got[9])
    assert.equal("", got[10])
    p.wait_line("got 6 bytes")
    p.kill()
  end)

  it("read_until gives EMSGSIZE past max; read('a') gets everything at the end", function()
    local p, port = pieces("0123456789", "abc|rest", "more")
    local r1, e1, r2, r3 = run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      local a, e = s:read_until("|", 5)
      local b = s:read_until("|")
      local c = s:read("a")
      s:close()
      return a, e, b, c
    end)
    assert.is_nil(r1)
    assert.is_true(asyncore.is_error(e1, "EMSGSIZE"))
    assert.equal("0123456789abc", r2)
    assert.equal("restmore", r3)
    p.kill()
  end)

  it("serve runs a task per connection: 20 concurrent clients", function()
    local srv = asyncore.serve("127.0.0.1", 0, function(s, addr)
      assert(type(addr) == "table")
      while true do
        local line = s:read()
        if not line then break end
        s:write(line:upper(), "\n")
      end
    end)
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = asyncore.spawn(function()
        local c = assert(asyncore.open_stream("127.0.0.1", srv.port))
        local out = {}
        for j = 1, 5 do
          c:write(("client %d line %d\n"):format(i, j))
          asyncore.sleep(0.001 * (i % 3))
          out[j] = c:read()
        end
        c:close()
        return table.concat(out, ",")
      end)
    end
    H.run_until(function()
      for _, t in ipairs(tasks) do if t.status ~= "done" and t.status ~= "failed" then return false end end
      return true
    end, 20)
    for i, t in ipairs(tasks) do
      local ok, out = t:join()
      assert.is_true(ok, tostring(out))
      assert.equal(("CLIENT %d LINE 1,CLIENT %d LINE 2,CLIENT %d LINE 3,CLIENT %d LINE 4,CLIENT %d LINE 5")
        :format(i, i, i, i, i), out)
    end
    srv:close()
  end)

  it("serve gives the peer's address to a handler that takes it (a parameter or ...); a served stream is connected until it closes", function()
    local seen = {}
    local function handler_of(name, take)
      return function(s, ...)
        local addr = take(...)
        local before, peer = s.connected, s:getpeername()
        s:write(name, "\n")
        s:close()
        seen[name] = { addr = addr, before = before, after = s.connected, peer = peer }
      end
    end
    local named = asyncore.serve("127.0.0.1", 0, function(s, addr)
      return handler_of("named", function() return addr end)(s)
    end)
    local vararg = asyncore.serve("127.0.0.1", 0, handler_of("vararg", function(...) return (...) end))
    local none = asyncore.serve("127.0.0.1", 0, function(s)
      seen.none = { connected = s.connected, peer = s:getpeername() }
      s:write("none\n")
      s:close()
    end)
    local got = {}
    for _, srv in ipairs { named, vararg, none } do
      asyncore.spawn(function()
        local c = assert(asyncore.open_stream("127.0.0.1", srv.port))
        local mine = c:getsockname()
        local line = c:read()
        got[line] = mine
        c:close()
      end)
    end
    H.run_until(function() return got.named and got.vararg and got.none end, 10)
    for _, name in ipairs { "named", "vararg" } do
      local v = seen[name]
      assert.same(got[name], v.addr)
      assert.same(v.peer, v.addr)
      assert.is_true(v.before)
      assert.is_false(v.after)
    end
    assert.is_true(seen.none.connected)
    assert.same(got.none, seen.none.peer)
    named:close(); vararg:close(); none:close()
  end)

  it("a writer suspends while a slow reader's queue is high: memory bounded, everything intact", function()
    local p = H.spawn(PY .. "--slow 33554432", 60)
    local port = tonumber(p.wait_line("port (%d+)"))
    local data = H.blob(16 * 1024 * 1024, 4)
    local most = 0
    run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      for i = 1, #data, 65536 do
        assert(s:write(data:sub(i, i + 65535)))
        most = math.max(most, s:out_buffer_size())
      end
      assert(s:flush())
      assert.equal(0, s:out_buffer_size())
      s:close()
    end, 60)
    assert.is_true(most <= 1024 * 1024 + 65536, "queued up to " .. most)
    p.wait_line("got (%d+) bytes", 60)
    assert.matches("got 16777216 bytes " .. sha256(data), p.output())
    p.kill()
  end)

  it("write of many strings: all of them, in order, whether the socket takes them at once, in part, or behind a queue", function()
    local p = H.spawn(PY .. "--slow 16777216", 60)
    local port = tonumber(p.wait_line("port (%d+)"))
    local data = H.blob(8 * 1024 * 1024, 7)
    local writes, returned = 0, true
    run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      local i, k = 1, 0
      while i <= #data do
        k = k % 16 + 1                 -- 1 to 16 strings a write, up to 96,000 bytes
        local args = {}
        for j = 1, k do
          local len = (i * 7 + j * 131) % 6000 + 1
          args[j] = data:sub(i, i + len - 1)
          i = i + len
          if i > #data then break end
        end
        if k == 3 then table.insert(args, 2, "") end   -- an empty string among them
        returned = returned and s:write(table.unpack(args)) == s
        writes = writes + 1
      end
      assert(s:flush())
      s:close()
    end, 60)
    assert.is_true(returned, "write returns the stream")
    p.wait_line("got (%d+) bytes", 60)
    assert.matches("got 8388608 bytes " .. sha256(data), p.output())
    assert.is_true(writes > 300, writes .. " writes")
    p.kill()
  end)

  it("with a timeout set, reads wait for what comes later (segments, then the end)", function()
    local p, port = pieces("one\\n", "two ", "three\\n", "rest")
    local a, b, c = run(function()
      local st = assert(asyncore.open_stream("127.0.0.1", port))
      st:settimeout(10)
      local l1, l2 = st:read(), st:read()
      local all = st:read("a")
      st:close()
      return l1, l2, all
    end)
    assert.equal("one", a)
    assert.equal("two three", b)
    assert.equal("rest", c)
    p.kill()
  end)

  it("a reset while a task waits to read: nil and ECONNRESET, after what came before it", function()
    local p, port = pieces("--reset", "first\\n")
    local line, r, err = run(function()
      local c = assert(asyncore.open_stream("127.0.0.1", port))
      local l = c:read()
      local r2, e2 = c:read_some()           -- waits: the peer resets meanwhile
      c:close()
      return l, r2, e2
    end)
    assert.equal("first", line)
    assert.is_nil(r)
    assert.is_true(asyncore.is_error(err, "ECONNRESET"), tostring(err))
    p.wait_line("reset")
    p.kill()
  end)

  it("serve closes the stream when its handler fails, and the error is reported", function()
    local reported
    local old = asyncore.handle_task_error
    asyncore.handle_task_error = function(task, e) reported = tostring(e) end
    local srv = asyncore.serve("127.0.0.1", 0, function(s)
      s:write("before the failure\n")
      error("handler broke")
    end)
    local got = run(function()
      local c = assert(asyncore.open_stream("127.0.0.1", srv.port))
      local all = c:read("a")
      c:close()
      return all
    end)
    asyncore.handle_task_error = old
    srv:close()
    assert.equal("before the failure\n", got)
    assert.matches("handler broke", reported)
  end)

  it("settimeout: a read times out with ETIMEDOUT, and the stream stays usable", function()
    local p, port = pieces("late\\n")
    local e, line = run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      s:settimeout(0.005)
      local r, err = s:read()
      if r then return "no timeout", r end          -- the line came within 5 ms: rare
      s:settimeout(nil)
      local l = s:read()
      s:close()
      return err, l
    end)
    if e ~= "no timeout" then
      assert.is_true(asyncore.is_error(e, "ETIMEDOUT"))
    end
    assert.equal("late", line)
    p.kill()
  end)

  it("timed reads in tasks: the deadline covers the whole read, for 20 streams at once; 0 does not wait", function()
    local results = {}
    local srv = asyncore.serve("127.0.0.1", 0, function(s)
      s:settimeout(0.5)
      local t0 = asyncore.now()
      local r, e = s:read()          -- pieces come every 0.15 s for 3 s, the end of the line only later
      local waited = asyncore.now() - t0
      s:write("T\n")
      s:settimeout(0)
      local r0, e0 = s:read()        -- the line is not complete: at once
      s:settimeout(10)
      local rest = s:read()
      results[#results + 1] = { r = r, e = e, waited = waited, r0 = r0, e0 = e0, rest = rest }
    end)
    for _ = 1, 20 do
      asyncore.spawn(function()
        local c = assert(asyncore.open_stream("127.0.0.1", srv.port))
        for i = 1, 20 do
          c:write(("%02d"):format(i))
          asyncore.sleep(0.15)
        end
        assert.equal("T", c:read())
        c:write("end\n")
        c:read()                     -- the end: the server's task is over
        c:close()
      end)
    end
    H.run_until(function() return #results == 20 end, 40)
    for _, r in ipairs(results) do
      assert.is_nil(r.r)
      assert.is_true(asyncore.is_error(r.e, "ETIMEDOUT"), tostring(r.e))
      assert.equal("read", r.e.op)
      -- from the first wait to the deadline, data arriving meanwhile or not
      assert.is_true(r.waited >= 0.45 and r.waited < 2.5, "waited " .. r.waited)
      assert.is_nil(r.r0)
      assert.is_true(asyncore.is_error(r.e0, "ETIMEDOUT"), tostring(r.e0))
      assert.equal("0102030405060708091011121314151617181920end", r.rest)
    end
    srv:close()
  end)

  it("a timed read that was cancelled leaves no deadline behind for the next read", function()
    local l, port = H.listener()                  -- connects, never sends, never ends
    local s = run(function() return assert(asyncore.open_stream("127.0.0.1", port)) end)
    local first = asyncore.spawn(function()
      s:settimeout(0.2)
      return s:read()
    end)
    H.run_until(function() return first.status == "waiting" end)
    first:cancel()
    H.run_until(function() return first.status == "cancelled" end)
    local r, e, waited = run(function()
      s:settimeout(1)
      local t0 = asyncore.now()
      local r, e = s:read_some()
      return r, e, asyncore.now() - t0
    end)
    assert.is_nil(r)
    assert.is_true(asyncore.is_error(e, "ETIMEDOUT"), tostring(e))
    assert.equal("read_some", e.op)
    assert.is_true(waited >= 0.95 and waited < 6, "waited " .. waited)
    s:close()
    l:close()
  end)

  it("one reader at a time (EBUSY); cancelling a reader gives ECANCELED and closes its <close> stream", function()
    local l, port = H.listener()                  -- connects, never sends, never ends
    local s
    local first = asyncore.spawn(function()
      local st <close> = assert(asyncore.open_stream("127.0.0.1", port))
      s = st
      return st:read()
    end)
    H.run_until(function() return s ~= nil and first.status == "waiting" end)
    local r, e = run(function() return s:read() end)
    assert.is_nil(r)
    assert.is_true(asyncore.is_error(e, "EBUSY"))
    first:cancel()
    H.run_until(function() return first.status == "cancelled" end)
    assert.is_nil(s:fileno())
    l:close()
  end)

  it("open_stream reports a refused connect and a connect timeout as nil, err", function()
    local l, port = H.listener()
    l:close()
    local r, e = run(function() return asyncore.open_stream("127.0.0.1", port) end)
    assert.is_nil(r)
    assert.is_true(asyncore.is_error(e, "ECONNREFUSED"))
    local hp = H.hanging_port()
    r, e = run(function() return asyncore.open_stream("127.0.0.1", hp, { timeout = 0.2 }) end)
    assert.is_nil(r)
    assert.is_true(asyncore.is_error(e, "ETIMEDOUT"))
  end)

  it("speak TLS: serve with a server context, open_stream with a client context, start_tls on a live stream", function()
    local D = H.tls_certs()
    local sctx = asyncore.tls_context { mode = "server", certfile = D .. "server.pem", keyfile = D .. "server.key" }
    local cctx = asyncore.tls_context { cafile = D .. "ca.pem" }
    local srv = asyncore.serve("127.0.0.1", 0, function(st)
      st:write("hello ", st:tls_info().version, "\n")
      local l = st:read()
      st:write("echo ", l, "\n")
    end, { tls = sctx })
    local plain = asyncore.serve("127.0.0.1", 0, function(st)
      st:write("220 ready\n")
      assert.equal("STARTTLS", st:read())
      st:write("220 go ahead\n")
      assert(st:start_tls(sctx))
      st:write("secret ", tostring(st:read()), "\n")
    end)
    local a, b, c, info = run(function()
      local t = assert(asyncore.open_stream("localhost", srv.port, { tls = cctx }))
      local hello = t:read()
      t:write("ping\n")
      local echo = t:read()
      t:close()
      local u = assert(asyncore.open_stream("127.0.0.1", plain.port))
      assert.equal("220 ready", u:read())
      u:write("STARTTLS\n")
      assert.equal("220 go ahead", u:read())
      assert(u:start_tls(cctx, { server_hostname = "localhost" }))
      u:write("word\n")
      local secret = u:read()
      local i = u:tls_info()
      u:close()
      return hello, echo, secret, i
    end, 20)
    assert.matches("^hello TLSv1%.[23]$", a)
    assert.equal("echo ping", b)
    assert.equal("secret word", c)
    assert.is_true(info.verified)
    srv:close()
    plain:close()
  end)

  it("a task client and a dispatcher server in one program; peer and local names; the socket", function()
    local port = H.echo_server()
    local back, peer, mine, sock = run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      s:write("two styles\n")
      local r = s:read()
      local p, m = s:getpeername(), s:getsockname()
      local so = s.socket
      s:close()
      return r, p, m, so
    end)
    assert.equal("two styles", back)
    assert.same({ "127.0.0.1", port }, peer)
    assert.equal("127.0.0.1", mine[1])
    assert.equal("asyncore.socket (closed)", tostring(sock))
  end)

  it("check their arguments, and refuse to wait inside a handler", function()
    assert.has_error(function() asyncore.open_stream(nil, 1) end,
      "bad argument #1 to 'open_stream' (host name or address expected)")
    assert.has_error(function() asyncore.open_stream("x", "80") end,
      "bad argument #2 to 'open_stream' (port: an integer 0-65535 expected, got 80)")
    assert.has_error(function() asyncore.open_stream("x", 80, { bogus = 1 }) end,
      "bad argument #3 to 'open_stream' (unknown option 'bogus')")
    assert.has_error(function() asyncore.serve("127.0.0.1", 0, "f") end,
      "bad argument #3 to 'serve' (function expected, got string)")
    local err
    asyncore.call_later(0, function() err = select(2, pcall(asyncore.open_stream, "127.0.0.1", 9)) end)
    H.run_until(function() return err ~= nil end)
    assert.matches("open_stream: called inside the loop.*asyncore%.spawn", err)
    local p, port = pieces("x\n")
    local r = { run(function()
      local s = assert(asyncore.open_stream("127.0.0.1", port))
      local ok1, e1 = pcall(s.read, s, "n")
      local ok2, e2 = pcall(s.write, s, {})
      local ok3, e3 = pcall(s.read_some, s, 0)
      s:close()
      return ok1, e1, ok2, e2, ok3, e3
    end) }
    assert.is_false(r[1])
    assert.matches("bad argument #1 to 'read'", r[2])
    assert.is_false(r[3])
    assert.matches("bad argument #1 to 'write' %(string expected, got table%)", r[4])
    assert.is_false(r[5])
    assert.matches("bad argument #1 to 'read_some'", r[6])
    p.kill()
  end)

  it("at the top level of a script, open_stream and the stream calls run the loop themselves", function()
    local p, port = pieces("220 hello from the peer\r\n")
    local path = os.tmpname()
    local f = io.open(path, "w")
    f:write(([[
local asyncore = require "asyncore"
local s = assert(asyncore.open_stream("127.0.0.1", %d))
print(s:read())
s:write("bye\n")
s:close()
]]):format(port))
    f:close()
    local out = H.capture(("timeout 20 %s %s"):format(H.LUA, path))
    os.remove(path)
    assert.equal("220 hello from the peer\n", out)
    p.wait_line("got 4 bytes")
    p.kill()
  end)

  it("open_stream's family and serve's map and reuseport", function()
    local map = {}
    local srv = asyncore.serve("127.0.0.1", 0, function(st) st:write("from the map\n") end,
      { map = map, reuseport = true, backlog = 4 })
    assert.equal(srv, map[srv:fileno()])
    assert.is_true(srv.socket:getsockopt("reuseport"))
    local t = asyncore.spawn(function()
      local st = assert(asyncore.open_stream("127.0.0.1", srv.port, { family = "inet", map = map }))
      assert.equal(st, map[st:fileno()])
      local l = st:read()
      st:close()
      return l
    end)
    H.run_until(function() return t.status == "done" or t.status == "failed" end, 10, { map = map })
    assert.same({ true, "from the map" }, { t:join() })
    srv:close()
    if H.have_ipv6() then
      local srv6 = asyncore.serve("::1", 0, function(st) st:write("six\n") end)
      local r = { run(function()
        local st = assert(asyncore.open_stream("localhost", srv6.port, { family = "inet6" }))
        local l = st:read()
        local peer = st:getpeername()
        st:close()
        return l, peer[1]
      end) }
      assert.same({ "six", "::1" }, r)
      srv6:close()
    end
  end)

  it("shutdown half-closes and reading goes on; close still sends what is queued", function()
    local srv = asyncore.serve("127.0.0.1", 0, function(s)
      local all = s:read("a")                 -- to the client's shutdown
      s:write(("got %d\n"):format(#all))
      s:write(("x"):rep(3 * 1024 * 1024))
      s:close()                               -- what is queued is still sent
    end)
    local head, n = run(function()
      local c = assert(asyncore.open_stream("127.0.0.1", srv.port))
      c:write(("y"):rep(100000))
      assert(c:shutdown())
      local line = c:read()
      local rest = c:read("a")
      c:close()
      return line, #rest
    end, 20)
    assert.equal("got 100000", head)
    assert.equal(3 * 1024 * 1024, n)
    srv:close()
  end)
end)
