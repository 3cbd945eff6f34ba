/*
** ltimeout.c: per-channel timeouts. A socket keeps its deadlines (connect,
** handshake, a stream's read: to_op) and its idle timeout with the time of its last transfer
** (last_io, which the transports store: a transfer never touches a heap).
** Each map state has a heap of (deadline, generation, fd) entries, at most
** one live per socket (to_armed), deleted lazily. A pass hook pops the due
** entries: an idle timeout whose socket moved bytes since re-arms itself at
** last_io + idle; what really expired is put on the map state's expired list,
** and the pass delivers it (AC_EV_TIMEOUT: the channel's _timeout_due(kind),
** under the same protected call and error routing as any event).
*/
#include "config.h"
#include <errno.h>
#include <math.h>
#include <string.h>
#include "ltimeout.h"
#include "lerror.h"

static ac_monotime next_deadline(const ac_socket *s)
{
    ac_monotime d = 0;
    if (s->to_connect > 0)
        d = s->to_connect;
    if (s->to_handshake > 0 && (d == 0 || s->to_handshake < d))
        d = s->to_handshake;
    if (s->to_op > 0 && (d == 0 || s->to_op < d))
        d = s->to_op;
    if (s->to_idle > 0) {
        ac_monotime i = s->last_io + s->to_idle;
        if (d == 0 || i < d)
            d = i;
    }
    return d;
}

/* push an entry for s unless a live one comes first; 0 or ENOMEM */
static int arm(ac_mapstate *ms, ac_socket *s)
{
    ac_monotime d = next_deadline(s);
    if (d == 0 || (s->to_armed > 0 && s->to_armed <= d))
        return 0;
    int err = theap_push(&ms->toheap, d, s->gen, s->fd);
    if (err == 0)
        s->to_armed = d;
    return err;
}

int ac_timeout_arm(ac_mapstate *ms, ac_socket *s)
{
    return arm(ms, s);
}

void ac_timeout_rearm(ac_mapstate *ms, ac_socket *s)
{
    s->to_armed = 0;
    arm(ms, s);   /* out of memory: the timeout is not armed (as if unset) */
}

/* the pass hook: move what expired to the expired list; bound the wait */
int64_t ac_timeouts_wait_us(ac_mapstate *ms, ac_monotime now)
{
    if (ms->nexpired > 0)
        return 0;
    struct theap_entry *e = theap_top(&ms->toheap);
    if (e == NULL)
        return -1;
    return e->deadline <= now ? 0 : ac_us_until(e->deadline, now);
}

static void timeout_hook(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us)
{
    (void)L, (void)map;
    struct theap_entry *e;
    while ((e = theap_top(&ms->toheap)) != NULL && e->deadline <= now) {
        int fd = (int)e->id;
        uint32_t gen = (uint32_t)e->seq;
        ac_monotime d = e->deadline;
        theap_pop(&ms->toheap);
        ac_socket *s = fd >= 0 && fd < ms->nregs ? ms->socks[fd] : NULL;
        if (s == NULL || s->gen != gen || s->to_armed != d)
            continue;   /* stale: closed, moved, or re-armed since */
        s->to_armed = 0;
        unsigned due = 0;
        if (s->to_connect > 0 && s->to_connect <= now) {
            due |= TO_CONNECT;
            s->to_connect = 0;
        }
        if (s->to_handshake > 0 && s->to_handshake <= now) {
            due |= TO_HANDSHAKE;
            s->to_handshake = 0;
        }
        if (s->to_op > 0 && s->to_op <= now) {
            due |= TO_OP;
            s->to_op = 0;
        }
        if (s->to_idle > 0 && s->last_io + s->to_idle <= now) {
            due |= TO_IDLE;
            s->last_io = now;   /* a channel kept open gets another period */
        }
        if (due) {
            s->to_due |= due;
            ac_ms_list_expired(ms, s);
        }
        arm(ms, s);
    }
    if (e != NULL) {
        int64_t left = ac_us_until(e->deadline, now);
        if (*wait_us < 0 || left < *wait_us)
            *wait_us = left;
    }
    if (ms->nexpired > 0)
        *wait_us = 0;
}

static const char *const KINDS[] = {"connect", "handshake", "idle", NULL};

/*
** core.set_timeout(self, kind, seconds): arm (seconds > 0) or disarm
** (nil, false) the channel's timeout of that kind, counting from now. The
** Lua method checks the arguments and keeps the setting for a socket made
** later.
*/
static int lto_set(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "set_timeout");
    int kind = luaL_checkoption(L, 2, NULL, KINDS);
    double secs = 0;
    if (!lua_isnoneornil(L, 3) && !(lua_isboolean(L, 3) && !lua_toboolean(L, 3))) {
        secs = luaL_checknumber(L, 3);
        luaL_argcheck(L, secs > 0 && isfinite(secs), 3, "seconds must be a positive number");
    }
    ac_monotime now = clock_now();
    ac_io_clock = now;
    switch (kind) {
    case 0: s->to_connect = secs > 0 ? now + secs : 0; break;
    case 1: s->to_handshake = secs > 0 ? now + secs : 0; break;
    default:
        s->to_idle = secs;
        s->last_io = now;
        break;
    }
    s->to_due &= ~(1u << kind);
    if (s->ms && arm(s->ms, s) != 0)
        return ac_raise_nomem(L, "set_timeout");
    return 0;
}

static const luaL_Reg to_funcs[] = {
    {"set_timeout", lto_set},
    {NULL, NULL}
};

void ac_timeout_open(lua_State *L, int st, int mt)
{
    ac_add_pass_hook(timeout_hook);
    ac_setfuncs(L, to_funcs, st, mt);
}
