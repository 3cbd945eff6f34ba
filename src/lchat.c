/*
** lchat.c: asynchat's framing engine and output queue, in C.
**
** The state of an async_chat channel is a userdata ("asyncore.chat") kept in
** the channel's `_chat` field, so it outlives socket changes (a client sets
** its terminator and pushes before it connects).
**
** Input: received bytes go straight into the `in` buffer (recv writes into
** it: no intermediate copy). The terminator is searched there, resuming where
** the last search stopped, so a message that arrives in many reads is never
** rescanned; a terminator split across reads is still found, because a tail
** of `in` that is a prefix of the terminator stays behind. Data before the
** terminator goes to collect_incoming_data; the stock one appends to the
** `collected` buffer in C, and get_data() hands it over as one string, so
** with it no Lua code runs per received chunk, only at found_terminator.
**
** Output: push() and push_with_producer() feed one FIFO kept in the chat's
** user value (a Lua table: strings, producers, and `false` for
** close_when_done). Strings are sent straight from the Lua strings (no copy),
** consecutive small ones gathered into one sendmsg(), each system call
** carrying at most ac_out_buffer_size bytes. A producer's chunk is put in
** front of it, so order is kept. The socket is marked while output is
** queued, which is what the stock writable() tells the loop.
*/
#include "config.h"
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "lchat.h"
#include "lerror.h"
#include "lflow.h"
#include "lmode.h"
#include "ltask.h"

#define CHAT_MT "asyncore.chat"
#define GATHER_MAX 64            /* strings per sendmsg() */

enum { TERM_NONE, TERM_STRING, TERM_COUNT };

/* the chat state at idx, or NULL */
static ac_chat *tochat(lua_State *L, int idx)
{
    return ac_testud(L, idx, sizeof(ac_chat), AC_CHAT_MAGIC);
}

typedef struct ac_chat ac_chat_t;
static int lchat_collect(lua_State *L);
static int lchat_initiate_send(lua_State *L);
static int lchat_push(lua_State *L);

static int as_size(lua_State *L, int idx)
{
    lua_Integer v = lua_isinteger(L, idx) ? lua_tointeger(L, idx) : 65536;
    return v < 1 ? 1 : v > INT_MAX ? INT_MAX : (int)v;
}

/* the chat's framing store, made on first use (raises ENOMEM) */
static ac_chat_fr *chat_fr(lua_State *L, ac_chat *c)
{
    if (c->fr == NULL) {
        c->fr = malloc(sizeof *c->fr);
        if (c->fr == NULL)
            ac_raise_nomem(L, "async_chat");
        buffer_init(&c->fr->collected);
        buffer_init(&c->fr->batch);
    }
    return c->fr;
}

static void chat_fr_free(ac_chat *c)
{
    if (c->fr != NULL) {
        buffer_free(&c->fr->collected);
        buffer_free(&c->fr->batch);
        free(c->fr);
        c->fr = NULL;
    }
}

#define BATCH_LEN(c)     ((c)->fr ? buffer_len(&(c)->fr->batch) : 0)
#define COLLECTED_LEN(c) ((c)->fr ? buffer_len(&(c)->fr->collected) : 0)

/*
** Read the attributes the hot paths need from the class of the channel at 1,
** once per class version: classes made by asyncore.class are flattened
** dispatch tables (the instance's metatable, its own __index), and every
** change to any class bumps the version. Returns 0 when the instance has no
** such class; callers then look up as lua_gettable would.
*/
static int chat_class(lua_State *L, ac_chat_t *c)
{
    ac_state *S = STATE(L);
    if (!lua_getmetatable(L, 1))
        return 0;
    const void *mt = lua_topointer(L, -1);
    if (mt == c->cls && S->class_version == c->cls_version) {
        lua_pop(L, 1);
        return 1;
    }
    int top = lua_gettop(L);
    ac_pushkey(L, K_INDEX);
    lua_rawget(L, top);
    int flat = lua_rawequal(L, -1, top);
    if (flat) {
        ac_pushkey(L, K_AC_IN_BUFFER_SIZE);
        lua_rawget(L, top);
        c->cls_in_size = as_size(L, -1);
        ac_pushkey(L, K_AC_OUT_BUFFER_SIZE);
        lua_rawget(L, top);
        c->cls_out_size = as_size(L, -1);
        ac_pushkey(L, K_COLLECT_INCOMING_DATA);
        lua_rawget(L, top);
        c->cls_collect_stock = lua_tocfunction(L, -1) == lchat_collect;
        ac_pushkey(L, K_INITIATE_SEND);
        lua_rawget(L, top);
        c->cls_initiate_stock = lua_tocfunction(L, -1) == lchat_initiate_send;
        c->cls = mt;
        c->cls_version = S->class_version;
    } else {
        c->cls = NULL;
    }
    lua_settop(L, top - 1);
    return flat;
}

/*
** An integer attribute: the instance's own value, else the class's (cached;
** `cls` is what chat_class returned for this call).
*/
static lua_Integer chat_size(lua_State *L, ac_chat_t *c, enum ac_key k, int cls)
{
    ac_pushkey(L, k);
    if (lua_rawget(L, 1) == LUA_TNIL) {
        lua_pop(L, 1);
        if (cls)
            return k == K_AC_IN_BUFFER_SIZE ? c->cls_in_size : c->cls_out_size;
        ac_pushkey(L, k);                 /* no flattened class: the usual lookup */
        lua_gettable(L, 1);
    }
    lua_Integer v = as_size(L, -1);
    lua_pop(L, 1);
    return v;
}

/* is method k (collect_incoming_data or initiate_send) the stock C function? */
static int chat_stock(lua_State *L, ac_chat_t *c, enum ac_key k, int cls)
{
    ac_pushkey(L, k);
    if (lua_rawget(L, 1) == LUA_TNIL) {
        lua_pop(L, 1);
        if (cls)
            return k == K_COLLECT_INCOMING_DATA ? c->cls_collect_stock : c->cls_initiate_stock;
        ac_pushkey(L, k);
        lua_gettable(L, 1);
    }
    int stock = lua_tocfunction(L, -1) ==
                (k == K_COLLECT_INCOMING_DATA ? lchat_collect : lchat_initiate_send);
    lua_pop(L, 1);
    return stock;
}

static int initiate_send(lua_State *L, ac_chat_t *c);

/*
** Call self:initiate_send() for the channel at 1, whose chat state c is at
** index ci; the stack is cut. When initiate_send is the stock one, the C
** code runs directly, without a Lua call or a second check of the state.
*/
static void call_initiate_send(lua_State *L, ac_chat_t *c, int ci)
{
    if (chat_stock(L, c, K_INITIATE_SEND, chat_class(L, c))) {
        lua_pushvalue(L, ci);
        lua_replace(L, 2);
        lua_settop(L, 2);
        initiate_send(L, c);
        return;
    }
    ac_pushkey(L, K_INITIATE_SEND);
    lua_gettable(L, 1);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 0);
}

/* push the channel's chat state and return it; raises if it has none */
ac_chat *ac_chat_of(lua_State *L, int chan)
{
    if (lua_type(L, chan) != LUA_TTABLE)
        return NULL;
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, chan);
    ac_chat *c = tochat(L, -1);
    lua_pop(L, 1);                 /* the channel keeps it */
    return c != NULL && !c->finalized ? c : NULL;
}

static ac_chat *checkchat(lua_State *L, int chan, const char *op)
{
    luaL_checktype(L, chan, LUA_TTABLE);
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, chan);
    ac_chat *c = tochat(L, -1);
    if (c == NULL)
        luaL_error(L, "%s: not an async_chat channel (call async_chat.init)", op);
    if (c->finalized)   /* reached from a finalizer after its own __gc freed the buffers */
        luaL_error(L, "%s: this async_chat channel was garbage-collected", op);
    return c;
}

static int chat_gc(lua_State *L)
{
    ac_chat *c = luaL_checkudata(L, 1, CHAT_MT);
    c->finalized = 1;
    buffer_free(&c->in);
    chat_fr_free(c);
    free(c->term);
    c->term = NULL;
    return 0;
}

/* core.chat_new(): a fresh chat state */
static int lchat_new(lua_State *L)
{
    ac_chat *c = lua_newuserdatauv(L, sizeof *c, 1);   /* the output queue and a stream's socket */
    memset(c, 0, sizeof *c);
    c->magic = AC_CHAT_MAGIC;
    buffer_init(&c->in);
    c->kind = TERM_NONE;
    c->head = c->tail = 1;
    luaL_setmetatable(L, CHAT_MT);
    return 1;                   /* the queue is made when first needed (push_queue) */
}

/*
** The chat's user value: its output queue (a table: the FIFO at keys head ..
** tail-1, and a stream's socket, which the chat anchors, at key 0), made on
** first use; with no queue, a stream's socket itself, or nil.
*/
/* push the output queue of the chat at ci, made on first use */
static void push_queue(lua_State *L, int ci)
{
    ci = lua_absindex(L, ci);
    int t = lua_getiuservalue(L, ci, 1);
    if (t == LUA_TTABLE)
        return;
    lua_newtable(L);
    if (t != LUA_TNIL) {        /* a stream's socket: anchored by the queue now */
        lua_insert(L, -2);
        lua_rawseti(L, -2, 0);
    } else {
        lua_remove(L, -2);
    }
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, ci, 1);
}

#define queue_empty(c) ((c)->head == (c)->tail)
/* output waiting: queued, or gathered in the batch buffer */
#define out_pending(c) (!queue_empty(c) || BATCH_LEN(c) > 0)
#define BATCH_MAX 16384   /* pushes gathered by copy, per batch; more go to the queue */

/* move the batch buffer's bytes to the end of the (then empty) queue of chat
** c at ci, as one string: whatever is queued next comes after them */
static void batch_to_queue(lua_State *L, ac_chat *c, int ci)
{
    if (BATCH_LEN(c) == 0)
        return;
    push_queue(L, ci);
    lua_pushlstring(L, buffer_begin(&c->fr->batch), buffer_len(&c->fr->batch));
    lua_rawseti(L, -2, c->tail++);
    lua_pop(L, 1);
    buffer_clear(&c->fr->batch);
}

/* mark the channel's socket with the queue state and update its interest */
static void sync_sock(lua_State *L, int chan, ac_chat *c, ac_socket *s)
{
    if (s == NULL || sock_isclosed(s))
        return;
    unsigned before = s->flags;
    if (!out_pending(c))
        s->flags &= ~SF_CHAT_PENDING;
    else
        s->flags |= SF_CHAT_PENDING;
    if (before != s->flags)
        ac_update_interest(L, chan, s);
}

static void sync_socket(lua_State *L, int chan, ac_chat *c)
{
    sync_sock(L, chan, c, ac_chansock(L, chan));
}

void ac_chat_after_error(lua_State *L, int chan)
{
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, chan);
    ac_chat *c = tochat(L, -1);
    ac_socket *s;
    if (c && !c->finalized && c->framing && (s = ac_chansock(L, chan)) != NULL &&
        !sock_isclosed(s)) {
        c->framing = 0;
        batch_to_queue(L, c, lua_gettop(L));
        if (queue_empty(c))
            s->flags &= ~SF_CHAT_PENDING;
        else
            s->flags |= SF_CHAT_PENDING;
        ac_update_interest(L, chan, s);   /* the batch never told the poller */
    }
    lua_pop(L, 1);
}

/* lmode.c calls it when the channel joins a map: mark the socket with the
** queue state */
/* a stream's chat keeps its socket (c->sock, anchored in its user value, see
** push_queue): the stream's reads and writes need no lookup. ci: the chat's index */
static void stream_bind(lua_State *L, ac_chat *c, int ci, int chan)
{
    ci = lua_absindex(L, ci);
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, chan);
    ac_socket *s = ac_tosock(L, -1);
    if (s == NULL) {
        lua_pop(L, 1);
        return;
    }
    s->flags |= SF_STREAM;
    c->sock = s;
    if (lua_getiuservalue(L, ci, 1) == LUA_TTABLE) {
        lua_insert(L, -2);
        lua_rawseti(L, -2, 0);
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
        lua_setiuservalue(L, ci, 1);
    }
}

static void chat_attach(lua_State *L, int chan, ac_socket *s)
{
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, chan);
    ac_chat *c = tochat(L, -1);
    if (c && out_pending(c))
        s->flags |= SF_CHAT_PENDING;
    else
        s->flags &= ~SF_CHAT_PENDING;
    if (c && c->stream)
        stream_bind(L, c, -1, chan);
    lua_pop(L, 1);
}

/* ---- terminators ---- */

static int lchat_set_terminator(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "set_terminator");
    int t = lua_type(L, 2);
    if (t == LUA_TNIL || t == LUA_TNONE) {
        c->kind = TERM_NONE;
    } else if (t == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, 2, &n);
        luaL_argcheck(L, n > 0, 2, "the terminator must not be an empty string");
        char *copy = malloc(n);
        if (copy == NULL)
            return ac_raise_nomem(L, "async_chat");
        memcpy(copy, p, n);
        free(c->term);
        c->term = copy;
        c->termlen = n;
        c->kind = TERM_STRING;
    } else if (t == LUA_TNUMBER) {
        int isint;
        lua_Integer n = lua_tointegerx(L, 2, &isint);
        luaL_argcheck(L, isint, 2, "a byte count must be an integer");
        luaL_argcheck(L, n >= 0, 2, "a byte count must be >= 0");
        c->kind = TERM_COUNT;
        c->count = n;
    } else {
        return luaL_typeerror(L, 2, "string, integer or nil");
    }
    c->scanned = 0;
    return 0;
}

static int lchat_get_terminator(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "get_terminator");
    if (c->kind == TERM_STRING)
        lua_pushlstring(L, c->term, c->termlen);
    else if (c->kind == TERM_COUNT)
        lua_pushinteger(L, c->count);
    else
        lua_pushnil(L);
    return 1;
}

/* ---- input ---- */

/* the stock collect_incoming_data(data): keep it in C */
static int lchat_collect(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "collect_incoming_data");
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (buffer_append(&chat_fr(L, c)->collected, p, n) != 0)
        return ac_raise_nomem(L, "async_chat");
    return 0;
}

static int lchat_get_data(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "get_data");
    if (c->fr == NULL) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushlstring(L, buffer_begin(&c->fr->collected), buffer_len(&c->fr->collected));
    buffer_clear(&c->fr->collected);
    return 1;
}

/* drop the queued output of chat c (at ci): strings, producers, marks */
static void drop_output(lua_State *L, ac_chat *c, int ci)
{
    if (c->fr != NULL)
        buffer_clear(&c->fr->batch);
    ci = lua_absindex(L, ci);
    if (lua_getiuservalue(L, ci, 1) == LUA_TTABLE) {
        lua_rawgeti(L, -1, 0);                  /* a stream's socket stays anchored */
        lua_setiuservalue(L, ci, 1);
    }
    lua_pop(L, 1);
    c->head = c->tail = 1;
    c->head_off = 0;
    c->queued = 0;
    c->close_queued = c->shut = 0;
}

/* drop input, collected data and queued output of chat c (at ci); with
** `release`, give the buffers' memory back too */
static void drop_all(lua_State *L, ac_chat *c, int ci, int release)
{
    if (release) {
        buffer_free(&c->in);
        chat_fr_free(c);
    } else {
        buffer_clear(&c->in);
        if (c->fr != NULL) {
            buffer_clear(&c->fr->collected);
            buffer_clear(&c->fr->batch);
        }
    }
    c->scanned = 0;
    drop_output(L, c, ci);
}

/*
** core.chat_release(self): the channel closed. Free its C buffers now, not
** at the next garbage collection (the collector does not see malloc'ed
** memory): input not yet framed, collected data (get_data() before close()
** to keep it) and queued output are dropped.
*/
static int lchat_release(lua_State *L)
{
    lua_settop(L, 1);
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, 1);                                    /* 2: chat */
    ac_chat *c = tochat(L, 2);
    if (c == NULL || c->finalized)
        return 0;
    drop_all(L, c, 2, 1);
    return 0;
}

/*
** Hand n bytes from the front of `in` to the collector and consume them.
** Stack: chan at 1, chat at `ci`. With the stock collector no Lua runs.
*/
static void collect(lua_State *L, ac_chat *c, size_t n, int stock)
{
    if (n == 0)
        return;
    if (stock) {
        if (buffer_append(&chat_fr(L, c)->collected, buffer_begin(&c->in), n) != 0)
            ac_raise_nomem(L, "async_chat");
        buffer_consume(&c->in, n);
        return;
    }
    lua_pushlstring(L, buffer_begin(&c->in), n);
    buffer_consume(&c->in, n);
    ac_call_method(L, 1, K_COLLECT_INCOMING_DATA, 1);
}

/* length of the longest tail of `in` that is a proper prefix of the terminator */
static size_t prefix_at_end(const ac_chat *c)
{
    size_t lb = buffer_len(&c->in);
    size_t k = c->termlen - 1 < lb ? c->termlen - 1 : lb;
    const char *end = buffer_begin(&c->in) + lb;
    for (; k > 0; k--)
        if (memcmp(end - k, c->term, k) == 0)
            return k;
    return 0;
}

static void frame(lua_State *L, ac_chat *c, ac_socket *s, uint32_t gen, int stock);

#define STREAM_IN_MAX ((size_t)1 << 20)   /* a stream reads no more while it holds this much */

/* a stream's input grew: wake the task reading it; hold off reading while
** much is kept and nobody reads (stack: 1 the channel) */
static void stream_input(lua_State *L, ac_chat *c, ac_socket *s)
{
    int waiting = c->reader != NULL;
    if (waiting)
        ac_task_wake(L, c->reader);
    if (!waiting && buffer_len(&c->in) >= STREAM_IN_MAX && !(s->flags & SF_RD_PAUSED)) {
        s->flags |= SF_RD_PAUSED;
        ac_update_interest(L, 1, s);
    }
}

/*
** async_chat:handle_read(): read up to ac_in_buffer_size bytes into `in`,
** then frame: call collect_incoming_data / found_terminator as Python's
** asynchat does. Stops early if a handler closes the channel or pauses its
** reading (the frames left are held: SF_HELD, and delivered first once it
** resumes). At the end of the stream, a partial frame goes to
** collect_incoming_data before handle_close (or handle_read_eof). Afterwards,
** more than max_in_buffer bytes held without a terminator -> handle_overflow.
*/
static int lchat_handle_read(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "handle_read");   /* 2: chat (kept: anchors c) */
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, 1);                               /* 3: the socket (anchors s) */
    ac_socket *s = ac_tosock(L, 3);
    if (s == NULL)
        return luaL_error(L, "recv: the dispatcher has no socket");
    if (sock_isclosed(s))
        return ac_raise_closed(L, "recv");
    if (s->flags & SF_RD_PAUSED)
        return 0;                                   /* nothing is read while paused */
    int cls = chat_class(L, c);
    int stock = chat_stock(L, c, K_COLLECT_INCOMING_DATA, cls);
    uint32_t gen = s->gen;
    if (s->flags & SF_HELD) {
        /* frames held while paused: they go first, and alone (the next event
        ** reads; input a transport read ahead is listed for the next pass) */
        s->flags &= ~SF_HELD;
        if (s->flags & SF_TP_PENDING)
            ac_ms_list_input(s);
    } else {
        lua_Integer want = chat_size(L, c, K_AC_IN_BUFFER_SIZE, cls);
        if (want > (1 << 24))
            want = 1 << 24;
        char *into;
        if (c->stream) {
            /* a stream reads into the shared buffer and keeps only what came:
            ** an idle stream holds no 64 KiB window */
            ac_state *S = STATE(L);
            into = ac_rbuf(S, (size_t)want);
            if (into == NULL)
                return ac_raise_nomem(L, "async_chat");
            if ((size_t)want > S->rbufsize)
                want = (lua_Integer)S->rbufsize;
        } else {
            if (buffer_reserve(&c->in, (size_t)want) != 0)
                return ac_raise_nomem(L, "async_chat");
            into = c->in.data + c->in.last;
        }
        size_t got;
        int err = s->tp->read(s, into, (size_t)want, &got);
        if (err == EAGAIN)
            return 0;
        if (err == 0 && got == 0) {
            /* end of stream: a partial frame is still the peer's data */
            if (buffer_len(&c->in) > 0 && !c->stream) {
                c->scanned = 0;
                collect(L, c, buffer_len(&c->in), stock);
                if (!ac_sock_same(s, gen))
                    return 0;
            }
            ac_flow_read_end(L, 1, s, 0);
            return 0;
        }
        if (err) {
            if (ac_is_disconnect(err))
                return ac_flow_read_end(L, 1, s, err), 0;
            return ac_raise(L, "recv", err);
        }
        if (c->stream) {
            if (buffer_append(&c->in, into, got) != 0)
                return ac_raise_nomem(L, "async_chat");
            return stream_input(L, c, s), 0;
        }
        c->in.last += got;
    }
    frame(L, c, s, gen, stock);
    if (!ac_sock_same(s, gen))
        return 0;
    if (out_pending(c)) {         /* what the batch pushed: one write */
        if (queue_empty(c) && chat_stock(L, c, K_INITIATE_SEND, chat_class(L, c)) &&
            !(s->flags & (SF_CONNECTING | SF_FILE))) {
            /* all of it in the batch buffer: straight from there */
            size_t sent = 0;
            int err = s->tp->write(s, buffer_begin(&c->fr->batch), buffer_len(&c->fr->batch), &sent);
            if (err && err != EAGAIN) {
                drop_output(L, c, 2);
                s->flags &= ~SF_CHAT_PENDING;
                if (ac_is_disconnect(err))
                    return ac_call_method(L, 1, K_HANDLE_CLOSE, 0), 0;
                return ac_raise(L, "send", err);
            }
            buffer_consume(&c->fr->batch, sent);
            c->queued -= sent;
            batch_to_queue(L, c, 2);    /* what the kernel did not take */
            if (queue_empty(c))
                s->flags &= ~SF_CHAT_PENDING;
        }
        if (!queue_empty(c)) {
            call_initiate_send(L, c, 2);
            lua_settop(L, 2);
            s = ac_chan_same(L, 1, gen);
            if (s == NULL)
                return 0;
        }
        ac_update_interest(L, 1, s);   /* write interest only if some is left */
        ac_flow_check(L, 1, s, c->queued);
        if (!ac_sock_same(s, gen))
            return 0;
    }

    if (buffer_len(&c->in) + COLLECTED_LEN(c) == 0)
        return 0;                                   /* nothing held: no limit to check */
    ac_pushkey(L, K_MAX_IN_BUFFER);
    lua_gettable(L, 1);
    if (lua_isinteger(L, -1)) {
        lua_Integer max = lua_tointeger(L, -1);
        if ((lua_Integer)(buffer_len(&c->in) + COLLECTED_LEN(c)) > max) {
            /* the input cannot be framed: nothing more is read (once, even
            ** if handle_close waits for queued output to go first) */
            s->flags |= SF_RD_EOF;
            ac_update_interest(L, 1, s);
            ac_call_method(L, 1, K_HANDLE_OVERFLOW, 0);
        }
    }
    return 0;
}

/*
** Deliver the frames `in` holds: collect_incoming_data / found_terminator as
** Python's asynchat does, until the data runs out or a handler closes the
** channel (its socket s, anchored by the caller, is no longer open with
** generation gen). Pushes made meanwhile are queued (c->framing), so a
** pipelined batch is answered with one write.
*/
static void frame(lua_State *L, ac_chat *c, ac_socket *s, uint32_t gen, int stock)
{
    c->framing = 1;
    while (buffer_len(&c->in) > 0) {
        size_t lb = buffer_len(&c->in);
        if (c->kind == TERM_NONE || (c->kind == TERM_COUNT && c->count == 0)) {
            /* no terminator (0 counts as none, as in Python): collect it all */
            collect(L, c, lb, stock);
        } else if (c->kind == TERM_COUNT) {
            if ((lua_Integer)lb < c->count) {
                collect(L, c, lb, stock);   /* the collector sees the count before it drops */
                if (!ac_sock_same(s, gen))
                    break;
                if (c->kind == TERM_COUNT)
                    c->count -= (lua_Integer)lb;
            } else {
                size_t n = (size_t)c->count;
                c->count = 0;
                collect(L, c, n, stock);
                if (!ac_sock_same(s, gen))
                    break;
                ac_call_method(L, 1, K_FOUND_TERMINATOR, 0);
            }
        } else {
            size_t from = c->scanned;
            size_t idx = buffer_find(&c->in, from, c->term, c->termlen);
            if (idx != (size_t)-1) {
                size_t tl = c->termlen;
                c->scanned = 0;
                collect(L, c, idx, stock);
                if (!ac_sock_same(s, gen))
                    break;
                buffer_consume(&c->in, tl);
                ac_call_method(L, 1, K_FOUND_TERMINATOR, 0);
            } else {
                size_t k = prefix_at_end(c);
                collect(L, c, lb - k, stock);
                c->scanned = 0;   /* what is left is the possible start of a match */
                if (k > 0)
                    break;
            }
        }
        if (!ac_sock_same(s, gen))
            break;
        if (s->flags & SF_RD_PAUSED) {   /* no further frame until resume_reading() */
            if (buffer_len(&c->in) > 0)
                s->flags |= SF_HELD;
            break;
        }
    }
    c->framing = 0;
}

/* ---- output ---- */

/*
** Output queued during a batch: the channel at 1 is marked, but the poller is
** told only after the batch (no system call per batch when it all goes out
** at once); should a handler fail first, the loop ends the batch
** (ac_chat_after_error) and tells it then.
*/
static void mark_batch_output(lua_State *L)
{
    ac_socket *s = ac_chansock(L, 1);
    if (s)
        s->flags |= SF_CHAT_PENDING;
}

/*
** Append the value at 2 to the queue of chat c (at 3), then initiate_send.
** While handle_read delivers frames, only queue it (and ask for writability,
** so it goes out even if a handler fails): handle_read sends what the whole
** batch pushed with one system call when it is done.
*/
static void enqueue(lua_State *L, ac_chat *c)
{
    batch_to_queue(L, c, 3);
    if (lua_type(L, 2) == LUA_TSTRING)
        c->queued += lua_rawlen(L, 2);
    push_queue(L, 3);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, c->tail++);
    lua_settop(L, 3);
    if (c->framing) {
        mark_batch_output(L);
        return;
    }
    call_initiate_send(L, c, 3);
}

/* nothing may be pushed after shutdown_when_done() */
static void check_not_shut(lua_State *L, ac_chat *c, const char *op)
{
    if (c->shut)
        luaL_error(L, "%s: the sending side is shut down (shutdown_when_done)", op);
}

/*
** push's answer, after the queue grew: false while it is above the channel's
** high mark. A crossing calls handle_pause_writing (Lua: it may close the
** channel; the answer stands).
*/
static int push_result(lua_State *L, ac_chat *c)
{
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    int above = c->queued > s->wr_high;
    ac_flow_check(L, 1, s, c->queued);
    lua_pushboolean(L, !above);
    return 1;
}

/*
** async_chat:push(data). With nothing queued and the stock initiate_send,
** the string goes straight to the socket; only what the kernel does not take
** is queued (the queue then starts inside this string).
*/
int ac_chat_push(lua_State *L)
{
    return lchat_push(L);
}

static int lchat_push(lua_State *L)
{
    lua_settop(L, 2);
    ac_chat *c = checkchat(L, 1, "push");   /* 3: chat */
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_typeerror(L, 2, "string");
    check_not_shut(L, c, "push");
    size_t len;
    const char *p = lua_tolstring(L, 2, &len);
    if (len == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    /* while a batch is framed, gather (small pieces by copy): unless this is
    ** its last frame (nothing more is buffered) and nothing was gathered,
    ** which goes straight out as outside a batch */
    int gather = c->framing && (buffer_len(&c->in) > 0 || BATCH_LEN(c) > 0);
    if (gather && queue_empty(c) && BATCH_LEN(c) + len <= BATCH_MAX) {
        if (buffer_append(&chat_fr(L, c)->batch, p, len) != 0)
            return ac_raise_nomem(L, "push");
        c->queued += len;
        mark_batch_output(L);
        return push_result(L, c);
    }
    if (gather || out_pending(c)) {
        enqueue(L, c);
        return push_result(L, c);
    }
    int cls = chat_class(L, c);
    int stock = chat_stock(L, c, K_INITIATE_SEND, cls);
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, 1);                       /* 4: the socket (anchors s) */
    ac_socket *s = ac_tosock(L, 4);
    if (!stock || s == NULL || sock_isclosed(s) || (s->flags & (SF_CONNECTING | SF_FILE))) {
        lua_settop(L, 3);
        enqueue(L, c);
        return push_result(L, c);
    }
    lua_Integer obs = chat_size(L, c, K_AC_OUT_BUFFER_SIZE, cls);
    size_t sent = 0;
    int err = s->tp->write(s, p, len < (size_t)obs ? len : (size_t)obs, &sent);
    if (err && err != EAGAIN) {
        if (ac_is_disconnect(err))
            ac_call_method(L, 1, K_HANDLE_CLOSE, 0);
        else
            return ac_raise(L, "send", err);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (sent == len) {
        lua_pushboolean(L, 1);              /* all of it went out: nothing queued */
        return 1;
    }
    push_queue(L, 3);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, c->tail++);
    c->head_off = sent;
    c->queued += len - sent;
    lua_pushvalue(L, 3);
    lua_replace(L, 2);
    lua_settop(L, 2);
    initiate_send(L, c);                    /* the rest, as far as the kernel takes it */
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    lua_replace(L, 3);                      /* 3: chat, as push_result's callers have it */
    return push_result(L, c);
}

static int lchat_push_with_producer(lua_State *L)
{
    lua_settop(L, 2);
    ac_chat *c = checkchat(L, 1, "push_with_producer");   /* 3: chat */
    int t = lua_type(L, 2);
    int ok = t == LUA_TFUNCTION;
    if (!ok && (t == LUA_TTABLE || t == LUA_TUSERDATA)) {
        if (luaL_getmetafield(L, 2, "__call") != LUA_TNIL) {
            lua_pop(L, 1);
            ok = 1;
        } else {
            lua_getfield(L, 2, "more");
            ok = !lua_isnil(L, -1);
            lua_pop(L, 1);
        }
    }
    if (!ok)
        return luaL_typeerror(L, 2, "producer (an object with more() or a function)");
    check_not_shut(L, c, "push_with_producer");
    enqueue(L, c);
    ac_socket *s = ac_chansock(L, 1);
    if (s != NULL && !sock_isclosed(s))
        ac_flow_check(L, 1, s, c->queued);   /* what its first chunks made */
    return 0;
}

/* queue a mark (false: close_when_done, true: shutdown_when_done) on the
** chat of the channel at 1 (its state at 2) */
static void queue_mark(lua_State *L, ac_chat *c, int shut)
{
    batch_to_queue(L, c, 2);
    push_queue(L, 2);
    lua_pushboolean(L, shut);
    lua_rawseti(L, -2, c->tail++);
    lua_pop(L, 1);
    if (shut)
        c->shut = 1;
    else
        c->close_queued = 1;
    sync_socket(L, 1, c);
}

static int lchat_close_when_done(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "close_when_done");   /* 2: chat */
    queue_mark(L, c, 0);
    return 0;
}

/* async_chat:shutdown_when_done(): FIN (a close_notify first under TLS) once
** everything queued before it is sent; reading goes on */
static int lchat_shutdown_when_done(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "shutdown_when_done");   /* 2: chat */
    ac_socket *s = ac_chansock(L, 1);
    if (!c->shut && !(s && (s->flags & SF_WR_SHUT)))
        queue_mark(L, c, 1);
    return 0;
}

/*
** async_chat:handle_close(), the default: with output still queued on a
** connected channel, send it and then close (as close_when_done); else close
** now. Reached again while that is under way, it waits for it.
*/
static int lchat_handle_close(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "handle_close");   /* 2: chat */
    ac_socket *s = ac_chansock(L, 1);
    if (c->close_queued != 2 && ac_flow_drain_first(L, 1, s, out_pending(c))) {
        if (!c->close_queued)
            queue_mark(L, c, 0);
        return 0;
    }
    ac_call_method(L, 1, K_CLOSE, 0);
    return 0;
}

/* async_chat:out_buffer_size(): bytes queued (what producers made so far) */
static int lchat_out_buffer_size(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "out_buffer_size");
    lua_pushinteger(L, (lua_Integer)c->queued);
    return 1;
}

/*
** Ask the producer at p for its next chunk: obj:more() if it has one, else
** obj() (a function or a callable object). Pushes the chunk and returns 1, or
** pushes nothing and returns 0 when it is exhausted (nil or ""). Runs Lua.
*/
static int produce(lua_State *L, int p)
{
    if (lua_type(L, p) != LUA_TFUNCTION) {
        ac_pushkey(L, K_MORE);
        lua_gettable(L, p);
        if (!lua_isnil(L, -1)) {
            lua_pushvalue(L, p);
            lua_call(L, 1, 1);
            goto got;
        }
        lua_pop(L, 1);
    }
    lua_pushvalue(L, p);
    lua_call(L, 0, 1);
got:
    if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) > 0)
        return 1;
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "producer returned %s (string or nil expected)", luaL_typename(L, -1));
    lua_pop(L, 1);
    return 0;
}

static void pop_head(lua_State *L, int q, ac_chat *c)
{
    lua_pushnil(L);
    lua_rawseti(L, q, c->head++);
    c->head_off = 0;
    if (queue_empty(c))
        c->head = c->tail = 1;   /* keep the keys small */
}

/* the peer is gone (a send failed): what is queued can never be sent; then
** handle_close. Stack: 1 self, 2 its chat state c. */
static void chat_peer_gone(lua_State *L, ac_chat *c, ac_socket *s)
{
    drop_output(L, c, 2);
    sync_sock(L, 1, c, s);
    ac_call_method(L, 1, K_HANDLE_CLOSE, 0);
}

/*
** async_chat:initiate_send(): send what the queue holds, as long as the
** kernel takes it. Producers are asked for their next chunk when they reach
** the head; `false` (close_when_done) closes the channel when reached.
*/
static int lchat_initiate_send(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "initiate_send");   /* 2: chat */
    initiate_send(L, c);
    ac_socket *s = ac_chansock(L, 1);
    if (s != NULL && !sock_isclosed(s))
        ac_flow_check(L, 1, s, c->queued);
    return 0;
}

/* the body of initiate_send; stack: 1 self, 2 its chat state c */
static int initiate_send(lua_State *L, ac_chat *c)
{
    batch_to_queue(L, c, 2);
    push_queue(L, 2);                       /* 3: the queue */
    lua_Integer obs = chat_size(L, c, K_AC_OUT_BUFFER_SIZE, chat_class(L, c));
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, 1);                                 /* 4: the socket (anchors s) */
    ac_socket *s = ac_tosock(L, 4);
    for (;;) {
        lua_settop(L, 4);
        if (queue_empty(c) || s == NULL || sock_isclosed(s) || (s->flags & SF_CONNECTING))
            break;
        int t = lua_rawgeti(L, 3, c->head);
        if (t == LUA_TBOOLEAN) {             /* close_when_done, shutdown_when_done */
            if (s->tp->flush && s->tp->flush(s) != 0)
                break;                       /* the transport still holds output */
            if (!lua_toboolean(L, -1)) {
                pop_head(L, 3, c);
                c->close_queued = 2;             /* what was pushed after it is never sent */
                sync_sock(L, 1, c, s);
                return ac_call_method(L, 1, K_HANDLE_CLOSE, 0), 0;
            }
            int err = ac_flow_shutdown(L, 1, s);
            if (err == EAGAIN)
                break;
            if (err)
                return chat_peer_gone(L, c, s), 0;
            pop_head(L, 3, c);
            sync_sock(L, 1, c, s);
            ac_flow_shut_done(L, 1, s);
            return 0;
        }
        if (t != LUA_TSTRING) {              /* a producer: its next chunk goes in front */
            if (produce(L, lua_gettop(L))) {
                c->queued += lua_rawlen(L, -1);
                lua_rawseti(L, 3, --c->head);
            } else {
                pop_head(L, 3, c);           /* exhausted */
            }
            lua_settop(L, 3);                /* the producer ran Lua: look the socket up again */
            ac_pushkey(L, K_SOCKET);
            lua_rawget(L, 1);
            s = ac_tosock(L, 4);
            continue;
        }
        /* gather consecutive strings from the head, at most obs bytes */
        struct iovec iov[GATHER_MAX];
        int n = 0;
        size_t total = 0;
        lua_Integer k = c->head;
        lua_pop(L, 1);
        while (n < GATHER_MAX && k < c->tail && total < (size_t)obs) {
            if (lua_rawgeti(L, 3, k) != LUA_TSTRING) {
                lua_pop(L, 1);
                break;
            }
            size_t len;
            const char *p = lua_tolstring(L, -1, &len);
            lua_pop(L, 1);   /* still anchored in the queue */
            if (k == c->head) {
                p += c->head_off;
                len -= c->head_off;
            }
            if (len > (size_t)obs - total)
                len = (size_t)obs - total;
            iov[n].iov_base = (void *)(uintptr_t)p;
            iov[n].iov_len = len;
            total += len;
            n++;
            k++;
        }
        size_t sent = 0;
        int err;
        if (s->flags & SF_FILE) {            /* a pipe: one piece at a time */
            n = 1;
            total = iov[0].iov_len;
        }
        err = s->tp->writev(s, iov, n, &sent);
        if (err == EAGAIN)
            break;
        if (err) {
            if (ac_is_disconnect(err))
                return chat_peer_gone(L, c, s), 0;
            sync_sock(L, 1, c, s);
            return ac_raise(L, "send", err);
        }
        /* drop what went out */
        c->queued -= sent;
        size_t left = sent;
        while (left > 0 && !queue_empty(c)) {
            lua_rawgeti(L, 3, c->head);
            size_t len = lua_rawlen(L, -1) - c->head_off;
            lua_pop(L, 1);
            if (left >= len) {
                left -= len;
                pop_head(L, 3, c);
            } else {
                c->head_off += left;
                left = 0;
            }
        }
        if (sent < total)
            break;                           /* the kernel is full: wait for writable */
    }
    sync_sock(L, 1, c, s);
    return 0;
}

void ac_chat_stream_consumed(lua_State *L, int chan, ac_chat *c, ac_socket *s)
{
    if (s != NULL && !sock_isclosed(s) && (s->flags & SF_RD_PAUSED) && buffer_len(&c->in) < STREAM_IN_MAX / 2) {
        s->flags &= ~SF_RD_PAUSED;
        ac_update_interest(L, chan, s);
    }
}

int ac_chat_write_now(ac_chat *c, ac_socket *s)
{
    return !out_pending(c) && !c->framing && !c->shut && !c->close_queued &&
           !sock_isclosed(s) && !(s->flags & (SF_CONNECTING | SF_FILE | SF_TP_EVENTS | SF_SHUT_REQ | SF_WR_SHUT));
}

/* core.stream_mode(self): the channel's input is kept for its tasks, not framed */
static int lchat_stream_mode(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "stream");   /* 2: the chat */
    c->stream = 1;
    stream_bind(L, c, 2, 1);
    return 0;
}

/*
** start_tls on the channel at chan: output queued so far (the batch, then the
** queue's strings, then what its producers still produce) is appended to
** `clear`, to go out before the handshake; input not yet framed goes to
** `prefix`, for the handshake to read first. Runs the producers (Lua code);
** raises if close_when_done is queued.
*/
void ac_chat_handover(lua_State *L, int chan, ac_buffer *clear, ac_buffer *prefix)
{
    int top = lua_gettop(L);
    chan = lua_absindex(L, chan);
    ac_pushkey(L, K_CHAT);
    lua_rawget(L, chan);                                 /* top+1: chat */
    ac_chat *c = tochat(L, top + 1);
    if (c == NULL || c->finalized) {
        lua_settop(L, top);
        return;
    }
    push_queue(L, top + 1);                    /* top+2: the queue */
    for (lua_Integer k = c->head; k < c->tail; k++)
        if (lua_rawgeti(L, top + 2, k) == LUA_TBOOLEAN)
            luaL_error(L, "start_tls: close_when_done() or shutdown_when_done() is queued");
    lua_settop(L, top + 2);
    if (BATCH_LEN(c) > 0) {
        if (buffer_append(clear, buffer_begin(&c->fr->batch), buffer_len(&c->fr->batch)) != 0)
            ac_raise_nomem(L, "start_tls");
        buffer_clear(&c->fr->batch);
    }
    while (!queue_empty(c)) {
        int t = lua_rawgeti(L, top + 2, c->head);
        if (t == LUA_TSTRING) {
            size_t len;
            const char *p = lua_tolstring(L, -1, &len);
            if (buffer_append(clear, p + c->head_off, len - c->head_off) != 0)
                ac_raise_nomem(L, "start_tls");
            lua_pop(L, 1);
            pop_head(L, top + 2, c);
            continue;
        }
        /* a producer: all it has, now */
        while (produce(L, top + 3)) {
            size_t len;
            const char *p = lua_tolstring(L, -1, &len);
            if (buffer_append(clear, p, len) != 0)
                ac_raise_nomem(L, "start_tls");
            lua_pop(L, 1);
        }
        lua_settop(L, top + 2);
        pop_head(L, top + 2, c);
    }
    c->queued = 0;
    if (buffer_append(prefix, buffer_begin(&c->in), buffer_len(&c->in)) != 0)
        ac_raise_nomem(L, "start_tls");
    buffer_clear(&c->in);
    c->scanned = 0;
    ac_socket *s = ac_chansock(L, chan);
    if (s)
        s->flags &= ~SF_CHAT_PENDING;
    lua_settop(L, top);
}

static int lchat_discard_buffers(lua_State *L)
{
    lua_settop(L, 1);
    ac_chat *c = checkchat(L, 1, "discard_buffers");   /* 2: chat */
    drop_all(L, c, 2, 0);
    ac_socket *s = ac_chansock(L, 1);
    if (s != NULL && !sock_isclosed(s)) {
        s->flags &= ~SF_HELD;
        sync_sock(L, 1, c, s);
        if (s->flags & SF_WR_PAUSED)   /* nothing queued now: below any low mark */
            ac_flow_cross(L, 1, s);
    }
    return 0;
}

/* async_chat:writable(): output queued, or not connected (Python's test) */
static int lchat_writable(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "writable");
    lua_pushboolean(L, out_pending(c) || !ac_chanbool(L, 1, K_CONNECTED));
    return 1;
}

/* core.chat_buffered(self): bytes held in input and collected (for tests and logs) */
static int lchat_buffered(lua_State *L)
{
    ac_chat *c = checkchat(L, 1, "buffered");
    lua_pushinteger(L, (lua_Integer)(buffer_len(&c->in) + COLLECTED_LEN(c)));
    lua_pushinteger(L, (lua_Integer)(c->tail - c->head) + (BATCH_LEN(c) > 0));
    return 2;
}


static const luaL_Reg chat_funcs[] = {
    {"set_terminator", lchat_set_terminator}, {"get_terminator", lchat_get_terminator},
    {"collect_incoming_data", lchat_collect}, {"get_data", lchat_get_data},
    {"handle_read", lchat_handle_read}, {"handle_write", lchat_initiate_send},
    {"initiate_send", lchat_initiate_send}, {"push", lchat_push},
    {"push_with_producer", lchat_push_with_producer}, {"close_when_done", lchat_close_when_done},
    {"shutdown_when_done", lchat_shutdown_when_done}, {"handle_close", lchat_handle_close},
    {"out_buffer_size", lchat_out_buffer_size},
    {"discard_buffers", lchat_discard_buffers}, {"writable", lchat_writable},
    {"buffered", lchat_buffered}, {"chat_release", lchat_release},
    {NULL, NULL}
};

/* adds core.chat (the async_chat methods) and core.chat_new */
/* the chat metatable: made before any function gets its upvalues */
void ac_chat_meta(lua_State *L, int st)
{
    luaL_newmetatable(L, CHAT_MT);
    lua_pushvalue(L, st);
    lua_pushcclosure(L, chat_gc, 1);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

void ac_chat_open(lua_State *L, int st, int mt)
{
    ac_stock_register(AC_STOCK_CHAT_WRITABLE, lchat_writable);
    ac_mode_on_chat(chat_attach);
    lua_newtable(L);
    ac_setfuncs(L, chat_funcs, st, mt);
    lua_setfield(L, -2, "chat");
    lua_pushcfunction(L, lchat_new);
    lua_setfield(L, -2, "chat_new");
    ac_pushupvalues(L, st, mt);
    lua_pushcclosure(L, lchat_stream_mode, AC_NUP);
    lua_setfield(L, -2, "stream_mode");
}
