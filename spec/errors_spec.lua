local asyncore = require "asyncore"
local H = require "helpers"

describe("bad arguments", function()
  local s, d, ds
  before_each(function()
    s = asyncore.socket()
    d = asyncore.dispatcher()
    ds = asyncore.dispatcher_with_send()
    ds:create_socket()
  end)
  after_each(function()
    s:close()
    asyncore.close_all()
  end)

  local rows = {
    { "socket family", function() asyncore.socket("nope") end, "bad argument #1 to 'socket' %(invalid option 'nope'%)" },
    { "socket type", function() asyncore.socket("inet", "nope") end, "bad argument #2 to 'socket'" },
    { "socket family number", function() asyncore.socket(9999) end, "bad argument #1 to 'socket' %(unknown address family%)" },
    { "bind number", function() s:bind(5) end, "bad argument #1 to 'bind' %(table or string expected, got number%)" },
    { "bind port type", function() s:bind { "127.0.0.1", "x" } end, "bad argument #1 to 'bind' %(address table must be {host, port}%)" },
    { "bind port range", function() s:bind { "127.0.0.1", 70000 } end, "bad argument #1 to 'bind' %(port out of range%)" },
    { "bind missing port", function() s:bind("127.0.0.1") end, "bad argument #2 to 'bind' %(number expected, got no value%)" },
    { "connect bool", function() s:connect(true) end, "bad argument #1 to 'connect' %(table or string expected, got boolean%)" },
    { "send nil", function() s:send(nil) end, "bad argument #1 to 'send' %(string expected, got nil%)" },
    { "recv negative", function() s:recv(-1) end, "bad argument #1 to 'recv' %(negative size%)" },
    { "recv string", function() s:recv("x") end, "bad argument #1 to 'recv' %(number expected, got string%)" },
    { "listen string", function() s:listen("x") end, "bad argument #1 to 'listen' %(number expected, got string%)" },
    { "sendto address", function() s:sendto("x", 5) end, "bad argument #2 to 'sendto' %(table or string expected, got number%)" },
    { "recvfrom negative", function() s:recvfrom(-1) end, "bad argument #1 to 'recvfrom' %(negative size%)" },
    { "shutdown how", function() s:shutdown("sideways") end, "bad argument #1 to 'shutdown' %(invalid option 'sideways'%)" },
    { "setsockopt name", function() s:setsockopt(5, 1) end, "bad argument #1 to 'setsockopt'" },
    { "setsockopt value", function() s:setsockopt("rcvbuf", "big") end, "bad argument #2 to 'setsockopt' %(number expected, got string%)" },
    { "getsockopt name", function() s:getsockopt("nosuch") end, "bad argument #1 to 'getsockopt' %(invalid option 'nosuch'%)" },
    { "socket self", function() s.bind({}, { "127.0.0.1", 0 }) end, "asyncore.socket expected, got table" },
    { "unix path too long", function() asyncore.socket("unix"):bind(("x"):rep(200)) end, "path too long" },
    { "recv without socket", function() d:recv(10) end, "recv: the dispatcher has no socket" },
    { "dispatcher recv size", function() ds:recv("x") end, "bad argument #1 to 'recv' %(number expected, got string%)" },
    { "dispatcher bind", function() ds:bind(5) end, "bad argument #1 to 'bind' %(table or string expected, got number%)" },
    { "dispatcher listen", function() ds:listen("x") end, "bad argument #1 to 'listen'" },
    { "dispatcher connect", function() ds:connect(false) end, "bad argument #1 to 'connect' %(table or string expected, got boolean%)" },
    { "dispatcher send", function() ds:send({}) end, "bad argument #1 to 'send' %(string expected, got table%)" },
    { "dispatcher sock", function() asyncore.dispatcher("notasocket") end, "bad argument #1 to 'dispatcher' %(asyncore.socket expected, got string%)" },
    { "dispatcher map", function() asyncore.dispatcher(nil, 5) end, "bad argument #2 to 'dispatcher' %(table expected, got number%)" },
    { "set_socket", function() d:set_socket(5) end, "bad argument #1 to 'set_socket'" },
    { "add_channel map", function() ds:add_channel(5) end, "bad argument #1 to 'add_channel' %(table expected, got number%)" },
    { "loop timeout", function() asyncore.loop { timeout = "x" } end, "bad argument #1 to 'loop' %(timeout: number expected, got string%)" },
    { "loop negative timeout", function() asyncore.loop(-1) end, "bad argument #1 to 'loop' %(timeout must be >= 0%)" },
    { "loop map", function() asyncore.loop { map = 5 } end, "bad argument #3 to 'loop' %(table expected, got number%)" },
    { "loop count", function() asyncore.loop { count = 1.5 } end, "bad argument #4 to 'loop' %(count: integer expected" },
    { "loop backend type", function() asyncore.loop { backend = 5 } end, "bad argument #1 to 'loop' %(backend: string expected, got number%)" },
    { "poll timeout", function() asyncore.poll(-1) end, "bad argument #1 to 'poll'" },
    { "poll2 map", function() asyncore.poll2(0, "x") end, "bad argument #2 to 'poll2' %(table expected, got string%)" },
    { "close_all map", function() asyncore.close_all(5) end, "bad argument #1 to 'close_all' %(table expected, got number%)" },
    { "file_dispatcher", function() asyncore.file_dispatcher("x") end, "bad argument #1 to 'file_dispatcher' %(file or descriptor expected, got string%)" },
    { "file_dispatcher fd", function() asyncore.file_dispatcher(-1) end, "not a file descriptor" },
    { "file_dispatcher closed fd", function() asyncore.file_dispatcher(987) end, "dup: Bad file descriptor %(EBADF%)" },
    { "call_later delay", function() asyncore.call_later(-1, print) end, "bad argument #1 to 'call_later' %(delay must be a number of seconds >= 0%)" },
    { "call_later delay type", function() asyncore.call_later("soon", print) end, "bad argument #1 to 'call_later' %(number expected, got string%)" },
    { "call_later fn", function() asyncore.call_later(1, 42) end, "bad argument #2 to 'call_later' %(function expected, got number%)" },
    { "call_every interval", function() asyncore.call_every(0, print) end, "bad argument #1 to 'call_every' %(interval must be a number of seconds > 0%)" },
    { "timer delay", function()
      local t = asyncore.call_later(1, print)
      local _, err = pcall(function() t:delay(-2) end)
      t:cancel()
      error(err, 0)
    end, "bad argument #1 to 'delay'" },
    { "is_error", function() asyncore.is_error() end, "bad argument #1 to 'is_error' %(value expected%)" },
    { "push number", function() require("asynchat").async_chat():push(5) end, "bad argument #1 to 'push' %(string expected, got number%)" },
    { "push nil", function() require("asynchat").async_chat():push() end, "bad argument #1 to 'push' %(string expected, got nil%)" },
    { "push_with_producer", function() require("asynchat").async_chat():push_with_producer(5) end, "bad argument #1 to 'push_with_producer' %(producer" },
    { "push_with_producer table", function() require("asynchat").async_chat():push_with_producer({}) end, "bad argument #1 to 'push_with_producer' %(producer" },
    { "async_chat method on a dispatcher", function() require("asynchat").async_chat.push(asyncore.dispatcher(), "x") end, "push: not an async_chat channel" },
    { "simple_producer data", function() require("asynchat").simple_producer(5) end, "bad argument #1 to 'simple_producer' %(string expected, got number%)" },
    { "simple_producer size", function() require("asynchat").simple_producer("x", 0) end, "bad argument #2 to 'simple_producer'" },
    { "extend on an instance", function() asyncore.dispatcher():extend() end, "a class expected, got an instance" },
  }
  for _, row in ipairs(rows) do
    it("are refused with a message naming them: " .. row[1], function()
      local ok, err = pcall(row[2])
      assert.is_false(ok, "no error raised")
      assert.matches(row[3], tostring(err))
    end)
  end

  -- Every method with every pair of garbage values, in name order and in a few
  -- fixed shuffled orders: what state a call leaves the sockets in (bound,
  -- listening, connected to itself, with data waiting...) depends on the calls
  -- before it, so each order reaches other paths, and the same ones every run.
  local function fuzz(seed)
    -- the host-like strings are invalid names, which the resolver refuses without asking a
    -- name server: a test sends nothing off this machine
    local values = { nil, true, false, 0, -1, 1.5, 2 ^ 63, -2 ^ 63, "", "x y", ("y"):rep(300), {}, { 1 }, { "h h", 1 },
      { "127.0.0.1", 0 }, print, coroutine.create(print), io.stdout, asyncore.socket(), asyncore.ExitNow }
    local targets = {}
    local sock = asyncore.socket()
    local udp = asyncore.socket("inet", "dgram")
    local methods = {}
    for name in pairs(getmetatable(sock).__index) do
      if name ~= "setblocking" then methods[#methods + 1] = name end   -- a blocking socket would wait
    end
    table.sort(methods)
    for _, name in ipairs(methods) do
      local fn = sock[name]
      targets[#targets + 1] = { "socket:" .. name, function(...) return fn(sock, ...) end }
      targets[#targets + 1] = { "udp:" .. name, function(...) return fn(udp, ...) end }
    end
    local chan = asyncore.dispatcher_with_send()
    chan:create_socket()
    for _, name in ipairs { "recv", "send", "accept", "bind", "listen", "connect", "add_channel",
      "del_channel", "handle_read_event", "handle_write_event", "handle_connect_event",
      "initiate_send", "out_buffer_size", "readable", "writable", "set_reuse_addr", "fileno" } do
      targets[#targets + 1] = { "dispatcher:" .. name, function(...) return chan[name](chan, ...) end }
      targets[#targets + 1] = { "dispatcher." .. name, function(...) return chan[name](...) end }
    end
    for _, name in ipairs { "socket", "is_error", "close_all", "backends" } do
      targets[#targets + 1] = { name, asyncore[name] }
    end
    for _, name in ipairs { "poll", "poll2" } do
      -- a pass waits up to its timeout (a negative one: until an event or a timer); keep it 0
      targets[#targets + 1] = { name, function(timeout, map)
        if type(timeout) == "number" then timeout = 0 end
        return asyncore[name](timeout, map)
      end }
    end
    local pending = require("asyncore.core").timers_pending()
    local timer = asyncore.call_later(1000, print)
    timer:cancel()   -- armed again by the calls below, cancelled at the end
    for _, name in ipairs { "cancel", "cancelled", "reset", "delay" } do
      targets[#targets + 1] = { "timer:" .. name, function(...) return timer[name](timer, ...) end }
      targets[#targets + 1] = { "timer." .. name, function(...) return timer[name](...) end }
    end
    if seed then
      math.randomseed(seed)
      for i = #targets, 2, -1 do
        local j = math.random(i)
        targets[i], targets[j] = targets[j], targets[i]
      end
    end
    local n = 0
    for _, t in ipairs(targets) do
      for i = 1, #values + 1 do
        for j = 1, #values + 1, 5 do
          pcall(t[2], values[i], values[j])
          n = n + 1
        end
      end
    end
    -- still alive; cancel what the calls armed and close what they opened
    asyncore.close_all({}, true)
    sock:close(); udp:close(); chan:close(); values[19]:close()
    timer:cancel()
    assert.equal(pending, require("asyncore.core").timers_pending())
    assert.is_true(n > 1000)
  end

  for _, seed in ipairs { false, 1, 2, 3 } do
    it("never crash the interpreter, whatever is passed (order: " .. (seed and "shuffle " .. seed or "by name") .. ")",
      function() fuzz(seed) end)
  end

end)
