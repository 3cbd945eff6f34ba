/*
** lchat.c: asynchat's framing engine and output queue, in C. (Being built:
** for now only what the loop needs to know of an async_chat channel.)
*/
#include "config.h"
#include <stdlib.h>
#include "lac.h"

int ac_chat_wants_write(const ac_socket *s)
{
    return s->chat != NULL;
}

void ac_chat_free(ac_socket *s)
{
    s->chat = NULL;
}

static int lchat_writable(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    lua_pushboolean(L, (s && ac_chat_wants_write(s)) || !ac_rawbool(L, 1, K_CONNECTED));
    return 1;
}

const lua_CFunction ac_stock_chat_writable = lchat_writable;

void ac_chat_open(lua_State *L, int st, int mt)
{
    (void)L;
    (void)st;
    (void)mt;
}
