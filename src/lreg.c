/*
** lreg.c: map states (see lreg.h): the registrations of one map's channels
** with its poller, their interest, and the map state's life (made on first
** use, moved to another backend on request, released by close_all).
*/
#include "config.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include "lreg.h"
#include "lerror.h"

#define MAPSTATE_MT "asyncore.mapstate"

/* ---- fork ---- */

unsigned ac_fork_count;

static void after_fork_child(void)
{
    ac_fork_count++;
}

/* ---- map states ---- */

void ac_ms_remove_custom(ac_mapstate *ms, ac_socket *s)
{
    if (s->cidx < 0)
        return;
    int last = ms->custom[--ms->ncustom];
    ms->custom[s->cidx] = last;
    if (ms->socks[last])
        ms->socks[last]->cidx = s->cidx;
    s->cidx = -1;
}

void ac_ms_add_custom(ac_mapstate *ms, ac_socket *s, int *errp)
{
    *errp = 0;
    if (s->cidx >= 0)
        return;
    if (ms->ncustom == ms->capcustom) {
        int cap = ms->capcustom ? ms->capcustom * 2 : 16;
        int *c = realloc(ms->custom, (size_t)cap * sizeof *c);
        if (c == NULL) {
            *errp = ENOMEM;
            return;
        }
        ms->custom = c;
        ms->capcustom = cap;
    }
    s->cidx = ms->ncustom;
    ms->custom[ms->ncustom++] = s->fd;
}

/*
** The map state's fd lists (sockets with input held by their transport;
** sockets with expired timeouts): a socket is on a list at most once, which
** its flag says, so a list has room enough with nregs entries.
*/
static void fdlist_add(int *list, int *n, ac_socket *s, unsigned flag)
{
    if (s->flags & flag)
        return;
    s->flags |= flag;
    list[(*n)++] = s->fd;
}

static void fdlist_remove(int *list, int *n, ac_socket *s, unsigned flag)
{
    if (!(s->flags & flag))
        return;
    s->flags &= ~flag;
    for (int i = 0; i < *n; i++)
        if (list[i] == s->fd) {
            list[i] = list[--*n];
            break;
        }
}

int ac_ms_register_internal(ac_mapstate *ms, ac_socket *s, unsigned mask)
{
    static uint32_t gen = 0x80000000u;   /* apart from the channels' generations */
    int fd = s->fd;
    int err = ac_ms_grow(ms, fd);
    if (err)
        return err;
    if (ms->socks[fd] != NULL && ms->socks[fd] != s)
        return EBUSY;
    if (ms->socks[fd] == NULL) {
        ms->socks[fd] = s;
        ms->nsocks++;
        if (++gen == 0)
            gen = 0x80000000u;
        s->gen = gen;
        if (ms->regs[fd].mask)
            ms->p.ops->set(&ms->p, fd, ms->regs[fd].mask, 0);
        ms->regs[fd].mask = 0;
        ms->regs[fd].gen = gen;
    }
    s->ms = ms;
    err = ac_ms_setmask(ms, fd, mask);
    if (err)
        ac_ms_unregister(ms, s);
    return err;
}

void ac_ms_list_expired(ac_mapstate *ms, ac_socket *s)
{
    fdlist_add(ms->expired, &ms->nexpired, s, SF_TO_LISTED);
}

void ac_ms_list_input(ac_socket *s)
{
    ac_mapstate *ms = s->ms;
    if (ms && (s->flags & (SF_TP_PENDING | SF_HELD)) && !(s->flags & SF_TP_LISTED) &&
        s->fd >= 0 && s->fd < ms->nregs && ms->socks[s->fd] == s &&
        (ms->regs[s->fd].mask & AC_EV_READ))
        fdlist_add(ms->pend, &ms->npend, s, SF_TP_LISTED);
}

void ac_ms_mark_pending(ac_socket *s)
{
    s->flags |= SF_TP_PENDING;
    ac_ms_list_input(s);
}

void ac_ms_unregister(ac_mapstate *ms, ac_socket *s)
{
    if (ms->fork_gen != ac_fork_count)
        ac_ms_fresh(ms);              /* never touch the parent's poller (an error: the next pass raises it) */
    int fd = s->fd;
    if (fd >= 0 && fd < ms->nregs && ms->socks[fd] == s) {
        if (ms->regs[fd].mask)
            ms->p.ops->set(&ms->p, fd, ms->regs[fd].mask, 0);
        ms->regs[fd].mask = 0;
        ms->socks[fd] = NULL;
        ms->nsocks--;
        fdlist_remove(ms->pend, &ms->npend, s, SF_TP_LISTED);
        fdlist_remove(ms->expired, &ms->nexpired, s, SF_TO_LISTED);
        s->to_armed = 0;   /* its heap entries are stale now: re-armed if it joins a map */
    }
    ac_ms_remove_custom(ms, s);
    if (s->paused_until > 0) {
        s->paused_until = 0;
        ms->npaused--;
    }
    s->ms = NULL;
}

/* set fd's registered mask; 0 or errno */
int ac_ms_setmask(ac_mapstate *ms, int fd, unsigned mask)
{
    if (ms->fork_gen != ac_fork_count) {
        int err = ac_ms_fresh(ms);
        if (err)
            return err;
    }
    if (mask && ms->socks[fd] && (ms->socks[fd]->flags & SF_EXCLUSIVE))
        mask |= AC_EV_EXCL;
    unsigned old = ms->regs[fd].mask;
    if (old == mask)
        return 0;
    int err = ms->p.ops->set(&ms->p, fd, old, mask);
    if (err == 0) {
        ms->regs[fd].mask = mask;
        ac_socket *s = ms->socks[fd];
        if ((mask & AC_EV_READ) && s && (s->flags & (SF_TP_PENDING | SF_HELD)) &&
            !(s->flags & SF_TP_LISTED))
            fdlist_add(ms->pend, &ms->npend, s, SF_TP_LISTED);   /* input held while reads were not wanted */
    }
    return err;
}

int ac_raise_setmask(lua_State *L, const char *backend, int fd, int err)
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

int ac_ms_grow(ac_mapstate *ms, int fd)
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
    ms->p.regs = r;   /* the poller reads it: never leave it the freed block */
    ac_socket **k = realloc(ms->socks, (size_t)n * sizeof *k);
    if (k == NULL)
        return ENOMEM;
    ms->socks = k;
    int *pd = realloc(ms->pend, (size_t)n * sizeof *pd);
    if (pd == NULL)
        return ENOMEM;
    ms->pend = pd;
    int *ex = realloc(ms->expired, (size_t)n * sizeof *ex);
    if (ex == NULL)
        return ENOMEM;
    ms->expired = ex;
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
            s->flags &= ~(SF_TP_LISTED | SF_TO_LISTED);
            s->to_armed = 0;
        }
    }
    if (ms->p.ops)
        ms->p.ops->close(&ms->p);
    ms->p.ops = NULL;
    free(ms->regs);
    free(ms->socks);
    free(ms->custom);
    free(ms->pend);
    free(ms->expired);
    theap_free(&ms->toheap);
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
            return ac_raise_setmask(L, ops->name, fd, err);
        }
    }
    if (ms->p.ops)
        ms->p.ops->close(&ms->p);
    ms->p = np;
    return 0;
}

int ac_ms_fresh(ac_mapstate *ms)
{
    if (ms->fork_gen == ac_fork_count || ms->p.ops == NULL)
        return 0;
    ms->fork_gen = ac_fork_count;
    for (int fd = 0; fd < ms->nregs; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s && (s->flags & SF_INTERNAL)) {
            ms->socks[fd] = NULL;
            ms->regs[fd].mask = 0;
            ms->nsocks--;
            s->ms = NULL;
        } else if (s && (s->flags & SF_LISTENING)) {
            s->flags |= SF_EXCLUSIVE;
            if (ms->regs[fd].mask)
                ms->regs[fd].mask |= AC_EV_EXCL;
        }
    }
    struct poller np = {ms->p.ops, NULL, ms->regs, ms->nregs};
    int err = np.ops->open(&np);
    if (err)
        return err;
    for (int fd = 0; fd < ms->nregs; fd++) {
        if (ms->regs[fd].mask == 0)
            continue;
        err = np.ops->set(&np, fd, 0, ms->regs[fd].mask);
        if (err) {
            np.ops->close(&np);
            return err;
        }
    }
    /* the old poller: closing an epoll descriptor here drops the child's copy
    ** only; a kqueue is not inherited, and its number may be the new one's:
    ** left alone (its small state too) */
    if (strcmp(ms->p.ops->name, "kqueue") != 0)
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
        ms->fork_gen = ac_fork_count;
        lua_pushvalue(L, map);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);                      /* maps[map] = ms */
    } else if (ms->fork_gen != ac_fork_count) {
        int err = ac_ms_fresh(ms);
        if (err)
            ac_raise(L, ms->p.ops->name, err);
    }
    if (backend != NULL) {
        const struct poller_ops *ops = check_backend(L, backend);
        if (ops != ms->p.ops)
            ms_switch(L, ms, ops);
    }
    lua_remove(L, -2);
    return ms;
}

/* the channel's interest as the stock predicates see it */
unsigned ac_stock_mask(lua_State *L, int chan, ac_socket *s)
{
    unsigned m = 0;
    if (!(s->mode & CM_RD_CUSTOM) && s->paused_until <= 0 && !(s->flags & SF_RD_OFF))
        m |= AC_EV_READ;
    unsigned w = s->mode & CM_WR_MASK;
    if (w != CM_WR_CUSTOM) {
        if (w == CM_WR_TRUE)
            m |= AC_EV_WRITE;
        else if (w == CM_WR_SEND ? buffer_len(&s->out) > 0 || (s->flags & (SF_DS_CLOSE | SF_SHUT_REQ))
                                 : ac_chat_wants_write(s))
            m |= AC_EV_WRITE;
        else if (s->flags & SF_CONNECTING)   /* "not connected": the connect is under way */
            m |= AC_EV_WRITE;
        if ((m & AC_EV_WRITE) && (s->flags & SF_LISTENING) && ac_rawbool(L, chan, K_ACCEPTING))
            m &= ~AC_EV_WRITE;
    }
    return s->tp->interest ? s->tp->interest(s, m) : m;
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
    unsigned m = ac_stock_mask(L, chan, s);
    if (m != ms->regs[s->fd].mask) {
        int err = ac_ms_setmask(ms, s->fd, m);
        if (err)
            ac_raise_setmask(L, ms->p.ops->name, s->fd, err);
    }
}

/*
** Is the channel at chan still the registration `gen` of fd in map state ms?
** Its socket is compared by address with the one registered for fd, which is
** alive (a collected socket leaves the map state first), before anything of
** it is read: no metatable check is needed on this hot path.
*/
ac_socket *ac_still(lua_State *L, int chan, ac_mapstate *ms, int fd, uint32_t gen)
{
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, chan);
    ac_socket *s = lua_touserdata(L, -1);
    lua_settop(L, -2);
    if (s == NULL || fd < 0 || fd >= ms->nregs || ms->socks[fd] != s || s->gen != gen)
        return NULL;
    return s;
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
** core.release_map(map): close the map state's poller and forget the state
** (close_all calls it once the map is empty), so no descriptor of the library
** stays open; the next loop() on the map makes a new one. Channels still
** registered (a close() that failed) are unregistered first.
*/
static int lreg_release_map(lua_State *L)
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

/* core.map_backend(map): the backend a map uses now, or nil */
static int lreg_map_backend(lua_State *L)
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

#define MAX_HOOKS 8
static ac_pass_hook hooks[MAX_HOOKS];
static int nhooks;

void ac_add_pass_hook(ac_pass_hook h)
{
    for (int i = 0; i < nhooks; i++)
        if (hooks[i] == h)
            return;                     /* once, however many states open */
    if (nhooks == MAX_HOOKS)
        abort();                        /* a build with more hooks: raise MAX_HOOKS */
    hooks[nhooks++] = h;
}

void ac_run_pass_hooks(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us)
{
    for (int i = 0; i < nhooks; i++)
        hooks[i](L, ms, map, now, wait_us);
}

static const luaL_Reg reg_funcs[] = {
    {"release_map", lreg_release_map},
    {"map_backend", lreg_map_backend},
    {NULL, NULL}
};

/* adds the map-state functions to the module table on top */
void ac_reg_open(lua_State *L, int st, int mt)
{
    static int atfork;
    if (!atfork && pthread_atfork(NULL, NULL, after_fork_child) == 0)
        atfork = 1;
    ac_sock_unregister = ac_ms_unregister;   /* a closing socket leaves its map state */
    luaL_newmetatable(L, MAPSTATE_MT);
    lua_pushcfunction(L, ms_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    ac_setfuncs(L, reg_funcs, st, mt);
}
