--- The class mechanism of lua-asyncore: plain tables, single inheritance.
--
-- A class is a table that is its instances' metatable. `extend` makes a
-- subclass whose metatable is the parent, so methods are found through the
-- `__index` chain; keys starting with "__" (metamethods such as `__tostring`,
-- `__call`, and `__name`) are copied down, because Lua does not look them up
-- through `__index`. `Class(...)` and `Class:new(...)` create an instance and
-- call its `init(...)`.
local Object = {}
Object.__index = Object
Object.__name = "Object"

local setmetatable, getmetatable, pairs, type, rawget, error, tostring =
  setmetatable, getmetatable, pairs, type, rawget, error, tostring

--- The constructor, called by `new`; subclasses override it.
function Object:init() end

--- Create an instance of this class and call `instance:init(...)`.
function Object:new(...)
  local obj = setmetatable({}, self)
  obj:init(...)
  return obj
end

--- A subclass of this class; `methods`, if given, is copied into it.
function Object:extend(methods)
  local cls = {}
  for k, v in pairs(self) do
    if type(k) == "string" and k:sub(1, 2) == "__" then cls[k] = v end
  end
  cls.__index = cls
  cls.super = self
  if methods ~= nil then
    if type(methods) ~= "table" then
      error(("bad argument #1 to 'extend' (table expected, got %s)"):format(type(methods)), 2)
    end
    for k, v in pairs(methods) do cls[k] = v end
  end
  return setmetatable(cls, self)
end

--- True when `obj` is an instance of this class or of a subclass.
function Object:is_instance(obj)
  if type(obj) ~= "table" then return false end
  local mt = getmetatable(obj)
  while mt do
    if mt == self then return true end
    mt = getmetatable(mt)
  end
  return false
end

-- Calling a class makes an instance. Instances share the class as their
-- metatable, so they see this __call too: refuse them, as Lua would.
Object.__call = function(cls, ...)
  if rawget(cls, "__index") ~= cls then
    error("attempt to call an instance of " .. tostring(rawget(getmetatable(cls), "__name")), 2)
  end
  return cls:new(...)
end
-- The root's own metatable, so that `Object(...)` works too.
setmetatable(Object, { __call = Object.__call })

return Object
