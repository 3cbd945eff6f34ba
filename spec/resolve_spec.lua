-- Names (API.md Part 2 "Host names and resolution"): asyncore.resolve,
-- set_resolver, connect by name, against a DNS server of the specs' own on
-- loopback (spec/peers/dns_server.py), whose query log shows what was asked.
local asyncore = require "asyncore"
local H = require "helpers"

local TABLE = [[{
  "one.test": {"A": ["127.0.0.1"]},
  "child.test": {"A": ["127.0.0.3"]},
  "multi.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
  "six.test": {"AAAA": ["::1"]},
  "slow.test": {"A": ["127.0.0.1"], "delay": 1.5},
  "never.test": {"never": true}
}]]

local dns, dns_port

local function queries()
  local list = {}
  for name in dns.output():gmatch("query (%S+) %S+") do list[#list + 1] = name end
  return list
end

local function server(family, host)
  local S = asyncore.dispatcher:extend()
  local accepted = {}
  function S:handle_accepted(sock, addr) accepted[#accepted + 1] = addr; sock:close() end
  local s = S()
  s:create_socket(family)
  s:bind { host or "127.0.0.1", 0 }
  s:listen(5)
  return s, s.socket:getsockname()[2], accepted
end

local function client(make_socket)
  local C = asyncore.dispatcher_with_send:extend()
  local ev = { connects = 0, errors = {}, closes = 0, timeouts = {} }
  function C:handle_connect() ev.connects = ev.connects + 1; ev.addr = self.addr end
  function C:handle_read() self:recv(100) end
  function C:handle_error(err, tb)
    ev.errors[#ev.errors + 1] = err
    asyncore.dispatcher.handle_error(self, err, tb)   -- logs, then handle_close
  end
  function C:handle_close() ev.closes = ev.closes + 1; self:close() end
  function C:handle_timeout(kind) ev.timeouts[#ev.timeouts + 1] = kind; self:close() end
  local c = C()
  c.ignore_log_types = { error = true, warning = true }
  if make_socket then c:create_socket(make_socket) end
  return c, ev
end

describe("names", function()
  setup(function()
    dns = H.spawn("python3 spec/peers/dns_server.py '" .. TABLE:gsub("\n", " ") .. "'", 120)
    dns_port = tonumber(dns.wait_line("port (%d+)"))
    asyncore.set_resolver { servers = { "127.0.0.1:" .. dns_port }, timeout = 0.4, tries = 1 }
  end)
  teardown(function()
    asyncore.set_resolver()
    dns.kill()
  end)
  after_each(function() asyncore.close_all() end)

  it("resolve: a name, NXDOMAIN, localhost and numbers without a query", function()
    local r = {}
    asyncore.resolve("one.test", function(a, e) r.one = { a, e } end)
    asyncore.resolve("nope.test", function(a, e) r.nope = { a, e } end)
    asyncore.resolve("localhost", function(a, e) r.lh = { a, e } end)
    asyncore.resolve("127.0.0.9", function(a, e) r.num = { a, e } end)
    asyncore.resolve("::1", function(a, e) r.num6 = { a, e } end, { family = "inet6" })
    asyncore.resolve("multi.test", function(a, e) r.four = { a, e } end, { family = "inet" })
    asyncore.loop { timeout = 1, count = 200 }   -- loop() runs while lookups are pending
    assert.same({ { host = "127.0.0.1", family = "inet" } }, r.one[1])
    assert.is_nil(r.nope[1])
    assert.is_true(asyncore.is_error(r.nope[2], "ENOTFOUND"))
    assert.equal("resolve", r.nope[2].op)
    assert.matches("nope%.test", tostring(r.nope[2]))
    assert.same({ { host = "127.0.0.1", family = "inet" }, { host = "::1", family = "inet6" } }, r.lh[1])
    assert.same({ { host = "127.0.0.9", family = "inet" } }, r.num[1])
    assert.same({ { host = "::1", family = "inet6" } }, r.num6[1])
    assert.same({ { host = "127.0.0.1", family = "inet" } }, r.four[1])
    -- what the server was asked: our names only (localhost and numbers: never)
    for _, q in ipairs(queries()) do
      assert.is_truthy(q == "one.test" or q == "nope.test" or q == "multi.test" or q:match("%.test$"), q)
    end
    assert.is_nil(dns.output():match("localhost"))
    assert.is_nil(dns.output():match("127%.0%.0%.9"))
  end)

  it("the loop keeps serving during a slow lookup (a 10 ms call_every is never 50 ms late)", function()
    asyncore.set_resolver { servers = { "127.0.0.1:" .. dns_port }, timeout = 3, tries = 1 }
    local got
    local t0 = asyncore.now()
    asyncore.resolve("slow.test", function(a, e) got = { a, e, asyncore.now() - t0 } end)
    local last, late = asyncore.now(), 0
    local hb = asyncore.call_every(0.01, function()
      local n = asyncore.now()
      late = math.max(late, n - last - 0.01)
      last = n
    end)
    H.run_until(function() return got end, 10)
    hb:cancel()
    asyncore.set_resolver { servers = { "127.0.0.1:" .. dns_port }, timeout = 0.4, tries = 1 }
    assert.same({ { host = "127.0.0.1", family = "inet" } }, got[1])
    assert.is_true(got[3] >= 1.4, "answered after " .. got[3])
    assert.is_true(late < 0.05, ("heartbeat late by %.3fs"):format(late))
  end)

  it("a server that never answers: ETIMEDOUT (the resolver's timeout, or the lookup's own)", function()
    local r = {}
    asyncore.resolve("never.test", function(a, e) r.ares = { a, e } end)
    asyncore.resolve("never.test", function(a, e) r.own = { a, e, asyncore.now() } end, { timeout = 0.2 })
    local t0 = asyncore.now()
    H.run_until(function() return r.ares and r.own end, 10)
    assert.is_true(asyncore.is_error(r.ares[2], "ETIMEDOUT"))
    assert.is_true(asyncore.is_error(r.own[2], "ETIMEDOUT"))
    assert.is_true(r.own[3] - t0 < 0.35)
  end)

  it("cancel: the callback is never called", function()
    local called = false
    local h = asyncore.resolve("one.test", function() called = true end)
    h:cancel()
    local h2 = asyncore.resolve("localhost", function() called = true end)
    h2:cancel()
    asyncore.loop { timeout = 0.1, count = 20 }
    H.run_for(0.3)
    assert.is_false(called)
  end)

  it("connect by name: resolves, connects once, addr is the address that worked", function()
    local s, port, accepted = server()
    local c, ev = client("inet")
    c:connect { "one.test", port }
    assert.is_true(c.connecting)
    c:send("queued while resolving")
    H.run_until(function() return ev.connects == 1 end, 5)
    assert.same({ "127.0.0.1", port }, ev.addr)
    H.run_until(function() return #accepted == 1 end, 5)
    H.run_for(0.1)
    assert.equal(1, ev.connects)
    assert.same({}, ev.errors)
  end)

  it("connect by name: the first address refuses, the next connects (no socket made beforehand)", function()
    local s, port, accepted = server()          -- 127.0.0.1 only: ::1 refuses
    local c, ev = client(nil)
    c:connect("multi.test", port)
    H.run_until(function() return ev.connects == 1 or #ev.errors > 0 end, 5)
    assert.same({}, ev.errors)
    assert.same({ "127.0.0.1", port }, ev.addr)
    H.run_for(0.1)
    assert.equal(1, ev.connects)
  end)

  it("connect by name: an IPv6-only name gets an IPv6 socket", function()
    if not H.have_ipv6() then return pending("no ::1 here") end
    local s, port, accepted = server("inet6", "::1")
    local c, ev = client(nil)
    c:connect { "six.test", port }
    H.run_until(function() return ev.connects == 1 or #ev.errors > 0 end, 5)
    assert.same({ "::1", port }, ev.addr)
  end)

  it("connect by name: NXDOMAIN ends like a refused connect, with an op = resolve error", function()
    local c, ev = client("inet")
    c:connect { "nope.test", 80 }
    H.run_until(function() return ev.closes > 0 end, 5)
    assert.equal(1, #ev.errors)
    assert.is_true(asyncore.is_error(ev.errors[1], "ENOTFOUND"))
    assert.equal("resolve", ev.errors[1].op)
    assert.equal(0, ev.connects)
  end)

  it("connect by name: every address refusing ends with the last connect error", function()
    local s, port = server()
    s:close()
    local c, ev = client(nil)
    c:connect { "multi.test", port }
    H.run_until(function() return ev.closes > 0 end, 5)
    assert.equal(1, #ev.errors)
    assert.equal("connect", ev.errors[1].op)
  end)

  it("the connect timeout counts the lookup: a name that never resolves times out", function()
    local c, ev = client("inet")
    c:set_timeout("connect", 0.3)
    local t0 = asyncore.now()
    c:connect { "never.test", 80 }
    H.run_until(function() return #ev.timeouts > 0 end, 5)
    assert.same({ "connect" }, ev.timeouts)
    assert.is_true(asyncore.now() - t0 < 0.4 + 0.2)
    assert.same({}, ev.errors)
  end)

  it("close() during the lookup: nothing happens afterwards", function()
    local c, ev = client("inet")
    c:connect { "slow.test", 80 }
    c:close()
    H.run_for(0.3)
    assert.equal(0, ev.connects + #ev.errors + ev.closes)
  end)

  it("TLS over a connect by name checks that name", function()
    local D = H.tls_certs()
    local sctx = asyncore.tls_context { mode = "server", certfile = D .. "server.pem", keyfile = D .. "server.key" }
    local S = asyncore.dispatcher_with_send:extend()
    function S:init(sock) asyncore.dispatcher_with_send.init(self, sock); self:start_tls(sctx) end
    function S:handle_read() local d = self:recv(100); if #d > 0 then self:send(d) end end
    local L = asyncore.dispatcher:extend()
    function L:handle_accepted(sock) S(sock) end
    local l = L()
    l:create_socket()
    l:bind { "127.0.0.1", 0 }
    l:listen(5)
    local c, ev = client("inet")
    function c:handle_read() ev.got = (ev.got or "") .. self:recv(100) end
    c:connect { "one.test", l.socket:getsockname()[2] }
    c:start_tls(asyncore.tls_context { cafile = D .. "ca.pem" })   -- the certificate is for localhost
    c:send("ping")
    H.run_until(function() return #ev.errors > 0 or ev.got end, 5)
    assert.equal(1, #ev.errors)
    assert.is_true(asyncore.is_error(ev.errors[1], "CERTIFICATE_VERIFY_FAILED"))
    assert.matches("hostname mismatch", tostring(ev.errors[1]))
  end)

  it("a resolver with a lookup under way at fork() is made anew in the child; the parent's goes on", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local inc = H.capture("pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4"):gsub("%s+$", "")
    local out = H.capture(("cc -shared -fPIC %s -o %s/forker.so spec/peers/forker.c"):format(inc, dir))
    assert.equal("", out)
    out = H.capture(("timeout 20 %s spec/peers/fork_resolve.lua %s %d"):format(H.LUA, dir, dns_port))
    os.execute("rm -rf " .. dir)
    assert.matches("child%s+127%.0%.0%.3", out)
    -- the lookup under way at fork() belongs to the parent: the child's copy ends
    assert.matches("child inherited%s+resolve: slow%.test: .*%(ECANCELED%)", out)
    assert.matches("child status%s+0", out)
    assert.matches("parent slow%s+127%.0%.0%.1", out)
    -- the child asked from a socket of its own, not the one it inherited
    local parent_port = dns.output():match("query slow%.test %S+ from (%d+)")
    local child_port = dns.output():match("query child%.test %S+ from (%d+)")
    assert.is_string(parent_port)
    assert.is_string(child_port)
    assert.are_not.equal(parent_port, child_port)
  end)

  it("rejects bad arguments", function()
    local function fails(pat, f, ...)
      local ok, err = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pat, tostring(err))
    end
    local fn = function() end
    fails("bad argument #1 to 'resolve'", asyncore.resolve, nil, fn)
    fails("bad argument #1 to 'resolve'", asyncore.resolve, "", fn)
    fails("bad argument #2 to 'resolve'", asyncore.resolve, "x.test", 5)
    fails("family", asyncore.resolve, "x.test", fn, { family = "ipx" })
    fails("unknown option 'bogus'", asyncore.resolve, "x.test", fn, { bogus = 1 })
    fails("tries", asyncore.resolve, "x.test", fn, { tries = 0 })
    fails("bad argument #1 to 'set_resolver'", asyncore.set_resolver, 5)
    fails("servers", asyncore.set_resolver, { servers = {} })
    fails("unknown option 'port'", asyncore.set_resolver, { port = 53 })
    fails("resolve: .*", asyncore.set_resolver, { servers = { "not an address" } })
    asyncore.set_resolver { servers = { "127.0.0.1:" .. dns_port }, timeout = 0.4, tries = 1 }
    local c = asyncore.dispatcher()
    fails("port", c.connect, c, { "one.test", "http" })
  end)
end)
