--- The class mechanism of lua-asyncore: plain tables, single inheritance,
-- and method lookup in one step.
--
-- `Class:extend([methods])` makes a subclass; `Class(...)` and
-- `Class:new(...)` create an instance and call its `init(...)`;
-- `Class:is_instance(obj)` tests membership. A class may set `__name`
-- (used by the repr) and any metamethod (`__tostring`, ...): they are
-- inherited like methods.
--
-- How: every class keeps the fields defined on it (`own`) and a flattened
-- table (`dispatch`) holding its own fields and everything it inherits. The
-- dispatch table is the instances' metatable and its own __index, so an
-- instance finds any method, however deep the hierarchy, with one table
-- lookup (the event loop looks methods up on every event). The class table
-- the script holds stays empty: reading a field reads the dispatch table,
-- and assigning one goes through __newindex, which records it and updates
-- the dispatch tables of the class and of every subclass that does not
-- define that field itself. So a method added to or replaced on a base
-- class at any time reaches its subclasses, as with ordinary inheritance.
-- `pairs(cls)` lists the fields defined on the class itself.
local setmetatable, getmetatable, pairs, next, type, rawget, rawset, error, tostring =
  setmetatable, getmetatable, pairs, next, type, rawget, rawset, error, tostring

-- The C core caches what it reads from classes; it is told when one changes.
local class_changed = require("asyncore.core").class_changed

-- fields that belong to one class (its dispatch table's plumbing), never inherited
local PRIVATE = { __index = true, __class = true, super = true }

local meta = {}        -- class -> its metatable: {__index = dispatch, own = ..., parent = ..., children = ...}
setmetatable(meta, { __mode = "k" })

-- Set the effective value of k in `cls` and in its subclasses that inherit it.
local function refresh(cls, k)
  local m = meta[cls]
  local v = rawget(m.own, k)
  if v == nil and m.parent ~= nil then v = meta[m.parent].__index[k] end
  rawset(m.__index, k, v)
  for child in pairs(m.children) do
    if rawget(meta[child].own, k) == nil then refresh(child, k) end
  end
end

local function set_field(cls, k, v)
  if PRIVATE[k] then
    error(("cannot set '%s' on a class"):format(tostring(k)), 2)
  end
  rawset(meta[cls].own, k, v)
  refresh(cls, k)
  class_changed(k)
end

local function call(cls, ...)
  return cls:new(...)
end

-- pairs(SomeClass): the fields defined on that class itself (as Python's vars())
local function own_pairs(cls)
  return next, meta[cls].own, nil
end

-- Make a class: `parent` is nil only for the root.
local function make_class(parent)
  local cls = {}
  local dispatch = {}
  if parent ~= nil then
    for k, v in pairs(meta[parent].__index) do
      if not PRIVATE[k] then dispatch[k] = v end
    end
  end
  dispatch.__index = dispatch
  dispatch.__class = cls
  dispatch.super = parent
  meta[cls] = {
    __index = dispatch,
    __newindex = set_field,
    __call = call,
    __pairs = own_pairs,
    own = {},
    parent = parent,
    children = setmetatable({}, { __mode = "k" }),
  }
  if parent ~= nil then meta[parent].children[cls] = true end
  class_changed()   -- a new dispatch table may reuse a collected one's address
  return setmetatable(cls, meta[cls])
end

local Object = make_class(nil)
Object.__name = "Object"

--- The constructor, called by `new`; subclasses override it.
function Object:init() end

--- Create an instance of this class and call `instance:init(...)`.
function Object:new(...)
  local m = meta[self]
  if m == nil then
    error("attempt to call an instance of " .. tostring(self.__name), 2)
  end
  local obj = setmetatable({}, m.__index)
  obj:init(...)
  return obj
end

--- A subclass of this class; `methods`, if given, is copied into it.
function Object:extend(methods)
  if meta[self] == nil then
    error("bad argument #1 to 'extend' (a class expected, got an instance)", 2)
  end
  if methods ~= nil and type(methods) ~= "table" then
    error(("bad argument #1 to 'extend' (table expected, got %s)"):format(type(methods)), 2)
  end
  local cls = make_class(self)
  if methods ~= nil then
    for k, v in pairs(methods) do cls[k] = v end
  end
  return cls
end

--- True when `obj` is an instance of this class or of a subclass.
function Object:is_instance(obj)
  if type(obj) ~= "table" then return false end
  local mt = getmetatable(obj)
  local cls = type(mt) == "table" and rawget(mt, "__class") or nil
  while cls ~= nil do
    if cls == self then return true end
    cls = meta[cls] and meta[cls].parent
  end
  return false
end

return Object
