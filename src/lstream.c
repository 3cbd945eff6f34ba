/*
** lstream.c: the reads of task streams, scanned in C (see lstream.h).
**
** A stream is an async_chat channel in stream mode: its handle_read keeps
** what it reads in the chat's `in` buffer and wakes the task that waits to
** read (lchat.c). core.stream_take cuts what a read format asks for out of
** that buffer, or says why it cannot yet: the Lua side (lua/asyncore/
** streams.lua) then waits and asks again. No Lua string is built until a
** read is complete; a separator search resumes where the last one stopped.
*/
#include "config.h"
#include <string.h>
#include "lstream.h"
#include "lchat.h"
#include "ltask.h"

/* push the first n bytes of in as the result, consume them (and `skip`
** bytes more: a separator) */
static int give(lua_State *L, ac_buffer *in, size_t *scanned, size_t n, size_t skip)
{
    lua_pushlstring(L, buffer_begin(in), n);
    buffer_consume(in, n + skip);
    *scanned = 0;
    ac_chat_stream_consumed(L, 1, in);
    return 1;
}

static int need(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* where sep starts in `in` from *scanned on, or (size_t)-1 (then *scanned
** says how much is known not to hold its start) */
static size_t find(ac_buffer *in, size_t *scanned, const char *sep, size_t seplen)
{
    size_t idx = buffer_find(in, *scanned, sep, seplen);
    if (idx == (size_t)-1) {
        size_t len = buffer_len(in);
        *scanned = len >= seplen ? len - seplen + 1 : 0;
    }
    return idx;
}

/*
** core.stream_take(self, kind [, arg [, max]]): kind "n" (arg bytes; fewer
** only at the end), "l" / "L" (a line without / with its end: "\n" or
** "\r\n"), "a" (everything, at the end), "some" (what there is, at most
** arg), "until" (up to the separator arg, at most max bytes before it).
** Returns the string; or nil, "more" (wait and ask again); nil, "eof"
** (nothing left); false, "EMSGSIZE" (max passed without the separator).
*/
static int lstream_take(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *kind = luaL_checkstring(L, 2);
    size_t *scanned;
    ac_buffer *in = ac_chat_stream_input(L, 1, &scanned);
    if (in == NULL)
        return luaL_error(L, "read: not a stream");
    ac_socket *s = ac_chansock(L, 1);
    int eof = s == NULL || sock_isclosed(s) || (s->flags & SF_RD_EOF);
    size_t len = buffer_len(in);
    switch (kind[0]) {
    case 'n': {
        lua_Integer n = luaL_checkinteger(L, 3);
        if (n <= 0) {
            lua_pushliteral(L, "");
            return 1;
        }
        if (len >= (size_t)n)
            return give(L, in, scanned, (size_t)n, 0);
        if (eof)
            return len > 0 ? give(L, in, scanned, len, 0) : need(L, "eof");
        return need(L, "more");
    }
    case 'l':
    case 'L': {
        size_t idx = find(in, scanned, "\n", 1);
        if (idx != (size_t)-1) {
            if (kind[0] == 'L')
                return give(L, in, scanned, idx + 1, 0);
            size_t cut = idx > 0 && buffer_begin(in)[idx - 1] == '\r' ? idx - 1 : idx;
            return give(L, in, scanned, cut, idx + 1 - cut);
        }
        if (eof)
            return len > 0 ? give(L, in, scanned, len, 0) : need(L, "eof");
        return need(L, "more");
    }
    case 'a':
        if (eof)
            return give(L, in, scanned, len, 0);
        return need(L, "more");
    case 's': {
        lua_Integer max = luaL_optinteger(L, 3, 65536);
        luaL_argcheck(L, max > 0, 3, "a positive size expected");
        if (len > 0)
            return give(L, in, scanned, len < (size_t)max ? len : (size_t)max, 0);
        return need(L, eof ? "eof" : "more");
    }
    case 'u': {
        size_t seplen;
        const char *sep = luaL_checklstring(L, 3, &seplen);
        luaL_argcheck(L, seplen > 0, 3, "the separator must not be empty");
        lua_Integer max = luaL_optinteger(L, 4, LUA_MAXINTEGER);
        size_t idx = find(in, scanned, sep, seplen);
        if (idx != (size_t)-1 && (lua_Integer)idx <= max)
            return give(L, in, scanned, idx, seplen);
        if ((lua_Integer)len - (lua_Integer)seplen + 1 > max || (idx != (size_t)-1)) {
            lua_pushboolean(L, 0);
            lua_pushliteral(L, "EMSGSIZE");
            return 2;
        }
        if (eof)
            return len > 0 ? give(L, in, scanned, len, 0) : need(L, "eof");
        return need(L, "more");
    }
    default:
        return luaL_argerror(L, 2, "unknown read kind");
    }
}

/*
** core.stream_read(self, kind [, arg [, max]]): the fast path of the stream
** reads, for a task: what stream_take gives, and when it says "more", the
** task waits right here (a yield from C, its continuation asks again) with
** the stream's _reader set, so handle_read wakes it. nil at the end of the
** stream (or "" for "a"). false when the Lua side must take over: not in a
** task, another reader, a timeout set, an error on the stream, EMSGSIZE.
*/
static int read_k(lua_State *L, int status, lua_KContext ctx);

static int read_try(lua_State *L, int task)
{
    for (;;) {
        lua_settop(L, task);
        if (lstream_take(L) == 1)              /* the same cut as stream_take (args 1-4) */
            return 1;
        if (lua_type(L, -2) == LUA_TBOOLEAN) {
            lua_pushboolean(L, 0);
            return 1;                          /* EMSGSIZE: the Lua side says it */
        }
        const char *why = lua_tostring(L, -1);
        ac_pushkey(L, K_READER);
        int busy = lua_rawget(L, 1) != LUA_TNIL;
        ac_pushkey(L, K_ERR);
        int err = lua_rawget(L, 1) != LUA_TNIL;
        ac_pushkey(L, K_TIMEOUT);
        int timeout = lua_rawget(L, 1) != LUA_TNIL;
        lua_pop(L, 3);
        if (err || busy || timeout || (lua_type(L, task) != LUA_TTABLE && why[0] != 'e')) {
            lua_pushboolean(L, 0);
            return 1;
        }
        if (why[0] == 'e') {                  /* the end */
            lua_pushnil(L);
            return 1;
        }
        lua_settop(L, task);
        ac_pushkey(L, K_READER);
        lua_pushvalue(L, task);
        lua_rawset(L, 1);
        return ac_task_wait(L, task, 0, read_k);
    }
}

static int read_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status, (void)ctx;
    int task = lua_gettop(L);                 /* the stack is as at the yield */
    ac_pushkey(L, K_READER);
    lua_pushnil(L);
    lua_rawset(L, 1);
    ac_task_check_cancel(L, task);
    return read_try(L, task);
}

static int lstream_read(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_gettop(L) > 4)
        lua_settop(L, 4);
    while (lua_gettop(L) < 4)
        lua_pushnil(L);
    if (!ac_task_push_current(L))
        lua_pushboolean(L, 0);                 /* 5: the task, or false (top level) */
    return read_try(L, 5);
}

/*
** core.stream_write(self, data): the fast path of stream:write for one
** string: pushed at once. Returns self when done; true when pushed but the
** queue is above the high mark or the stream failed (the Lua side waits or
** reports); false when the Lua side must do it all (more arguments, another
** writer, an error already, a closed stream).
*/
static int lstream_write(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int ok = lua_gettop(L) == 2 && lua_type(L, 2) == LUA_TSTRING;
    if (ok) {
        ac_pushkey(L, K_WRITER);
        ok = lua_rawget(L, 1) == LUA_TNIL;
        ac_pushkey(L, K_ERR);
        ok = ok && lua_rawget(L, 1) == LUA_TNIL;
        ac_pushkey(L, K_WPAUSED);
        ok = ok && lua_rawget(L, 1) == LUA_TNIL;
        lua_pop(L, 3);
        ac_socket *s = ok ? ac_chansock(L, 1) : NULL;
        ok = s != NULL && !sock_isclosed(s);
    }
    if (!ok) {
        lua_pushboolean(L, 0);
        return 1;
    }
    ac_chat_push(L);
    ac_pushkey(L, K_WPAUSED);
    int wait = lua_rawget(L, 1) != LUA_TNIL;
    ac_pushkey(L, K_ERR);
    wait = wait || lua_rawget(L, 1) != LUA_TNIL;
    if (wait)
        lua_pushboolean(L, 1);
    else
        lua_pushvalue(L, 1);
    return 1;
}

/* core.stream_buffered(self): bytes read and not taken yet */
static int lstream_buffered(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t *scanned;
    ac_buffer *in = ac_chat_stream_input(L, 1, &scanned);
    lua_pushinteger(L, in ? (lua_Integer)buffer_len(in) : 0);
    return 1;
}

static const luaL_Reg stream_funcs[] = {
    {"stream_take", lstream_take}, {"stream_buffered", lstream_buffered},
    {"stream_read", lstream_read}, {"stream_write", lstream_write},
    {NULL, NULL}
};

void ac_stream_open(lua_State *L, int st, int mt)
{
    ac_setfuncs(L, stream_funcs, st, mt);
}
