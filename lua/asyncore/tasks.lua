--- Tasks: sequential code on the loop (asyncore.spawn, sleep, join, cancel).
--
-- A task is a coroutine the C loop resumes (src/ltask.c): whatever wakes it
-- (a timer, the end of a task it joins, a cancel) puts it on the ready list,
-- and the pass resumes it after its timers. A task waits by yielding the
-- core's private token; what will wake it is arranged before. Outside any
-- task, at the top level of a script, the waiting calls run the loop
-- themselves until they are done; inside a loop (a handler, a timer) they
-- raise an error that says to use asyncore.spawn.
--
-- Installed into the asyncore module by asyncore.lua: `require "asyncore"`.
return function(M, core)
  local type, error, tostring, getmetatable = type, error, tostring, getmetatable
  local unpack = table.unpack
  local format = string.format
  local task_spawn, task_cancel = core.task_spawn, core.task_cancel
  local new_error = core.new_error
  local ECANCELED, ETIMEDOUT = core.ECANCELED, core.ETIMEDOUT
  local loop_depth = core.loop_depth

  local current = core.task_current   -- the task of the running coroutine (kept in C)

  -- the tasks' metatable: a task is a userdata of the core's (status and
  -- flags in C); task.status and the fields below are read through the
  -- __index the core installs
  local Task = {}
  Task.__name = "asyncore.task"
  function Task:__tostring()
    return format("<asyncore.task %s at %p>", tostring(self.status), self)
  end
  core.task_class(Task)

  local function argerror(n, fname, msg)
    error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
  end

  local function check_seconds(v, n, fname, optional)
    if v == nil and optional then return nil end
    if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge then
      argerror(n, fname, "seconds: a number >= 0 expected, got " .. tostring(v))
    end
    return v
  end

  -- How a waiting call runs here: "task" (and the task), or "top" (the
  -- script's top level, or a coroutine of its own there: the call runs the
  -- loop until it is done). Inside the loop (a handler, a timer) it raises.
  local function mode(fname)
    local t = current()
    if t then return "task", t end
    if loop_depth() > 0 then
      error(format("%s: called inside the loop (a handler or a timer), which cannot wait: "
        .. "run the code that waits in a task, with asyncore.spawn(fn)", fname), 3)
    end
    return "top"
  end

  --- suspend([undo]): suspend the current task until something wakes it
  -- (callers check again what they wait for); when it was cancelled
  -- instead, `undo()` (if given) runs and the call raises ECANCELED.
  local suspend = core.task_suspend

  local wake = core.task_wake

  -- the top level: run the loop until pred() or the deadline (seconds, or nil)
  local function run_until(pred, deadline)
    local now = M.now
    while not pred() do
      local wait = 30.0
      if deadline then
        wait = deadline - now()
        if wait <= 0 then return false end
      end
      M.loop { timeout = wait, count = 1 }
    end
    return true
  end

  --- spawn(fn, ...): run fn(...) as a task from the next pass; the task.
  function M.spawn(fn, ...)
    if type(fn) ~= "function" then
      local mt = getmetatable(fn)
      if not (mt and mt.__call) then argerror(1, "spawn", "function expected, got " .. type(fn)) end
    end
    return task_spawn(nil, fn, ...)
  end

  --- sleep(seconds): suspends the task (at the top level: runs the loop) for that long.
  function M.sleep(seconds)
    seconds = check_seconds(seconds, 1, "sleep")
    local how, t = mode("sleep")
    if how == "top" then
      local deadline = M.now() + seconds
      run_until(function() return M.now() >= deadline end, deadline)
      return
    end
    local fired = false
    local timer = M.call_later(seconds, function() fired = true; wake(t) end)
    local function undo() timer:cancel() end
    repeat suspend(undo) until fired
  end

  local function outcome(t)
    if t.status == "done" then
      local r = t.results
      return true, unpack(r, 1, r.n)
    elseif t.status == "cancelled" then
      return false, new_error(ECANCELED, "cancelled")
    end
    return false, t.error
  end

  local function ended(t)
    local s = t.status
    return s == "done" or s == "failed" or s == "cancelled"
  end

  --- task:join([timeout]): waits for the task: true, results... or false, err
  -- (its error, ECANCELED, or ETIMEDOUT after timeout seconds: it goes on).
  function Task:join(timeout)
    if getmetatable(self) ~= Task then argerror(1, "join", "task expected, got " .. type(self)) end
    timeout = check_seconds(timeout, 1, "join", true)
    if ended(self) then return outcome(self) end
    local how, me = mode("join")
    if how == "top" then
      if run_until(function() return ended(self) end, timeout and M.now() + timeout) then
        return outcome(self)
      end
      return false, new_error(ETIMEDOUT, "join")
    end
    if me == self then error("join: a task cannot join itself", 2) end
    local joiners = self._joiners
    if not joiners then
      joiners = {}
      self._joiners = joiners
    end
    joiners[#joiners + 1] = me
    local timer, timed_out
    local function leave()
      for i = #joiners, 1, -1 do
        if joiners[i] == me then table.remove(joiners, i) end
      end
      if timer then timer:cancel() end
    end
    if timeout then
      timer = M.call_later(timeout, function() timed_out = true; wake(me) end)
    end
    -- the joined task's end wakes us (the core readies its joiners)
    while true do
      suspend(leave)
      if ended(self) then
        leave()
        return outcome(self)
      end
      if timed_out then
        leave()
        return false, new_error(ETIMEDOUT, "join")
      end
    end
  end

  --- task:cancel(): the call the task waits in raises ECANCELED; a task not
  -- started yet never runs; an ended task is left as it is.
  function Task:cancel()
    if getmetatable(self) ~= Task then argerror(1, "cancel", "task expected, got " .. type(self)) end
    task_cancel(self)
  end

  --- Where an error that escapes a task goes; a script may replace it.
  function M.handle_task_error(task, err, traceback)
    io.stderr:write(format("error: uncaught error in %s: %s\n%s\n", tostring(task), tostring(err),
      traceback or ""))
  end

  -- for the streams (lua/asyncore/streams.lua)
  return { mode = mode, suspend = suspend, wake = wake, run_until = run_until, Task = Task }
end
