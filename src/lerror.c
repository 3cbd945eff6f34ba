/*
** lerror.c: error objects. An operating-system failure is raised as a table
** {errno = 111, code = "ECONNREFUSED", op = "connect"} whose metatable
** ("asyncore.error") gives "connect: Connection refused (ECONNREFUSED)" as its
** string. Resolver failures carry the EAI_* name and gai_strerror's text; a
** closed socket is EBADF with the message "closed socket". Errors of bind,
** connect and listen also carry the address: "bind 127.0.0.1:80: ...".
*/
#include "config.h"
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include "lerror.h"
#include "errnames.h"

#define ERROR_MT "asyncore.error"

static const char *eai_name(int e)
{
    switch (e) {
    case EAI_NONAME: return "EAI_NONAME";
    case EAI_AGAIN: return "EAI_AGAIN";
    case EAI_FAIL: return "EAI_FAIL";
    case EAI_FAMILY: return "EAI_FAMILY";
    case EAI_SERVICE: return "EAI_SERVICE";
    case EAI_MEMORY: return "EAI_MEMORY";
    case EAI_SOCKTYPE: return "EAI_SOCKTYPE";
#ifdef EAI_NODATA
    case EAI_NODATA: return "EAI_NODATA";
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY: return "EAI_ADDRFAMILY";
#endif
    default: return "EAI_FAIL";
    }
}

/*
** Push an error object. err > 0 is an errno, err < 0 a getaddrinfo code.
** `message`, when given, replaces the system's text. May raise a memory error
** (nothing is half-done by then: callers finish their C work first).
*/
int ac_pusherror(lua_State *L, const char *op, int err, const char *message)
{
    char buf[32];
    const char *code;
    if (err < 0) {
        code = eai_name(err);
        if (message == NULL)
            message = gai_strerror(err);
    } else {
        code = errnames_get(err);
        if (code == NULL) {
            snprintf(buf, sizeof buf, "E%d", err);
            code = buf;
        }
        if (message == NULL)
            message = strerror(err);
    }
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, err);
    lua_setfield(L, -2, "errno");
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, op);
    lua_setfield(L, -2, "op");
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    luaL_setmetatable(L, ERROR_MT);
    return 1;
}

int ac_raise(lua_State *L, const char *op, int err)
{
    ac_pusherror(L, op, err, NULL);
    return lua_error(L);
}

int ac_raise_at(lua_State *L, const char *op, int err, const char *address)
{
    ac_pusherror(L, op, err, NULL);
    if (address != NULL) {
        lua_pushstring(L, address);
        lua_setfield(L, -2, "address");
    }
    return lua_error(L);
}

int ac_raise_nomem(lua_State *L, const char *op)
{
    return ac_raise(L, op, ENOMEM);
}

int ac_raise_closed(lua_State *L, const char *op)
{
    ac_pusherror(L, op, EBADF, "closed socket");
    return lua_error(L);
}

/* the errors Python's asyncore treats as "the peer is gone" */
int ac_is_disconnect(int err)
{
    return err == ECONNRESET || err == ENOTCONN || err == ESHUTDOWN || err == ECONNABORTED ||
           err == EPIPE || err == EBADF;
}

int ac_is_errorobj(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    luaL_getmetatable(L, ERROR_MT);
    int eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return eq;
}

/* asyncore.is_error(e [, code]) */
int lerror_is_error(lua_State *L)
{
    luaL_checkany(L, 1);
    if (!ac_is_errorobj(L, 1)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (lua_isnoneornil(L, 2)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    const char *want = luaL_checkstring(L, 2);
    lua_getfield(L, 1, "code");
    const char *code = lua_tostring(L, -1);
    lua_pushboolean(L, code != NULL && strcmp(code, want) == 0);
    return 1;
}

/* core.new_error(errno, op [, message]): an error table, as the core raises them */
int lerror_new(lua_State *L)
{
    int err = (int)luaL_checkinteger(L, 1);
    const char *op = luaL_checkstring(L, 2);
    const char *msg = luaL_optstring(L, 3, NULL);
    return ac_pusherror(L, op, err, msg);
}

static int lerror_tostring(lua_State *L)
{
    if (lua_getfield(L, 1, "address") == LUA_TSTRING) {
        lua_getfield(L, 1, "op");
        lua_getfield(L, 1, "message");
        lua_getfield(L, 1, "code");
        lua_pushfstring(L, "%s %s: %s (%s)", luaL_optstring(L, -3, "?"), lua_tostring(L, 2),
                        luaL_optstring(L, -2, "?"), luaL_optstring(L, -1, "?"));
        return 1;
    }
    lua_settop(L, 1);
    lua_getfield(L, 1, "op");
    lua_getfield(L, 1, "message");
    lua_getfield(L, 1, "code");
    lua_pushfstring(L, "%s: %s (%s)", luaL_optstring(L, -3, "?"), luaL_optstring(L, -2, "?"),
                    luaL_optstring(L, -1, "?"));
    return 1;
}

void ac_error_open(lua_State *L)
{
    luaL_newmetatable(L, ERROR_MT);
    lua_pushcfunction(L, lerror_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
