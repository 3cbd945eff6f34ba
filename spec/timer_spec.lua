local asyncore = require "asyncore"
local H = require "helpers"

local slow = os.getenv("AC_VALGRIND") ~= nil   -- under valgrind everything is ~50x slower

describe("timers", function()
  after_each(function() asyncore.close_all() end)

  it("asyncore.now() is the monotonic clock of the deadlines, in seconds", function()
    assert.equal("function", type(asyncore.now))
    local t0 = asyncore.now()
    assert.equal("float", math.type(t0))
    local t = asyncore.call_later(0.05, function() end)
    assert.is_true(t.deadline >= t0 + 0.05 and t.deadline < asyncore.now() + 0.05 + 1e-9)
    asyncore.loop()
    assert.is_true(asyncore.now() >= t.deadline)
    assert.is_true(asyncore.now() - t0 < 5)
  end)

  it("fire in deadline order, equal deadlines in the order they were armed", function()
    local order, armed = {}, {}
    local function arm(name, delay)
      local t = asyncore.call_later(delay, function() order[#order + 1] = name end)
      armed[#armed + 1] = { name = name, deadline = t.deadline, seq = #armed + 1 }
    end
    arm("c", 0.03); arm("a", 0.01); arm("b1", 0.02); arm("b2", 0.02); arm("b3", 0.02)
    asyncore.loop()
    -- a deadline is "now" at arming plus the delay, and arming takes time (much
    -- of it under valgrind): the order to expect is that of the real deadlines
    local by = {}
    for _, a in ipairs(armed) do by[a.name] = a end
    assert.is_true(by.a.deadline < by.b1.deadline and by.b1.deadline <= by.b2.deadline)
    table.sort(armed, function(x, y)
      if x.deadline ~= y.deadline then return x.deadline < y.deadline end
      return x.seq < y.seq
    end)
    local expected = {}
    for i, a in ipairs(armed) do expected[i] = a.name end
    assert.same(expected, order)
    if not slow then assert.same({ "a", "b1", "b2", "b3", "c" }, order) end
  end)

  it("pass their arguments, nils included", function()
    local got
    asyncore.call_later(0, function(...) got = table.pack(...) end, 1, nil, "three")
    asyncore.loop()
    assert.equal(3, got.n)
    assert.same({ 1, nil, "three" }, { got[1], got[2], got[3] })
  end)

  it("accept callable tables", function()
    local called
    local callable = setmetatable({}, { __call = function(self, x) called = x end })
    asyncore.call_later(0, callable, 42)
    asyncore.loop()
    assert.equal(42, called)
  end)

  it("can be cancelled", function()
    local fired = false
    local t = asyncore.call_later(0.01, function() fired = true end)
    assert.is_false(t:cancelled())
    t:cancel()
    assert.is_true(t:cancelled())
    asyncore.loop()
    assert.is_false(fired)
  end)

  -- Every timer is checked for firing early. Lateness is judged on the median of eight
  -- timers, with a wide bound on the worst one: this machine is a VM whose own jitter
  -- (a plain C select() of 2.5 ms was once 3.4 ms late in 3,000 tries, and ASan runs of
  -- the suite saw single 5-17 ms stalls) would otherwise fail a strict bound at random,
  -- while a loop that overslept (coarse rounding, a wait not bounded by the timer)
  -- moves the median.
  for _, backend in ipairs(asyncore.backends()) do
    it("are never early, and late by well under a millisecond typically (" .. backend .. ")", function()
      -- fractions of a millisecond too: waits are timed to the microsecond
      local delays = { 0.0043, 0.0101, 0.0127, 0.0171, 0.0233, 0.0302, 0.0368, 0.0419 }
      -- one round: the eight timers' lateness, sorted; never early in any round
      local function round()
        local late = {}
        -- the garbage of the specs before (tens of MiB) is collected now, not by a GC
        -- step in the middle of this one: what is measured is the loop, not the collector
        collectgarbage()
        local t0 = H.now()
        for i, d in ipairs(delays) do
          asyncore.call_later(d, function() late[i] = H.now() - t0 - d end)
        end
        asyncore.loop { backend = backend }
        for i = 1, #delays do
          assert.is_true(late[i] >= 0, "early by " .. -late[i])
        end
        table.sort(late)
        return (late[4] + late[5]) / 2, late[#late]
      end
      -- a loaded machine deschedules this process now and then (CI's is as busy as
      -- ours): that is random, while a loop that oversleeps does so in every round.
      -- So up to three rounds run, and one must keep both bounds.
      local median, worst
      for _ = 1, 3 do
        median, worst = round()
        if median < (slow and 0.02 or 0.0015) and worst < (slow and 0.1 or 0.025) then break end
      end
      assert.is_true(median < (slow and 0.02 or 0.0015), ("median lateness %.4f s"):format(median))
      assert.is_true(worst < (slow and 0.1 or 0.025), ("late by %.4f s"):format(worst))
    end)
  end

  it("let an idle loop sleep until the timer instead of spinning", function()
    local c0 = os.clock()
    local t0 = H.now()
    asyncore.call_later(0.3, function() end)
    asyncore.loop { timeout = 30 }
    local wall, cpu = H.now() - t0, os.clock() - c0
    assert.is_true(wall >= 0.3)
    assert.is_true(cpu < 0.05, ("the loop used %.3f s of CPU while idle"):format(cpu))
  end)

  it("bound the wait of a pass with channels", function()
    local l, port = H.listener()
    local C = asyncore.dispatcher:extend()
    function C:readable() return true end
    function C:writable() return false end
    local c = C()
    c:create_socket()
    c:connect { "127.0.0.1", port }
    local fired_at
    local t0 = H.now()
    asyncore.call_later(0.05, function() fired_at = H.now() - t0 end)
    asyncore.loop { timeout = 10, count = 1 }
    assert.is_not_nil(fired_at, "the pass waited past the timer")
    assert.is_true(H.now() - t0 < 1)
    c:close()
    l:close()
  end)

  it("re-arm with reset() and delay()", function()
    local t0 = H.now()
    local at
    local t = asyncore.call_later(0.02, function() at = H.now() - t0 end)
    local d1 = t.deadline
    assert.is_number(d1)
    t:delay(0.08)
    assert.is_true(t.deadline > d1)
    asyncore.loop()
    assert.is_true(at >= 0.08)
    at = nil
    t0 = H.now()
    t:reset()
    asyncore.loop()
    assert.is_true(at >= 0.08 and at < 0.5)
  end)

  it("repeat with call_every until cancelled, also from inside", function()
    local n = 0
    local t
    t = asyncore.call_every(0.01, function()
      n = n + 1
      if n == 5 then t:cancel() end
    end)
    asyncore.loop()
    assert.equal(5, n)
    assert.is_true(t:cancelled())
  end)

  it("keep repeating when the callback resets itself", function()
    local n = 0
    local t
    t = asyncore.call_every(0.01, function()
      n = n + 1
      t:reset()
      if n == 3 then t:cancel() end
    end)
    asyncore.loop()
    assert.equal(3, n)
  end)

  it("report errors through handle_timer_error and keep the loop going", function()
    local saved = asyncore.handle_timer_error
    local reports = {}
    asyncore.handle_timer_error = function(err, tb) reports[#reports + 1] = { err, tb } end
    local after = false
    asyncore.call_later(0, function() error("timer trouble") end)
    asyncore.call_later(0.01, function() after = true end)
    asyncore.loop()
    asyncore.handle_timer_error = saved
    assert.equal(1, #reports)
    assert.matches("timer trouble", reports[1][1])
    assert.matches("stack traceback", reports[1][2])
    assert.is_true(after)
  end)

  it("print timer errors to stderr by default", function()
    local out = H.capture(H.LUA .. [[ -e 'local a = require "asyncore"
      a.call_later(0, function() error("oops in timer") end)
      a.call_later(0.01, function() print("next timer ran") end)
      a.loop()']])
    assert.matches("error: uncaught error in timer callback: .*oops in timer", out)
    assert.matches("next timer ran", out)
  end)

  it("leave the loop with ExitNow", function()
    local later = false
    asyncore.call_later(0, function() error(asyncore.ExitNow) end)
    local t = asyncore.call_later(0.05, function() later = true end)
    local ok, err = pcall(asyncore.loop)
    assert.is_false(ok)
    assert.equal(asyncore.ExitNow, err)
    assert.is_false(later)
    t:cancel()
  end)

  it("armed with delay 0 inside a timer run in the next pass, not this one", function()
    local passes = 0
    local runs = 0
    local function again()
      runs = runs + 1
      if runs < 3 then asyncore.call_later(0, again) end
    end
    asyncore.call_later(0, again)
    while asyncore.Object and require("asyncore.core").timers_pending() > 0 do
      asyncore.loop { count = 1, timeout = 1 }
      passes = passes + 1
    end
    assert.equal(3, runs)
    assert.equal(3, passes)
  end)

  it("belong to the process: a loop on another map runs them", function()
    local fired = false
    asyncore.call_later(0, function() fired = true end)
    asyncore.loop { map = {} }
    assert.is_true(fired)
  end)
end)
