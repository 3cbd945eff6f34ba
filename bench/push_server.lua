-- The push server of `make bench`: each connection gets 256 MiB pushed in
-- one call through async_chat, then close_when_done.
-- usage: lua5.4 bench/push_server.lua HOST PORT
local asyncore = require "asyncore"
local asynchat = require "asynchat"

local DATA = ("x"):rep(65536):rep(4096)   -- 256 MiB, built in big pieces

local Pusher = asynchat.async_chat:extend()
function Pusher:init(sock)
  asynchat.async_chat.init(self, sock)
  self:set_terminator(nil)
  self:push(DATA)
  self:close_when_done()
end
function Pusher:found_terminator() end

local Server = asyncore.dispatcher:extend()
function Server:init(host, port)
  asyncore.dispatcher.init(self)
  self:create_socket()
  self:set_reuse_addr()
  self:bind(host, port)
  self:listen(16)
end
function Server:handle_accepted(sock) Pusher(sock) end

Server(arg[1], tonumber(arg[2]))
asyncore.loop()
