-- Per-channel timeouts (API.md Part 2 "Timeouts"): connect, handshake, idle;
-- handle_timeout; the `timeouts` class attribute; re-arming and disarming.
local asyncore = require "asyncore"
local asynchat = require "asynchat"
local H = require "helpers"

local function listener()
  local S = asyncore.dispatcher:extend()
  local accepted = {}
  function S:handle_accepted(sock) accepted[#accepted + 1] = sock end
  local s = S()
  s:create_socket()
  s:bind { "127.0.0.1", 0 }
  s:listen(16)
  return s, s.socket:getsockname()[2], accepted
end

-- a client channel recording its timeouts
local function client(port, class, setup)
  local C = (class or asyncore.dispatcher_with_send):extend()
  local ev = { timeouts = {}, closed = false }
  function C:handle_connect() ev.connected = asyncore.now() end
  function C:handle_read() self:recv(100) end
  function C:handle_timeout(kind)
    ev.timeouts[#ev.timeouts + 1] = kind
    ev.at = asyncore.now()
    asyncore.dispatcher.handle_timeout(self, kind)   -- the default: close
    ev.closed = true
  end
  local c = C()
  c:create_socket()
  if setup then setup(c) end
  ev.started = asyncore.now()
  c:connect { "127.0.0.1", port }
  return c, ev
end

describe("timeouts", function()
  after_each(function() asyncore.close_all() end)

  for _, backend in ipairs(asyncore.backends()) do
    it("idle: fires after that long without traffic, and traffic re-arms it (" .. backend .. ")", function()
      local s, port, accepted = listener()
      local c, ev = client(port, nil, function(c) c:set_timeout("idle", 0.3) end)
      H.run_until(function() return #accepted == 1 end, 5, { backend = backend })
      -- traffic every 0.1 s for 0.6 s keeps it open
      local peer = accepted[1]
      local t0 = asyncore.now()
      local timer = asyncore.call_every(0.1, function() peer:send("x") end)
      H.run_for(0.6, { backend = backend })
      timer:cancel()
      assert.same({}, ev.timeouts)
      -- then silence: it expires about 0.3 s after the last byte
      local last = asyncore.now()
      H.run_until(function() return ev.closed end, 5, { backend = backend })
      assert.same({ "idle" }, ev.timeouts)
      assert.is_true(ev.at - last >= 0.2 and ev.at - last < 1.0, "expired after " .. (ev.at - last))
      assert.is_true(ev.at - t0 >= 0.8)
      assert.is_true(H.closed(c.socket))     -- the default closed it
    end)
  end

  it("idle: sending counts as traffic too", function()
    local s, port, accepted = listener()
    local c, ev = client(port, nil, function(c) c:set_timeout("idle", 0.3) end)
    H.run_until(function() return #accepted == 1 end)
    local timer = asyncore.call_every(0.1, function() c:send("y") end)
    H.run_for(0.7)
    timer:cancel()
    assert.same({}, ev.timeouts)
  end)

  it("is disarmed by nil or false, and never fires after close", function()
    local s, port, accepted = listener()
    local c, ev = client(port, nil, function(c) c:set_timeout("idle", 0.2) end)
    c:set_timeout("idle", nil)
    local c2, ev2 = client(port, nil, function(c) c:set_timeout("idle", 0.2) end)
    c2:set_timeout("idle", false)
    local c3, ev3 = client(port, nil, function(c) c:set_timeout("idle", 0.2) end)
    H.run_until(function() return #accepted == 3 end)
    c3:close()
    H.run_for(0.6)
    assert.same({}, ev.timeouts)
    assert.same({}, ev2.timeouts)
    assert.same({}, ev3.timeouts)
  end)

  it("re-arms with a new value, counting from the call", function()
    local s, port, accepted = listener()
    local c, ev = client(port, nil, function(c) c:set_timeout("idle", 0.2) end)
    c:set_timeout("idle", 0.8)
    local t0 = asyncore.now()
    H.run_until(function() return ev.closed end, 5)
    assert.is_true(ev.at - t0 >= 0.7, "expired after " .. (ev.at - t0))
  end)

  it("the timeouts class attribute applies to every new channel", function()
    local s, port, accepted = listener()
    local Timed = asyncore.dispatcher_with_send:extend { timeouts = { idle = 0.2 } }
    local c1, ev1 = client(port, Timed)
    local c2, ev2 = client(port, Timed)
    local c3, ev3 = client(port, Timed, function(c) c:set_timeout("idle", nil) end)   -- its own wins
    H.run_until(function() return ev1.closed and ev2.closed end, 5)
    H.run_for(0.3)
    assert.same({ "idle" }, ev1.timeouts)
    assert.same({ "idle" }, ev2.timeouts)
    assert.same({}, ev3.timeouts)
  end)

  it("an accepted channel gets its class's idle timeout (a slowloris client is dropped)", function()
    local E = asynchat.async_chat:extend { timeouts = { idle = 0.3 } }
    local dropped = 0
    function E:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator("\r\n\r\n") end
    function E:found_terminator() self:push("ok\n") end
    function E:handle_timeout(kind) dropped = dropped + 1; self:close() end
    local S = asyncore.dispatcher:extend()
    function S:handle_accepted(sock) E(sock) end
    local s = S()
    s:create_socket()
    s:bind { "127.0.0.1", 0 }
    s:listen(5)
    local peer = asyncore.socket()
    peer:connect { "127.0.0.1", s.socket:getsockname()[2] }
    H.run_for(0.1)
    peer:send("GET / HTTP/1.1\r\n")          -- and never the rest
    H.run_until(function() return dropped == 1 end, 5)
    assert.equal("", H.read_to_eof(peer, 2))   -- the server closed it
    peer:close()
  end)

  it("connect: fires while the connect is under way, not after it completed", function()
    local port, release = H.hanging_port()
    H.run_for(0.2)
    local c, ev = client(port, nil, function(c) c:set_timeout("connect", 0.3) end)
    H.run_until(function() return ev.closed end, 5)
    assert.same({ "connect" }, ev.timeouts)
    assert.is_nil(ev.connected)
    release()
    -- a connect that completes: its timeout never fires
    local s, port2 = listener()
    local c2, ev2 = client(port2, nil, function(c) c:set_timeout("connect", 0.2) end)
    H.run_for(0.5)
    assert.is_number(ev2.connected)
    assert.same({}, ev2.timeouts)
  end)

  it("handshake: fires when a TLS handshake does not complete", function()
    local s, port, accepted = listener()   -- accepts, and never speaks TLS
    local ctx = asyncore.tls_context { verify = false }
    local c, ev = client(port, nil, function(c)
      c:set_timeout("handshake", 0.3)
    end)
    c:start_tls(ctx)
    H.run_until(function() return ev.closed end, 5)
    assert.same({ "handshake" }, ev.timeouts)
    assert.is_number(ev.connected)
  end)

  it("rejects bad arguments", function()
    local c = asyncore.dispatcher()
    local ok, err = pcall(c.set_timeout, c, "read", 1)
    assert.matches("bad argument #1 to 'set_timeout' %(\"connect\", \"handshake\" or \"idle\"", err)
    for _, v in ipairs { -1, 0, 0 / 0, math.huge, "1" } do
      ok, err = pcall(c.set_timeout, c, "idle", v)
      assert.is_false(ok)
      assert.matches("bad argument #2 to 'set_timeout'", err)
    end
    -- no socket yet: kept for the socket it gets
    c:set_timeout("idle", 5)
    c:create_socket()
    c:close()
  end)
end)
