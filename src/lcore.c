/*
** lcore.c: luaopen_asyncore_core, the only exported symbol. It creates the
** module state (upvalue 1 of every function) and the socket metatable
** (upvalue 2), then lets each l*.c file add its functions.
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "lbind.h"
#include "lerror.h"
#include "lsocket.h"
#include "lreg.h"
#include "ltimeout.h"
#include "lresolve.h"
#include "lflow.h"
#include "lmode.h"
#include "ltimer.h"
#include "ltask.h"
#include "lchan.h"
#include "lchat.h"
#include "lstream.h"
#include "lsignal.h"
#include "ltls.h"
#include "lloop.h"

static int state_gc(lua_State *L)
{
    ac_state *S = lua_touserdata(L, 1);
    free(S->rbuf);
    S->rbuf = NULL;
    S->rbufsize = 0;
    theap_free(&S->heap);
    free(S->ready);
    S->ready = NULL;
    S->ready_cap = S->nready = 0;
    return 0;
}

/* core.init(module, socket_map, ExitNow): the Lua layer's tables */
static int lcore_init(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkany(L, 3);
    int st = lua_upvalueindex(1);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, st, UV_MODULE);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, st, UV_SOCKETMAP);
    lua_pushvalue(L, 3);
    lua_setiuservalue(L, st, UV_EXITNOW);
    return 0;
}

/* core.mark_connecting(sock, on): a connect by name waits for its lookup:
** output queues as during a connect (the socket is out of the poller) */
static int lcore_mark_connecting(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "connect");
    if (lua_toboolean(L, 2))
        s->flags |= SF_CONNECTING;
    else
        s->flags &= ~SF_CONNECTING;
    return 0;
}

/* core.move_output(from, to): dispatcher_with_send's queued output goes with
** the channel to its next socket (a connect by name trying another address) */
static int lcore_move_output(lua_State *L)
{
    ac_socket *from = ac_tosock(L, 1);
    ac_socket *to = ac_checksock(L, 2, "connect");
    luaL_argcheck(L, from != NULL, 1, "socket expected");
    if (buffer_len(&from->out) > 0 && buffer_append(&to->out, buffer_begin(&from->out), buffer_len(&from->out)) != 0)
        return ac_raise_nomem(L, "connect");
    buffer_clear(&from->out);
    to->flags |= from->flags & (SF_DS_CLOSE | SF_SHUT_REQ);   /* asked meanwhile: still to do */
    return 0;
}

static const luaL_Reg core_funcs[] = {
    {"mark_connecting", lcore_mark_connecting},
    {"move_output", lcore_move_output},
    {"init", lcore_init},
    {"socket", lsocket_new},
    {"wrapfd", lsocket_wrapfd},
    {"fileno_of", lsocket_fileno_of},
    {"discard_urgent", lsocket_discard_urgent},
    {"realpath", lsocket_realpath},
    {"is_error", lerror_is_error},
    {"new_error", lerror_new},
    {NULL, NULL}
};

AC_API int luaopen_asyncore_core(lua_State *L);

AC_API int luaopen_asyncore_core(lua_State *L)
{
    ac_state *S = lua_newuserdatauv(L, sizeof *S, UV_COUNT);   /* state */
    memset(S, 0, sizeof *S);
    theap_init(&S->heap);
    lua_newtable(L);                                          /* state, mt */
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_newtable(L);                                          /* weak map -> map state */
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, UV_MAPS);
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_TIMERS);
    lua_newtable(L);                                          /* wrapper metatable */
    lua_setiuservalue(L, -2, UV_WRAPMT);
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_MODULE);
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_SOCKETMAP);

    int st = lua_gettop(L);
    ac_chat_meta(L, st);
    lua_newtable(L);                                          /* state, sockmt */
    int mt = lua_gettop(L);
    ac_bind_open(L, st, mt);
    ac_error_open(L);
    ac_socket_open(L, st, mt);

    lua_newtable(L);                                          /* state, sockmt, core */
    ac_setfuncs(L, core_funcs, st, mt);
    /* bottom to top: each file uses only those opened before it */
    ac_reg_open(L, st, mt);
    ac_timeout_open(L, st, mt);
    ac_resolve_open(L, st, mt);
    ac_signal_open(L, st, mt);
    ac_flow_open(L, st, mt);
    ac_mode_open(L, st, mt);
    ac_timer_open(L, st, mt);
    ac_task_open(L, st, mt);
    ac_chan_open(L, st, mt);
    ac_chat_open(L, st, mt);
    ac_stream_open(L, st, mt);
    ac_tls_open(L, st, mt);
    ac_loop_open(L, st, mt);
    lua_pushliteral(L, AC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "_socket_mt");
#define K(name) lua_pushinteger(L, name); lua_setfield(L, -2, #name)
    K(AF_INET); K(AF_INET6); K(AF_UNIX); K(SOCK_STREAM); K(SOCK_DGRAM);
    K(ECANCELED); K(ETIMEDOUT); K(EBUSY); K(EMSGSIZE); K(ECONNRESET); K(EPIPE); K(EIO);
#undef K
    return 1;
}
