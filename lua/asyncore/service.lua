--- Running a service: signals, graceful shutdown, pre-forked workers, and
-- one pass at a time for a host loop (asyncore.on_signal, shutdown,
-- fork_workers, step, backend_fd, next_timeout).
--
-- Signals come through a self-pipe the C core watches as part of the map
-- being looped (src/lsignal.c): the handlers here run from the pass, never
-- inside the C signal handler. fork_workers' parent does not loop at all: it
-- waits for signals (core.signal_wait) and reaps its children.
--
-- Installed into the asyncore module by asyncore.lua: `require "asyncore"`.
return function(M, core)
  local type, error, tostring, pcall, ipairs, pairs, setmetatable =
    type, error, tostring, pcall, ipairs, pairs, setmetatable
  local format = string.format

  local function argerror(n, fname, msg)
    error(format("bad argument #%d to '%s' (%s)", n, fname, msg), 3)
  end

  local function check_map(map, n, fname)
    if map ~= nil and type(map) ~= "table" then argerror(n, fname, "table expected, got " .. type(map)) end
    return map or M.socket_map
  end

  ---------------------------------------------------------------------------
  -- signals
  ---------------------------------------------------------------------------

  local handlers = {}        -- signal number -> its handles, in order

  local Handle = {}
  Handle.__index = Handle
  Handle.__name = "asyncore.signal_handler"
  function Handle:__tostring() return format("<asyncore.signal_handler %s>", tostring(self.signal)) end

  local function signum(name, n, fname)
    local ok, num, canon = pcall(core.signal_number, name)
    if not ok or (type(name) ~= "string" and math.type(name) ~= "integer") then
      argerror(n, fname, ok and "signal name or number expected, got " .. type(name)
        or tostring(num):gsub("^.-: ", ""))
    end
    return num, canon
  end

  --- on_signal(name, fn): fn(name) runs from the loop when the signal comes;
  -- a handle with :cancel() (the previous disposition comes back with the last).
  function M.on_signal(name, fn)
    local num, canon = signum(name, 1, "on_signal")
    if type(fn) ~= "function" then argerror(2, "on_signal", "function expected, got " .. type(fn)) end
    local list = handlers[num]
    if not list then
      list = {}
      handlers[num] = list
    end
    local h = setmetatable({ signal = canon, fn = fn, _num = num }, Handle)
    list[#list + 1] = h
    if #list == 1 then core.signal_watch(num, true) end
    return h
  end

  function Handle:cancel()
    local list = handlers[self._num]
    if not list then return end
    for i = #list, 1, -1 do
      if list[i] == self then table.remove(list, i) end
    end
    if #list == 0 then
      handlers[self._num] = nil
      core.signal_watch(self._num, false)
    end
  end

  -- from the pass: the handlers of one signal; an error is reported like a
  -- timer's, ExitNow leaves the loop
  local run_callback = core._run_callback
  core.signal_init(function(num)
    local list = handlers[num]
    if not list then return end
    for _, h in ipairs { table.unpack(list) } do run_callback(h.fn, h.signal) end
  end)

  ---------------------------------------------------------------------------
  -- graceful shutdown
  ---------------------------------------------------------------------------

  local grace_timers = {}    -- map -> the timer that closes what is left

  --- shutdown([grace [, map]]): listeners close now; every other channel
  -- gets handle_shutdown(); tasks are cancelled; loop() returns once the map
  -- is empty, or after `grace` seconds (default 10) closes what is left.
  function M.shutdown(grace, map)
    if grace == nil then grace = 10 end
    if type(grace) ~= "number" or grace ~= grace or grace < 0 then
      argerror(1, "shutdown", "grace: seconds >= 0 expected, got " .. tostring(grace))
    end
    map = check_map(map, 2, "shutdown")
    core.shutdown_mark(map, true)
    local chans = {}
    for _, ch in pairs(map) do chans[#chans + 1] = ch end
    for _, ch in ipairs(chans) do
      if ch.accepting then
        ch:close()                   -- a health check fails over at once
      else
        local ok, err = pcall(ch.handle_shutdown, ch)
        if not ok then
          if err == M.ExitNow then error(err, 0) end
          pcall(ch.handle_error, ch, err, debug.traceback())
        end
      end
    end
    core.task_cancel_all()
    if grace_timers[map] then grace_timers[map]:cancel() end
    grace_timers[map] = M.call_later(grace, function()
      grace_timers[map] = nil
      M.close_all(map)
    end)
  end

  -- after loop() on a map: a shutdown that ended before its grace period
  -- needs its timer no more
  function core._after_loop(map)
    local t = grace_timers[map]
    if t and next(map) == nil then
      t:cancel()
      grace_timers[map] = nil
    end
  end

  ---------------------------------------------------------------------------
  -- embedding
  ---------------------------------------------------------------------------

  --- step([timeout [, map]]): one pass on the map; the number of events handled.
  function M.step(timeout, map)
    if timeout == nil then timeout = 30.0 end
    if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
      argerror(1, "step", "timeout: seconds >= 0 expected, got " .. tostring(timeout))
    end
    map = check_map(map, 2, "step")
    core.loop(map, timeout, 1, nil, true)
    return core.handled()
  end

  --- backend_fd([map]): the epoll (or kqueue) descriptor of the map, or nil.
  function M.backend_fd(map)
    return core.backend_fd(check_map(map, 1, "backend_fd"))
  end

  --- next_timeout([map]): seconds until the library has work (0: now), or nil.
  function M.next_timeout(map)
    return core.next_timeout(check_map(map, 1, "next_timeout"))
  end

  ---------------------------------------------------------------------------
  -- pre-forked workers
  ---------------------------------------------------------------------------

  local SUPERVISED = { "TERM", "INT", "HUP", "CHLD", "USR1", "USR2" }
  local FORWARDED = { TERM = true, INT = true, HUP = true, USR1 = true, USR2 = true }

  --- fork_workers(n [, opts]): n worker processes; the worker's number in
  -- each, 0 in the parent once every worker has exited.
  function M.fork_workers(n, opts)
    if math.type(n) ~= "integer" or n < 1 then
      argerror(1, "fork_workers", "a worker count >= 1 expected, got " .. tostring(n))
    end
    if opts ~= nil and type(opts) ~= "table" then
      argerror(2, "fork_workers", "table expected, got " .. type(opts))
    end
    opts = opts or {}
    for k in pairs(opts) do
      if k ~= "max_restarts" and k ~= "reuseport" then
        argerror(2, "fork_workers", "unknown option '" .. tostring(k) .. "'")
      end
    end
    local max_restarts = opts.max_restarts or 100
    if math.type(max_restarts) ~= "integer" or max_restarts < 0 then
      argerror(2, "fork_workers", "max_restarts: an integer >= 0 expected, got " .. tostring(max_restarts))
    end
    if core.loop_depth() > 0 then
      error("fork_workers: call it before loop() (the parent supervises, it does not loop)", 2)
    end
    local nums, names = {}, {}
    for i, name in ipairs(SUPERVISED) do
      nums[i] = core.signal_number(name)
      names[nums[i]] = name
      core.signal_watch(nums[i], true)
    end
    -- the parent's watching undone: what the script watches stays watched
    local function unsupervise()
      for _, num in ipairs(nums) do
        if not handlers[num] then core.signal_watch(num, false) end
      end
    end
    local workers, alive = {}, 0
    local function start(i)
      local pid = core.fork(nums[1])   -- TERM for the worker if the parent dies (Linux)
      if pid == 0 then return true end
      workers[pid] = i
      alive = alive + 1
      return false
    end
    local function as_worker(i)
      unsupervise()
      -- TERM and INT end a worker gracefully, unless the script handles them
      for _, name in ipairs { "TERM", "INT" } do
        if not handlers[core.signal_number(name)] then
          M.on_signal(name, function() M.shutdown() end)
        end
      end
      return i
    end
    for i = 1, n do
      if start(i) then return as_worker(i) end
    end
    local stopping, restarts = false, 0
    while alive > 0 do
      for _, num in ipairs(core.signal_wait(1.0)) do
        local name = names[num]
        if name == "TERM" or name == "INT" then stopping = true end
        if FORWARDED[name] then
          for pid in pairs(workers) do core.kill(pid, num) end
        end
      end
      while true do
        local pid, how, code = core.waitpid()
        if pid == false then alive = 0 end   -- no child left at all (reaped by someone else)
        if not pid then break end
        local i = workers[pid]
        if i then
          workers[pid] = nil
          alive = alive - 1
          local abnormal = how == "signal" or code ~= 0
          if abnormal and not stopping and restarts < max_restarts then
            restarts = restarts + 1
            if start(i) then return as_worker(i) end
          end
        end
      end
    end
    unsupervise()
    return 0
  end
end
