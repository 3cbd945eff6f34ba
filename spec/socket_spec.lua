local asyncore = require "asyncore"
local H = require "helpers"

-- A blocking wait for a raw socket operation that is not yet ready.
local function retry(fn, seconds)
  local deadline = H.now() + (seconds or 5)
  while true do
    local a, b = fn()
    if a ~= nil and a ~= false then return a, b end
    if H.now() > deadline then error("timed out", 2) end
    os.execute("sleep 0.01")
  end
end

describe("asyncore.socket", function()
  local fds
  before_each(function() collectgarbage(); collectgarbage(); fds = H.fd_count() end)
  after_each(function()
    collectgarbage(); collectgarbage()
    assert.equal(fds, H.fd_count(), "a descriptor was left open")
  end)

  it("connects, accepts, sends and receives over TCP on 127.0.0.1", function()
    local l, port = H.listener()
    local c = asyncore.socket("inet", "stream")
    local done = c:connect { "127.0.0.1", port }
    assert.is_boolean(done)
    local s, addr = retry(function() return l:accept() end)
    assert.equal("127.0.0.1", addr[1])
    assert.is_number(addr[2])
    assert.equal(port, c:getpeername()[2])
    assert.same(c:getsockname(), s:getpeername())
    retry(function() return c:send("hello") == 5 end)
    assert.equal("hello", retry(function() return s:recv(100) end))
    assert.is_nil(s:recv(100), "nothing to read now gives nil")
    c:shutdown("write")
    assert.equal("", retry(function() return s:recv(100) end), "end of stream gives ''")
    s:close(); c:close(); l:close()
  end)

  it("accepts host and port as two arguments", function()
    local s = asyncore.socket()
    s:bind("127.0.0.1", 0)
    assert.equal("127.0.0.1", s:getsockname()[1])
    s:close()
  end)

  it("returns nil from accept when nothing is pending", function()
    local l = H.listener()
    assert.is_nil(l:accept())
    l:close()
  end)

  it("sends and receives datagrams with sendto/recvfrom", function()
    local a = asyncore.socket("inet", "dgram")
    a:bind { "127.0.0.1", 0 }
    local b = asyncore.socket(asyncore.AF_INET, asyncore.SOCK_DGRAM)
    b:bind { "127.0.0.1", 0 }
    assert.equal(4, b:sendto("ping", a:getsockname()))
    local data, from = retry(function() return a:recvfrom(100) end)
    assert.equal("ping", data)
    assert.same(b:getsockname(), from)
    assert.is_nil(a:recvfrom(100))
    a:close(); b:close()
  end)

  it("gives IPv4 addresses as dotted quads, octets of one to three digits", function()
    for _, host in ipairs { "127.0.0.1", "127.10.200.3", "127.255.99.100", "127.1.22.255", "0.0.0.0" } do
      local s = asyncore.socket("inet", "dgram")
      s:bind { host, 0 }
      local a = s:getsockname()
      assert.equal(host, a[1])
      local b = asyncore.socket("inet", "dgram")
      b:bind { "127.0.0.1", 0 }
      if host ~= "0.0.0.0" then
        assert.equal(1, b:sendto("x", a))
        local _, from = retry(function() return s:recvfrom(10) end)
        assert.same(b:getsockname(), from)
      end
      s:close(); b:close()
    end
  end)

  it("gives the data and no address for recvfrom on a stream socket", function()
    local l, port = H.listener()
    local c = asyncore.socket()
    c:connect { "127.0.0.1", port }
    local s = retry(function() return l:accept() end)
    retry(function() return c:send("abc") == 3 end)
    local data, from = retry(function() return s:recvfrom(100) end)
    assert.equal("abc", data)
    assert.is_nil(from)
    s:close(); c:close(); l:close()
  end)

  it("works over Unix domain sockets with path addresses", function()
    local path = H.tmpname()
    local l = asyncore.socket("unix", "stream")
    l:bind(path)
    l:listen(4)
    assert.equal(path, l:getsockname())
    local c = asyncore.socket("unix")
    retry(function() return c:connect(path) or true end)
    local s = retry(function() return l:accept() end)
    c:send("over unix")
    assert.equal("over unix", retry(function() return s:recv(64) end))
    s:close(); c:close(); l:close()
    os.remove(path)
  end)

  it("works over IPv6 on ::1", function()
    if not H.have_ipv6() then return pending("::1 unavailable") end
    local l, port = H.listener("inet6", "::1")
    local c = asyncore.socket("inet6")
    c:connect { "::1", port }
    local s, addr = retry(function() return l:accept() end)
    assert.equal("::1", addr[1])
    c:send("six")
    assert.equal("six", retry(function() return s:recv(10) end))
    s:close(); c:close(); l:close()
  end)

  it("sets and gets the named options", function()
    local s = asyncore.socket()
    for _, name in ipairs { "reuseaddr", "reuseport", "nodelay", "keepalive" } do
      s:setsockopt(name, true)
      assert.is_true(s:getsockopt(name), name)
      s:setsockopt(name, false)
      assert.is_false(s:getsockopt(name), name)
    end
    s:setsockopt("sndbuf", 65536)
    assert.is_true(s:getsockopt("sndbuf") >= 65536)
    s:setsockopt("rcvbuf", 65536)
    assert.is_true(s:getsockopt("rcvbuf") >= 65536)
    assert.equal(0, s:getsockopt("error"))
    assert.has_error(function() s:setsockopt("error", 1) end)
    assert.has_error(function() s:setsockopt("nosuch", 1) end)
    s:close()
  end)

  it("can be made blocking and non-blocking", function()
    local l, port = H.listener()
    local c = asyncore.socket()
    c:setblocking(true)
    assert.is_true(c:connect { "127.0.0.1", port })
    local s = retry(function() return l:accept() end)
    s:setblocking(true)
    c:send("x")
    assert.equal("x", s:recv(1))   -- blocks until it arrives
    s:setblocking(false)
    assert.is_nil(s:recv(1))
    s:close(); c:close(); l:close()
  end)

  it("says so when a closed socket is used, and closes idempotently", function()
    local s = asyncore.socket()
    s:close()
    s:close()
    assert.equal("asyncore.socket (closed)", tostring(s))
    local ok, err = pcall(s.bind, s, { "127.0.0.1", 0 })
    assert.is_false(ok)
    assert.is_true(asyncore.is_error(err, "EBADF"))
    assert.matches("closed socket", tostring(err))
    -- every method but close raises, fileno included (no -1 as in Python)
    for _, name in ipairs { "fileno", "bind", "listen", "accept", "connect", "send", "recv",
      "sendto", "recvfrom", "shutdown", "getpeername", "getsockname", "setblocking",
      "setsockopt", "getsockopt" } do
      local okm, e = pcall(s[name], s, { "127.0.0.1", 0 }, 1)
      assert.is_false(okm, name)
      assert.is_true(asyncore.is_error(e, "EBADF"), name .. ": " .. tostring(e))
      assert.equal(name .. ": closed socket (EBADF)", tostring(e))
    end
  end)

  it("closes when collected and at the end of a <close> scope", function()
    do
      local s <close> = asyncore.socket()
      assert.is_true(not H.closed(s))
    end
    local before = H.fd_count()
    for _ = 1, 20 do asyncore.socket() end
    collectgarbage(); collectgarbage()
    assert.equal(before, H.fd_count())
  end)

  it("says it is closed when another finalizer reaches it after its own __gc", function()
    local seen = {}
    do
      local holder = setmetatable({}, { __gc = function(h)
        seen.fileno_ok = pcall(h.sock.fileno, h.sock)
        seen.ok, seen.err = pcall(h.sock.send, h.sock, "x")
        seen.text = tostring(h.sock)
      end })
      -- marked for finalization after the holder, so Lua finalizes it first
      holder.sock = asyncore.socket()
    end
    collectgarbage(); collectgarbage(); collectgarbage()
    assert.is_false(seen.fileno_ok)
    assert.is_false(seen.ok)
    assert.equal("send: closed socket (EBADF)", tostring(seen.err))
    assert.equal("asyncore.socket (closed)", seen.text)
    -- and the sockets made after it are told apart from other userdata
    for _ = 1, 50 do
      local s = asyncore.socket()
      assert.is_true(not H.closed(s))
      local f = io.tmpfile()
      assert.has_error(function() s.fileno(f) end)
      f:close()
      s:close()
    end
  end)

  it("raises error objects for operating-system failures", function()
    local a = asyncore.socket()
    a:bind { "127.0.0.1", 0 }
    local port = a:getsockname()[2]
    local b = asyncore.socket()
    local ok, err = pcall(b.bind, b, { "127.0.0.1", port })
    assert.is_false(ok)
    assert.equal("EADDRINUSE", err.code)
    assert.equal("bind", err.op)
    assert.is_number(err.errno)
    -- the message names the address (op stays "bind")
    assert.equal("bind 127.0.0.1:" .. port .. ": Address already in use (EADDRINUSE)", tostring(err))
    assert.equal("127.0.0.1:" .. port, err.address)
    assert.is_true(asyncore.is_error(err))
    assert.is_true(asyncore.is_error(err, "EADDRINUSE"))
    assert.is_false(asyncore.is_error(err, "ECONNREFUSED"))
    assert.is_false(asyncore.is_error("EADDRINUSE"))
    a:close(); b:close()
  end)

  it("names the address in connect and listen errors", function()
    local l = asyncore.socket()
    l:bind { "127.0.0.1", 0 }
    local port = l:getsockname()[2]
    l:close()                        -- nobody listens there now
    local c = asyncore.socket()
    c:setblocking(true)
    local ok, err = pcall(c.connect, c, { "127.0.0.1", port })
    assert.is_false(ok)
    assert.equal("connect", err.op)
    assert.equal("connect 127.0.0.1:" .. port .. ": Connection refused (ECONNREFUSED)", tostring(err))
    c:close()
    if H.have_ipv6() then
      local a = asyncore.socket("inet6")
      a:bind { "::1", 0 }
      local p6 = a:getsockname()[2]
      local b = asyncore.socket("inet6")
      local ok6, err6 = pcall(b.bind, b, { "::1", p6 })
      assert.is_false(ok6)
      assert.equal("bind [::1]:" .. p6 .. ": Address already in use (EADDRINUSE)", tostring(err6))
      a:close(); b:close()
    end
    local u = asyncore.socket("unix")
    local path = H.tmpname()
    u:bind(path)
    local u2 = asyncore.socket("unix")
    local oku, erru = pcall(u2.bind, u2, path)
    assert.is_false(oku)
    assert.equal("bind " .. path .. ": Address already in use (EADDRINUSE)", tostring(erru))
    u:close(); u2:close(); os.remove(path)
  end)

  it("says which family a socket has when given an address of the other", function()
    local s4 = asyncore.socket("inet")
    local ok, err = pcall(s4.bind, s4, { "::1", 0 })
    assert.is_false(ok)
    assert.equal("bind", err.op)
    assert.equal("EAFNOSUPPORT", err.code)
    assert.matches('::1 is an IPv6 address but the socket is IPv4 %(inet%): create it with create_socket%("inet6"%)', tostring(err))
    local s6 = asyncore.socket("inet6")
    ok, err = pcall(s6.connect, s6, { "127.0.0.1", 9 })
    assert.is_false(ok)
    assert.equal("connect", err.op)
    assert.matches('127%.0%.0%.1 is an IPv4 address but the socket is IPv6 %(inet6%): create it with create_socket%("inet"%)', tostring(err))
    s4:close(); s6:close()
  end)

  it("reports an unresolvable host name", function()
    local s = asyncore.socket()
    -- not a valid name: the resolver refuses it without asking a name server
    local ok, err = pcall(s.connect, s, { "no such host.invalid", 80 })
    assert.is_false(ok)
    assert.is_true(asyncore.is_error(err))
    assert.matches("^EAI_", err.code)
    s:close()
  end)

  it("resolves localhost", function()
    local s = asyncore.socket()
    s:bind { "localhost", 0 }
    assert.equal("127.0.0.1", s:getsockname()[1])
    s:close()
  end)

  it("opens sockets close-on-exec", function()
    local s = asyncore.socket()
    local fd = s:fileno()
    local out = H.capture(("sh -c 'ls /proc/$$/fd' | grep -cx %d"):format(fd))
    assert.equal("0", out:match("%d+"))
    s:close()
  end)
end)
