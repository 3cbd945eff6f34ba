local asyncore = require "asyncore"
local asynchat = require "asynchat"
local H = require "helpers"
local slow = os.getenv("AC_VALGRIND") ~= nil   -- under valgrind everything is ~50x slower

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

-- An async_chat on one end of a TCP connection and a raw socket on the other.
local chat_pair = H.pair

-- The same framing protocol as spec/peers/py_frame.py, in Lua.
local Framer = asynchat.async_chat:extend()
function Framer:init(sock, size, out)
  asynchat.async_chat.init(self, sock)
  self.ac_in_buffer_size = size
  self.out = out
  self.line = ""
  self:set_terminator("\r\n")
end
function Framer:collect_incoming_data(data)
  self.out[#self.out + 1] = "C " .. hex(data)
  if type(self:get_terminator()) == "string" then self.line = self.line .. data end
end
function Framer:found_terminator()
  local t = self:get_terminator()
  self.out[#self.out + 1] = "F " .. (type(t) == "string" and hex(t) or tostring(t))
  if type(t) == "string" then
    local line = self.line
    self.line = ""
    if line == "-" then self:set_terminator(nil)
    elseif line:match("^%d+$") then self:set_terminator(tonumber(line)) end
  else
    self:set_terminator("\r\n")
  end
end
function Framer:handle_close() self.out[#self.out + 1] = "END"; self:close() end

local function frame_with_lua(stream, size)
  local out = {}
  local f, peer = chat_pair(Framer, size, out)
  peer:send(stream)
  peer:close()
  H.run_until(function() return out[#out] == "END" end, 10)
  return table.concat(out, "\n")
end

local function frame_with_python(stream, size)
  return (H.capture(("timeout 20 python3 spec/peers/py_frame.py %s %d"):format(hex(stream), size))
    :gsub("%s+$", ""))
end

describe("asynchat", function()
  after_each(function() asyncore.close_all() end)

  it("has the documented class attributes and alias", function()
    assert.equal(65536, asynchat.async_chat.ac_in_buffer_size)
    assert.equal(65536, asynchat.async_chat.ac_out_buffer_size)
    assert.equal(16 * 1024 * 1024, asynchat.async_chat.max_in_buffer)
    assert.equal(asynchat.async_chat, asynchat.AsyncChat)
    assert.is_true(asyncore.dispatcher:is_instance(asynchat.async_chat()))
  end)

  it("validates set_terminator and reports get_terminator", function()
    local c = asynchat.async_chat()
    c:set_terminator("\r\n")
    assert.equal("\r\n", c:get_terminator())
    c:set_terminator(10)
    assert.equal(10, c:get_terminator())
    c:set_terminator(0)
    assert.equal(0, c:get_terminator())
    c:set_terminator(nil)
    assert.is_nil(c:get_terminator())
    for _, bad in ipairs { "", -1, 1.5, {}, true } do
      local ok, err = pcall(function() c:set_terminator(bad) end)
      assert.is_false(ok, tostring(bad))
      assert.matches("bad argument #1 to 'set_terminator'", err)
    end
  end)

  it("finds line terminators, in one read or many", function()
    for _, size in ipairs { 1, 2, 3, 7, 65536 } do
      local got = {}
      local L = asynchat.async_chat:extend()
      function L:found_terminator() got[#got + 1] = self:get_data() end
      local c, peer = chat_pair(L)
      c.ac_in_buffer_size = size
      c:set_terminator("\r\n")
      peer:send("first\r\nsecond line\r\n\r\nlast\r\n")
      H.run_until(function() return #got == 4 end, 5)
      assert.same({ "first", "second line", "", "last" }, got)
      peer:close()
    end
  end)

  it("finds a multi-byte terminator split at every byte position", function()
    local term = "<END>"
    local msg = "payload" .. term .. "tail" .. term
    for split = 1, #msg - 1 do
      local got = {}
      local L = asynchat.async_chat:extend()
      function L:found_terminator() got[#got + 1] = self:get_data() end
      local c, peer = chat_pair(L)
      c:set_terminator(term)
      peer:send(msg:sub(1, split))
      H.run_until(function() return c:buffered() >= split or #got > 0 end, 5)
      peer:send(msg:sub(split + 1))
      H.run_until(function() return #got == 2 end, 5)
      assert.same({ "payload", "tail" }, got, "split at " .. split)
      peer:close()
    end
  end)

  it("counts integer terminators across many reads, and counts down", function()
    local got, seen = {}, {}
    local L = asynchat.async_chat:extend()
    function L:collect_incoming_data(d)
      seen[#seen + 1] = self:get_terminator()
      asynchat.async_chat.collect_incoming_data(self, d)
    end
    function L:found_terminator() got[#got + 1] = self:get_data() end
    local c, peer = chat_pair(L)
    c.ac_in_buffer_size = 4
    c:set_terminator(10)
    peer:send("0123456789abc")
    H.run_until(function() return #got == 1 end, 5)
    assert.same({ "0123456789" }, got)
    assert.equal(0, c:get_terminator())
    assert.same(10, seen[1])
    assert.is_true(seen[2] < 10, "the count goes down as bytes arrive")
    peer:close()
  end)

  it("treats a count of 0 as Python does: no terminator, data is collected", function()
    local found = 0
    local L = asynchat.async_chat:extend()
    function L:found_terminator() found = found + 1 end
    local c, peer = chat_pair(L)
    c:set_terminator(0)
    peer:send("abc")
    H.run_until(function() return c:buffered() == 3 end, 5)
    assert.equal(0, found)
    assert.equal("abc", c:get_data())
    peer:close()
  end)

  it("collects everything until close with a nil terminator", function()
    local closed
    local L = asynchat.async_chat:extend()
    function L:found_terminator() error("not expected") end
    function L:handle_close() closed = self:get_data(); self:close() end
    local c, peer = chat_pair(L)
    c:set_terminator(nil)
    local blob = H.blob(300000, 3)
    peer:send(blob)
    peer:close()
    H.run_until(function() return closed end, 10)
    assert.is_true(closed == blob)
  end)

  it("keeps the data after a terminator when found_terminator changes it", function()
    local events = {}
    local L = asynchat.async_chat:extend()
    function L:found_terminator()
      local d = self:get_data()
      if type(self:get_terminator()) == "string" then
        events[#events + 1] = "head:" .. d
        self:set_terminator(tonumber(d:match("len=(%d+)")))
      else
        events[#events + 1] = "body:" .. d
        self:set_terminator("\n")
      end
    end
    local c, peer = chat_pair(L)
    c:set_terminator("\n")
    peer:send("len=5\nhello len=3\nabc")   -- all in one write: one read
    H.run_until(function() return #events == 4 end, 5)
    assert.same({ "head:len=5", "body:hello", "head: len=3", "body:abc" }, events)
    peer:close()
  end)

  it("frames exactly as Python's asynchat, at every read size", function()
    local stream = "hello\r\n5\r\nabcde12\r\n\r\nxy\r\n3\r\n\r\n\r12\r\n-\r\nrest of it\r\n"
    for _, size in ipairs { 1, 2, 3, 4, 5, 8, 13, 64 } do
      local py = frame_with_python(stream, size)
      assert.matches("END$", py)
      assert.equal(py, frame_with_lua(stream, size), "read size " .. size)
    end
  end)

  it("sends 32 MiB pushed in one call, intact and in order", function()
    local L = asynchat.async_chat:extend()
    local c, peer = chat_pair(L)
    local blob = H.blob(32 * 1024 * 1024, 5)
    c:push(blob)
    c:close_when_done()
    peer:setblocking(false)
    local got = H.read_to_eof(peer, 60)
    assert.equal(#blob, #got)
    assert.is_true(got == blob, "the data changed on the way")
    peer:close()
  end)

  it("sends 32 MiB of producers, functions and strings in the order they were queued", function()
    local L = asynchat.async_chat:extend()
    local c, peer = chat_pair(L)
    local expected = {}
    for i = 1, 20 do   -- 32 MiB in all
      local piece = H.blob(32 * 1024 * 1024 // 20 + i, i)
      expected[#expected + 1] = piece
      if i % 3 == 0 then
        c:push_with_producer(asynchat.simple_producer(piece, 4096))
      elseif i % 3 == 1 then
        local done = false
        c:push_with_producer(function()
          if done then return nil end
          done = true
          return piece
        end)
      else
        c:push(piece)
      end
    end
    c:close_when_done()
    c:push("never sent")
    local want = table.concat(expected)
    peer:setblocking(false)
    local got = H.read_to_eof(peer, 60)
    assert.equal(#want, #got)
    assert.is_true(got == want, "reordered or changed")
    peer:close()
  end)

  it("honours attributes and collectors changed on the class or the instance at any time", function()
    local L = asynchat.async_chat:extend()
    local seen = {}
    function L:found_terminator() end
    function L:collect_incoming_data(d) seen[#seen + 1] = #d end
    local c, peer = chat_pair(L)
    c:set_terminator(nil)
    peer:send(("a"):rep(100))
    H.run_until(function() return #seen > 0 end, 5)
    L.ac_in_buffer_size = 7                        -- on the class, after the instance exists
    seen = {}
    peer:send(("b"):rep(20))
    H.run_until(function() return #seen >= 3 end, 5)
    assert.same({ 7, 7, 6 }, seen)
    c.ac_in_buffer_size = 3                        -- on the instance
    seen = {}
    peer:send("ccccc")
    H.run_until(function() return #seen >= 2 end, 5)
    assert.same({ 3, 2 }, seen)
    L.collect_incoming_data = nil                  -- back to the stock collector
    peer:send("dd")
    H.run_until(function() return c:buffered() == 2 end, 5)
    assert.equal("dd", c:get_data())
    peer:close()
  end)

  it("refuses to be used from a finalizer after its own __gc, without leaking", function()
    local seen = {}
    do
      local holder = setmetatable({}, { __gc = function(h)
        seen.term = { pcall(h.ch.set_terminator, h.ch, "\r\n") }
        seen.collect = { pcall(h.ch.collect_incoming_data, h.ch, "abc") }
        seen.push = { pcall(h.ch.push, h.ch, "abc") }
      end })
      -- its chat state is marked for finalization after the holder: finalized first
      holder.ch = asynchat.async_chat()
    end
    collectgarbage(); collectgarbage(); collectgarbage()
    for _, op in ipairs { "term", "collect", "push" } do
      assert.is_false(seen[op][1], op)
      assert.matches("garbage%-collected", seen[op][2], 1, false, op)
    end
  end)

  it("simple_producer yields the data in pieces", function()
    local p = asynchat.simple_producer("abcdefghij", 4)
    assert.equal("abcd", p:more())
    assert.equal("efgh", p:more())
    assert.equal("ij", p:more())
    assert.equal("", p:more())
    assert.equal(512, #asynchat.simple_producer(("x"):rep(2000)):more())
  end)

  it("discard_buffers drops input, collected data and queued output", function()
    local L = asynchat.async_chat:extend()
    function L:found_terminator() end
    local c, peer = chat_pair(L)
    c:set_terminator(nil)
    peer:send("partial")
    H.run_until(function() return c:buffered() == 7 end, 5)
    c.socket:setsockopt("sndbuf", 4096)
    c:push(H.blob(4 * 1024 * 1024))
    local _, queued = c:buffered()
    assert.is_true(queued > 0)
    assert.is_true(c:writable())
    c:discard_buffers()
    local held, q = c:buffered()
    assert.equal(0, held)
    assert.equal(0, q)
    assert.equal("", c:get_data())
    peer:close()
  end)

  it("is writable while output is queued or before it is connected", function()
    local c = asynchat.async_chat()
    assert.is_true(c:readable())
    assert.is_true(c:writable())     -- not connected
    local L = asynchat.async_chat:extend()
    local d, peer = chat_pair(L)
    assert.is_false(d:writable())
    peer:close()
  end)

  it("reads `connected` as Lua does: the instance's own field, else its class's", function()
    local Up = asynchat.async_chat:extend()
    Up.connected = true
    local c = Up()
    assert.is_true(c.connected)
    assert.is_false(c:writable())    -- connected, by its class, and nothing queued
    local W = asyncore.dispatcher_with_send:extend()
    W.connected = true
    assert.is_false(W():writable())
    rawset(c, "connected", false)
    assert.is_true(c:writable())     -- the instance's field comes first
  end)

  it("queues pushes made before the connection and sends them once connected", function()
    local l, port = H.listener()
    local c = asynchat.async_chat()
    c:set_terminator("\n")
    c:push("early bird\n")
    c:create_socket()
    c:connect { "127.0.0.1", port }
    function c:handle_connect() end
    local s
    H.run_until(function() s = s or l:accept(); return s end, 5)
    local got = ""
    H.run_until(function()
      got = got .. (s:recv(100) or "")
      return got == "early bird\n"
    end, 5)
    s:close(); l:close()
  end)

  it("has TCP_NODELAY on accepted and connected sockets; setsockopt turns it off", function()
    local Server = asyncore.dispatcher:extend()
    local accepted
    function Server:handle_accepted(sock) accepted = asynchat.async_chat(sock) end
    local server = Server()
    server:create_socket()
    server:bind { "127.0.0.1", 0 }
    server:listen(5)
    local port = server.socket:getsockname()[2]
    local client = asynchat.async_chat()
    client:create_socket()
    client:connect { "127.0.0.1", port }
    local raw = asyncore.socket()
    raw:setsockopt("nodelay", false)          -- the script's choice is kept
    raw:connect { "127.0.0.1", port }
    H.run_until(function() return accepted and client.connected end, 5)
    assert.is_true(accepted.socket:getsockopt("nodelay"))
    assert.is_true(client.socket:getsockopt("nodelay"))
    assert.is_false(raw:getsockopt("nodelay"))
    accepted.socket:setsockopt("nodelay", false)
    assert.is_false(accepted.socket:getsockopt("nodelay"))
    raw:close()
  end)

  it("answers a pipelined batch with one write, never stalling on Nagle's algorithm", function()
    -- Nagle is left on here, so only gathering the batch's pushes into one
    -- write avoids a delayed-ACK stall (about 40 ms) per batch
    local Lines = asynchat.async_chat:extend()
    function Lines:init(sock)
      asynchat.async_chat.init(self, sock)
      self.socket:setsockopt("nodelay", false)
      self:set_terminator("\n")
    end
    function Lines:found_terminator() self:push("+" .. self:get_data() .. "\r\n") end
    local c, peer = chat_pair(Lines)
    peer:setblocking(false)
    local rounds, batch = 30, 16
    local t0 = H.now()
    for r = 1, rounds do
      local req, want = {}, {}
      for i = 1, batch do req[i] = ("r%d-%d\n"):format(r, i); want[i] = ("+r%d-%d\r\n"):format(r, i) end
      peer:send(table.concat(req))
      want = table.concat(want)
      local got = H.read_n(peer, #want, 10, { timeout = 0.001 })
      assert.equal(want, got)
    end
    local took = H.now() - t0
    if not slow then
      -- 30 stalls would take 1.2 s or more
      assert.is_true(took < 0.6, ("%d pipelined batches took %.2f s"):format(rounds, took))
    end
    c:close(); peer:close()
  end)

  it("keeps the order of a batch's pushes, producers, large strings and close_when_done", function()
    local Lines = asynchat.async_chat:extend()
    function Lines:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator("\n") end
    local big = ("B"):rep(100000)                 -- past the copied-batch limit
    function Lines:found_terminator()
      local line = self:get_data()
      if line == "p" then
        self:push_with_producer(asynchat.simple_producer("<produced>", 3))
      elseif line == "big" then
        self:push(big)
      elseif line == "bye" then
        self:push("bye\n")
        self:close_when_done()
      else
        self:push("[" .. line .. "]")
      end
    end
    local c, peer = chat_pair(Lines)
    peer:setblocking(false)
    peer:send("a\nb\np\nc\nbig\nd\nbye\nignored\n")
    local got = H.read_to_eof(peer, 10)
    assert.equal("[a][b]<produced>[c]" .. big .. "[d]bye\n", got)
    assert.is_true(H.closed(c.socket))
    peer:close()
  end)

  it("still sends what a batch pushed before one of its handlers failed", function()
    local Lines = asynchat.async_chat:extend()
    local errors = 0
    function Lines:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator("\n") end
    function Lines:found_terminator()
      local line = self:get_data()
      if line == "boom" then error("handler failed") end
      self:push("+" .. line .. "\r\n")
    end
    function Lines:handle_error() errors = errors + 1 end   -- keeps the channel open
    local c, peer = chat_pair(Lines)
    peer:setblocking(false)
    peer:send("one\ntwo\nboom\nthree\n")
    local got = H.read_n(peer, #"+one\r\n+two\r\n")
    assert.equal("+one\r\n+two\r\n", got)
    assert.equal(1, errors)
    -- a push from outside any read (a timer, say) goes out at once: the failed
    -- batch is over
    c:push("late\r\n")
    got = H.read_n(peer, #"late\r\n")
    assert.equal("late\r\n", got)
    -- the rest of the batch is framed at the next read, and answered
    peer:send("four\n")
    got = H.read_n(peer, #"+three\r\n+four\r\n")
    assert.equal("+three\r\n+four\r\n", got)
    c:close(); peer:close()
  end)

  it("calls handle_overflow past max_in_buffer; the default logs and closes", function()
    local L = asynchat.async_chat:extend()
    local logged
    function L:found_terminator() end
    function L:log_info(msg, kind) logged = { msg, kind } end
    local c, peer = chat_pair(L)
    c.max_in_buffer = 1000
    c:set_terminator("\n")
    peer:send(("x"):rep(5000))
    H.run_until(function() return H.closed(c.socket) end, 5)
    assert.equal("error", logged[2])
    assert.matches("more than 1000 bytes buffered", logged[1])
    peer:close()
  end)

  it("ends the default handle_overflow in handle_close, once, so the script's cleanup runs", function()
    local L = asynchat.async_chat:extend()
    local closes, logged = 0, 0
    function L:found_terminator() end
    function L:log_info() logged = logged + 1 end
    function L:handle_close() closes = closes + 1; self:close() end
    local c, peer = chat_pair(L)
    c.max_in_buffer = 1000
    c:set_terminator("\n")
    peer:send(("x"):rep(5000))
    H.run_until(function() return H.closed(c.socket) end, 5)
    H.run_for(0.05)
    assert.equal(1, closes)
    assert.equal(1, logged)
    peer:close()
  end)

  it("has no limit with max_in_buffer = false", function()
    local L = asynchat.async_chat:extend()
    function L:found_terminator() end
    local c, peer = chat_pair(L)
    c.max_in_buffer = false
    c:set_terminator("\n")
    peer:send(("y"):rep(200000))
    H.run_until(function() return c:buffered() == 200000 end, 5)
    assert.is_true(not H.closed(c.socket))
    peer:close()
  end)

  it("sends an error from the default found_terminator to handle_error", function()
    local caught
    local L = asynchat.async_chat:extend()
    function L:handle_error(err) caught = err; self:close() end
    local c, peer = chat_pair(L)
    c:set_terminator("\n")
    peer:send("x\n")
    H.run_until(function() return caught end, 5)
    assert.matches("must override found_terminator", caught)
    peer:close()
  end)

  it("makes no call per chunk with the stock collector", function()
    local found = 0
    local L = asynchat.async_chat:extend()
    function L:found_terminator() found = found + 1 end
    local c, peer = chat_pair(L)
    c.ac_in_buffer_size = 16
    c:set_terminator("\n")
    local calls = 0
    local collector = asynchat.async_chat.collect_incoming_data
    debug.sethook(function()
      if debug.getinfo(2, "f").func == collector then calls = calls + 1 end
    end, "c")
    peer:send(("z"):rep(4000))
    H.run_until(function() return c:buffered() == 4000 end, 5)
    peer:send("\n")
    H.run_until(function() return found == 1 end, 5)
    debug.sethook()
    assert.equal(0, calls)
    assert.equal(4000, #c:get_data())
    peer:close()
  end)

  it("talks to a Python asynchat peer", function()
    local py = H.spawn("python3 spec/peers/py_chat_server.py", 30)
    local port = tonumber(py.wait_line("port (%d+)"))
    local got = {}
    local C = asynchat.async_chat:extend()
    function C:init()
      asynchat.async_chat.init(self)
      self:set_terminator("\r\n")
      self:create_socket()
      self:connect { "127.0.0.1", port }
    end
    function C:handle_connect() end
    function C:found_terminator() got[#got + 1] = self:get_data() end
    local c = C()
    c:push("one\r\ntwo\r\n")
    c:push_with_producer(asynchat.simple_producer(("p"):rep(3000) .. "\r\n", 100))
    H.run_until(function() return #got == 3 end, 10)
    py.kill()
    assert.same({ "ONE", "TWO", ("P"):rep(3000) }, got)
  end)
end)
