-- Running a service: signals, graceful shutdown, pre-forked workers, and the
-- embedding calls. Anything that forks or must die by a signal runs in a
-- child process.
local asyncore = require "asyncore"
local core = require "asyncore.core"
local H = require "helpers"

local ME = core.getpid()

-- the start of a child script: a listener on a free port of 127.0.0.1
local LISTENER = [[
local asyncore = require "asyncore"
local srv = asyncore.dispatcher()
srv:create_socket("inet")
srv:bind { "127.0.0.1", 0 }
srv:listen(8)
]]

-- a Lua script in a file, run as a child process: its handle (and the file)
local function script(src, args, limit)
  local path = H.tmpname() .. ".lua"
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return H.spawn(("sh -c '%s %s %s; echo exit=$?'"):format(H.LUA, path, args or ""), limit or 30), path
end

-- the pid of the Lua process of a script() (the child of its sh)
local function lua_pid(p) return H.child_of(p.child_pid()) end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %(.*%) (%a)")
  f:close()
  return state ~= "Z" and state ~= "X"
end

-- connect to port, send request, read to the end (bounded): what came, or
-- nil if the connect was refused
-- (or, with `some`, what the first read gets)
local function fetch_in_task(port, request, some)
  local c, err = asyncore.open_stream("127.0.0.1", port, { timeout = 5 })
  if not c then return nil, err end
  c:settimeout(5)
  if request then c:write(request) end
  local all = some and c:read_some() or c:read("a")
  c:close()
  return all
end

local function fetch(port, request, some)
  local t = asyncore.spawn(fetch_in_task, port, request, some)
  H.run_until(function() return t.status == "done" or t.status == "failed" end, 15)
  return select(2, t:join())
end

describe("running a service", function()
  after_each(H.cleanup)

  it("on_signal: a signal that comes while the loop sleeps wakes it; the handler runs from the loop", function()
    local got, depth, h, failsafe
    h = asyncore.on_signal("USR1", function(name)
      got, depth = name, core.loop_depth()
      h:cancel()
      failsafe:cancel()
    end)
    failsafe = asyncore.call_later(20, function() end)
    os.execute(("(sleep 0.3; kill -USR1 %d) &"):format(ME))
    local t0 = asyncore.now()
    asyncore.loop { timeout = 30 }
    assert.equal("USR1", got)
    assert.is_true(depth > 0)
    assert.is_true(asyncore.now() - t0 < 10, "the loop slept through the signal")
  end)

  it("on_signal: signals during busy traffic reach the handler; the traffic is intact", function()
    -- signals of one kind that come close together may be delivered once
    -- (POSIX does not queue them): at least one delivery is what is owed
    local n = 0
    local h = asyncore.on_signal("USR2", function() n = n + 1 end)
    local srv = asyncore.serve("127.0.0.1", 0, function(s)
      while true do
        local line = s:read("L")
        if not line then break end
        s:write(line)
      end
    end)
    local done = H.tmpname()
    os.execute(("(for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.05; kill -USR2 %d; done; touch %s) &")
      :format(ME, done))
    local function sent_all()
      local f = io.open(done)
      if f then f:close() end
      return f ~= nil
    end
    local rounds, bad, during = 0, 0, 0
    local deadline = asyncore.now() + 30
    local t = asyncore.spawn(function()
      local c <close> = assert(asyncore.open_stream("127.0.0.1", srv.port))
      while not sent_all() and asyncore.now() < deadline do
        rounds = rounds + 1
        local line = ("round %d %s\n"):format(rounds, ("x"):rep(rounds % 500))
        c:write(line)
        if c:read("L") ~= line then bad = bad + 1 end
        during = n
      end
    end)
    H.run_until(function() return t.status == "done" or t.status == "failed" end, 40)
    H.run_for(0.2)
    h:cancel()
    srv:close()
    os.remove(done)
    assert.equal("done", t.status, tostring(t.error))
    assert.is_true(during >= 1, "no signal reached the handler during the traffic")
    assert.is_true(n >= 1 and n <= 10, tostring(n))
    assert.equal(0, bad)
    assert.is_true(rounds > 1)
  end)

  it("on_signal: cancel puts back the disposition it found (default, or ignored)", function()
    local src = [[
local asyncore = require "asyncore"
local core = require "asyncore.core"
local h = asyncore.on_signal("USR1", function() end)
h:cancel()
os.execute("kill -USR1 " .. core.getpid())
asyncore.sleep(0.5)
print("survived")
]]
    local p, path = script(src)
    p.wait_line("exit=%d+", 15)
    local out = p.output()
    assert.is_nil(out:match("survived"))
    assert.matches("exit=138", out)          -- 128 + SIGUSR1: the default disposition
    local out2 = H.capture(("trap '' USR1; %s %s"):format(H.LUA, path))
    assert.matches("survived", out2)         -- ignored before: ignored again
  end)

  it("on_signal(\"INT\"): Ctrl-C runs the handler instead of leaving the loop", function()
    local p = script(LISTENER .. [[
asyncore.on_signal("INT", function(name) print("got " .. name) asyncore.shutdown(1) end)
print("ready")
io.stdout:flush()
asyncore.loop()
print("loop returned")
]])
    p.wait_line("ready")
    H.run_for(0.2)
    os.execute("kill -INT " .. lua_pid(p))
    p.wait_line("exit=%d+", 10)
    local out = p.output()
    assert.matches("got INT\nloop returned\n", out)
    assert.is_nil(out:match("interrupted!"))
    assert.matches("exit=0", out)
  end)

  it("shutdown on TERM: a 4 MiB response to a slow reader completes, new connects are refused, exit 0", function()
    local dir = H.tmpname() .. ".d"
    os.execute("mkdir -p " .. dir)
    local blob = H.blob(4 * 1024 * 1024, 11)
    local f = assert(io.open(dir .. "/big.bin", "wb"))
    f:write(blob)
    f:close()
    local want = H.capture("sha256sum " .. dir .. "/big.bin"):match("^(%x+)")
    local port = H.free_port()
    local srv = H.spawn(("sh -c '%s examples/http_server.lua 127.0.0.1 %d %s; echo exit=$?'"):format(H.LUA, port, dir), 60)
    srv.wait_line("http server on", 10)
    local client = H.spawn(("python3 spec/peers/py_slow_get.py %d /big.bin 2000000"):format(port), 60)
    client.wait_line("reading", 10)
    os.execute("kill -TERM " .. lua_pid(srv))
    H.run_for(0.3)
    assert.is_nil(fetch(port, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"), "a new connect was accepted")
    local n, sha = client.wait_line("got (%d+ bytes %x+)", 30):match("(%d+) bytes (%x+)")
    assert.equal(#blob, tonumber(n))
    assert.equal(want, sha)
    srv.wait_line("exit=%d+", 15)
    assert.matches("http server stopped", srv.output())
    assert.matches("exit=0", srv.output())
    os.execute("rm -rf " .. dir)
    client.kill()
  end)

  it("chat_server.lua on INT and TERM: the users still get what was queued, then the end; exit 0", function()
    for _, sig in ipairs { "INT", "TERM" } do
      local port = H.free_port()
      local srv = H.spawn(("sh -c '%s examples/chat_server.lua 127.0.0.1 %d; echo exit=$?'"):format(H.LUA, port), 30)
      srv.wait_line("chat server on")
      local pid = lua_pid(srv)
      local got = {}
      local t = asyncore.spawn(function()
        local c <close> = assert(asyncore.open_stream("127.0.0.1", port))
        c:settimeout(10)
        c:write("/nick tester\r\n")
        while true do
          local line = c:read()
          if not line then break end
          got[#got + 1] = line
          if #got == 1 then os.execute(("kill -%s %d"):format(sig, pid)) end
        end
      end)
      H.run_until(function() return t.status == "done" or t.status == "failed" end, 20)
      assert.equal("done", t.status, tostring(t.error))
      assert.is_true(#got >= 1)
      srv.wait_line("exit=%d+", 10)
      assert.matches("exit=0", srv.output())
      assert.is_nil(fetch(port), "the listener is still open")
    end
  end)

  it("shutdown: after the grace period what is left is closed and loop() returns", function()
    local p = script(LISTENER .. [[
function srv:handle_accepted(sock)
  local c = asyncore.dispatcher_with_send(sock)
  c:send(string.rep("z", 32 * 1024 * 1024))      -- more than a reader that never reads takes
end
print("port " .. srv.socket:getsockname()[2])
io.stdout:flush()
asyncore.on_signal("TERM", function() asyncore.shutdown(0.5) end)
local t0
asyncore.on_signal("USR1", function() t0 = asyncore.now(); asyncore.shutdown(0.5) end)
asyncore.loop()
print(("loop returned after %.1f s"):format(asyncore.now() - t0))
]])
    local port = tonumber(p.wait_line("port (%d+)"))
    local s = asyncore.socket("inet")
    s:setblocking(true)
    s:connect { "127.0.0.1", port }
    H.run_for(0.3)
    os.execute("kill -USR1 " .. lua_pid(p))
    local secs = tonumber(p.wait_line("loop returned after ([%d.]+) s", 10))
    assert.is_true(secs >= 0.4 and secs < 5, tostring(secs))
    p.wait_line("exit=%d+", 10)
    assert.matches("exit=0", p.output())
    s:close()
  end)

  it("fork_workers: both workers serve, a killed one is restarted, TERM to the parent ends all", function()
    local p = script([[
local asyncore = require "asyncore"
local core = require "asyncore.core"
local srv = asyncore.dispatcher()
srv:create_socket("inet")
srv:set_reuse_addr()
srv:bind { "127.0.0.1", 0 }
srv:listen(128)
function srv:handle_accepted(sock)
  local c = asyncore.dispatcher_with_send(sock)
  local t0 = os.clock()
  while os.clock() - t0 < 0.02 do end     -- busy: the other worker takes what comes meanwhile
  c:send(core.getpid() .. "\n")
  c:close_when_done()
end
print("port " .. srv.socket:getsockname()[2])
-- the parent's poller, signal pipe and timers are made and used before the fork
local h = asyncore.on_signal("USR2", function() end)
asyncore.call_later(0.05, function() end)
asyncore.loop { timeout = 0.2, count = 3 }
h:cancel()
local n = asyncore.fork_workers(2)
if n == 0 then print("parent done") os.exit(0) end
print("worker " .. n .. " pid " .. core.getpid())
io.stdout:flush()
asyncore.loop()
print("worker " .. n .. " ended")
]], nil, 60)
    local port = tonumber(p.wait_line("port (%d+)"))
    p.wait_line("worker 1 pid %d+")
    p.wait_line("worker 2 pid %d+")
    local function pids_seen(want)
      local seen, count = {}, 0
      H.run_until(function()
        local tasks = {}
        for i = 1, 16 do tasks[i] = asyncore.spawn(fetch_in_task, port) end
        for _, tk in ipairs(tasks) do
          H.run_until(function() return tk.status == "done" or tk.status == "failed" end, 15)
          local d = select(2, tk:join())
          local pid = d and d:match("^(%d+)")
          if pid and not seen[pid] then seen[pid], count = true, count + 1 end
        end
        return count >= want
      end, 20)
      return seen
    end
    local first = pids_seen(2)
    local victim = p.output():match("worker 1 pid (%d+)")
    assert.is_true(first[victim] ~= nil)
    os.execute("kill -KILL " .. victim)
    local newpid = p.wait_line("worker 1 pid (%d+)\n.-worker 1 pid (%d+)") and
      select(2, p.output():match("worker 1 pid (%d+).-worker 1 pid (%d+)"))
    assert.is_truthy(newpid)
    assert.are_not.equal(victim, newpid)
    local later = pids_seen(2)
    assert.is_true(later[newpid] ~= nil)
    local w2 = p.output():match("worker 2 pid (%d+)")
    os.execute("kill -TERM " .. lua_pid(p))
    p.wait_line("exit=%d+", 20)
    local out = p.output()
    assert.matches("parent done", out)
    assert.matches("exit=0", out)
    assert.matches("worker 1 ended", out)
    assert.matches("worker 2 ended", out)
    assert.is_false(alive(newpid))
    assert.is_false(alive(w2))
  end)

  it("fork_workers with reuseport: each worker makes its own listener on the same port", function()
    local port = H.free_port()
    local p = script(([[
local asyncore = require "asyncore"
local core = require "asyncore.core"
local n = asyncore.fork_workers(2, { reuseport = true })
if n == 0 then print("parent done") os.exit(0) end
local srv = asyncore.dispatcher()
srv:create_socket("inet")
srv.socket:setsockopt("reuseport", true)
srv:bind { "127.0.0.1", %d }
srv:listen(128)
function srv:handle_accepted(sock)
  local c = asyncore.dispatcher_with_send(sock)
  c:send(core.getpid() .. "\n")
  c:close_when_done()
end
print("worker " .. n .. " listening")
io.stdout:flush()
asyncore.loop()
]]):format(port), nil, 60)
    p.wait_line("worker 1 listening")
    p.wait_line("worker 2 listening")
    local seen, count = {}, 0
    H.run_until(function()
      local d = fetch(port)
      local pid = d and d:match("^(%d+)")
      if pid and not seen[pid] then seen[pid], count = true, count + 1 end
      return count >= 2
    end, 20)
    assert.equal(2, count)
    os.execute("kill -TERM " .. lua_pid(p))
    p.wait_line("exit=%d+", 20)
    assert.matches("parent done", p.output())
    assert.matches("exit=0", p.output())
  end)

  it("step, backend_fd and next_timeout", function()
    assert.is_nil(asyncore.next_timeout())
    local fd = asyncore.backend_fd()
    assert.equal("number", math.type(fd) and "number")
    local t = asyncore.call_later(5, function() end)
    local left = asyncore.next_timeout()
    assert.is_true(left > 4 and left <= 5, tostring(left))
    local task = asyncore.spawn(function() end)
    assert.equal(0, asyncore.next_timeout())
    assert.is_true(asyncore.step(0) >= 1)        -- the task ran
    assert.equal("done", task.status)
    t:cancel()
    assert.is_nil(asyncore.next_timeout())
    local m = {}
    asyncore.loop { map = m, backend = "poll", count = 1, timeout = 0 }
    local d = asyncore.dispatcher(nil, m)
    d:create_socket("inet")
    asyncore.loop { map = m, backend = "poll", count = 1, timeout = 0 }
    assert.is_nil(asyncore.backend_fd(m))
    d:close()
  end)

  it("luv drives the loop (examples/embed_in_luv.lua), and the loop drives luv (examples/luv_in_asyncore.lua)", function()
    for _, ex in ipairs { "embed_in_luv", "luv_in_asyncore" } do
      local port = H.free_port()
      local p = H.spawn(("%s examples/%s.lua 127.0.0.1 %d"):format(H.LUA, ex, port), 20)
      p.wait_line("listening on")
      assert.equal("hello " .. ex, fetch(port, "hello " .. ex, true))
      p.wait_line("an asyncore timer fired")
      p.wait_line("a luv timer fired")
      p.kill()
    end
  end)

  it("check their arguments", function()
    assert.has_error(function() asyncore.on_signal("NOPE", print) end)
    assert.has_error(function() asyncore.on_signal("INT", 1) end,
      "bad argument #2 to 'on_signal' (function expected, got number)")
    assert.has_error(function() asyncore.on_signal({}, print) end)
    assert.has_error(function() asyncore.on_signal(9, print) end)   -- KILL cannot be caught
    assert.has_error(function() asyncore.shutdown(-1) end,
      "bad argument #1 to 'shutdown' (grace: seconds >= 0 expected, got -1)")
    assert.has_error(function() asyncore.shutdown(1, 5) end,
      "bad argument #2 to 'shutdown' (table expected, got number)")
    assert.has_error(function() asyncore.fork_workers(0) end,
      "bad argument #1 to 'fork_workers' (a worker count >= 1 expected, got 0)")
    assert.has_error(function() asyncore.fork_workers(2, { bogus = 1 }) end,
      "bad argument #2 to 'fork_workers' (unknown option 'bogus')")
    assert.has_error(function() asyncore.step(-1) end,
      "bad argument #1 to 'step' (timeout: seconds >= 0 expected, got -1)")
    assert.has_error(function() asyncore.backend_fd(5) end,
      "bad argument #1 to 'backend_fd' (table expected, got number)")
  end)
end)
