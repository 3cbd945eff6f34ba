-- Flow control: write marks, pause/resume reading, half-close, end of stream.
local asyncore = require "asyncore"
local asynchat = require "asynchat"
local H = require "helpers"

local BACKENDS = { "epoll", "poll", "select" }
if asyncore.backends()[1] == "kqueue" then BACKENDS = { "kqueue", "poll", "select" } end
-- the kqueue emulation (make check-kqueue) is named "kqueue" too
for _, b in ipairs(asyncore.backends()) do
  if b == "kqueue" and BACKENDS[1] ~= "kqueue" then BACKENDS[#BACKENDS + 1] = "kqueue" end
end

local HIGH, LOW = 256 * 1024, 64 * 1024

-- a connected pair: our channel of class Cls on the accepted socket (the
-- server side), and a raw non-blocking peer socket
local function server_pair(Cls, ...)
  local ch, peer = H.pair(Cls, ...)
  peer:setblocking(false)
  return ch, peer
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

local function py(port, args, limit)
  return H.spawn(("python3 %s/spec/peers/py_halfclose.py %d %s"):format(H.ROOT, port, args), limit or 60)
end

-- a listener whose accepted connections become channels of Cls (the last
-- one in its field `last`); returns it and its port
local function serve(Cls)
  local s, port
  s, port = H.serve(function(sock) s.last = Cls(sock) end)
  return s, port
end

describe("flow control", function()
  after_each(H.cleanup)

  for _, backend in ipairs(BACKENDS) do
    for _, kind in ipairs { "async_chat", "dispatcher_with_send" } do
      it(("bounds a server's queue for a peer that sends but never reads, and delivers everything later (%s, %s)")
        :format(kind, backend), function()
        local RESP = 16 * 1024
        local REQ = ("r"):rep(63) .. "\n"
        local N = 2000                                 -- 2000 requests: 31 MiB of answers
        local Base = kind == "async_chat" and asynchat.async_chat or asyncore.dispatcher_with_send
        local Srv = Base:extend { write_high_water = HIGH, write_low_water = LOW }
        local body = H.blob(RESP - 8, 7)
        local log = { pauses = 0, resumes = 0, max = 0, answered = 0 }
        local function answer(self, n)
          for _ = 1, n do
            log.answered = log.answered + 1
            local r = ("%08d"):format(log.answered) .. body
            local ok
            if kind == "async_chat" then ok = self:push(r) else self:send(r) end
            local q = self:out_buffer_size()
            if q > log.max then log.max = q end
            if kind == "async_chat" then
              -- push answers false exactly while the queue is above the mark
              assert(ok == (q <= HIGH), "push answered " .. tostring(ok) .. " at " .. q)
            end
          end
        end
        if kind == "async_chat" then
          function Srv:init(sock) Base.init(self, sock); self:set_terminator("\n") end
          function Srv:found_terminator() self:get_data(); answer(self, 1) end
        else
          function Srv:handle_read()
            local d = self:recv(#REQ)                -- one request a read, as async_chat frames them
            self.part = (self.part or "") .. d
            while #self.part >= #REQ do
              self.part = self.part:sub(#REQ + 1)
              answer(self, 1)
            end
          end
        end
        -- pause and resume alternate: the kernel's buffers take some answers
        -- first, so the queue may fall to the low mark (resume) and rise
        -- again before the peer's buffers are full; never two pauses in a row
        local seq = {}
        function Srv:handle_pause_writing()
          log.pauses = log.pauses + 1
          seq[#seq + 1] = "pause"
          log.paused_at = self:out_buffer_size()
          assert(log.paused_at > HIGH, "paused at " .. log.paused_at)
          Base.handle_pause_writing(self)            -- the default: pause reading (server side)
          log.reading_paused = self:reading_paused()
        end
        function Srv:handle_resume_writing()
          log.resumes = log.resumes + 1
          seq[#seq + 1] = "resume"
          log.resumed_at = self:out_buffer_size()
          assert(log.resumed_at <= LOW, "resumed at " .. log.resumed_at)
          Base.handle_resume_writing(self)
        end
        local srv, peer = server_pair(Srv)
        local reqs = REQ:rep(N)
        local sent = 0
        -- the peer writes its requests and reads nothing, until nothing moves
        -- for 0.3 s and 20 passes: then the server is paused with its queue at the mark
        local last, still_since, still_passes = -1, H.now(), 0
        H.run_until(function()
          if sent < #reqs then sent = sent + peer:send(reqs:sub(sent + 1)) end
          if log.answered ~= last then last, still_since, still_passes = log.answered, H.now(), 0 end
          still_passes = still_passes + 1
          return H.now() - still_since > 0.3 and still_passes > 20
        end, 30, { backend = backend })
        for i, e in ipairs(seq) do assert.equal(i % 2 == 1 and "pause" or "resume", e) end
        assert.equal("pause", seq[#seq])
        assert.is_true(log.reading_paused)
        assert.is_true(srv:reading_paused())
        -- the queue never went past the mark by more than the answer that crossed it
        assert.is_true(log.max <= HIGH + RESP, "queued up to " .. log.max)
        -- still paused: the queue has not fallen to the low mark (the kernel may
        -- have taken some of it since the pause)
        assert.is_true(srv:out_buffer_size() > LOW)
        assert.is_true(log.answered < N, "everything was answered: the server never paused")
        local answered_while_paused = log.answered
        H.run_for(0.2, { backend = backend })
        assert.equal(answered_while_paused, log.answered)   -- paused: nothing read, nothing answered
        -- now the peer reads: everything arrives, in order, intact
        local got, gotn = {}, 0
        H.run_until(function()
          if sent < #reqs then sent = sent + peer:send(reqs:sub(sent + 1)) end
          local d = peer:recv(1 << 20)
          while d and #d > 0 do
            got[#got + 1] = d
            gotn = gotn + #d
            d = peer:recv(1 << 20)
          end
          return gotn >= N * RESP
        end, 60, { backend = backend })
        assert.equal(N * RESP, gotn)
        local all = table.concat(got)
        for i = 1, N do
          local at = (i - 1) * RESP
          if all:sub(at + 1, at + 8) ~= ("%08d"):format(i) or all:sub(at + 9, at + RESP) ~= body then
            error("answer " .. i .. " changed")
          end
        end
        assert.equal("resume", seq[#seq])            -- the last pause was resumed at the low mark
        assert.is_true(log.resumed_at <= LOW, "resumed at " .. tostring(log.resumed_at))
        assert.is_false(srv:reading_paused())
        peer:close()
      end)
    end
  end

  it("lets an overridden pause handler drop a slow subscriber", function()
    local Sub = asynchat.async_chat:extend { write_high_water = HIGH, write_low_water = LOW }
    function Sub:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator(nil) end
    function Sub:handle_pause_writing() self.dropped = true; self:close() end
    local sub, peer = server_pair(Sub)
    local chunk = H.blob(64 * 1024, 3)
    local answers = {}
    local timer = asyncore.call_every(0.001, function()
      if sub.dropped then return end
      answers[#answers + 1] = sub:push(chunk)
    end)
    H.run_until(function() return sub.dropped end, 20)
    timer:cancel()
    assert.is_false(answers[#answers])                  -- the push that crossed the mark
    for i = 1, #answers - 1 do assert.is_true(answers[i]) end
    assert.is_true(H.closed(sub.socket))
    -- the peer gets what was sent, then the end (a slow subscriber, dropped)
    local got = H.read_to_eof(peer, 10)
    assert.is_true(#got < #answers * #chunk)
    peer:close()
  end)

  it("keeps the client side reading while its own upload is queued: two channels push 32 MiB at each other", function()
    local SIZE = 32 * 1024 * 1024
    local data = H.blob(SIZE, 5)
    local Side = asynchat.async_chat:extend { max_in_buffer = false }
    function Side:init(sock)
      asynchat.async_chat.init(self, sock)
      self:set_terminator(SIZE)
      self.pauses = 0
    end
    function Side:handle_pause_writing()
      self.pauses = self.pauses + 1
      asynchat.async_chat.handle_pause_writing(self)
      self.paused_reading = self.paused_reading or self:reading_paused()
    end
    function Side:found_terminator() self.done = self:get_data() end
    local srv_side
    local S, port = serve(Side)
    local client = Side()
    client:create_socket()
    client:connect { "127.0.0.1", port }
    client:push(data)                               -- queued before the connection: all of it
    H.run_until(function() return S.last ~= nil end, 5)
    srv_side = S.last
    srv_side:push(data)
    H.run_until(function() return client.done and srv_side.done end, 60)
    assert.is_true(client.done == data and srv_side.done == data, "the data changed on the way")
    assert.is_true(client.pauses >= 1 and srv_side.pauses >= 1)
    assert.is_falsy(client.paused_reading)           -- the client side never stops reading
  end)

  for _, backend in ipairs(BACKENDS) do
    it("pause_reading holds data and the end of the stream until resume_reading (" .. backend .. ")", function()
      local D = asyncore.dispatcher:extend()
      local events = {}
      function D:handle_read()
        local d = self:recv(65536)
        if #d > 0 then events[#events + 1] = "read " .. d end
      end
      function D:handle_close() events[#events + 1] = "close"; self:close() end
      function D:handle_write() end
      function D:writable() return false end
      local ch, peer = server_pair(D)
      ch:pause_reading()
      ch:pause_reading()                             -- a switch, not a counter
      assert.is_true(ch:reading_paused())
      peer:send("hello")
      H.run_for(0.2, { backend = backend })
      assert.same({}, events)
      ch:resume_reading()
      assert.is_false(ch:reading_paused())
      H.run_until(function() return #events == 1 end, 5, { backend = backend })
      assert.same({ "read hello" }, events)
      -- data and the end of the stream wait while paused, then come in order
      ch:pause_reading()
      peer:send("more")
      peer:close()
      H.run_for(0.2, { backend = backend })
      assert.same({ "read hello" }, events)
      assert.is_false(H.closed(ch.socket))
      ch:resume_reading()
      H.run_until(function() return events[#events] == "close" end, 5, { backend = backend })
      assert.same({ "read hello", "read more", "close" }, events)
    end)

    it("an async_chat paused in found_terminator holds the rest of a pipelined batch (" .. backend .. ")", function()
      local L = asynchat.async_chat:extend()
      local lines = {}
      function L:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator("\n") end
      function L:found_terminator()
        local line = self:get_data()
        lines[#lines + 1] = line
        if line == "pause" then self:pause_reading() end
      end
      function L:handle_close() lines[#lines + 1] = "<close>"; self:close() end
      local ch, peer = server_pair(L)
      peer:send("a\npause\nb\nc\npart")
      peer:close()                                   -- the end of the stream waits behind them
      H.run_until(function() return #lines == 2 end, 5, { backend = backend })
      H.run_for(0.2, { backend = backend })
      assert.same({ "a", "pause" }, lines)
      ch:resume_reading()
      -- b and c come from what was held (no new data arrives), then the
      -- partial frame, then the end
      H.run_until(function() return lines[#lines] == "<close>" end, 5, { backend = backend })
      assert.same({ "a", "pause", "b", "c", "<close>" }, lines)
    end)
  end

  it("hands a partial frame to collect_incoming_data at the end of the stream: string, integer and nil terminators", function()
    for _, case in ipairs {
      { term = "\r\n", send = "one\r\nabc\r", want = "abc\r" },   -- a partial terminator too
      { term = "END", send = "xEN", want = "xEN" },
      { term = 10, send = "12345", want = "12345" },
      { term = nil, send = "xyz", want = "xyz" },
    } do
      for _, collector in ipairs { "stock", "lua" } do
        local C = asynchat.async_chat:extend()
        local seen
        function C:init(sock) asynchat.async_chat.init(self, sock); self:set_terminator(case.term) end
        function C:found_terminator() self.frames = (self.frames or 0) + 1; self:get_data() end
        if collector == "lua" then
          function C:collect_incoming_data(d) self.mine = (self.mine or "") .. d end
        end
        function C:handle_close()
          seen = collector == "lua" and self.mine or self:get_data()
          self:close()
        end
        local _, peer = server_pair(C)
        peer:send(case.send)
        peer:close()
        H.run_until(function() return seen ~= nil end, 5)
        if collector == "lua" and case.term == "\r\n" then
          assert.equal("one" .. case.want, seen)     -- the Lua collector also saw the first frame
        else
          assert.equal(case.want, seen, tostring(case.term) .. " " .. collector)
        end
      end
    end
  end)

  for _, backend in ipairs(BACKENDS) do
    it("delivers everything to a Python peer that half-closes: the default handle_close sends what is queued (" .. backend .. ")", function()
      local Echo = asyncore.dispatcher_with_send:extend()
      function Echo:handle_read()
        local d = self:recv(65536)
        if #d > 0 then self:send(d) end
      end
      local _, port = serve(Echo)
      local out = os.tmpname()
      local p = py(port, ("send %d 11 %s"):format(8 * 1024 * 1024, out))
      p.wait_line("received %d+[^\n]*\n", 60)
      local sent = p.output():match("sent (%d+ %x+)")
      local received = p.output():match("received (%d+ %x+)")
      assert.equal(sent, received)
      os.remove(out)
    end)
  end

  for _, kind in ipairs { "async_chat", "dispatcher_with_send" } do
    it("allow_half_open: handle_read_eof, then the answer, then the close (" .. kind .. ")", function()
      local Base = kind == "async_chat" and asynchat.async_chat or asyncore.dispatcher_with_send
      local C = Base:extend { allow_half_open = true }
      local calls = { eof = 0, close = 0 }
      if kind == "async_chat" then
        function C:init(sock) Base.init(self, sock); self:set_terminator(nil) end
        function C:found_terminator() end
      else
        function C:handle_read()
          local d = self:recv(65536)
          self.n = (self.n or 0) + #d
        end
      end
      function C:handle_read_eof()
        calls.eof = calls.eof + 1
        local n = kind == "async_chat" and #self:get_data() or self.n
        local answer = ("got %d\n"):format(n) .. ("z"):rep(3 * 1024 * 1024)
        if kind == "async_chat" then self:push(answer) else self:send(answer) end
        Base.handle_read_eof(self)                  -- the default: close_when_done
      end
      function C:handle_close() calls.close = calls.close + 1; Base.handle_close(self) end
      local _, port = serve(C)
      local out = os.tmpname()
      local p = py(port, ("request %s %s"):format(("q"):rep(1000), out))
      p.wait_line("received %d+[^\n]*\n", 30)
      local got = read_file(out)
      assert.equal("got 1000\n" .. ("z"):rep(3 * 1024 * 1024), got)
      assert.equal(1, calls.eof)
      -- close_when_done ends in handle_close (async_chat's way, and now dispatcher_with_send's)
      H.run_until(function() return calls.close == 1 end, 5)
      H.run_for(0.1)
      assert.equal(1, calls.close)
      assert.same({}, asyncore.socket_map[next(asyncore.socket_map)] and {} or {})
    end)

    it("shutdown_when_done sends what is queued, then a FIN, and goes on reading (" .. kind .. ")", function()
      local Base = kind == "async_chat" and asynchat.async_chat or asyncore.dispatcher_with_send
      local C = Base:extend()
      local got, closed = "", false
      if kind == "async_chat" then
        function C:init(sock)
          Base.init(self, sock)
          self:set_terminator(nil)
          self:push(("s"):rep(2 * 1024 * 1024))
          self:shutdown_when_done()
          assert.has_error(function() self:push("late") end,
            "push: the sending side is shut down (shutdown_when_done)")
        end
        function C:collect_incoming_data(d) got = got .. d end
        function C:found_terminator() end
      else
        function C:init(sock)
          Base.init(self, sock)
          self:send(("s"):rep(2 * 1024 * 1024))
          self:shutdown_when_done()
          assert.has_error(function() self:send("late") end,
            "send: the sending side is shut down (shutdown_when_done)")
        end
        function C:handle_read()
          got = got .. self:recv(65536)
        end
      end
      function C:handle_close() closed = true; self:close() end
      local _, port = serve(C)
      local p = py(port, "eof-then-send after-the-fin", 30)
      H.run_until(function() return closed end, 30)
      assert.matches("got 2097152 bytes", p.output())
      assert.equal("after-the-fin", got)
    end)
  end

  it("close_when_done on dispatcher_with_send sends the buffer, then closes; later sends are not queued", function()
    local C = asyncore.dispatcher_with_send:extend()
    local ch, peer = server_pair(C)
    local big = H.blob(4 * 1024 * 1024, 9)
    ch:send(big)
    ch:close_when_done()
    assert.equal(0, ch:send("never"))
    local got = H.read_to_eof(peer, 20)
    assert.is_true(got == big, "the data changed on the way")
    assert.is_true(H.closed(ch.socket))
    peer:close()
  end)

  it("close_when_done asked while a name is resolved still closes after the data", function()
    local got, ended = "", false
    local R = asyncore.dispatcher:extend()
    function R:handle_read() got = got .. self:recv(65536) end
    function R:handle_close() ended = true; self:close() end
    function R:writable() return false end
    local _, port = H.serve(function(sock) R(sock) end)
    local C = asyncore.dispatcher_with_send:extend()
    function C:handle_connect() end
    local c = C()
    c:create_socket()
    c:connect { "localhost", port }                -- resolved from the loop
    c:send("hello")
    c:close_when_done()
    H.run_until(function() return ended end, 10)
    assert.equal("hello", got)
    assert.is_nil(c:fileno())
  end)

  it("refuses bad marks, naming them", function()
    local C = asyncore.dispatcher_with_send:extend { write_high_water = "lots" }
    local l, port = H.listener()
    local peer = asyncore.socket()
    peer:connect { "127.0.0.1", port }
    local sock = H.accept_one(l)
    assert.has_error(function() C(sock) end,
      "write_high_water: a byte count (an integer >= 0) or false expected, got string")
    local E = asyncore.dispatcher_with_send:extend { write_high_water = -1 }
    assert.has_error(function() E(sock) end,
      "write_high_water: a byte count (an integer >= 0) or false expected, got a negative number")
    -- false: no mark at all
    local F = asyncore.dispatcher_with_send:extend { write_high_water = false }
    local f = F(sock)
    local paused = false
    function f:handle_pause_writing() paused = true end
    f:send(H.blob(8 * 1024 * 1024, 1))
    assert.is_false(paused)
    -- a mark set on a live channel is read at once
    f.write_high_water = 1024
    f.write_low_water = 0
    f:send("x")
    assert.is_true(paused)
    peer:close()
  end)
end)
