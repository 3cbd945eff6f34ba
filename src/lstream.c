/*
** lstream.c: task streams in C (see lstream.h).
**
** A stream is an async_chat channel in stream mode: what it reads stays in
** the chat's `in` buffer, and read formats are cut out of it here. The
** stream methods that run for every message (read, read_until, read_some,
** write) are these C functions: while a task reads and nothing is unusual
** (no error, nobody else reading), a read waits right here (a yield from
** C: its continuation asks again) with its task in the chat's `reader`
** slot; a read event of the stream wakes that task without calling into Lua
** (ac_stream_readable), and the task reads the socket itself. A read's
** timeout is its socket's deadline `to_op`, in the channel timeouts' heap
** (ltimeout.c; ac_stream_timed_out wakes the task). A write of strings goes
** straight to the socket (one writev) when nothing is queued. A reader that
** waits with nothing buffered gives the input buffer back: an idle stream
** holds none. Everything else (the top level of a script, errors, a writer
** held above the high mark, the timeouts of writes and flushes) is the Lua
** side's (lua/asyncore/streams.lua), reached with lua_callk.
*/
#include "config.h"
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include "lstream.h"
#include "lerror.h"
#include "lflow.h"
#include "ltimeout.h"

#define UP_SLOW_READ (AC_NUP + 1)    /* upvalues of the stream methods: the Lua side */
#define UP_SLOW_WRITE (AC_NUP + 2)
#define UP_WAIT_WRITABLE (AC_NUP + 3)
#define READ_SOME_MAX 65536
#define WRITE_GATHER 16      /* strings a write sends with one writev */

enum { TAKE_GOT, TAKE_MORE, TAKE_EOF, TAKE_TOOBIG };

/* push the first n bytes of `in` as the result, consume them (and `skip`
** bytes more: a separator) */
static int give(lua_State *L, ac_chat *c, ac_socket *s, size_t n, size_t skip)
{
    lua_pushlstring(L, buffer_begin(&c->in), n);
    buffer_consume(&c->in, n + skip);
    c->scanned = 0;
    ac_chat_stream_consumed(L, 1, c, s);
    return TAKE_GOT;
}

/* where sep starts in `in` from c->scanned on, or (size_t)-1 (then
** c->scanned says how much is known not to hold its start) */
static size_t find(ac_chat *c, const char *sep, size_t seplen)
{
    size_t idx = buffer_find(&c->in, c->scanned, sep, seplen);
    if (idx == (size_t)-1) {
        size_t len = buffer_len(&c->in);
        c->scanned = len >= seplen ? len - seplen + 1 : 0;
    }
    return idx;
}

/*
** Cut what a read asks for out of the stream's input. Stack: 1 the stream,
** 2 the argument (the count for 'n', the most for 's', the separator for
** 'u'), 3 the most before the separator ('u', or nil). Kinds: 'n' (bytes;
** fewer only at the end), 'l' / 'L' (a line without / with its end), 'a'
** (everything, at the end), 's' (what there is), 'u' (up to a separator).
** TAKE_GOT pushes the string; the others push nothing.
*/
static int take(lua_State *L, ac_chat *c, ac_socket *s, int kind)
{
    int eof = s == NULL || sock_isclosed(s) || (s->flags & SF_RD_EOF);
    size_t len = buffer_len(&c->in);
    switch (kind) {
    case 'n': {
        lua_Integer n = lua_tointeger(L, 2);
        if (n <= 0) {
            lua_pushliteral(L, "");
            return TAKE_GOT;
        }
        if (len >= (size_t)n)
            return give(L, c, s, (size_t)n, 0);
        break;
    }
    case 'l':
    case 'L': {
        size_t idx = find(c, "\n", 1);
        if (idx != (size_t)-1) {
            if (kind == 'L')
                return give(L, c, s, idx + 1, 0);
            size_t cut = idx > 0 && buffer_begin(&c->in)[idx - 1] == '\r' ? idx - 1 : idx;
            return give(L, c, s, cut, idx + 1 - cut);
        }
        break;
    }
    case 'a':
        if (eof)
            return len > 0 ? give(L, c, s, len, 0) : TAKE_EOF;
        return TAKE_MORE;
    case 's': {
        lua_Integer max = lua_tointeger(L, 2);
        if (len > 0)
            return give(L, c, s, len < (size_t)max ? len : (size_t)max, 0);
        return eof ? TAKE_EOF : TAKE_MORE;
    }
    default: {   /* 'u' */
        size_t seplen;
        const char *sep = lua_tolstring(L, 2, &seplen);
        lua_Integer max = lua_isnil(L, 3) ? LUA_MAXINTEGER : lua_tointeger(L, 3);
        size_t idx = find(c, sep, seplen);
        if (idx != (size_t)-1 && (lua_Integer)idx <= max)
            return give(L, c, s, idx, seplen);
        if ((lua_Integer)len - (lua_Integer)seplen + 1 > max || idx != (size_t)-1)
            return TAKE_TOOBIG;
        break;
    }
    }
    if (eof)
        return len > 0 ? give(L, c, s, len, 0) : TAKE_EOF;
    return TAKE_MORE;
}

static int slow_k(lua_State *L, int status, lua_KContext base)
{
    (void)status;
    return lua_gettop(L) - (int)base;
}

static const char *const fnames[] = {"read", "read", "read", "read", "read_some", "read_until"};
#define KIND_INDEX(kind) ((kind) == 'n' ? 0 : (kind) == 'l' ? 1 : (kind) == 'L' ? 2 : \
                          (kind) == 'a' ? 3 : (kind) == 's' ? 4 : 5)

/* the Lua side's read: slow_read(self, kind, arg, max, fname); its results */
static int read_slow(lua_State *L, int kind)
{
    static const char *const kinds[] = {"n", "l", "L", "a", "some", "until"};
    int k = KIND_INDEX(kind);
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(UP_SLOW_READ));
    lua_pushvalue(L, 1);
    lua_pushstring(L, kinds[k]);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_pushstring(L, fnames[k]);
    lua_callk(L, 5, LUA_MULTRET, 3, slow_k);
    return slow_k(L, LUA_OK, 3);
}

/*
** The reader was woken by a read event (STR_READABLE): read the socket
** here. Returns 1 with the result pushed (read_some straight from the
** receive buffer), 0 when `in` (or the stream's state: the end, an error)
** changed and the take is to be tried again, -1 when nothing was there.
*/
static int read_socket(lua_State *L, ac_chat *c, ac_socket *s, int kind)
{
    if (s == NULL || sock_isclosed(s) || (s->flags & (SF_RD_OFF | SF_TP_EVENTS)))
        return -1;
    ac_state *S = STATE(L);
    size_t want = READ_SOME_MAX;
    int direct = kind == 's' && buffer_len(&c->in) == 0;
    if (direct && (size_t)lua_tointeger(L, 2) < want)
        want = (size_t)lua_tointeger(L, 2);
    char *into = ac_rbuf(S, want);
    if (into == NULL)
        return ac_raise_nomem(L, "read");
    if (want > S->rbufsize)
        want = S->rbufsize;
    size_t got = 0;
    int err = s->tp->read(s, into, want, &got);
    if (err == EAGAIN)
        return -1;
    if (err == 0 && got > 0) {
        if (direct) {
            lua_pushlstring(L, into, got);
            return 1;
        }
        if (buffer_append(&c->in, into, got) != 0)
            return ac_raise_nomem(L, "read");
        return 0;
    }
    if (err == 0 || ac_is_disconnect(err)) {
        ac_flow_read_end(L, 1, s, err);     /* as handle_read does: the end, or a reset */
        return 0;
    }
    ac_pusherror(L, "recv", err, NULL);     /* the stream keeps the error */
    lua_pushnil(L);
    ac_call_method(L, 1, K_HANDLE_ERROR, 2);
    return 0;
}

static int read_k(lua_State *L, int status, lua_KContext kind);

/* the chat of the stream at 1 (or NULL), remembered by the task t */
static ac_chat *stream_chat(lua_State *L, ac_task *t)
{
    if (t != NULL && t->akey == lua_topointer(L, 1) && t->akey != NULL)
        return t->aval;
    ac_chat *c = ac_chat_of(L, 1);
    if (t != NULL && c != NULL && c->stream)
        ac_task_anchor(L, t, 1, c);
    return c;
}

#define stream_sock(L, c) ((c)->sock != NULL ? (c)->sock : ac_chansock(L, 1))

/* the read's deadline passed: nil, ETIMEDOUT (the stream stays usable) */
static int timed_out(lua_State *L, ac_chat *c, ac_socket *s, int kind)
{
    c->sflags &= ~STR_TIMEDOUT;
    s->to_op = 0;
    lua_pushnil(L);
    ac_pusherror(L, fnames[KIND_INDEX(kind)], ETIMEDOUT, NULL);
    return 2;
}

/*
** A read of task t (or NULL) with the stack normalized to 1 self, 2 arg, 3
** max; `first`: the read begins (else its task was woken). With a timeout
** set (settimeout), the first wait sets the socket's to_op deadline, which the
** channel timeouts' heap watches (ac_stream_timed_out wakes the task).
*/
static int read_go(lua_State *L, int kind, ac_task *t, ac_chat *c, int first)
{
    if (c == NULL || !c->stream || (c->sflags & STR_ERR) || c->reader != NULL)
        return read_slow(L, kind);
    ac_socket *s = stream_sock(L, c);
    if (c->sflags & STR_TIMEOUT) {
        if (t == NULL || s == NULL || s->ms == NULL)
            return read_slow(L, kind);
        if (first) {
            c->sflags &= ~STR_TIMEDOUT;
            s->to_op = 0;
        }
    }
    for (;;) {
        int r = take(L, c, s, kind);
        if (r == TAKE_GOT)
            return 1;
        if (r == TAKE_EOF) {
            if (kind == 'a')
                lua_pushliteral(L, "");
            else
                lua_pushnil(L);
            return 1;
        }
        if (r == TAKE_TOOBIG || t == NULL)
            return read_slow(L, kind);
        if (!(c->sflags & STR_READABLE))
            break;
        c->sflags &= ~STR_READABLE;
        r = read_socket(L, c, s, kind);
        if (r == 1)
            return 1;
        if (r < 0)
            break;
        if (c->sflags & STR_ERR)
            return read_slow(L, kind);
    }
    if (c->sflags & STR_TIMEOUT) {
        if (c->sflags & STR_TIMEDOUT)
            return timed_out(L, c, s, kind);
        if (s->to_op == 0) {                 /* the read's first wait */
            lua_pushliteral(L, "_timeout");
            lua_rawget(L, 1);
            lua_Number secs = lua_tonumber(L, -1);
            lua_pop(L, 1);
            if (!(secs > 0))
                return timed_out(L, c, s, kind);
            s->to_op = clock_now() + secs;
            if (ac_timeout_arm(s->ms, s) != 0) {
                s->to_op = 0;
                return ac_raise_nomem(L, fnames[KIND_INDEX(kind)]);
            }
        }
    }
    lua_settop(L, 3);
    buffer_idle(&c->in);             /* it waits: maybe for long */
    c->reader = t;
    c->sflags |= STR_CREADER;
    return ac_task_wait(L, t, kind, read_k);
}

static int read_k(lua_State *L, int status, lua_KContext kind)
{
    (void)status;
    ac_task *t = ac_task_current(L);
    ac_chat *c = stream_chat(L, t);
    if (c != NULL && c->reader == t) {
        c->reader = NULL;
        c->sflags &= ~STR_CREADER;
    }
    ac_task_check_cancel(L, t);
    return read_go(L, (int)kind, t, c, 0);
}

static int bad_arg(lua_State *L, const char *fname, const char *msg)
{
    return luaL_error(L, "bad argument #1 to '%s' (%s)", fname, msg);
}

/* stream:read([fmt]): as file:read: a byte count, "l", "L" or "a" */
static int lstream_read(lua_State *L)
{
    int kind = 'l';
    if (lua_isinteger(L, 2)) {
        if (lua_tointeger(L, 2) < 0)
            return bad_arg(L, "read", "a byte count >= 0 expected");
        kind = 'n';
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        const char *f = lua_tostring(L, 2);
        if (*f == '*')
            f++;
        if ((f[0] == 'l' || f[0] == 'L' || f[0] == 'a') && f[1] == '\0')
            kind = f[0];
        else
            kind = 0;
    } else if (!lua_isnoneornil(L, 2)) {
        kind = 0;
    }
    if (kind == 0) {
        luaL_tolstring(L, 2, NULL);
        return luaL_error(L, "bad argument #1 to 'read' (format \"l\", \"L\", \"a\" or a byte count "
                          "expected, got %s)", lua_tostring(L, -1));
    }
    lua_settop(L, 3);
    ac_task *t = ac_task_current(L);
    return read_go(L, kind, t, stream_chat(L, t), 1);
}

/* stream:read_until(sep [, max]): the bytes before sep (sep is consumed) */
static int lstream_read_until(lua_State *L)
{
    size_t seplen = 0;
    if (lua_type(L, 2) != LUA_TSTRING || (lua_tolstring(L, 2, &seplen), seplen == 0))
        return bad_arg(L, "read_until", "a non-empty string expected");
    if (!lua_isnoneornil(L, 3) && (!lua_isinteger(L, 3) || lua_tointeger(L, 3) < 0))
        return luaL_error(L, "bad argument #2 to 'read_until' (a byte count >= 0 expected)");
    lua_settop(L, 3);
    ac_task *t = ac_task_current(L);
    return read_go(L, 'u', t, stream_chat(L, t), 1);
}

/* stream:read_some([max]): what is there (at least a byte), waiting if nothing is */
static int lstream_read_some(lua_State *L)
{
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_pushinteger(L, READ_SOME_MAX);
    } else if (!lua_isinteger(L, 2) || lua_tointeger(L, 2) <= 0) {
        return bad_arg(L, "read_some", "a positive byte count expected");
    }
    lua_settop(L, 3);
    ac_task *t = ac_task_current(L);
    return read_go(L, 's', t, stream_chat(L, t), 1);
}

/* are the arguments 2..n strings, few and small enough to go out with one
** writev (or to be queued as one string)? One string of any size is. */
static int gatherable(lua_State *L, int n)
{
    if (n == 2)
        return lua_type(L, 2) == LUA_TSTRING;
    if (n < 2 || n > WRITE_GATHER + 1)
        return 0;
    size_t total = 0;
    for (int i = 2; i <= n; i++) {
        if (lua_type(L, i) != LUA_TSTRING)
            return 0;
        total += lua_rawlen(L, i);
    }
    return total <= READ_SOME_MAX;
}

/*
** The strings at 2..n (n > 2): when nothing is queued, as many as the socket
** takes now, with one writev. Returns 1 when all went out, else 0 with what is
** left as one string at 2 (the top) for the queue.
*/
static int write_strings(lua_State *L, ac_chat *c, ac_socket *s, int n)
{
    struct iovec iov[WRITE_GATHER];
    int k = 0;
    size_t total = 0, sent = 0;
    for (int i = 2; i <= n; i++) {
        size_t len;
        const char *p = lua_tolstring(L, i, &len);
        if (len > 0) {
            iov[k].iov_base = (void *)(uintptr_t)p;
            iov[k].iov_len = len;
            k++;
            total += len;
        }
    }
    if (total == 0)
        return 1;
    if (total <= READ_SOME_MAX && ac_chat_write_now(c, s)) {
        int err = s->tp->writev(s, iov, k, &sent);
        if (err == 0 && sent == total)
            return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);                    /* the rest, as one string */
    for (int i = 0; i < k; i++) {
        size_t len = iov[i].iov_len;
        if (sent >= len) {
            sent -= len;
            continue;
        }
        luaL_addlstring(&b, (const char *)iov[i].iov_base + sent, len - sent);
        sent = 0;
    }
    luaL_pushresult(&b);
    lua_replace(L, 2);
    lua_settop(L, 2);
    return 0;
}

/*
** stream:write(...): strings go straight to the socket when nothing is
** queued, else on the chat's queue; above the high mark (or after an error)
** the Lua side waits or reports. Anything unusual (other arguments, an
** error, a writer already waiting): the Lua side's write.
*/
static int lstream_write(lua_State *L)
{
    int n = lua_gettop(L);
    ac_chat *c = gatherable(L, n) ? stream_chat(L, ac_task_current(L)) : NULL;
    if (c != NULL && c->stream && !(c->sflags & (STR_ERR | STR_WPAUSED)) && c->writer == NULL) {
        ac_socket *s = stream_sock(L, c);
        if (s != NULL && !sock_isclosed(s)) {
            if (n > 2) {
                if (write_strings(L, c, s, n)) {
                    lua_settop(L, 1);
                    return 1;
                }
            } else {                         /* one string: the common case */
                size_t len;
                const char *p = lua_tolstring(L, 2, &len);
                if (len > 0 && len <= READ_SOME_MAX && ac_chat_write_now(c, s)) {
                    size_t sent = 0;
                    int err = s->tp->write(s, p, len, &sent);
                    if (err == 0 && sent == len) {
                        lua_settop(L, 1);
                        return 1;
                    }
                    if (sent > 0) {          /* the rest goes on the queue */
                        lua_pushlstring(L, p + sent, len - sent);
                        lua_replace(L, 2);
                    }
                }
            }
            ac_chat_push(L);
            lua_settop(L, 1);
            if (!(c->sflags & (STR_WPAUSED | STR_ERR)))
                return 1;
            lua_pushvalue(L, lua_upvalueindex(UP_WAIT_WRITABLE));
            lua_pushvalue(L, 1);
            lua_callk(L, 1, LUA_MULTRET, 1, slow_k);
            return slow_k(L, LUA_OK, 1);
        }
    }
    lua_pushvalue(L, lua_upvalueindex(UP_SLOW_WRITE));
    lua_insert(L, 1);
    lua_callk(L, n, LUA_MULTRET, 0, slow_k);
    return slow_k(L, LUA_OK, 0);
}

void ac_stream_timed_out(lua_State *L, int chan)
{
    ac_chat *c = ac_chat_of(L, chan);
    if (c != NULL && c->stream && c->reader != NULL && (c->sflags & STR_CREADER)) {
        c->sflags |= STR_TIMEDOUT;
        ac_task_wake(L, c->reader);
    }
}

int ac_stream_readable(lua_State *L, int chan)
{
    ac_chat *c = ac_chat_of(L, chan);
    if (c == NULL || !c->stream || c->reader == NULL || !(c->sflags & STR_CREADER))
        return 0;
    c->sflags |= STR_READABLE;
    ac_task_wake(L, c->reader);
    return 1;
}

/* ---- for the Lua side ---- */

static ac_chat *checkstream(lua_State *L)
{
    ac_chat *c = ac_chat_of(L, 1);
    if (c == NULL || !c->stream)
        luaL_error(L, "not a stream");
    return c;
}

/*
** core.stream_take(self, kind [, arg [, max]]): kind "n", "l", "L", "a",
** "some", "until" (see take). Returns the string; or nil, "more" (wait and
** ask again); nil, "eof" (nothing left); false, "EMSGSIZE" (max passed
** without the separator).
*/
static int lstream_take(lua_State *L)
{
    ac_chat *c = checkstream(L);
    const char *kind = luaL_checkstring(L, 2);
    int k = kind[0] == 'u' ? 'u' : kind[0];
    if (k == 'n' || k == 's')
        luaL_checkinteger(L, 3);
    if (k == 's')
        luaL_argcheck(L, lua_tointeger(L, 3) > 0, 3, "a positive size expected");
    if (k == 'u') {
        size_t seplen;
        luaL_checklstring(L, 3, &seplen);
        luaL_argcheck(L, seplen > 0, 3, "the separator must not be empty");
        luaL_optinteger(L, 4, 0);
    }
    if (strchr("nlLasu", k) == NULL)
        return luaL_argerror(L, 2, "unknown read kind");
    lua_settop(L, 4);
    lua_remove(L, 2);                          /* 1 self, 2 arg, 3 max */
    int r = take(L, c, ac_chansock(L, 1), k);
    if (r == TAKE_GOT)
        return 1;
    if (r == TAKE_TOOBIG) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "EMSGSIZE");
        return 2;
    }
    if (r == TAKE_MORE)
        buffer_idle(&c->in);                   /* the Lua side waits: as read_go does */
    lua_pushnil(L);
    lua_pushstring(L, r == TAKE_EOF ? "eof" : "more");
    return 2;
}

/* core.stream_buffered(self): bytes read and not taken yet */
static int lstream_buffered(lua_State *L)
{
    ac_chat *c = ac_chat_of(L, 1);
    lua_pushinteger(L, c != NULL && c->stream ? (lua_Integer)buffer_len(&c->in) : 0);
    return 1;
}

/* core.stream_flag(self, name, on): "_err", "_timeout", "_wpaused" */
static int lstream_flag(lua_State *L)
{
    ac_chat *c = checkstream(L);
    static const char *const names[] = {"_err", "_timeout", "_wpaused", NULL};
    static const unsigned char bits[] = {STR_ERR, STR_TIMEOUT, STR_WPAUSED};
    unsigned char bit = bits[luaL_checkoption(L, 2, NULL, names)];
    if (lua_toboolean(L, 3))
        c->sflags |= bit;
    else
        c->sflags &= (unsigned char)~bit;
    return 0;
}

static ac_task **slot_of(lua_State *L, ac_chat *c)
{
    static const char *const names[] = {"_reader", "_writer", "_waiter", NULL};
    switch (luaL_checkoption(L, 2, NULL, names)) {
    case 0: return &c->reader;
    case 1: return &c->writer;
    default: return &c->waiter;
    }
}

/*
** core.stream_slot(self, slot [, on]): slot "_reader", "_writer", "_waiter".
** Without `on`: is a task waiting there? true: the current task waits there
** (it must be a task: the stream is on its stack while it waits); false:
** nobody.
*/
static int lstream_slot(lua_State *L)
{
    ac_chat *c = checkstream(L);
    ac_task **slot = slot_of(L, c);
    if (lua_isnone(L, 3)) {
        lua_pushboolean(L, *slot != NULL);
        return 1;
    }
    if (lua_toboolean(L, 3)) {
        ac_task *t = ac_task_current(L);
        if (t == NULL)
            return luaL_error(L, "stream: only a task waits on a stream");
        *slot = t;
    } else {
        *slot = NULL;
    }
    if (slot == &c->reader)
        c->sflags &= ~STR_CREADER;   /* a Lua-side reader: handle_read reads for it */
    return 0;
}

/* core.stream_wake(self, slot): wake the task waiting there, if any */
static int lstream_wake(lua_State *L)
{
    ac_chat *c = checkstream(L);
    ac_task **slot = slot_of(L, c);
    if (*slot != NULL)
        ac_task_wake(L, *slot);
    return 0;
}

/* core.stream_methods(Stream, slow_read, slow_write, wait_writable): the C
** read, read_until, read_some and write go into the class */
static int lstream_methods(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"read", lstream_read}, {"read_until", lstream_read_until},
        {"read_some", lstream_read_some}, {"write", lstream_write}, {NULL, NULL}
    };
    luaL_checktype(L, 1, LUA_TTABLE);
    for (int i = 2; i <= 4; i++)
        luaL_checktype(L, i, LUA_TFUNCTION);
    lua_settop(L, 4);
    for (const luaL_Reg *m = methods; m->name; m++) {
        ac_copyupvalues(L);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        lua_pushvalue(L, 4);
        lua_pushcclosure(L, m->func, AC_NUP + 3);
        lua_setfield(L, 1, m->name);
    }
    return 0;
}

static const luaL_Reg stream_funcs[] = {
    {"stream_take", lstream_take}, {"stream_buffered", lstream_buffered},
    {"stream_flag", lstream_flag}, {"stream_slot", lstream_slot}, {"stream_wake", lstream_wake},
    {"stream_methods", lstream_methods},
    {NULL, NULL}
};

void ac_stream_open(lua_State *L, int st, int mt)
{
    ac_setfuncs(L, stream_funcs, st, mt);
}
