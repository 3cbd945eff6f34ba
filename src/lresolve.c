/*
** lresolve.c: name resolution that never blocks the loop, on c-ares.
**
** One c-ares channel per process, made on first use (and again in a child
** after fork(): a channel inherited from the parent is dropped unused). Its
** sockets become internal registrations of the map being looped: small
** ac_socket records flagged SF_INTERNAL, whose events the pass hands to
** resolver_event (ares_process_fd), never to Lua. A pass hook moves them to
** the map the loop serves, bounds the wait by c-ares's own timeout (and on
** it calls ares_process_fd(BAD, BAD)), and delivers finished lookups.
**
** c-ares's callback only queues the answer; Lua callbacks run later, from
** the hook, under a protected call (an error goes to handle_timer_error, as
** a timer's does). So no Lua code runs inside c-ares, and the channel is
** destroyed (set_resolver, fork) only outside its callbacks.
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/time.h>
#include <ares.h>
#include "lresolve.h"
#include "lerror.h"

typedef struct watch {
    ac_socket s;            /* the internal registration (fd, gen, ms) */
    struct watch *next;
} watch;

typedef struct done {
    int64_t id;
    int status;
    struct ares_addrinfo *ai;
    struct done *next;
} done;

typedef struct request {
    int64_t id;
    int cancelled;
    struct request *next;   /* the lookups under way */
} request;

static struct {
    ares_channel ch;
    int ready;
    pid_t pid;
    watch *watches;
    done *head, *tail;      /* finished lookups, in order */
    request *reqs;          /* lookups c-ares still works on */
    int pending;            /* ... and not cancelled: loop() waits for these */
    int64_t next_id;
    char *servers;          /* set_resolver's, or NULL: the system's */
    int timeout_ms, tries;  /* 0: c-ares's defaults */
} R;

static const ac_transport resolver_transport;

static watch *find_watch(int fd)
{
    for (watch *w = R.watches; w; w = w->next)
        if (w->s.fd == fd)
            return w;
    return NULL;
}

/* c-ares says which of its sockets to watch, and for what */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    (void)data;
    unsigned mask = (readable ? AC_EV_READ : 0) | (writable ? AC_EV_WRITE : 0);
    watch *w = find_watch(fd);
    if (mask == 0) {
        if (w == NULL)
            return;
        if (w->s.ms)
            ac_ms_unregister(w->s.ms, &w->s);
        for (watch **p = &R.watches; *p; p = &(*p)->next)
            if (*p == w) {
                *p = w->next;
                break;
            }
        free(w);
        return;
    }
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (w == NULL)
            return;   /* not watched: c-ares times the query out */
        w->s.magic = 0;   /* never a Lua socket */
        w->s.fd = fd;
        w->s.cidx = -1;
        w->s.mapfd = -1;
        w->s.flags = SF_INTERNAL;
        w->s.tp = &resolver_transport;
        w->next = R.watches;
        R.watches = w;
    }
    w->s.mode = mask;   /* the interest wanted; registered by the hook */
    if (w->s.ms)
        ac_ms_setmask(w->s.ms, fd, mask);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    request *rq = arg;
    for (request **p = &R.reqs; *p; p = &(*p)->next)
        if (*p == rq) {
            *p = rq->next;
            break;
        }
    if (rq->cancelled) {
        if (ai)
            ares_freeaddrinfo(ai);
        free(rq);
        return;
    }
    R.pending--;
    done *d = malloc(sizeof *d);
    if (d == NULL) {
        if (ai)
            ares_freeaddrinfo(ai);
        free(rq);
        return;
    }
    d->id = rq->id;
    d->status = status;
    d->ai = ai;
    d->next = NULL;
    if (R.tail)
        R.tail->next = d;
    else
        R.head = d;
    R.tail = d;
    free(rq);
}

/* drop watches without touching a poller (after fork: the parent's) */
static void forget_watches(int unregister)
{
    while (R.watches) {
        watch *w = R.watches;
        R.watches = w->next;
        if (w->s.ms) {
            if (unregister)
                ac_ms_unregister(w->s.ms, &w->s);
            else {
                ac_mapstate *ms = w->s.ms;   /* the child's copy of the table only */
                if (w->s.fd < ms->nregs && ms->socks[w->s.fd] == &w->s) {
                    ms->socks[w->s.fd] = NULL;
                    ms->regs[w->s.fd].mask = 0;
                    ms->nsocks--;
                }
            }
        }
        free(w);
    }
}

static void channel_destroy(void)
{
    if (!R.ready)
        return;
    int same = R.pid == getpid();
    if (!same)
        forget_watches(0);
    ares_destroy(R.ch);   /* pending lookups end with ARES_EDESTRUCTION */
    R.ready = 0;
    forget_watches(same);
}

/* the channel, made (or made again after fork or set_resolver); 0 or a status */
static int channel(void)
{
    if (R.ready && R.pid != getpid())
        channel_destroy();
    if (R.ready)
        return ARES_SUCCESS;
    struct ares_options o;
    memset(&o, 0, sizeof o);
    int mask = ARES_OPT_SOCK_STATE_CB;
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = NULL;
    if (R.timeout_ms > 0) {
        o.timeout = R.timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (R.tries > 0) {
        o.tries = R.tries;
        mask |= ARES_OPT_TRIES;
    }
    int st = ares_init_options(&R.ch, &o, mask);
    if (st != ARES_SUCCESS)
        return st;
    if (R.servers && (st = ares_set_servers_ports_csv(R.ch, R.servers)) != ARES_SUCCESS) {
        ares_destroy(R.ch);
        return st;
    }
    R.ready = 1;
    R.pid = getpid();
    return ARES_SUCCESS;
}

/* an event on one of c-ares's sockets (chan is 0: no Lua channel) */
static unsigned resolver_event(lua_State *L, int chan, ac_socket *s, unsigned ev)
{
    (void)L, (void)chan;
    int fd = s->fd;
    ares_process_fd(R.ch, (ev & (AC_EV_READ | AC_EV_HUP | AC_EV_ERR)) ? fd : ARES_SOCKET_BAD,
                    (ev & AC_EV_WRITE) ? fd : ARES_SOCKET_BAD);
    return 0;   /* s may be freed by now */
}

static const ac_transport resolver_transport = {
    "resolver", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, resolver_event
};

static const char *status_code(int st, int *err)
{
    switch (st) {
    case ARES_ENOTFOUND: case ARES_ENODATA: case ARES_ENONAME: *err = ENOENT; return "ENOTFOUND";
    case ARES_ETIMEOUT: *err = ETIMEDOUT; return "ETIMEDOUT";
    case ARES_ECONNREFUSED: *err = ECONNREFUSED; return "ECONNREFUSED";
    case ARES_ECANCELLED: case ARES_EDESTRUCTION: *err = ECANCELED; return "ECANCELED";
    case ARES_ENOMEM: *err = ENOMEM; return "ENOMEM";
    default: *err = EIO; return "ERESOLVE";
    }
}

/* push the error object of a failed lookup of host */
static void push_failure(lua_State *L, int st, const char *host)
{
    int en;
    const char *code = status_code(st, &en);
    lua_pushfstring(L, "%s: %s", host ? host : "?", ares_strerror(st));
    ac_pusherror(L, "resolve", en, lua_tostring(L, -1));
    lua_remove(L, -2);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
}

/* the answer's addresses as a list {host = "ip", family = "inet"|"inet6"} */
static void push_addrs(lua_State *L, struct ares_addrinfo *ai)
{
    lua_newtable(L);
    int n = 0;
    for (struct ares_addrinfo_node *a = ai ? ai->nodes : NULL; a; a = a->ai_next) {
        char buf[INET6_ADDRSTRLEN];
        const void *src;
        if (a->ai_family == AF_INET)
            src = &((const struct sockaddr_in *)(const void *)a->ai_addr)->sin_addr;
        else if (a->ai_family == AF_INET6)
            src = &((const struct sockaddr_in6 *)(const void *)a->ai_addr)->sin6_addr;
        else
            continue;
        if (inet_ntop(a->ai_family, src, buf, sizeof buf) == NULL)
            continue;
        /* c-ares may list an address once per socket type: keep the first */
        int dup = 0;
        for (int i = 1; i <= n && !dup; i++) {
            lua_rawgeti(L, -1, i);
            lua_getfield(L, -1, "host");
            dup = strcmp(lua_tostring(L, -1), buf) == 0;
            lua_pop(L, 2);
        }
        if (dup)
            continue;
        lua_createtable(L, 0, 2);
        lua_pushstring(L, buf);
        lua_setfield(L, -2, "host");
        lua_pushstring(L, a->ai_family == AF_INET ? "inet" : "inet6");
        lua_setfield(L, -2, "family");
        lua_rawseti(L, -2, ++n);
    }
}

/*
** Deliver finished lookups: core.resolve_deliver's callbacks table (upvalue
** of the Lua side, kept in the registry) maps id -> {fn, host}.
*/
static void deliver(lua_State *L)
{
    int top = lua_gettop(L);
    while (R.head) {
        done *d = R.head;
        R.head = d->next;
        if (R.head == NULL)
            R.tail = NULL;
        lua_settop(L, top);
        lua_getfield(L, LUA_REGISTRYINDEX, "asyncore.resolve_deliver");   /* top+1 */
        if (d->id != 0 && lua_isfunction(L, -1)) {
            ac_push_msgh(L);                                               /* top+2 */
            lua_pushvalue(L, top + 1);
            lua_pushinteger(L, d->id);
            if (d->status == ARES_SUCCESS && d->ai && d->ai->nodes) {
                push_addrs(L, d->ai);
                lua_pushnil(L);
            } else {
                lua_pushnil(L);
                lua_pushinteger(L, d->status == ARES_SUCCESS ? ARES_ENODATA : d->status);
            }
            ares_freeaddrinfo(d->ai);
            free(d);
            /* errors of the callbacks are reported by the Lua side; only
            ** ExitNow, Ctrl-C or a memory error come out here */
            if (lua_pcall(L, 3, 0, top + 2) != LUA_OK) {
                if (ac_unwrap_error(L, -1))
                    lua_settop(L, top);
                else
                    lua_error(L);
            }
        } else {
            ares_freeaddrinfo(d->ai);
            free(d);
        }
    }
    lua_settop(L, top);
}

int64_t ac_resolve_wait_us(void)
{
    if (R.head)
        return 0;
    if (!R.ready || R.reqs == NULL)
        return -1;
    struct timeval tv, *tvp = ares_timeout(R.ch, NULL, &tv);
    return tvp ? (int64_t)tv.tv_sec * 1000000 + tv.tv_usec : -1;
}

/* the pass hook */
static void resolver_hook(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us)
{
    (void)map, (void)now;
    if (!R.ready && R.head == NULL)
        return;
    if (R.ready && R.pid != getpid())
        channel_destroy();
    if (R.ready) {
        for (watch *w = R.watches; w; w = w->next) {
            if (w->s.ms == ms)
                continue;
            if (w->s.ms)
                ac_ms_unregister(w->s.ms, &w->s);
            if (ac_ms_register_internal(ms, &w->s, w->s.mode) != 0)
                continue;   /* not watched: c-ares times the query out */
        }
        struct timeval tv, *tvp = ares_timeout(R.ch, NULL, &tv);
        if (tvp && tv.tv_sec == 0 && tv.tv_usec == 0) {
            ares_process_fd(R.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
            tvp = ares_timeout(R.ch, NULL, &tv);
        }
        if (tvp) {
            int64_t us = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
            if (*wait_us < 0 || us < *wait_us)
                *wait_us = us;
        }
    }
    if (R.head) {
        deliver(L);
        *wait_us = 0;   /* what the callbacks started may be ready at once */
    }
}

/* core.resolve_start(host, family) -> id: the answer comes to resolve_deliver */
static int lres_start(lua_State *L)
{
    const char *host = luaL_checkstring(L, 1);
    int family = (int)luaL_optinteger(L, 2, AF_UNSPEC);
    int st = channel();
    if (st != ARES_SUCCESS) {
        push_failure(L, st, host);
        return lua_error(L);
    }
    request *rq = malloc(sizeof *rq);
    if (rq == NULL)
        return ac_raise_nomem(L, "resolve");
    rq->id = ++R.next_id;
    rq->cancelled = 0;
    rq->next = R.reqs;
    R.reqs = rq;
    lua_Integer id = rq->id;
    struct ares_addrinfo_hints h;
    memset(&h, 0, sizeof h);
    h.ai_family = family;
    h.ai_socktype = SOCK_STREAM;
    R.pending++;
    ares_getaddrinfo(R.ch, host, NULL, &h, on_answer, rq);   /* may answer at once (hosts file) */
    lua_pushinteger(L, id);
    return 1;
}

/* core.resolve_cancel(id): its answer is dropped, and loop() no longer waits for it */
static int lres_cancel(lua_State *L)
{
    lua_Integer id = luaL_checkinteger(L, 1);
    for (request *rq = R.reqs; rq; rq = rq->next)
        if (rq->id == id && !rq->cancelled) {
            rq->cancelled = 1;
            R.pending--;
            break;
        }
    for (done *d = R.head; d; d = d->next)
        if (d->id == id)
            d->id = 0;   /* answered already: delivered to no one */
    return 0;
}

/* core.resolve_init(fn): fn(id, addrs, status) receives every answer */
static int lres_init(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "asyncore.resolve_deliver");
    return 0;
}

/* core.resolve_failure(status, host): the error object of a failed lookup */
static int lres_failure(lua_State *L)
{
    push_failure(L, (int)luaL_checkinteger(L, 1), luaL_optstring(L, 2, NULL));
    return 1;
}

/* core.set_resolver(servers_csv or nil, timeout_ms, tries) */
static int lres_set(lua_State *L)
{
    const char *servers = luaL_optstring(L, 1, NULL);
    int timeout_ms = (int)luaL_optinteger(L, 2, 0);
    int tries = (int)luaL_optinteger(L, 3, 0);
    char *copy = NULL;
    if (servers && (copy = strdup(servers)) == NULL)
        return ac_raise_nomem(L, "set_resolver");
    channel_destroy();
    free(R.servers);
    R.servers = copy;
    R.timeout_ms = timeout_ms;
    R.tries = tries;
    int st = channel();   /* made now, so a bad server list is said here */
    if (st != ARES_SUCCESS) {
        free(R.servers);
        R.servers = NULL;
        push_failure(L, st, servers);
        return lua_error(L);
    }
    return 0;
}

int ac_resolve_busy(void)
{
    return R.pending > 0 || R.head != NULL;   /* (a cancelled answer: delivered to no one, once) */
}

/* core.resolver_pending(): lookups under way (and answers not delivered) */
static int lres_pending(lua_State *L)
{
    int n = R.pending;
    for (done *d = R.head; d; d = d->next)
        n += d->id != 0;
    lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg res_funcs[] = {
    {"resolve_start", lres_start},
    {"resolve_cancel", lres_cancel},
    {"resolve_init", lres_init},
    {"resolve_failure", lres_failure},
    {"set_resolver", lres_set},
    {"resolver_pending", lres_pending},
    {NULL, NULL}
};

static int nstates;

static int res_gc(lua_State *L)
{
    (void)L;
    if (--nstates == 0) {
        channel_destroy();
        while (R.head) {
            done *d = R.head;
            R.head = d->next;
            ares_freeaddrinfo(d->ai);
            free(d);
        }
        R.tail = NULL;
        free(R.servers);
        R.servers = NULL;
        ares_library_cleanup();
    }
    return 0;
}

void ac_resolve_open(lua_State *L, int st, int mt)
{
    if (nstates++ == 0)
        ares_library_init(ARES_LIB_INIT_ALL);
    lua_newuserdatauv(L, 1, 0);   /* releases the resolver when the state closes */
    lua_newtable(L);
    lua_pushcfunction(L, res_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "asyncore.resolver");
    ac_add_pass_hook(resolver_hook);
    ac_setfuncs(L, res_funcs, st, mt);
}
