/*
** ltimer.c: call_later / call_every. Timers belong to the process, not to a
** map: every pass of every loop() runs the ones that are due.
**
** A timer is a userdata ("asyncore.timer") whose user value holds the
** function and its arguments. While armed it sits in the state's timer table
** (id -> timer), which keeps it alive; the heap holds only (deadline, seq, id).
** Cancelling or re-arming leaves the old heap entry behind: an entry whose seq
** is not the timer's current one is skipped when it comes up (lazy deletion),
** and the heap is rebuilt when stale entries far outnumber live ones.
** A pass runs only the entries armed before it started, so a timer that
** re-arms itself with delay 0 runs once per pass and cannot starve I/O.
*/
#include "config.h"
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "ltimer.h"
#include "lerror.h"

#define TIMER_MT "asyncore.timer"

typedef struct ac_timer {
    int64_t id;
    ac_monotime deadline;
    double delay;       /* the delay reset() re-arms with */
    double interval;    /* > 0: repeating */
    uint64_t seq;       /* the seq of its live heap entry */
    int armed;
    int cancelled;
} ac_timer;

static void push_timers(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(1), UV_TIMERS);
}

/* drop heap entries of timers that are no longer armed with that seq */
static void compact(lua_State *L, ac_state *S)
{
    push_timers(L);
    size_t k = 0;
    for (size_t i = 0; i < S->heap.n; i++) {
        struct theap_entry e = S->heap.e[i];
        lua_rawgeti(L, -1, e.id);
        ac_timer *t = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (t && t->seq == e.seq)
            S->heap.e[k++] = e;
    }
    /* re-heapify what is left */
    size_t n = k;
    S->heap.n = 0;
    for (size_t i = 0; i < n; i++) {
        struct theap_entry e = S->heap.e[i];
        theap_push(&S->heap, e.deadline, e.seq, e.id);   /* never grows: n <= cap */
    }
    lua_pop(L, 1);
}

/* arm (or re-arm) timer at idx to fire `delay` seconds from now. May raise. */
static void arm(lua_State *L, ac_state *S, int idx, ac_timer *t, double delay)
{
    if (S->heap.n > 1024 && S->heap.n > 8 * (size_t)S->ntimers + 64)
        compact(L, S);
    t->deadline = clock_now() + delay;
    t->seq = ++S->timer_seq;
    if (theap_push(&S->heap, t->deadline, t->seq, t->id) != 0)
        ac_raise_nomem(L, "timer");
    t->cancelled = 0;
    if (!t->armed) {
        push_timers(L);
        lua_pushvalue(L, idx);
        lua_rawseti(L, -2, t->id);
        lua_pop(L, 1);
        t->armed = 1;
        S->ntimers++;
    }
}

static void disarm(lua_State *L, ac_state *S, ac_timer *t)
{
    if (!t->armed)
        return;
    push_timers(L);
    lua_pushnil(L);
    lua_rawseti(L, -2, t->id);
    lua_pop(L, 1);
    t->armed = 0;
    S->ntimers--;
}

static double check_delay(lua_State *L, int idx)
{
    double d = luaL_checknumber(L, idx);
    luaL_argcheck(L, d >= 0 && d <= 1e9, idx, "delay must be a number of seconds >= 0");
    return d;
}

static void check_callable(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TFUNCTION)
        return;
    if ((t == LUA_TTABLE || t == LUA_TUSERDATA) && luaL_getmetafield(L, idx, "__call") != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    luaL_typeerror(L, idx, "function");
}

static int new_timer(lua_State *L, double interval)
{
    ac_state *S = STATE(L);
    double delay = check_delay(L, 1);
    check_callable(L, 2);
    int n = lua_gettop(L) - 1;           /* fn and its arguments */
    ac_timer *t = lua_newuserdatauv(L, sizeof *t, 1);
    int tidx = lua_gettop(L);
    memset(t, 0, sizeof *t);
    t->id = ++S->timer_next_id;
    t->delay = interval > 0 ? interval : delay;
    t->interval = interval;
    luaL_setmetatable(L, TIMER_MT);
    lua_createtable(L, n, 1);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, i + 1);
        lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_setiuservalue(L, tidx, 1);
    arm(L, S, tidx, t, delay);
    lua_settop(L, tidx);
    return 1;
}

/* asyncore.call_later(delay, fn, ...) */
static int ltimer_call_later(lua_State *L)
{
    return new_timer(L, 0);
}

/* asyncore.call_every(interval, fn, ...) */
static int ltimer_call_every(lua_State *L)
{
    double interval = luaL_checknumber(L, 1);
    luaL_argcheck(L, interval > 0 && interval <= 1e9, 1, "interval must be a number of seconds > 0");
    return new_timer(L, interval);
}

static ac_timer *check_timer(lua_State *L)
{
    return luaL_checkudata(L, 1, TIMER_MT);
}

static int ltimer_cancel(lua_State *L)
{
    ac_timer *t = check_timer(L);
    t->cancelled = 1;
    disarm(L, STATE(L), t);
    return 0;
}

static int ltimer_cancelled(lua_State *L)
{
    lua_pushboolean(L, check_timer(L)->cancelled);
    return 1;
}

static int ltimer_reset(lua_State *L)
{
    ac_timer *t = check_timer(L);
    arm(L, STATE(L), 1, t, t->delay);
    lua_settop(L, 1);
    return 1;
}

static int ltimer_delay(lua_State *L)
{
    ac_timer *t = check_timer(L);
    double d = check_delay(L, 2);
    if (t->interval > 0) {
        luaL_argcheck(L, d > 0, 2, "interval must be a number of seconds > 0");
        t->interval = d;
    }
    t->delay = d;
    arm(L, STATE(L), 1, t, d);
    lua_settop(L, 1);
    return 1;
}

static int ltimer_index(lua_State *L)
{
    ac_timer *t = check_timer(L);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "deadline") == 0) {
        lua_pushnumber(L, t->deadline);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(AC_NUP + 1));   /* the methods */
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int ltimer_tostring(lua_State *L)
{
    ac_timer *t = check_timer(L);
    lua_pushfstring(L, "asyncore.timer (%s, %p)",
                    t->cancelled ? "cancelled" : t->armed ? "pending" : "done", (void *)t);
    return 1;
}

/* microseconds to wait (< 0: no limit), bounded by the next timer (rounded up: never early) */
int64_t ac_timers_wait_us(ac_state *S, ac_monotime now, int64_t wait_us)
{
    if (S->ntimers == 0) {
        S->heap.n = 0;   /* only stale entries are left */
        return wait_us;
    }
    const struct theap_entry *top = theap_top(&S->heap);
    if (top == NULL)
        return wait_us;
    int64_t us = ac_us_until(top->deadline, now);
    return (wait_us < 0 || us < wait_us) ? us : wait_us;
}

/*
** Run the timers due now, armed before this call. An error goes to
** asyncore.handle_timer_error(err, traceback). Returns 1 with the value on
** top when the loop must re-raise it (ExitNow, Ctrl-C). Runs Lua code.
*/
int ac_timers_run(lua_State *L, ac_state *S, int msgh)
{
    ac_monotime now = clock_now();
    uint64_t limit = S->timer_seq;
    int base = lua_gettop(L);
    push_timers(L);
    int timers = base + 1;
    const struct theap_entry *top;
    while ((top = theap_top(&S->heap)) != NULL && top->deadline <= now && top->seq <= limit) {
        struct theap_entry e = *top;
        theap_pop(&S->heap);
        lua_settop(L, timers);
        lua_rawgeti(L, timers, e.id);
        ac_timer *t = lua_touserdata(L, -1);
        if (t == NULL || t->seq != e.seq || !t->armed)
            continue;
        int tidx = lua_gettop(L);
        if (t->interval > 0) {
            double next = t->deadline + t->interval;
            if (next <= now)
                next = now + t->interval;
            t->deadline = next;
            t->seq = ++S->timer_seq;
            if (theap_push(&S->heap, t->deadline, t->seq, t->id) != 0)
                ac_raise_nomem(L, "timer");
        } else {
            disarm(L, S, t);
        }
        S->handled++;
        lua_getiuservalue(L, tidx, 1);
        lua_getfield(L, -1, "n");
        int n = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        luaL_checkstack(L, n + 2, "too many timer arguments");
        int args = lua_gettop(L);
        for (int i = 1; i <= n; i++)
            lua_rawgeti(L, args, i);
        if (lua_pcall(L, n - 1, 0, msgh) != LUA_OK) {
            /* a failed timer goes to handle_timer_error(err, traceback) */
            int e1 = lua_gettop(L);
            if (!ac_unwrap_error(L, e1)) {          /* ExitNow, Ctrl-C: leave the loop */
                lua_replace(L, base + 1);
                lua_settop(L, base + 1);
                return 1;
            }
            lua_getiuservalue(L, lua_upvalueindex(1), UV_MODULE);
            lua_getfield(L, -1, "handle_timer_error");
            lua_pushvalue(L, e1 + 1);
            lua_pushvalue(L, e1 + 2);
            if (lua_pcall(L, 2, 0, msgh) != LUA_OK) {
                int e2 = lua_gettop(L);
                if (!ac_unwrap_error(L, e2)) {
                    lua_replace(L, base + 1);
                    lua_settop(L, base + 1);
                    return 1;
                }
                fprintf(stderr, "asyncore: error in handle_timer_error: %s\n",
                        luaL_tolstring(L, e2 + 1, NULL));
                fflush(stderr);
            }
        }
    }
    lua_settop(L, base);
    return 0;
}

/* core.timers_pending() */
static int ltimer_pending(lua_State *L)
{
    lua_pushinteger(L, STATE(L)->ntimers);
    return 1;
}

/* core.now(): the monotonic clock timers use, in seconds */
static int ltimer_now(lua_State *L)
{
    lua_pushnumber(L, clock_now());
    return 1;
}

static const luaL_Reg timer_methods[] = {
    {"cancel", ltimer_cancel}, {"cancelled", ltimer_cancelled},
    {"reset", ltimer_reset}, {"delay", ltimer_delay}, {NULL, NULL}
};

static const luaL_Reg timer_funcs[] = {
    {"call_later", ltimer_call_later}, {"call_every", ltimer_call_every},
    {"timers_pending", ltimer_pending}, {"now", ltimer_now},
    {NULL, NULL}
};

/* adds the timer functions to the module table on top */
void ac_timer_open(lua_State *L, int st, int mt)
{
    ac_setfuncs(L, timer_funcs, st, mt);
    luaL_newmetatable(L, TIMER_MT);             /* tmt */
    lua_newtable(L);                            /* tmt, methods */
    ac_setfuncs(L, timer_methods, st, mt);
    ac_pushupvalues(L, st, mt);
    lua_pushvalue(L, -1 - AC_NUP);              /* tmt, methods, upvalues..., methods */
    lua_pushcclosure(L, ltimer_index, AC_NUP + 1);
    lua_setfield(L, -3, "__index");             /* tmt, methods */
    lua_pop(L, 1);
    ac_pushupvalues(L, st, mt);
    lua_pushcclosure(L, ltimer_tostring, AC_NUP);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
