/*
** lloop.c: the event loop. One pass: ask the channels whose readable() or
** writable() are Lua methods, wait (never past the next timer), dispatch what
** fired, run the timers that are due.
**
** Each map (socket_map or a script's own table) has a map state: a poller and
** the registration of every channel added to it. The map stays the truth for
** the script: the loop finds a channel with map[fd] and holds no reference to
** it. A channel whose predicates are the stock ones costs nothing per pass:
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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include "lac.h"
#include "clock.h"

#define MAPSTATE_MT "asyncore.mapstate"

/* stack slots of core.loop */
enum { L_MAP = 1, L_TIMEOUT, L_COUNT, L_BACKEND, L_MS, L_MSGH, L_DISPATCH, L_PREDS, L_SCRATCH,
       L_BASE = L_SCRATCH };

int ac_rawbool(lua_State *L, int t, enum ac_key k)
{
    t = lua_absindex(L, t);
    ac_pushkey(L, k);
    int b = lua_rawget(L, t) > LUA_TBOOLEAN || lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

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

ac_socket *ac_chansock(lua_State *L, int chan)
{
    if (lua_type(L, chan) != LUA_TTABLE)
        return NULL;
    chan = lua_absindex(L, chan);
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, chan);
    ac_socket *s = ac_tosock(L, -1);
    lua_pop(L, 1);
    return s;
}

ac_socket *ac_checkchan(lua_State *L, int chan, const char *op)
{
    luaL_checktype(L, chan, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, chan);
    if (s == NULL)
        luaL_error(L, "%s: the dispatcher has no socket", op);
    if (sock_isclosed(s))
        ac_raise_closed(L, op);
    return s;
}

/* ---- map states ---- */

static void ms_remove_custom(ac_mapstate *ms, ac_socket *s)
{
    if (s->cidx < 0)
        return;
    int last = ms->custom[--ms->ncustom];
    ms->custom[s->cidx] = last;
    if (ms->socks[last])
        ms->socks[last]->cidx = s->cidx;
    s->cidx = -1;
}

void ms_unregister(ac_mapstate *ms, ac_socket *s)
{
    int fd = s->fd;
    if (fd >= 0 && fd < ms->nregs && ms->socks[fd] == s) {
        if (ms->regs[fd].mask)
            ms->p.ops->set(&ms->p, fd, ms->regs[fd].mask, 0);
        ms->regs[fd].mask = 0;
        ms->socks[fd] = NULL;
        ms->nsocks--;
    }
    ms_remove_custom(ms, s);
    if (s->paused_until > 0) {
        s->paused_until = 0;
        ms->npaused--;
    }
    s->ms = NULL;
}

/* set fd's registered mask; 0 or errno */
static int ms_setmask(ac_mapstate *ms, int fd, unsigned mask)
{
    unsigned old = ms->regs[fd].mask;
    if (old == mask)
        return 0;
    int err = ms->p.ops->set(&ms->p, fd, old, mask);
    if (err == 0)
        ms->regs[fd].mask = mask;
    return err;
}

static int raise_setmask(lua_State *L, const char *backend, int fd, int err)
{
    if (err == EINVAL && strcmp(backend, "select") == 0 && fd >= FD_SETSIZE) {
        char msg[96];
        snprintf(msg, sizeof msg, "descriptor %d too large for select() (FD_SETSIZE is %d)", fd,
                 FD_SETSIZE);
        ac_pusherror(L, "select", err, msg);
        return lua_error(L);
    }
    return ac_raise(L, backend, err);
}

static int ms_grow(ac_mapstate *ms, int fd)
{
    if (fd < ms->nregs)
        return 0;
    int n = ms->nregs ? ms->nregs : 64;
    while (n <= fd)
        n *= 2;
    struct ac_reg *r = realloc(ms->regs, (size_t)n * sizeof *r);
    if (r == NULL)
        return ENOMEM;
    ms->regs = r;
    ac_socket **k = realloc(ms->socks, (size_t)n * sizeof *k);
    if (k == NULL)
        return ENOMEM;
    ms->socks = k;
    for (int i = ms->nregs; i < n; i++) {
        r[i].gen = 0;
        r[i].mask = 0;
        k[i] = NULL;
    }
    ms->nregs = n;
    ms->p.regs = r;
    ms->p.nregs = n;
    return 0;
}

/* release everything a map state holds; it is left empty (idempotent) */
static void ms_free(ac_mapstate *ms)
{
    for (int fd = 0; fd < ms->nregs; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s) {
            s->ms = NULL;
            s->cidx = -1;
            s->paused_until = 0;
        }
    }
    if (ms->p.ops)
        ms->p.ops->close(&ms->p);
    ms->p.ops = NULL;
    free(ms->regs);
    free(ms->socks);
    free(ms->custom);
    memset(ms, 0, sizeof *ms);
}

static int ms_gc(lua_State *L)
{
    ms_free(luaL_checkudata(L, 1, MAPSTATE_MT));
    return 0;
}

/* move every registration to a new backend; on failure keep the old one */
static int ms_switch(lua_State *L, ac_mapstate *ms, const struct poller_ops *ops)
{
    struct poller np;
    np.ops = ops;
    np.impl = NULL;
    np.regs = ms->regs;
    np.nregs = ms->nregs;
    int err = ops->open(&np);
    if (err)
        return ac_raise(L, ops->name, err);
    for (int fd = 0; fd < ms->nregs; fd++) {
        if (ms->regs[fd].mask == 0)
            continue;
        err = ops->set(&np, fd, 0, ms->regs[fd].mask);
        if (err) {
            ops->close(&np);
            return raise_setmask(L, ops->name, fd, err);
        }
    }
    if (ms->p.ops)
        ms->p.ops->close(&ms->p);
    ms->p = np;
    return 0;
}

static const struct poller_ops *check_backend(lua_State *L, const char *backend)
{
    const struct poller_ops *ops = poller_find(backend);
    if (ops == NULL) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (int i = 0; poller_list[i]; i++) {
            luaL_addstring(&b, i ? ", " : "");
            luaL_addstring(&b, poller_list[i]->name);
        }
        luaL_pushresult(&b);
        luaL_error(L, "unknown or unavailable backend '%s' (here: auto, %s)", backend,
                   lua_tostring(L, -1));
    }
    return ops;
}

/*
** The map state of the table at `map`, created on first use; pushes it. With
** a backend name, the state is moved to that backend if it uses another.
*/
ac_mapstate *ac_getmapstate(lua_State *L, int map, const char *backend)
{
    map = lua_absindex(L, map);
    lua_getiuservalue(L, lua_upvalueindex(1), UV_MAPS);
    lua_pushvalue(L, map);
    lua_rawget(L, -2);                          /* maps, ms? */
    ac_mapstate *ms = luaL_testudata(L, -1, MAPSTATE_MT);
    if (ms == NULL) {
        const struct poller_ops *ops = check_backend(L, backend ? backend : "auto");
        lua_pop(L, 1);
        ms = lua_newuserdatauv(L, sizeof *ms, 0);
        memset(ms, 0, sizeof *ms);
        luaL_setmetatable(L, MAPSTATE_MT);
        struct poller np = {ops, NULL, NULL, 0};
        int err = ops->open(&np);
        if (err)
            ac_raise(L, ops->name, err);
        ms->p = np;
        lua_pushvalue(L, map);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);                      /* maps[map] = ms */
    } else if (backend != NULL) {
        const struct poller_ops *ops = check_backend(L, backend);
        if (ops != ms->p.ops)
            ms_switch(L, ms, ops);
    }
    lua_remove(L, -2);
    return ms;
}

/* the channel's interest as the stock predicates see it */
static unsigned stock_mask(lua_State *L, int chan, ac_socket *s)
{
    unsigned m = 0;
    if (!(s->mode & CM_RD_CUSTOM) && s->paused_until <= 0)
        m |= AC_EV_READ;
    unsigned w = s->mode & CM_WR_MASK;
    if (w != CM_WR_CUSTOM) {
        if (w == CM_WR_TRUE)
            m |= AC_EV_WRITE;
        else if (w == CM_WR_SEND ? buffer_len(&s->out) > 0 : ac_chat_wants_write(s))
            m |= AC_EV_WRITE;
        else if (s->flags & SF_CONNECTING)   /* "not connected": the connect is under way */
            m |= AC_EV_WRITE;
        if ((m & AC_EV_WRITE) && (s->flags & SF_LISTENING) && ac_rawbool(L, chan, K_ACCEPTING))
            m &= ~AC_EV_WRITE;
    }
    return m;
}

/*
** Recompute a stock channel's interest after its state changed. Channels with
** Lua predicates are asked every pass instead. May raise (a poller error).
*/
void ac_update_interest(lua_State *L, int chan, ac_socket *s)
{
    ac_mapstate *ms = s->ms;
    if (ms == NULL || CM_CUSTOM_PRED(s->mode))
        return;
    unsigned m = stock_mask(L, chan, s);
    if (m != ms->regs[s->fd].mask) {
        int err = ms_setmask(ms, s->fd, m);
        if (err)
            raise_setmask(L, ms->p.ops->name, s->fd, err);
    }
}

static unsigned find_mode(lua_State *L, int chan)
{
    unsigned mode = 0;
    ac_pushkey(L, K_READABLE);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != ac_stock_readable)
        mode |= CM_RD_CUSTOM;
    ac_pushkey(L, K_WRITABLE);
    lua_gettable(L, chan);
    lua_CFunction w = lua_tocfunction(L, -1);
    if (w == ac_stock_writable)
        mode |= CM_WR_TRUE;
    else if (w == ac_stock_ds_writable)
        mode |= CM_WR_SEND;
    else if (w == ac_stock_chat_writable)
        mode |= CM_WR_CHAT;
    else
        mode |= CM_WR_CUSTOM;
    ac_pushkey(L, K_HANDLE_READ_EVENT);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != ac_stock_read_event)
        mode |= CM_RE_CUSTOM;
    ac_pushkey(L, K_HANDLE_WRITE_EVENT);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != ac_stock_write_event)
        mode |= CM_WE_CUSTOM;
    lua_pop(L, 4);
    return mode;
}

/* argument 2 of add_channel/del_channel: the map given, else self._map, else socket_map */
static void check_map_arg(lua_State *L)
{
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        ac_pushkey(L, K_MAP);
        lua_gettable(L, 1);
        if (lua_isnil(L, 2)) {
            lua_pop(L, 1);
            lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_SOCKETMAP);
        }
    }
    luaL_checktype(L, 2, LUA_TTABLE);
}

/* is the value at idx the name of a method that makes up a channel's mode? */
int ac_is_mode_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TSTRING &&
           (lua_rawequal(L, idx, KEY(K_READABLE)) || lua_rawequal(L, idx, KEY(K_WRITABLE)) ||
            lua_rawequal(L, idx, KEY(K_HANDLE_READ_EVENT)) ||
            lua_rawequal(L, idx, KEY(K_HANDLE_WRITE_EVENT)));
}

/*
** Read which of the channel's predicates and event methods are the stock ones
** (its mode) and set its registration to match: stock channels get their
** interest now, the others join the list whose predicates each pass calls.
** Returns 0, or an errno with *mask set when the poller refused the interest.
*/
static int ms_apply_mode(lua_State *L, int chan, ac_mapstate *ms, ac_socket *s, int *mask)
{
    *mask = 0;
    s->mode = find_mode(L, chan);
    if ((s->mode & CM_WR_MASK) == CM_WR_CHAT)
        ac_chat_attach(L, chan, s);
    if (CM_CUSTOM_PRED(s->mode)) {
        if (s->cidx < 0) {
            if (ms->ncustom == ms->capcustom) {
                int *c = realloc(ms->custom, (size_t)ms->capcustom * 2 * sizeof *c);
                if (c == NULL)
                    return ENOMEM;
                ms->custom = c;
                ms->capcustom *= 2;
            }
            s->cidx = ms->ncustom;
            ms->custom[ms->ncustom++] = s->fd;
        }
        return 0;
    }
    ms_remove_custom(ms, s);
    int err = ms_setmask(ms, s->fd, stock_mask(L, chan, s));
    *mask = err != 0;
    return err;
}

/* raise what ms_apply_mode returned: the poller's refusal, or `op` out of memory */
static int raise_mode_error(lua_State *L, ac_mapstate *ms, int fd, int err, int mask, const char *op)
{
    return mask ? raise_setmask(L, ms->p.ops->name, fd, err) : ac_raise(L, op, err);
}

/*
** A predicate or event method was set on a class since the modes of this
** map's channels were read: read them again. Runs before a pass.
*/
static void ms_refresh_modes(lua_State *L, ac_state *S, ac_mapstate *ms, int map)
{
    ms->pred_version = S->pred_version;
    int top = lua_gettop(L);
    for (int fd = 0; fd < ms->nregs; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s == NULL)
            continue;
        lua_settop(L, top);
        if (lua_rawgeti(L, map, fd) != LUA_TTABLE || ac_chansock(L, top + 1) != s)
            continue;
        int mask;
        int err = ms_apply_mode(L, top + 1, ms, s, &mask);
        if (err)
            raise_mode_error(L, ms, fd, err, mask, "loop");
    }
    lua_settop(L, top);
}

/*
** dispatcher.__newindex(self, key, value): a field new to the instance. When
** it overrides readable, writable, handle_read_event or handle_write_event of
** a channel in a map, the channel's mode is read again at once, so the loop
** asks the new method from the next pass on, as Python's asyncore would.
*/
static int lchan_newindex(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 3);
    int watched = ac_is_mode_key(L, 2);
    lua_rawset(L, 1);
    if (watched) {
        ac_socket *s = ac_chansock(L, 1);
        if (s != NULL && s->ms != NULL && !sock_isclosed(s)) {
            int mask;
            int err = ms_apply_mode(L, 1, s->ms, s, &mask);
            if (err)
                return raise_mode_error(L, s->ms, s->fd, err, mask, "__newindex");
        }
    }
    return 0;
}

/*
** dispatcher:add_channel([map]): put the channel in the map (default: the
** one it was made for) and register its socket with that map's poller, with
** its mode (ms_apply_mode). A method set later on the instance is seen through
** dispatcher.__newindex, one set on a class before the next pass.
*/
static int lchan_add_channel(lua_State *L)
{
    ac_state *S = STATE(L);
    ac_socket *s = ac_checkchan(L, 1, "add_channel");
    check_map_arg(L);
    lua_settop(L, 2);
    ac_mapstate *ms = ac_getmapstate(L, 2, NULL);   /* 3: ms */
    if (s->ms && s->ms != ms)
        ms_unregister(s->ms, s);
    int fd = s->fd;
    int err = ms_grow(ms, fd);
    if (err == 0 && ms->custom == NULL) {
        ms->custom = malloc(16 * sizeof *ms->custom);
        ms->capcustom = 16;
        if (ms->custom == NULL)
            err = ENOMEM;
    }
    if (err)
        return ac_raise(L, "add_channel", err);
    if (ms->socks[fd] && ms->socks[fd] != s)
        ms_unregister(ms, ms->socks[fd]);
    if (ms->socks[fd] == NULL) {
        ms->socks[fd] = s;
        ms->nsocks++;
        if (++S->gen == 0)
            S->gen = 1;
        s->gen = S->gen;
        if (ms->regs[fd].mask)                     /* left over: clear it */
            ms_setmask(ms, fd, 0);
        ms->regs[fd].gen = s->gen;
    }
    s->ms = ms;
    s->mapfd = fd;
    int mask;
    err = ms_apply_mode(L, 1, ms, s, &mask);
    if (err) {
        ms_unregister(ms, s);
        return raise_mode_error(L, ms, fd, err, mask, "add_channel");
    }
    lua_pushvalue(L, 1);
    lua_rawseti(L, 2, fd);
    return 0;
}

/* dispatcher:del_channel([map]): leave the map and the poller */
static int lchan_del_channel(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    check_map_arg(L);
    if (s == NULL)
        return 0;
    if (s->ms)
        ms_unregister(s->ms, s);
    if (s->mapfd >= 0) {
        lua_rawgeti(L, 2, s->mapfd);
        if (lua_rawequal(L, -1, 1)) {
            lua_pushnil(L);
            lua_rawseti(L, 2, s->mapfd);
        }
        s->mapfd = -1;
    }
    return 0;
}

/* dispatcher update of stock interest: core.update_interest(self) */
static int lchan_update(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s && !sock_isclosed(s))
        ac_update_interest(L, 1, s);
    return 0;
}

/* ---- the pass ---- */

/*
** The message handler of every callback: ExitNow and "interrupted!" pass
** through untouched (they leave the loop); anything else is wrapped with its
** traceback for handle_error. Upvalue 1: the state; 2: the wrapper metatable.
*/
static int loop_msgh(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(1), UV_EXITNOW);
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
    lua_getiuservalue(L, lua_upvalueindex(1), UV_WRAPMT);
    lua_setmetatable(L, -2);
    return 1;
}

/* is the value at idx a wrapped callback error? then push err, tb */
static int unwrap_error(lua_State *L, int idx, int state)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_getiuservalue(L, state, UV_WRAPMT);
    int w = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!w)
        return 0;
    lua_rawgeti(L, idx, 1);
    lua_rawgeti(L, idx, 2);
    return 1;
}
void ac_push_msgh(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_MSGH);
}

int ac_unwrap_error(lua_State *L, int idx)
{
    return unwrap_error(L, lua_absindex(L, idx), lua_upvalueindex(UP_STATE));
}

int ac_push_channel_of(lua_State *L, ac_socket *s)
{
    if (s->ms == NULL || s->mapfd < 0)
        return 0;
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_MAPS);
    lua_pushnil(L);
    while (lua_next(L, -2)) {                   /* maps, map, ms */
        if (lua_touserdata(L, -1) == s->ms) {
            lua_rawgeti(L, -2, s->mapfd);       /* maps, map, ms, chan */
            if (ac_chansock(L, -1) == s) {
                lua_replace(L, -4);
                lua_pop(L, 2);
                return 1;
            }
            lua_pop(L, 4);
            return 0;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}


/*
** Is the channel at chan still the registration `gen` of fd in map state ms?
** Its socket is compared by address with the one registered for fd, which is
** alive (a collected socket leaves the map state first), before anything of
** it is read: no metatable check is needed on this hot path.
*/
static ac_socket *still(lua_State *L, int chan, ac_mapstate *ms, int fd, uint32_t gen)
{
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, chan);
    ac_socket *s = lua_touserdata(L, -1);
    lua_settop(L, -2);
    if (s == NULL || fd < 0 || fd >= ms->nregs || ms->socks[fd] != s || s->gen != gen)
        return NULL;
    return s;
}

/*
** After a callback failed with the value on top: send it where Python's
** asyncore would. Returns 1 (value left on top) when the loop must re-raise
** it: ExitNow, Ctrl-C, or an error the message handler never saw (memory).
*/
static int route_error(lua_State *L, int chan, ac_mapstate *ms, int fd, uint32_t gen, int state)
{
    int e = lua_gettop(L);
    if (!unwrap_error(L, e, state))
        return 1;
    /* e: wrapper, e+1: err, e+2: traceback */
    int status;
    if (ac_is_errorobj(L, e + 1)) {
        lua_getfield(L, e + 1, "errno");
        int en = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (ac_is_disconnect(en)) {
            if (still(L, chan, ms, fd, gen) == NULL) {
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
        if (!unwrap_error(L, f, state)) {
            lua_replace(L, e);
            lua_settop(L, e);
            return 1;
        }
        /* handle_error itself failed: say so and close the channel */
        fprintf(stderr, "asyncore: error in handle_error, closing channel: %s\n",
                luaL_tolstring(L, f + 1, NULL));
        fflush(stderr);
        ac_socket *s = still(L, chan, ms, fd, gen);
        if (s) {
            lua_getfield(L, chan, "close");
            lua_pushvalue(L, chan);
            if (lua_pcall(L, 1, 0, L_MSGH) != LUA_OK) {
                s = still(L, chan, ms, fd, gen);
                if (s)
                    ac_sock_close(L, s);
            }
        }
    }
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
    if (ev & AC_EV_READ) {
        if (s->mode & CM_RE_CUSTOM)
            ac_call_method(L, 1, K_HANDLE_READ_EVENT, 0);
        else
            ac_chan_read_event(L, 1, s);
        if (ev == AC_EV_READ)
            return 0;
        if ((s = still(L, 1, ms, fd, gen)) == NULL)
            return 0;
    }
    if (ev & AC_EV_WRITE) {
        if (s->mode & CM_WE_CUSTOM)
            ac_call_method(L, 1, K_HANDLE_WRITE_EVENT, 0);
        else
            ac_chan_write_event(L, 1, s);
        if ((s = still(L, 1, ms, fd, gen)) == NULL)
            return 0;
    }
    if (ev & AC_EV_PRI) {
        ac_call_method(L, 1, K_HANDLE_EXPT_EVENT, 0);
        if ((s = still(L, 1, ms, fd, gen)) == NULL)
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
    unsigned m = stock_mask(L, 1, s);
    if (s->mode & CM_RD_CUSTOM) {
        ac_pushkey(L, K_READABLE);
        lua_gettable(L, 1);
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        if (lua_toboolean(L, -1) && s->paused_until <= 0)
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

static void resume_paused(lua_State *L, ac_mapstate *ms, ac_monotime now, int64_t *wait_us)
{
    for (int fd = 0; fd < ms->nregs && ms->npaused > 0; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s == NULL || s->paused_until <= 0)
            continue;
        if (s->paused_until <= now) {
            s->paused_until = 0;
            ms->npaused--;
            lua_rawgeti(L, L_MAP, fd);
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

static int noop(lua_State *L)
{
    (void)L;
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
    int state = lua_upvalueindex(1);

    if (ms->pred_version != S->pred_version)
        ms_refresh_modes(L, S, ms, L_MAP);
    if (ms->npaused > 0)
        resume_paused(L, ms, now, &wait_us);

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
            if (still(L, chan, ms, fd, snap[i].gen) == NULL)
                continue;
            lua_pushvalue(L, L_PREDS);
            lua_pushvalue(L, chan);
            if (lua_pcall(L, 1, 1, L_MSGH) != LUA_OK) {
                if (route_error(L, chan, ms, fd, snap[i].gen, state))
                    return 1;
                continue;
            }
            unsigned m = (unsigned)lua_tointeger(L, -1);
            ac_socket *s = still(L, chan, ms, fd, snap[i].gen);
            if (s) {
                int err = ms_setmask(ms, fd, m);
                if (err)
                    raise_setmask(L, ms->p.ops->name, fd, err);
            }
        }
        lua_settop(L, top);
    }

    wait_us = ac_timers_wait_us(S, now, wait_us);

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

    for (int i = 0; i < nout; i++) {
        lua_settop(L, top);
        int fd = fired[i].fd;
        if (lua_rawgeti(L, L_MAP, fd) != LUA_TTABLE)
            continue;
        int chan = top + 1;
        ac_socket *s = still(L, chan, ms, fd, fired[i].gen);
        if (s == NULL)
            continue;
        /*
        ** No interest update after the handlers: a stock channel's interest
        ** changes only through the core's own calls (send, flush, connect,
        ** listen, close, the constructor), which update it at once.
        */
        unsigned ev = fired[i].events;
        int status;
        if ((ev == AC_EV_READ || ev == AC_EV_WRITE) && !(s->flags & (SF_LISTENING | SF_CONNECTING)) &&
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
        if (status != LUA_OK) {
            if (route_error(L, chan, ms, fd, fired[i].gen, state))
                return 1;
        }
    }
    lua_settop(L, L_BASE);

    if (S->ntimers > 0 && ac_timers_run(L, S, L_MSGH))
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
static int lloop_loop(lua_State *L)
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
    ac_copyupvalues(L);
    lua_pushcclosure(L, loop_msgh, AC_NUP);                 /* L_MSGH */
    ac_copyupvalues(L);
    lua_pushcclosure(L, loop_dispatch, AC_NUP);             /* L_DISPATCH */
    ac_copyupvalues(L);
    lua_pushcclosure(L, loop_predicates, AC_NUP);           /* L_PREDS */
    lua_newuserdatauv(L, 64 * sizeof(struct ac_fired), 0);  /* L_SCRATCH */
    if (once) {
        if (!map_empty(L) || S->ntimers > 0)
            if (loop_pass(L, S, ms, timeout))
                return lua_error(L);
        return 0;
    }
    while (count != 0) {
        if (S->ntimers == 0 && map_empty(L))
            break;
        if (loop_pass(L, S, ms, timeout))
            return lua_error(L);
        if (count > 0)
            count--;
    }
    return 0;
}

/*
** core.release_map(map): close the map state's poller and forget the state
** (close_all calls it once the map is empty), so no descriptor of the library
** stays open; the next loop() on the map makes a new one. Channels still
** registered (a close() that failed) are unregistered first.
*/
static int lloop_release_map(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getiuservalue(L, lua_upvalueindex(1), UV_MAPS);
    lua_pushvalue(L, 1);
    lua_rawget(L, 2);
    ac_mapstate *ms = luaL_testudata(L, -1, MAPSTATE_MT);
    if (ms == NULL)
        return 0;
    ms_free(ms);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    lua_rawset(L, 2);
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

/* core.map_backend(map): the backend a map uses now, or nil */
static int lloop_map_backend(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getiuservalue(L, lua_upvalueindex(1), UV_MAPS);
    lua_pushvalue(L, 1);
    lua_rawget(L, -2);
    ac_mapstate *ms = luaL_testudata(L, -1, MAPSTATE_MT);
    if (ms == NULL || ms->p.ops == NULL)
        return 0;
    lua_pushstring(L, ms->p.ops->name);
    return 1;
}

static const luaL_Reg loop_funcs[] = {
    {"loop", lloop_loop},
    {"backends", lloop_backends},
    {"map_backend", lloop_map_backend},
    {"release_map", lloop_release_map},
    {"add_channel", lchan_add_channel},
    {"del_channel", lchan_del_channel},
    {"update_interest", lchan_update},
    {"chan_newindex", lchan_newindex},
    {NULL, NULL}
};

/* adds the loop functions to the module table on top */
void ac_loop_open(lua_State *L, int st, int mt)
{
    ac_pushupvalues(L, st, mt);
    lua_pushcclosure(L, loop_msgh, AC_NUP);
    lua_setiuservalue(L, st, UV_MSGH);
    luaL_newmetatable(L, MAPSTATE_MT);
    lua_pushcfunction(L, ms_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    ac_setfuncs(L, loop_funcs, st, mt);
}
