-- Tasks: spawn, sleep, join, cancel, errors, and how they share the loop.
local asyncore = require "asyncore"
local H = require "helpers"

-- run the loop until every task spawned here has ended (bounded)
local function settle(tasks, seconds)
  H.run_until(function()
    for _, t in ipairs(tasks) do
      if t.status ~= "done" and t.status ~= "failed" and t.status ~= "cancelled" then return false end
    end
    return true
  end, seconds or 5)
end

describe("tasks", function()
  local saved_handler
  before_each(function() saved_handler = asyncore.handle_task_error end)
  after_each(function()
    asyncore.handle_task_error = saved_handler
    H.cleanup()
  end)

  it("start at the next pass, sleep, and give their results to join", function()
    local log = {}
    local a = asyncore.spawn(function(x, y)
      log[#log + 1] = "a starts"
      asyncore.sleep(0.05)
      log[#log + 1] = "a wakes"
      return x + y, "two", nil
    end, 1, 2)
    log[#log + 1] = "spawned"
    assert.equal("running", a.status)
    local b = asyncore.spawn(function()
      local r = table.pack(a:join())
      log[#log + 1] = "b joined"
      return r
    end)
    local t0 = H.now()
    settle({ a, b })
    assert.is_true(H.now() - t0 >= 0.05)
    assert.same({ "spawned", "a starts", "a wakes", "b joined" }, log)
    assert.equal("done", a.status)
    local ok, r = b:join()
    assert.is_true(ok)
    assert.same({ n = 4, true, 3, "two", nil }, r)
  end)

  it("report a task's error to handle_task_error and go on", function()
    local seen = {}
    asyncore.handle_task_error = function(task, err, tb) seen[#seen + 1] = { task, err, tb } end
    local bad = asyncore.spawn(function() asyncore.sleep(0.01); error("boom") end)
    local good = asyncore.spawn(function() asyncore.sleep(0.03); return "fine" end)
    settle({ bad, good })
    assert.equal("failed", bad.status)
    assert.equal(1, #seen)
    assert.equal(bad, seen[1][1])
    assert.matches("boom", seen[1][2])
    assert.matches("stack traceback", seen[1][3])
    local ok, err = bad:join()
    assert.is_false(ok)
    assert.matches("boom", err)
    assert.same({ true, "fine" }, { good:join() })
  end)

  it("cancel: the wait raises ECANCELED, <close> variables run, the task ends cancelled, unreported", function()
    local reported = 0
    asyncore.handle_task_error = function() reported = reported + 1 end
    local closed, caught = false, nil
    local t = asyncore.spawn(function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      asyncore.sleep(60)
    end)
    local c = asyncore.spawn(function()
      local ok, err = pcall(asyncore.sleep, 60)       -- caught: the task goes on
      caught = err
      return "after"
    end)
    H.run_until(function() return t.status == "waiting" and c.status == "waiting" end)
    t:cancel()
    c:cancel()
    settle({ t, c })
    assert.equal("cancelled", t.status)
    assert.is_true(closed)
    assert.equal(0, reported)
    local ok, err = t:join()
    assert.is_false(ok)
    assert.is_true(asyncore.is_error(err, "ECANCELED"))
    assert.equal("done", c.status)
    assert.is_true(asyncore.is_error(caught, "ECANCELED"))
    -- a task not started yet never runs; an ended one stays as it is
    local ran = false
    local n = asyncore.spawn(function() ran = true end)
    n:cancel()
    assert.equal("cancelled", n.status)
    H.run_for(0.05)
    assert.is_false(ran)
    c:cancel()
    assert.equal("done", c.status)
  end)

  it("join with a timeout gives ETIMEDOUT and the task keeps running; a joiner can be cancelled", function()
    local slow = asyncore.spawn(function() asyncore.sleep(0.2); return "late" end)
    local r
    local j = asyncore.spawn(function() r = table.pack(slow:join(0.05)) end)
    settle({ j })
    assert.is_false(r[1])
    assert.is_true(asyncore.is_error(r[2], "ETIMEDOUT"))
    assert.equal("waiting", slow.status)
    local j2 = asyncore.spawn(function() return slow:join() end)
    H.run_until(function() return j2.status == "waiting" end)
    j2:cancel()
    settle({ j2, slow })
    assert.equal("cancelled", j2.status)
    assert.same({ true, "late" }, { slow:join() })
  end)

  it("keep loop() running while one is alive, and survive a stray coroutine.yield", function()
    local steps = {}
    asyncore.spawn(function()
      steps[#steps + 1] = 1
      coroutine.yield("not the loop's")               -- lets others run; goes on at the next pass
      steps[#steps + 1] = 2
      asyncore.sleep(0.05)
      steps[#steps + 1] = 3
    end)
    asyncore.loop { timeout = 1 }                    -- returns once the task has ended
    assert.same({ 1, 2, 3 }, steps)
  end)

  it("mix with dispatchers: a task waits while a server answers from its handlers", function()
    local port = H.echo_server()
    local got
    local t = asyncore.spawn(function()
      local s = asyncore.socket()
      s:connect { "127.0.0.1", port }
      asyncore.sleep(0.05)
      s:send("hi")
      for _ = 1, 100 do
        asyncore.sleep(0.01)
        local d = s:recv(10)
        if d and #d > 0 then got = d break end
      end
      s:close()
    end)
    settle({ t })
    assert.equal("hi", got)
  end)

  it("refuse to wait inside a handler, saying to use spawn; ExitNow in a task leaves loop()", function()
    local err
    asyncore.call_later(0, function() err = select(2, pcall(asyncore.sleep, 1)) end)
    H.run_until(function() return err ~= nil end)
    assert.matches("sleep: called inside the loop %(a handler or a timer%).*asyncore%.spawn", err)
    local t = asyncore.spawn(function() error(asyncore.ExitNow) end)
    local ok, e = pcall(asyncore.loop, { timeout = 1 })
    assert.is_false(ok)
    assert.equal(asyncore.ExitNow, e)
    assert.equal("failed", t.status)
  end)

  it("check their arguments", function()
    assert.has_error(function() asyncore.spawn(42) end, "bad argument #1 to 'spawn' (function expected, got number)")
    assert.has_error(function() asyncore.sleep(-1) end, "bad argument #1 to 'sleep' (seconds: a number >= 0 expected, got -1)")
    assert.has_error(function() asyncore.sleep("x") end, "bad argument #1 to 'sleep' (seconds: a number >= 0 expected, got x)")
    local t = asyncore.spawn(function() end)
    assert.has_error(function() t.status = "done" end, "task.status is read-only")
    t.name = "mine"                          -- a script's own fields are kept
    assert.equal("mine", t.name)
    assert.has_error(function() t:join("x") end, "bad argument #1 to 'join' (seconds: a number >= 0 expected, got x)")
    assert.has_error(function() t.join({}) end, "bad argument #1 to 'join' (task expected, got table)")
    settle({ t })
  end)

  it("at the top level of a script, sleep and join run the loop themselves", function()
    local f = io.open(os.tmpname(), "w")
    local path = os.tmpname()
    f:close()
    f = io.open(path, "w")
    f:write([[
local asyncore = require "asyncore"
local t0 = asyncore.now()
asyncore.sleep(0.1)
local t = asyncore.spawn(function(x) asyncore.sleep(0.05) return x * 2 end, 21)
print("slept", asyncore.now() - t0 >= 0.1, "joined", t:join())
local slow = asyncore.spawn(function() asyncore.sleep(5) end)
local ok, err = slow:join(0.05)
print("timeout", ok, err.code)
slow:cancel()
]])
    f:close()
    local out = H.capture(("timeout 20 %s %s"):format(H.LUA, path))
    os.remove(path)
    assert.equal("slept\ttrue\tjoined\ttrue\t42\ntimeout\tfalse\tETIMEDOUT\n", out)
  end)
end)
