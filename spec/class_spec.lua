local asyncore = require "asyncore"
local Object = require "asyncore.class"

describe("the class mechanism", function()
  it("creates instances with Class(...) and Class:new(...), calling init", function()
    local Point = Object:extend()
    function Point:init(x, y) self.x, self.y = x, y end
    local a, b = Point(1, 2), Point:new(3, 4)
    assert.same({ 1, 2, 3, 4 }, { a.x, a.y, b.x, b.y })
  end)

  it("lets subclasses extend and call the parent's methods", function()
    local A = Object:extend()
    function A:init(v) self.v = v end
    function A:get() return self.v end
    local B = A:extend()
    function B:init(v) A.init(self, v * 2) end
    local C = B:extend({ get = function(self) return B.get(self) + 1 end })
    assert.equal(2, B(1):get())
    assert.equal(5, C(2):get())
  end)

  it("lists a class's own fields with pairs", function()
    local A = Object:extend { __name = "A" }
    function A:one() end
    local B = A:extend()
    function B:two() end
    B.size = 3
    local seen = {}
    for k, v in pairs(B) do seen[k] = v end
    assert.same({ two = B.two, size = 3 }, seen)
    seen = {}
    for k in pairs(A) do seen[#seen + 1] = k end
    table.sort(seen)
    assert.same({ "__name", "one" }, seen)
  end)

  it("answers is_instance for the class and its subclasses only", function()
    local A = Object:extend()
    local B = A:extend()
    local X = Object:extend()
    local b = B()
    assert.is_true(A:is_instance(b))
    assert.is_true(B:is_instance(b))
    assert.is_false(X:is_instance(b))
    assert.is_false(B:is_instance(A()))
    assert.is_false(A:is_instance("text"))
    assert.is_true(asyncore.dispatcher:is_instance(asyncore.dispatcher_with_send()))
    assert.is_false(asyncore.dispatcher_with_send:is_instance(asyncore.dispatcher()))
  end)

  it("inherits metamethods and __name through extend", function()
    local A = Object:extend()
    A.__tostring = function(self) return "A:" .. (self.n or "?") end
    A.__name = "A"
    local B = A:extend()
    local b = B()
    b.n = "x"
    assert.equal("A:x", tostring(b))
    assert.equal("A", B.__name)
    B.__name = "B"
    assert.equal("A", A.__name)
  end)

  it("does not let instances be called like their class", function()
    local A = Object:extend()
    A.__name = "A"
    local ok, err = pcall(function() return A()() end)
    assert.is_false(ok)
    assert.matches("attempt to call a A value", err)
  end)

  it("lets a method added to a base class later reach existing subclasses", function()
    local A = Object:extend()
    local B = A:extend()
    local C = B:extend()
    function C:who() return "C" end
    function A:who() return "A" end
    function A:shout() return self:who() .. "!" end
    assert.equal("A", B():who())
    assert.equal("C!", C():shout())
    A.who = nil
    assert.is_nil(B().who)
    assert.equal("C", C():who())
    B.who = function() return "B" end
    assert.equal("B", B():who())
    assert.equal("C", C():who())
  end)

  it("keeps arbitrary fields on instances", function()
    local d = asyncore.dispatcher()
    d.anything = { 1, 2 }
    assert.same({ 1, 2 }, d.anything)
  end)

  it("rejects a non-table argument to extend", function()
    assert.has_error(function() Object:extend(42) end,
      "bad argument #1 to 'extend' (table expected, got number)")
  end)

  it("gives a dispatcher a Python-like repr", function()
    local d = asyncore.dispatcher()
    assert.matches("^<asyncore%.dispatcher at 0x%x+>$", tostring(d))
    local Named = asyncore.dispatcher:extend()
    Named.__name = "Named"
    local n = Named()
    n:create_socket()
    n:bind { "127.0.0.1", 0 }
    n:listen(5)
    assert.matches("^<Named listening 127%.0%.0%.1:0 at 0x%x+>$", tostring(n))
    n:close()
  end)
end)
