/*
** lloop.c: the event loop. One pass: ask the channels whose readable() or
** writable() are Lua methods, wait (never past the next timer), dispatch what
** fired, run the timers that are due.
**
** A pass serves one map through its map state (lreg.c): the loop finds a
** channel with map[fd] and holds no reference to it. Pass hooks (lreg.h) run
** first and may shorten the wait. A channel whose predicates are the stock
** ones costs nothing per pass:
** its interest is recomputed only when its state changes (an event for it, a
** send that buffers, a connect, a listen), and with epoll nothing is asked of
** the kernel unless that interest changed. Every fired event carries the
** registration's generation; an event whose channel was closed, or whose fd
** now belongs to another channel, is dropped.
**
** Errors in callbacks go to the channel's handle_error(err, traceback) and
** the loop goes on; ExitNow and Ctrl-C ("interrupted!") leave the loop and are
** re-raised to its caller.
*/
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "lloop.h"
#include "lerror.h"
#include "lmode.h"
#include "ltimer.h"
#include "lchan.h"
#include "lchat.h"
#include "lresolve.h"
#include "ltimeout.h"
#include "ltask.h"
#include "lstream.h"

/* stack slots of core.loop */
enum { L_MAP = 1, L_TIMEOUT, L_COUNT, L_BACKEND, L_MS, L_MSGH, L_DISPATCH, L_PREDS, L_SCRATCH,
       L_BASE = L_SCRATCH };

/*
** After a callback failed with the value on top: send it where Python's
** asyncore would. Returns 1 (value left on top) when the loop must re-raise
** it: ExitNow, Ctrl-C, or an error the message handler never saw (memory).
*/
static int route_error(lua_State *L, int chan, ac_mapstate *ms, int fd, uint32_t gen)
{
    int e = lua_gettop(L);
    if (!ac_unwrap_error(L, e))
        return 1;
    /* e: wrapper, e+1: err, e+2: traceback */
    int status;
    if (ac_is_errorobj(L, e + 1)) {
        lua_getfield(L, e + 1, "errno");
        int en = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (ac_is_disconnect(en)) {
            if (ac_still(L, chan, ms, fd, gen) == NULL) {
                lua_settop(L, e - 1);
                return 0;
            }
            lua_getfield(L, chan, "handle_close");
            lua_pushvalue(L, chan);
            status = lua_pcall(L, 1, 0, L_MSGH);
            goto done;
        }
    }
    lua_getfield(L, chan, "handle_error");
    lua_pushvalue(L, chan);
    lua_pushvalue(L, e + 1);
    lua_pushvalue(L, e + 2);
    status = lua_pcall(L, 3, 0, L_MSGH);
done:
    if (status != LUA_OK) {
        int f = lua_gettop(L);
        if (!ac_unwrap_error(L, f)) {
            lua_replace(L, e);
            lua_settop(L, e);
            return 1;
        }
        /* handle_error itself failed: say so and close the channel */
        fprintf(stderr, "asyncore: error in handle_error, closing channel: %s\n",
                luaL_tolstring(L, f + 1, NULL));
        fflush(stderr);
        ac_socket *s = ac_still(L, chan, ms, fd, gen);
        if (s) {
            lua_getfield(L, chan, "close");
            lua_pushvalue(L, chan);
            if (lua_pcall(L, 1, 0, L_MSGH) != LUA_OK) {
                s = ac_still(L, chan, ms, fd, gen);
                if (s)
                    ac_sock_close(L, s);
            }
        }
    }
    /* a failed async_chat handler may have cut a batch short: end it, and
    ** tell the poller about the output the batch queued */
    ac_socket *s = ac_still(L, chan, ms, fd, gen);
    if (s)
        ac_chat_after_error(L, chan);
    lua_settop(L, e - 1);
    return 0;
}

/*
** The events of one channel, as Python's readwrite(): read, write, priority,
** then hang-up/error. Runs under lua_pcall, so one failure ends this channel's
** turn. Hang-up with data still readable is left to recv(), which sees the
** end of stream after the last byte: nothing the peer sent is lost.
** Args: chan, events, ms, s (checked by the caller just before: no Lua code
** has run since).
*/
static int loop_dispatch(lua_State *L)
{
    unsigned ev = (unsigned)lua_tointeger(L, 2);
    ac_mapstate *ms = lua_touserdata(L, 3);
    ac_socket *s = lua_touserdata(L, 4);
    uint32_t gen = s->gen;
    int fd = s->fd;
    lua_settop(L, 1);
    if (ev & AC_EV_TIMEOUT) {   /* expired timeouts: the channel's _timeout_due(kind) */
        static const char *const names[] = {"connect", "handshake", "idle"};
        if (s->to_due & TO_OP) {    /* a stream's read: its task is woken (no Lua runs) */
            s->to_due &= ~TO_OP;
            ac_stream_timed_out(L, 1);
        }
        for (int k = 0; k < 3; k++) {
            if (!(s->to_due & (1u << k)))
                continue;
            s->to_due &= ~(1u << k);
            lua_getfield(L, 1, "_timeout_due");
            lua_pushvalue(L, 1);
            lua_pushstring(L, names[k]);
            lua_call(L, 2, 0);
            if ((s = ac_still(L, 1, ms, fd, gen)) == NULL)
                return 0;
        }
        return 0;
    }
    if (s->flags & SF_TP_EVENTS) {   /* the transport first (a TLS handshake) */
        ev = s->tp->event(L, 1, s, ev);
        lua_settop(L, 1);
        if (ev == 0 || (s = ac_still(L, 1, ms, fd, gen)) == NULL)
            return 0;
        if (s->flags & SF_RD_OFF)    /* the transport read for itself: the channel does not */
            ev &= ~AC_EV_READ;
    }
    if (ev & AC_EV_READ) {
        if (s->mode & CM_RE_CUSTOM)
            ac_call_method(L, 1, K_HANDLE_READ_EVENT, 0);
        else
            ac_chan_read_event(L, 1, s);
        if (ev == AC_EV_READ)
            return 0;
        if ((s = ac_still(L, 1, ms, fd, gen)) == NULL)
            return 0;
    }
    if (ev & AC_EV_WRITE) {
        if (s->mode & CM_WE_CUSTOM)
            ac_call_method(L, 1, K_HANDLE_WRITE_EVENT, 0);
        else
            ac_chan_write_event(L, 1, s);
        if ((s = ac_still(L, 1, ms, fd, gen)) == NULL)
            return 0;
    }
    if (ev & AC_EV_PRI) {
        ac_call_method(L, 1, K_HANDLE_EXPT_EVENT, 0);
        if ((s = ac_still(L, 1, ms, fd, gen)) == NULL)
            return 0;
    }
    if ((ev & (AC_EV_HUP | AC_EV_ERR)) && !(ev & AC_EV_READ))
        ac_call_method(L, 1, K_HANDLE_CLOSE, 0);
    return 0;
}

/* Lua predicates of one channel: returns its interest mask. Args: chan. */
static int loop_predicates(lua_State *L)
{
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s))
        return 0;
    unsigned m = ac_stock_mask(L, 1, s);
    if ((s->mode & CM_RD_CUSTOM) && !(s->flags & SF_RD_OFF)) {
        ac_pushkey(L, K_READABLE);
        lua_gettable(L, 1);
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        if (lua_toboolean(L, -1) && s->paused_until <= 0 && !(s->flags & SF_RD_OFF))
            m |= AC_EV_READ;
        lua_pop(L, 1);
    }
    if ((s->mode & CM_WR_MASK) == CM_WR_CUSTOM) {
        ac_pushkey(L, K_WRITABLE);
        lua_gettable(L, 1);
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        if (lua_toboolean(L, -1) && !ac_rawbool(L, 1, K_ACCEPTING))
            m |= AC_EV_WRITE;
        lua_pop(L, 1);
    }
    if (s->tp->interest && CM_CUSTOM_PRED(s->mode))
        m = s->tp->interest(s, m);
    lua_pushinteger(L, m);
    return 1;
}

/*
** The scratch array of this loop() call (slot L_SCRATCH), grown to n entries.
** Each loop() call has its own, so a handler that runs a nested loop cannot
** overwrite the events its caller is still dispatching.
*/
static struct ac_fired *pass_scratch(lua_State *L, int n)
{
    size_t have = lua_rawlen(L, L_SCRATCH) / sizeof(struct ac_fired);
    if ((size_t)n <= have)
        return lua_touserdata(L, L_SCRATCH);
    size_t want = have * 2 > (size_t)n ? have * 2 : (size_t)n;
    if (want < 64)
        want = 64;
    void *p = lua_newuserdatauv(L, want * sizeof(struct ac_fired), 0);
    lua_replace(L, L_SCRATCH);
    return p;
}

static int noop(lua_State *L)
{
    (void)L;
    return 0;
}

/*
** Deliver events ev to the channel at chan (its socket s, just checked).
** Returns 1 with the value to re-raise on top when the loop must end.
** No interest update after the handlers: a stock channel's interest changes
** only through the core's own calls (send, flush, connect, listen, close, the
** constructor), which update it at once.
*/
static int dispatch(lua_State *L, ac_mapstate *ms, int chan, ac_socket *s, unsigned ev)
{
    int fd = s->fd;
    uint32_t gen = s->gen;
    int status;
    if (s->flags & SF_RD_OFF) {
        /* reading paused or over: no read event for the channel (a transport with
        ** events of its own still gets them: loop_dispatch strips them after it);
        ** a hang-up while paused waits too, unless it is an error: what the peer
        ** sent before it is still to be read */
        if (!(s->flags & SF_TP_EVENTS))
            ev &= ~AC_EV_READ;
        if ((s->flags & SF_RD_PAUSED) && !(ev & AC_EV_ERR))
            ev &= ~AC_EV_HUP;
        if (ev == 0)
            return 0;
    }
    if (ev == AC_EV_READ && (s->flags & SF_STREAM) &&
        !(s->flags & (SF_LISTENING | SF_CONNECTING | SF_TP_EVENTS)) && !(s->mode & CM_RE_CUSTOM) &&
        ac_stream_readable(L, chan))
        return 0;                     /* a task waits to read: it reads the socket itself */
    if ((ev == AC_EV_READ || ev == AC_EV_WRITE) &&
        !(s->flags & (SF_LISTENING | SF_CONNECTING | SF_TP_EVENTS)) &&
        !(s->mode & (ev == AC_EV_READ ? CM_RE_CUSTOM : CM_WE_CUSTOM))) {
        /* the common case: the stock event handler would only call this */
        ac_pushkey(L, ev == AC_EV_READ ? K_HANDLE_READ : K_HANDLE_WRITE);
        lua_gettable(L, chan);
        lua_pushvalue(L, chan);
        status = lua_pcall(L, 1, 0, L_MSGH);
    } else {
        lua_pushvalue(L, L_DISPATCH);
        lua_pushvalue(L, chan);
        lua_pushinteger(L, ev);
        lua_pushlightuserdata(L, ms);
        lua_pushlightuserdata(L, s);
        status = lua_pcall(L, 4, 0, L_MSGH);
    }
    if (status != LUA_OK)
        return route_error(L, chan, ms, fd, gen);
    return 0;
}

/*
** Take one of the map state's lists whole (fds of sockets carrying `flag`):
** the flags are cleared and the list emptied, so a handler may list its
** socket again, for the next pass. Returns the (fd, gen) pairs in scratch.
*/
static int take_list(lua_State *L, ac_mapstate *ms, int *list, int *count, unsigned flag,
                     struct ac_fired **snapp)
{
    int n = *count;
    struct ac_fired *snap = pass_scratch(L, n);
    for (int i = 0; i < n; i++) {
        ac_socket *s = ms->socks[list[i]];
        s->flags &= ~flag;
        snap[i].fd = list[i];
        snap[i].gen = s->gen;
    }
    *count = 0;
    *snapp = snap;
    return n;
}

/* the channel of a taken entry, at top+1, if it is still that registration */
static ac_socket *taken_channel(lua_State *L, ac_mapstate *ms, int top, const struct ac_fired *e)
{
    lua_settop(L, top);
    if (lua_rawgeti(L, L_MAP, e->fd) != LUA_TTABLE)
        return NULL;
    return ac_still(L, top + 1, ms, e->fd, e->gen);
}

/*
** Input the poller cannot see (TLS records a transport read ahead, frames an
** async_chat held while its reading was paused): a read event for each listed
** socket whose reads are wanted and that still holds something.
*/
static int deliver_pending(lua_State *L, ac_mapstate *ms, int top)
{
    struct ac_fired *snap;
    int n = take_list(L, ms, ms->pend, &ms->npend, SF_TP_LISTED, &snap);
    for (int i = 0; i < n; i++) {
        ac_socket *s = taken_channel(L, ms, top, &snap[i]);
        if (s == NULL || !(s->flags & (SF_TP_PENDING | SF_HELD)))
            continue;
        if (!(ms->regs[s->fd].mask & AC_EV_READ))
            continue;   /* listed again when reads are wanted (ac_ms_setmask) */
        if ((s->flags & SF_RD_OFF) && !(s->flags & SF_TP_EVENTS))
            continue;   /* listed again by resume_reading (a handshake still gets its turn) */
        if (!(s->flags & SF_HELD) && (s->tp->pending == NULL || !s->tp->pending(s))) {
            s->flags &= ~SF_TP_PENDING;
            continue;
        }
        if (dispatch(L, ms, top + 1, s, AC_EV_READ))
            return 1;
    }
    return 0;
}

/* channels whose timeouts expired (ltimeout.c's pass hook listed them) */
static int deliver_expired(lua_State *L, ac_mapstate *ms, int top)
{
    struct ac_fired *snap;
    int n = take_list(L, ms, ms->expired, &ms->nexpired, SF_TO_LISTED, &snap);
    for (int i = 0; i < n; i++) {
        ac_socket *s = taken_channel(L, ms, top, &snap[i]);
        if (s != NULL && s->to_due != 0 && dispatch(L, ms, top + 1, s, AC_EV_TIMEOUT))
            return 1;
    }
    return 0;
}

/*
** A signal handler may have asked Lua to stop: the standalone interpreter's
** Ctrl-C handler sets a hook that raises "interrupted!" at the next Lua call.
** While the loop waits in C no Lua call comes, so make one: a hook that is
** pending runs now (and may raise, leaving the loop); without a hook this
** costs a test.
*/
static void run_pending_hook(lua_State *L)
{
    if (lua_gethook(L) != NULL) {
        lua_pushcfunction(L, noop);
        lua_call(L, 0, 0);
    }
}

/*
** One pass over map state ms (at L_MS). Returns 1 with the value to re-raise
** on top when the loop must end with an error, else 0. Runs Lua code.
*/
static int loop_pass(lua_State *L, ac_state *S, ac_mapstate *ms, double timeout)
{
    int64_t wait_us = timeout < 0 ? -1 : ac_us_until(timeout, 0);
    ac_monotime now = clock_now();
    ac_io_clock = now;

    if (ms->fork_gen != ac_fork_count) {   /* a fork() since the last pass: this is the child */
        int err = ac_ms_fresh(ms);
        if (err)
            return ac_raise(L, ms->p.ops->name, err);
    }
    if (ms->pred_version != S->pred_version)
        ac_refresh_modes(L, S, ms, L_MAP);
    ac_run_pass_hooks(L, ms, L_MAP, now, &wait_us);

    /* channels with Lua predicates, from a snapshot (a predicate may close any) */
    if (ms->ncustom > 0) {
        int n = ms->ncustom;
        struct ac_fired *snap = pass_scratch(L, n);
        for (int i = 0; i < n; i++) {
            snap[i].fd = ms->custom[i];
            snap[i].gen = ms->regs[ms->custom[i]].gen;
        }
        int top = lua_gettop(L);
        for (int i = 0; i < n; i++) {
            lua_settop(L, top);
            int fd = snap[i].fd;
            if (lua_rawgeti(L, L_MAP, fd) != LUA_TTABLE)
                continue;
            int chan = top + 1;
            if (ac_still(L, chan, ms, fd, snap[i].gen) == NULL)
                continue;
            lua_pushvalue(L, L_PREDS);
            lua_pushvalue(L, chan);
            if (lua_pcall(L, 1, 1, L_MSGH) != LUA_OK) {
                if (route_error(L, chan, ms, fd, snap[i].gen))
                    return 1;
                continue;
            }
            unsigned m = (unsigned)lua_tointeger(L, -1);
            ac_socket *s = ac_still(L, chan, ms, fd, snap[i].gen);
            if (s) {
                int err = ac_ms_setmask(ms, fd, m);
                if (err)
                    ac_raise_setmask(L, ms->p.ops->name, fd, err);
            }
        }
        lua_settop(L, top);
    }

    wait_us = ac_timers_wait_us(S, now, wait_us);
    if (ms->npend > 0 || S->nready > 0)
        wait_us = 0;   /* input held, or tasks to run: look, but do not sleep */

    int max = ms->nsocks + 1;
    struct ac_fired *fired = pass_scratch(L, max);
    int top = lua_gettop(L);
    int nout = 0;
    run_pending_hook(L);   /* a Ctrl-C that came while Lua ran no code */
    int err = ms->p.ops->wait(&ms->p, wait_us, fired, max, &nout);
    if (err == EINTR)
        run_pending_hook(L);   /* a Ctrl-C that cut the wait short */
    else if (err)
        return ac_raise(L, ms->p.ops->name, err);

    S->handled += nout + ms->npend + ms->nexpired + S->nready;
    for (int i = 0; i < nout; i++) {
        lua_settop(L, top);
        int fd = fired[i].fd;
        if (lua_rawgeti(L, L_MAP, fd) != LUA_TTABLE) {
            ac_socket *is = fd < ms->nregs ? ms->socks[fd] : NULL;
            if (is && (is->flags & SF_INTERNAL) && is->gen == fired[i].gen)
                is->tp->event(L, 0, is, fired[i].events);   /* the resolver's: C only */
            continue;
        }
        int chan = top + 1;
        ac_socket *s = ac_still(L, chan, ms, fd, fired[i].gen);
        if (s == NULL)
            continue;
        if (dispatch(L, ms, chan, s, fired[i].events))
            return 1;
    }
    if (ms->npend > 0 && deliver_pending(L, ms, top))
        return 1;
    if (ms->nexpired > 0 && deliver_expired(L, ms, top))
        return 1;
    lua_settop(L, L_BASE);

    if (S->ntimers > 0 && ac_timers_run(L, S, L_MSGH))
        return 1;
    if (S->nready > 0 && ac_tasks_run(L, L_MSGH))
        return 1;
    return 0;
}

static int map_empty(lua_State *L)
{
    lua_pushnil(L);
    if (lua_next(L, L_MAP)) {
        lua_pop(L, 2);
        return 0;
    }
    return 1;
}

/*
** core.loop(map, timeout, count, backend): passes until `count` are done
** (nil: no limit), or the map is empty and no timer is pending. `timeout`
** bounds each wait (nil or negative: no bound). With count = 1 and
** `once` semantics (poll/poll2), a pass runs even with an empty map.
*/
static int loop_body(lua_State *L)
{
    ac_state *S = STATE(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    double timeout = luaL_optnumber(L, 2, 30.0);
    if (lua_isnil(L, 2))
        timeout = -1;
    lua_Integer count = luaL_optinteger(L, 3, -1);
    const char *backend = luaL_optstring(L, 4, NULL);
    int once = lua_toboolean(L, 5);
    lua_settop(L, L_BACKEND);
    ac_mapstate *ms = ac_getmapstate(L, L_MAP, backend);   /* L_MS */
    ac_push_msgh(L);                                        /* L_MSGH */
    ac_copyupvalues(L);
    lua_pushcclosure(L, loop_dispatch, AC_NUP);             /* L_DISPATCH */
    ac_copyupvalues(L);
    lua_pushcclosure(L, loop_predicates, AC_NUP);           /* L_PREDS */
    lua_newuserdatauv(L, 64 * sizeof(struct ac_fired), 0);  /* L_SCRATCH */
    S->handled = 0;
    if (once) {
        if (!map_empty(L) || S->ntimers > 0 || S->ntasks > 0)
            if (loop_pass(L, S, ms, timeout))
                return lua_error(L);
        return 0;
    }
    while (count != 0) {
        if (ms->shutdown && map_empty(L)) {
            ms->shutdown = 0;          /* asyncore.shutdown() is over: timers and tasks left do not count */
            break;
        }
        if (S->ntimers == 0 && S->ntasks == 0 && !ac_resolve_busy() && map_empty(L))
            break;
        if (loop_pass(L, S, ms, timeout))
            return lua_error(L);
        if (count > 0)
            count--;
    }
    return 0;
}

/*
** core.loop(...): loop_body, counted in S->loop_depth while it runs (the
** blocking-looking task calls ask it: inside a loop they must not run one of
** their own). Whatever ends it, the count comes down; errors pass unchanged.
*/
static int lloop_loop(lua_State *L)
{
    ac_state *S = STATE(L);
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(AC_NUP + 1));   /* loop_body, made once */
    lua_insert(L, 1);
    S->loop_depth++;
    int st = lua_pcall(L, n, 0, 0);
    S->loop_depth--;
    if (st != LUA_OK)
        return lua_error(L);
    return 0;
}

/* core.handled(): events the last loop() handled (asyncore.step) */
static int lloop_handled(lua_State *L)
{
    lua_pushinteger(L, STATE(L)->handled);
    return 1;
}

/* core.backend_fd(map): the descriptor of the map's poller, or nil */
static int lloop_backend_fd(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_mapstate *ms = ac_getmapstate(L, 1, NULL);
    int fd = ms->p.ops->fd(&ms->p);
    if (fd < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, fd);
    return 1;
}

/* core.next_timeout(map): seconds until the library has work for a pass of
** the map (0: it has now), or nil when nothing is scheduled. Changes nothing. */
static int lloop_next_timeout(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_state *S = STATE(L);
    ac_mapstate *ms = ac_getmapstate(L, 1, NULL);
    ac_monotime now = clock_now();
    int64_t us = -1;
    if (ms->npend > 0 || ms->nexpired > 0 || S->nready > 0)
        us = 0;
    us = ac_timers_wait_us(S, now, us);
    int64_t t = ac_timeouts_wait_us(ms, now);
    if (t >= 0 && (us < 0 || t < us))
        us = t;
    t = ac_resolve_wait_us();
    if (t >= 0 && (us < 0 || t < us))
        us = t;
    if (us < 0)
        lua_pushnil(L);
    else
        lua_pushnumber(L, (double)us / 1e6);
    return 1;
}

/* core.shutdown_mark(map): loop() on the map ends once the map is empty */
static int lloop_shutdown_mark(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_mapstate *ms = ac_getmapstate(L, 1, NULL);
    ms->shutdown = lua_toboolean(L, 2);
    return 0;
}

/* core.backends(): the compiled backends, best first */
static int lloop_backends(lua_State *L)
{
    lua_newtable(L);
    for (int i = 0; poller_list[i]; i++) {
        lua_pushstring(L, poller_list[i]->name);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static const luaL_Reg loop_funcs[] = {
    {"backends", lloop_backends}, {"handled", lloop_handled}, {"backend_fd", lloop_backend_fd},
    {"next_timeout", lloop_next_timeout}, {"shutdown_mark", lloop_shutdown_mark},
    {NULL, NULL}
};

/* adds the loop functions to the module table on top */
void ac_loop_open(lua_State *L, int st, int mt)
{
    ac_setfuncs(L, loop_funcs, st, mt);
    /* core.loop: the standard upvalues, then loop_body (with them too) */
    ac_pushupvalues(L, st, mt);
    ac_pushupvalues(L, st, mt);
    lua_pushcclosure(L, loop_body, AC_NUP);
    lua_pushcclosure(L, lloop_loop, AC_NUP + 1);
    lua_setfield(L, -2, "loop");
}
