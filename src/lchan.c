/*
** lchan.c: the methods of asyncore.dispatcher and dispatcher_with_send that
** run on every event, written in C so an event costs one Lua call (the
** user's handler) and not a chain of them.
**
** Each takes the channel table as `self` and finds its socket in
** self.socket. They keep Python's asyncore semantics: recv() returns "" at
** end of stream after calling handle_close(), and "" when nothing can be read
** now; send() returns 0 when it would block; a vanished peer (ECONNRESET,
** EPIPE, ...) becomes handle_close() instead of an error. The state flags the
** script sees (connected, accepting, connecting) stay plain fields of the
** channel; C reads them with rawget.
*/
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include "lchan.h"
#include "lerror.h"
#include "lflow.h"
#include "lmode.h"
#include "errnames.h"

#define ACCEPT_BATCH 64      /* connections taken per readiness event */
#define ACCEPT_PAUSE 0.1     /* seconds a listener rests when out of descriptors */

static void set_field(lua_State *L, int chan, enum ac_key k, int v)
{
    ac_pushkey(L, k);
    lua_pushboolean(L, v);
    lua_rawset(L, chan);
}

static int lchan_readable(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

static int lchan_writable(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

/* dispatcher_with_send:writable(): not connected, or output waiting (a
** close or shutdown asked for counts: it waits for its turn to write) */
static int lds_writable(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    lua_pushboolean(L, (s && (buffer_len(&s->out) > 0 || (s->flags & (SF_DS_CLOSE | SF_SHUT_REQ)))) ||
                       !ac_chanbool(L, 1, K_CONNECTED));
    return 1;
}

static int peer_gone(lua_State *L, int chan)
{
    ac_call_method(L, chan, K_HANDLE_CLOSE, 0);
    return 0;
}

/* dispatcher:recv(n) */
static int lchan_recv(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "recv");
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "negative size");
    if (n == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    ac_state *S = STATE(L);
    char *buf = ac_rbuf(S, (size_t)n);
    if (buf == NULL)
        return ac_raise_nomem(L, "recv");
    size_t got, cap = (size_t)n < S->rbufsize ? (size_t)n : S->rbufsize;
    int err = s->tp->read(s, buf, cap, &got);
    if (err == 0 && got > 0) {
        lua_pushlstring(L, buf, got);
        return 1;
    }
    if (err == 0 || ac_is_disconnect(err))   /* end of stream, or the peer is gone */
        ac_flow_read_end(L, 1, s, err);
    else if (err != EAGAIN)
        return ac_raise(L, "recv", err);
    lua_pushliteral(L, "");
    return 1;
}

/* dispatcher:send(data): bytes sent, 0 when it would block */
static int lchan_send(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "send");
    size_t n, sent;
    const char *p = luaL_checklstring(L, 2, &n);
    int err = s->tp->write(s, p, n, &sent);
    if (err == 0) {
        lua_pushinteger(L, (lua_Integer)sent);
        return 1;
    }
    if (ac_is_disconnect(err))
        peer_gone(L, 1);
    else if (err != EAGAIN)
        return ac_raise(L, "send", err);
    lua_pushinteger(L, 0);
    return 1;
}

/*
** Write what the output buffer holds. Returns 0, or the errno of a vanished
** peer (the caller then calls handle_close), raising any other error.
*/
static int flush_out(lua_State *L, ac_socket *s)
{
    while (buffer_len(&s->out) > 0) {
        size_t sent;
        int err = s->tp->write(s, buffer_begin(&s->out), buffer_len(&s->out), &sent);
        if (err == EAGAIN)
            return 0;
        if (err) {
            if (ac_is_disconnect(err))
                return err;
            ac_raise(L, "send", err);
        }
        buffer_consume(&s->out, sent);
        if (sent == 0)
            return 0;
    }
    return 0;
}

/* the peer is gone while output was queued: it can never be sent */
static void ds_peer_gone(lua_State *L, ac_socket *s)
{
    buffer_clear(&s->out);
    s->flags &= ~(SF_DS_CLOSE | SF_SHUT_REQ);
    ac_update_interest(L, 1, s);
    peer_gone(L, 1);
}

/*
** dispatcher_with_send:send(data): never loses data. With nothing queued the
** data goes straight to the socket; what it does not take is kept in C and
** written when the socket is writable. Returns the number of bytes queued.
** After close_when_done() nothing more is queued (0); after
** shutdown_when_done() sending is an error.
*/
static int lds_send(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "send");
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (s->flags & (SF_DS_CLOSE | SF_SHUT_REQ | SF_WR_SHUT)) {
        if (!(s->flags & SF_DS_CLOSE))
            return luaL_error(L, "send: the sending side is shut down (shutdown_when_done)");
        lua_pushinteger(L, 0);
        return 1;
    }
    if (ac_rawbool(L, 1, K_DEBUG)) {
        lua_pushfstring(L, "sending %s", luaL_tolstring(L, 2, NULL));
        lua_remove(L, -2);
        lua_pushliteral(L, "info");
        ac_call_method(L, 1, K_LOG_INFO, 2);
        s = ac_checkchan(L, 1, "send");
    }
    size_t sent = 0;
    if (buffer_len(&s->out) == 0 && !(s->flags & SF_CONNECTING)) {
        int err = s->tp->write(s, p, n, &sent);
        if (err && err != EAGAIN) {
            if (ac_is_disconnect(err)) {
                ds_peer_gone(L, s);
                lua_pushinteger(L, 0);
                return 1;
            }
            return ac_raise(L, "send", err);
        }
    }
    if (sent < n) {
        if (buffer_append(&s->out, p + sent, n - sent) != 0)
            return ac_raise_nomem(L, "send");
        ac_update_interest(L, 1, s);
        ac_flow_check(L, 1, s, buffer_len(&s->out));
    }
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/*
** The buffer is empty and close_when_done or shutdown_when_done was asked:
** once the transport holds nothing either, close (through handle_close, as
** async_chat does) or shut the sending side down.
*/
static int ds_finish(lua_State *L, ac_socket *s)
{
    if (s->tp->flush && s->tp->flush(s) != 0)
        return 0;   /* the transport's own output first: writable again later */
    if (s->flags & SF_DS_CLOSE) {
        s->flags &= ~(SF_DS_CLOSE | SF_SHUT_REQ);
        ac_update_interest(L, 1, s);
        ac_call_method(L, 1, K_HANDLE_CLOSE, 0);
        return 0;
    }
    int err = ac_flow_shutdown(L, 1, s);
    if (err == 0)
        ac_flow_shut_done(L, 1, s);
    else if (err != EAGAIN)
        ds_peer_gone(L, s);
    return 0;
}

/* dispatcher_with_send:initiate_send() and :handle_write() */
static int lds_initiate_send(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "initiate_send");
    if (flush_out(L, s) != 0) {
        ds_peer_gone(L, s);
        return 0;
    }
    ac_update_interest(L, 1, s);
    if (s->flags & SF_WR_PAUSED) {
        uint32_t gen = s->gen;
        ac_flow_check(L, 1, s, buffer_len(&s->out));
        if ((s = ac_chan_same(L, 1, gen)) == NULL)
            return 0;
    }
    if (buffer_len(&s->out) == 0 && (s->flags & (SF_DS_CLOSE | SF_SHUT_REQ)))
        return ds_finish(L, s);
    return 0;
}

/*
** dispatcher_with_send:close_when_done(): close (handle_close) once the
** buffer is sent; what send() is given afterwards is not sent.
*/
static int lds_close_when_done(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "close_when_done");
    s->flags |= SF_DS_CLOSE;
    ac_update_interest(L, 1, s);
    return 0;
}

/*
** dispatcher_with_send:shutdown_when_done(): once the buffer is sent, shut
** the sending side down (FIN; under TLS a close_notify first) and go on
** reading.
*/
static int lds_shutdown_when_done(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "shutdown_when_done");
    if (!(s->flags & SF_WR_SHUT)) {
        s->flags |= SF_SHUT_REQ;
        ac_update_interest(L, 1, s);
    }
    return 0;
}

/*
** dispatcher_with_send:handle_close(), the default: with output still queued
** on a connected channel, send it and then close (as close_when_done); else
** close now. Reached again while that is under way, it waits for it.
*/
static int lds_handle_close(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    ac_socket *s = ac_chansock(L, 1);
    if (ac_flow_drain_first(L, 1, s, s != NULL && (buffer_len(&s->out) > 0 || (s->flags & SF_SHUT_REQ)))) {
        if (!(s->flags & SF_DS_CLOSE)) {
            s->flags |= SF_DS_CLOSE;
            ac_update_interest(L, 1, s);
        }
        return 0;
    }
    ac_call_method(L, 1, K_CLOSE, 0);
    return 0;
}

static int lds_out_buffer_size(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    lua_pushinteger(L, s ? (lua_Integer)buffer_len(&s->out) : 0);
    return 1;
}

/*
** dispatcher:accept(): sock, addr, or nil when no connection was pending.
** Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM): nil, and the listener
** rests ACCEPT_PAUSE seconds instead of spinning or closing. That is said
** once per episode (until an accept works again) at "error", which the
** default ignore_log_types shows, with the descriptor limit.
*/
static int accept_one(lua_State *L, int want_addr)
{
    ac_socket *s = ac_checkchan(L, 1, "accept");
    int err, n = ac_accept(L, s, &err, want_addr);
    if (n) {
        s->flags |= SF_ACCEPTED;
        s->flags &= ~SF_NOFD_LOGGED;
        return n;
    }
    if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        if (s->ms && s->paused_until <= 0) {
            s->paused_until = clock_now() + ACCEPT_PAUSE;
            s->ms->npaused++;
            ac_update_interest(L, 1, s);
        }
        if (!(s->flags & SF_NOFD_LOGGED)) {
            s->flags |= SF_NOFD_LOGGED;
            struct rlimit rl;
            char limit[96] = "";
            if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
                snprintf(limit, sizeof limit, "; this process may open %llu descriptors (ulimit -n)",
                         (unsigned long long)rl.rlim_cur);
            lua_pushfstring(L, "accept: %s (%s): not accepting new connections, retrying every %d ms%s",
                            strerror(err), errnames_get(err) ? errnames_get(err) : "?", (int)(ACCEPT_PAUSE * 1000), limit);
            lua_pushliteral(L, "error");
            ac_call_method(L, 1, K_LOG_INFO, 2);
        }
    } else if (err != EAGAIN && err != ECONNABORTED && err != EPROTO && err != EPERM) {
        return ac_raise(L, "accept", err);
    }
    lua_pushnil(L);
    return 1;
}

/* dispatcher:accept(): sock, addr (nil when none is pending) */
static int lchan_accept(lua_State *L)
{
    return accept_one(L, 1);
}

/* core.dispatcher.accept_socket(self): accept() without the peer's address
** (a listener whose handle_accepted does not use it makes no table) */
static int lchan_accept_socket(lua_State *L)
{
    return accept_one(L, 0);
}

/*
** A pass hook (lreg.h): listeners whose EMFILE rest is over listen again; the
** others bound the wait to the end of their rest.
*/
static void resume_paused(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us)
{
    for (int fd = 0; fd < ms->nregs && ms->npaused > 0; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s == NULL || s->paused_until <= 0)
            continue;
        if (s->paused_until <= now) {
            s->paused_until = 0;
            ms->npaused--;
            lua_rawgeti(L, map, fd);
            if (ac_chansock(L, -1) == s)
                ac_update_interest(L, lua_gettop(L), s);
            lua_pop(L, 1);
        } else {
            int64_t left = ac_us_until(s->paused_until, now);
            if (*wait_us < 0 || left < *wait_us)
                *wait_us = left;
        }
    }
}

/* dispatcher:handle_accept(): accept() then handle_accepted(sock, addr) */
static int lchan_handle_accept(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    ac_pushkey(L, K_ACCEPT);
    lua_gettable(L, 1);
    lua_pushvalue(L, 1);
    lua_call(L, 1, 2);
    if (lua_isnil(L, 2))
        return 0;
    ac_call_method(L, 1, K_HANDLE_ACCEPTED, 2);
    return 0;
}

/*
** dispatcher:handle_connect_event(): the outcome of a non-blocking connect.
** A failure is raised as the error object (op "connect"), which the loop
** hands to handle_error, as Python 3.11 does.
*/
static int lchan_handle_connect_event(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "connect");
    int soerr = 0;
    int err = sock_geterror(s->fd, &soerr);
    if (err)
        return ac_raise(L, "connect", err);
    if (soerr)
        return ac_raise(L, "connect", soerr);
    lua_settop(L, 1);
    s->to_connect = 0;   /* connected: its timeout is over */
    ac_call_method(L, 1, K_HANDLE_CONNECT, 0);
    set_field(L, 1, K_CONNECTED, 1);
    set_field(L, 1, K_CONNECTING, 0);
    s = ac_chansock(L, 1);
    if (s && !sock_isclosed(s)) {
        s->flags &= ~SF_CONNECTING;
        ac_update_interest(L, 1, s);
    }
    return 0;
}

/*
** An error escaped handle_accept (or the handle_accepted it called, or the
** new channel's constructor): err and traceback at e, e+1. Log it on the
** listener and close the connection being accepted, if there is one (its
** channel's close(), else the socket), so one bad connection never stops a
** server; the listener's handle_error is not called.
*/
static void accept_failed(lua_State *L, int chan, int e)
{
    int top = lua_gettop(L);
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_ACCEPTED);   /* top+1 */
    lua_pushnil(L);
    lua_setiuservalue(L, lua_upvalueindex(UP_STATE), UV_ACCEPTED);
    ac_socket *ns = ac_tosock(L, top + 1);
    if (ns && sock_isclosed(ns))
        ns = NULL;
    const char *what = luaL_tolstring(L, e, NULL);                   /* top+2 */
    const char *tb = luaL_optstring(L, e + 1, "");
    const char *peer = NULL;
    ac_sockaddr a;
    if (ns) {
        if (sock_peername(ns->fd, &a) == 0)
            ac_pushaddrtext(L, &a);
        else
            lua_pushliteral(L, "its peer");
        peer = lua_tostring(L, -1);                                  /* top+3 */
    }
    ac_pushkey(L, K_LOG_INFO);
    lua_gettable(L, chan);
    lua_pushvalue(L, chan);
    if (peer)
        lua_pushfstring(L, "uncaptured error while accepting a connection, closing the connection from %s (%s)\n%s",
                        peer, what, tb);
    else
        lua_pushfstring(L, "uncaptured error while accepting a connection (%s)\n%s", what, tb);
    lua_pushliteral(L, "error");
    ac_push_msgh(L);
    lua_insert(L, -5);
    int h = lua_gettop(L) - 4;
    if (lua_pcall(L, 3, 0, h) != LUA_OK && !ac_unwrap_error(L, -1))
        lua_error(L);                        /* ExitNow or Ctrl-C in log_info */
    lua_settop(L, top + 1);
    if (ns && !sock_isclosed(ns)) {
        if (ac_push_channel_of(L, ns)) {     /* top+2: its channel */
            ac_push_msgh(L);
            ac_pushkey(L, K_CLOSE);
            lua_gettable(L, top + 2);
            lua_pushvalue(L, top + 2);
            if (lua_pcall(L, 1, 0, top + 3) != LUA_OK && !ac_unwrap_error(L, -1))
                lua_error(L);
            lua_settop(L, top + 2);
            if (ac_chansock(L, top + 2) == ns && ns->mapfd >= 0 && ns->ms) {
                /* its close() failed: take it out of the map by hand */
                ac_push_channel_of(L, ns);
                lua_pop(L, 1);
            }
        }
        ac_sock_close(L, ns);
    }
    lua_settop(L, top);
}

/*
** Call chan:handle_accept() for a listener: an error in it closes only the
** connection being accepted (accept_failed); ExitNow and Ctrl-C propagate.
*/
static void call_handle_accept(lua_State *L, int chan)
{
    lua_pushnil(L);
    lua_setiuservalue(L, lua_upvalueindex(UP_STATE), UV_ACCEPTED);
    ac_push_msgh(L);
    int h = lua_gettop(L);
    ac_pushkey(L, K_HANDLE_ACCEPT);
    lua_gettable(L, chan);
    lua_pushvalue(L, chan);
    if (lua_pcall(L, 1, 0, h) != LUA_OK) {
        if (!ac_unwrap_error(L, -1))
            lua_error(L);                    /* ExitNow, Ctrl-C, memory: leave as they are */
        accept_failed(L, chan, h + 2);
    } else {
        lua_pushnil(L);
        lua_setiuservalue(L, lua_upvalueindex(UP_STATE), UV_ACCEPTED);
    }
    lua_settop(L, h - 1);
}

/*
** handle_read_event, as Python's, for the channel at chan. The fields
** `accepting`, `connected` and `connecting` are read only where the socket
** itself says they can matter (it listens; a connect is under way), so the
** common case, a connected channel, goes straight to handle_read.
** Runs Lua code.
*/
int ac_chan_read_event(lua_State *L, int chan, ac_socket *s)
{
    uint32_t gen = s->gen;
    if ((s->flags & SF_LISTENING) && ac_rawbool(L, chan, K_ACCEPTING)) {
        /* take every pending connection (up to a bound), not one per pass */
        /* a listener shared with other processes takes one connection per
        ** pass: the others get their turn at a burst */
        int batch = (s->flags & SF_EXCLUSIVE) ? 1 : ACCEPT_BATCH;
        for (int i = 0; i < batch; i++) {
            s->flags &= ~SF_ACCEPTED;
            call_handle_accept(L, chan);
            s = ac_chan_same(L, chan, gen);
            if (s == NULL || !(s->flags & SF_ACCEPTED) || s->paused_until > 0 ||
                !ac_rawbool(L, chan, K_ACCEPTING))
                break;
        }
        return 0;
    }
    if ((s->flags & SF_CONNECTING) && !ac_chanbool(L, chan, K_CONNECTED) &&
        ac_rawbool(L, chan, K_CONNECTING)) {
        ac_call_method(L, chan, K_HANDLE_CONNECT_EVENT, 0);
        if (ac_chan_same(L, chan, gen) == NULL)
            return 0;
    }
    ac_call_method(L, chan, K_HANDLE_READ, 0);
    return 0;
}

/* handle_write_event, as Python's. Runs Lua code. */
int ac_chan_write_event(lua_State *L, int chan, ac_socket *s)
{
    if ((s->flags & SF_LISTENING) && ac_rawbool(L, chan, K_ACCEPTING))
        return 0;   /* a listener never gets a write event */
    if ((s->flags & SF_CONNECTING) && !ac_chanbool(L, chan, K_CONNECTED) &&
        ac_rawbool(L, chan, K_CONNECTING)) {
        uint32_t gen = s->gen;
        ac_call_method(L, chan, K_HANDLE_CONNECT_EVENT, 0);
        if (ac_chan_same(L, chan, gen) == NULL)
            return 0;
    }
    ac_call_method(L, chan, K_HANDLE_WRITE, 0);
    return 0;
}

static int lchan_handle_read_event(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "handle_read_event");
    lua_settop(L, 1);
    return ac_chan_read_event(L, 1, s);
}

static int lchan_handle_write_event(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "handle_write_event");
    lua_settop(L, 1);
    return ac_chan_write_event(L, 1, s);
}

/* dispatcher:fileno() */
static int lchan_fileno(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s))
        return 0;
    lua_pushinteger(L, s->fd);
    return 1;
}

static const luaL_Reg chan_funcs[] = {
    {"recv", lchan_recv}, {"send", lchan_send}, {"accept", lchan_accept},
    {"accept_socket", lchan_accept_socket},
    {"readable", lchan_readable}, {"writable", lchan_writable},
    {"handle_read_event", lchan_handle_read_event},
    {"handle_write_event", lchan_handle_write_event},
    {"handle_accept", lchan_handle_accept},
    {"handle_connect_event", lchan_handle_connect_event},
    {"fileno", lchan_fileno},
    {NULL, NULL}
};

static const luaL_Reg ds_funcs[] = {
    {"send", lds_send}, {"initiate_send", lds_initiate_send}, {"handle_write", lds_initiate_send},
    {"writable", lds_writable}, {"out_buffer_size", lds_out_buffer_size},
    {"close_when_done", lds_close_when_done}, {"shutdown_when_done", lds_shutdown_when_done},
    {"handle_close", lds_handle_close},
    {NULL, NULL}
};

/* adds core.dispatcher and core.dispatcher_with_send to the module table on top */
void ac_chan_open(lua_State *L, int st, int mt)
{
    ac_stock_register(AC_STOCK_READABLE, lchan_readable);
    ac_stock_register(AC_STOCK_WRITABLE, lchan_writable);
    ac_stock_register(AC_STOCK_DS_WRITABLE, lds_writable);
    ac_stock_register(AC_STOCK_READ_EVENT, lchan_handle_read_event);
    ac_stock_register(AC_STOCK_WRITE_EVENT, lchan_handle_write_event);
    ac_add_pass_hook(resume_paused);
    lua_newtable(L);
    ac_setfuncs(L, chan_funcs, st, mt);
    lua_setfield(L, -2, "dispatcher");
    lua_newtable(L);
    ac_setfuncs(L, ds_funcs, st, mt);
    lua_setfield(L, -2, "dispatcher_with_send");
}
