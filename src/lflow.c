/*
** lflow.c: flow control for every channel (see lflow.h).
**
** Reading is paused with a flag on the socket (SF_RD_PAUSED) that the stock
** interest (ac_stock_mask) and the pass read: no Lua readable() runs for it,
** and while paused nothing is read, so nothing is buffered and the end of
** the stream is not seen. Resuming lists the socket for the pass if it holds
** input the poller cannot see (TLS records, frames async_chat held back).
**
** The write marks are read with the channel's mode (lmode: when it joins a
** map, when a class or the instance sets one) into the socket, so the check
** after each change of the queue is a compare. Crossing the high mark calls
** handle_pause_writing once; falling to the low mark, handle_resume_writing.
** The defaults pause and resume reading on the server side (a socket made by
** accept) and do nothing on the client side: two clients' channels that each
** stopped reading while their own uploads were queued would wait for each
** other for ever.
*/
#include "config.h"
#include <errno.h>
#include <stdint.h>
#include "lflow.h"
#include "lerror.h"

#define HIGH_DEFAULT ((size_t)1 << 20)
#define LOW_DEFAULT ((size_t)1 << 18)

int ac_flow_is_mark_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TSTRING &&
           (lua_rawequal(L, idx, KEY(K_WRITE_HIGH_WATER)) || lua_rawequal(L, idx, KEY(K_WRITE_LOW_WATER)));
}

static size_t read_mark(lua_State *L, int chan, enum ac_key k, size_t dflt)
{
    ac_pushkey(L, k);
    lua_gettable(L, chan);
    int t = lua_type(L, -1);
    size_t v = dflt;
    if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
        v = SIZE_MAX;   /* false: no mark */
    } else if (t != LUA_TNIL) {
        int isint;
        lua_Integer n = lua_tointegerx(L, -1, &isint);
        if (!isint || n < 0) {
            ac_pushkey(L, k);
            luaL_error(L, "%s: a byte count (an integer >= 0) or false expected, got %s",
                       lua_tostring(L, -1), isint ? "a negative number" : luaL_typename(L, -2));
        }
        v = (size_t)n;
    }
    lua_pop(L, 1);
    return v;
}

void ac_flow_read_marks(lua_State *L, int chan, ac_socket *s)
{
    size_t high = read_mark(L, chan, K_WRITE_HIGH_WATER, HIGH_DEFAULT);
    size_t low = read_mark(L, chan, K_WRITE_LOW_WATER, LOW_DEFAULT);
    if (high == SIZE_MAX)
        low = SIZE_MAX;   /* no high mark: never paused, so never resumed */
    else if (low == SIZE_MAX)
        low = 0;          /* no low mark: resumed once everything is sent */
    else if (low > high)
        low = high;       /* a low mark above the high one is the high one */
    s->wr_high = high;
    s->wr_low = low;
}

void ac_flow_cross(lua_State *L, int chan, ac_socket *s)
{
    s->flags ^= SF_WR_PAUSED;
    ac_call_method(L, chan, (s->flags & SF_WR_PAUSED) ? K_HANDLE_PAUSE_WRITING : K_HANDLE_RESUME_WRITING, 0);
}

void ac_flow_read_end(lua_State *L, int chan, ac_socket *s, int err)
{
    s->flags |= SF_RD_EOF;
    s->flags &= ~SF_HELD;
    ac_update_interest(L, chan, s);
    int half = 0;
    if (err == 0) {
        ac_pushkey(L, K_ALLOW_HALF_OPEN);
        lua_gettable(L, chan);
        half = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    ac_call_method(L, chan, half ? K_HANDLE_READ_EOF : K_HANDLE_CLOSE, 0);
}

int ac_flow_shutdown(lua_State *L, int chan, ac_socket *s)
{
    if (s->flags & SF_WR_SHUT)
        return 0;
    if (s->tp->flush && s->tp->flush(s) != 0)
        return EAGAIN;
    int err = s->tp->shutdown(s, SHUT_WR);
    if (err == EAGAIN)
        return EAGAIN;
    if (err) {
        if (ac_is_disconnect(err))
            return err;
        return ac_raise(L, "shutdown", err);
    }
    s->flags = (s->flags & ~SF_SHUT_REQ) | SF_WR_SHUT;
    ac_update_interest(L, chan, s);
    return 0;
}

void ac_flow_shut_done(lua_State *L, int chan, ac_socket *s)
{
    if (s->flags & SF_RD_EOF)   /* the peer had finished too: the connection is over */
        ac_call_method(L, chan, K_HANDLE_CLOSE, 0);
}

int ac_flow_drain_first(lua_State *L, int chan, ac_socket *s, int queued)
{
    return s != NULL && !sock_isclosed(s) && !(s->flags & SF_WR_SHUT) && ac_chanbool(L, chan, K_CONNECTED) &&
           (queued || (s->tp->flush && s->tp->flush(s) != 0));
}

/* dispatcher:pause_reading(): no read interest until resume_reading() */
static int lflow_pause_reading(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s) || (s->flags & SF_RD_PAUSED))
        return 0;
    s->flags |= SF_RD_PAUSED;
    ac_update_interest(L, 1, s);
    return 0;
}

/* dispatcher:resume_reading(): read interest again; input held meanwhile is
** delivered by the next pass */
static int lflow_resume_reading(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s) || !(s->flags & SF_RD_PAUSED))
        return 0;
    s->flags &= ~SF_RD_PAUSED;
    ac_update_interest(L, 1, s);
    ac_ms_list_input(s);
    return 0;
}

static int lflow_reading_paused(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    lua_pushboolean(L, s != NULL && (s->flags & SF_RD_PAUSED));
    return 1;
}

/* the defaults: the server side pauses its reading while its output is high */
static int lflow_handle_pause_writing(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s != NULL && (s->flags & SF_FROM_ACCEPT))
        return lflow_pause_reading(L);
    return 0;
}

static int lflow_handle_resume_writing(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s != NULL && (s->flags & SF_FROM_ACCEPT))
        return lflow_resume_reading(L);
    return 0;
}

static const luaL_Reg flow_funcs[] = {
    {"pause_reading", lflow_pause_reading},
    {"resume_reading", lflow_resume_reading},
    {"reading_paused", lflow_reading_paused},
    {"handle_pause_writing", lflow_handle_pause_writing},
    {"handle_resume_writing", lflow_handle_resume_writing},
    {NULL, NULL}
};

void ac_flow_open(lua_State *L, int st, int mt)
{
    lua_newtable(L);
    ac_setfuncs(L, flow_funcs, st, mt);
    lua_setfield(L, -2, "flow");
}
