/*
** lbind.c: the binding's foundation (see lbind.h): upvalues, field tests,
** method calls and the message handler every callback runs under.
*/
#include "config.h"
#include <string.h>
#include "lbind.h"

void ac_pushupvalues(lua_State *L, int st, int mt)
{
    static const char *const names[] = {
#define AC_KEY_NAME(name, str) str,
        AC_KEYS(AC_KEY_NAME)
#undef AC_KEY_NAME
    };
    luaL_checkstack(L, AC_NUP, NULL);
    lua_pushvalue(L, st);
    lua_pushvalue(L, mt);
    for (int i = 0; i < K_COUNT; i++)
        lua_pushstring(L, names[i]);
}

void ac_copyupvalues(lua_State *L)
{
    luaL_checkstack(L, AC_NUP, NULL);
    for (int i = 1; i <= AC_NUP; i++)
        lua_pushvalue(L, lua_upvalueindex(i));
}

void ac_setfuncs(lua_State *L, const luaL_Reg *l, int st, int mt)
{
    ac_pushupvalues(L, st, mt);
    luaL_setfuncs(L, l, AC_NUP);
}

int ac_chanbool(lua_State *L, int t, enum ac_key k)
{
    t = lua_absindex(L, t);
    ac_pushkey(L, k);
    if (lua_rawget(L, t) == LUA_TNIL) {
        lua_pop(L, 1);
        ac_pushkey(L, k);
        lua_gettable(L, t);
    }
    int b = lua_type(L, -1) > LUA_TBOOLEAN || lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

int ac_rawbool(lua_State *L, int t, enum ac_key k)
{
    t = lua_absindex(L, t);
    ac_pushkey(L, k);
    int b = lua_rawget(L, t) > LUA_TBOOLEAN || lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

void ac_call_method(lua_State *L, int chan, enum ac_key name, int nargs)
{
    chan = lua_absindex(L, chan);
    ac_pushkey(L, name);
    lua_gettable(L, chan);
    if (nargs == 0) {   /* the common case: no shuffling */
        lua_pushvalue(L, chan);
        lua_call(L, 1, 0);
        return;
    }
    lua_insert(L, -(nargs + 1));
    lua_pushvalue(L, chan);
    lua_insert(L, -(nargs + 1));
    lua_call(L, nargs + 1, 0);
}

/*
** The message handler of every callback: ExitNow and "interrupted!" pass
** through untouched (they leave the loop); anything else is wrapped with its
** traceback for the script's error handler.
*/
static int msgh(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_EXITNOW);
    if (lua_rawequal(L, 1, -1)) {
        lua_settop(L, 1);
        return 1;
    }
    lua_pop(L, 1);
    if (lua_type(L, 1) == LUA_TSTRING) {
        size_t n;
        const char *m = lua_tolstring(L, 1, &n);
        if (n >= 12 && memcmp(m + n - 12, "interrupted!", 12) == 0)
            return 1;
    }
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_traceback(L, L, NULL, 1);
    lua_rawseti(L, -2, 2);
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_WRAPMT);
    lua_setmetatable(L, -2);
    return 1;
}

void ac_push_msgh(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_MSGH);
}

int ac_unwrap_error(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_WRAPMT);
    int w = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!w)
        return 0;
    lua_rawgeti(L, idx, 1);
    lua_rawgeti(L, idx, 2);
    return 1;
}

int ac_reraise(lua_State *L, int idx)
{
    lua_pushvalue(L, idx);
    return lua_error(L);
}

void ac_bind_open(lua_State *L, int st, int mt)
{
    ac_pushupvalues(L, st, mt);
    lua_pushcclosure(L, msgh, AC_NUP);
    lua_setiuservalue(L, st, UV_MSGH);
}
