/*
** ltask.c: tasks, the coroutines the loop resumes (see ltask.h).
**
** Handlers run under a protected call from C and cannot yield, so a task
** never runs inside one: whatever wakes a task (a timer, another task
** ending, a cancel, input for the stream it reads) only puts it on the
** ready list, and the pass resumes the ready tasks after its timers, with
** lua_resume. A task that waits yields the private token (the address of
** `token`); what will wake it is arranged beforehand. When a task ends, its
** results or error are stored on it, the tasks joining it are woken, what
** it guards (serve's stream) is closed, and an error other than its
** cancellation goes to asyncore.handle_task_error(task, err, traceback). A
** task that ended in an error has its coroutine closed (lua_resetthread):
** its to-be-closed variables run.
**
** A task is a userdata: the C state (status and flags, read without a
** table lookup on every wake and resume) with three user values: its
** coroutine, the object it is bound to (what it guards, closed when it
** ends; else the object it last resolved: ac_task_anchor), and a table for
** the Lua side's fields (results, error, joiners, and whatever a script
** stores on it), made when first needed.
*/
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ltask.h"
#include "lerror.h"

#define AC_TASK_MAGIC UINT32_C(0x6b736174)   /* "task": see AC_SOCK_MAGIC (with the size) */
/* the user values: the coroutine; the object the task is bound to (what it
** guards when t->guarded, else what it last resolved). Its field table, when
** it has one, is in the state's weak-keyed UV_TASKDATA (an idle task is small) */
enum { UVT_CO = 1, UVT_BOUND, UVT_COUNT = UVT_BOUND };

static char token;   /* its address is what a waiting task yields */

#if LUA_VERSION_NUM > 504 || (defined(LUA_VERSION_RELEASE_NUM) && LUA_VERSION_RELEASE_NUM >= 50406)
#define close_thread(co, from) lua_closethread(co, from)
#else
#define close_thread(co, from) ((void)(from), lua_resetthread(co))
#endif

#define TASKS(L) lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKS)

int ac_tasks_alive(lua_State *L)
{
    return STATE(L)->ntasks;
}

int ac_tasks_ready(lua_State *L)
{
    return STATE(L)->nready;
}

static ac_task *totask(lua_State *L, int idx)
{
    ac_task *t = lua_touserdata(L, idx);
    return t != NULL && lua_rawlen(L, idx) == sizeof *t && t->magic == AC_TASK_MAGIC ? t : NULL;
}

static ac_task *checktask(lua_State *L, int idx)
{
    ac_task *t = totask(L, idx);
    if (t == NULL)
        luaL_typeerror(L, idx, "asyncore.task");
    return t;
}

/* push the task object of a live task (anchored in the live set) */
static void push_task(lua_State *L, ac_task *t)
{
    TASKS(L);
    lua_rawgetp(L, -1, t);
    lua_remove(L, -2);
}

/* push the task's table of Lua-side fields (made when `make`), or return 0 */
static int push_data(lua_State *L, int ti, int make)
{
    ac_task *t = lua_touserdata(L, ti);
    if (!t->hasdata && !make)
        return 0;
    ti = lua_absindex(L, ti);
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKDATA);
    if (t->hasdata) {
        lua_pushvalue(L, ti);
        lua_rawget(L, -2);
    } else {
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, ti);
        lua_pushvalue(L, -2);
        lua_rawset(L, -4);
        t->hasdata = 1;
    }
    lua_remove(L, -2);
    return 1;
}

/* task[name] = the value on top (popped), in its field table */
static void data_set(lua_State *L, int ti, const char *name)
{
    push_data(L, ti, 1);
    lua_insert(L, -2);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

void ac_task_wake(lua_State *L, ac_task *t)
{
    if (t->ready || t->co == NULL)
        return;
    ac_state *S = STATE(L);
    if (S->ready_head + S->nready == S->ready_cap) {
        if (S->ready_head > 0) {
            memmove(S->ready, S->ready + S->ready_head, (size_t)S->nready * sizeof *S->ready);
            S->ready_head = 0;
        } else {
            int cap = S->ready_cap ? S->ready_cap * 2 : 16;
            ac_task **r = realloc(S->ready, (size_t)cap * sizeof *r);
            if (r == NULL) {
                ac_raise_nomem(L, "task");
                return;
            }
            S->ready = r;
            S->ready_cap = cap;
        }
    }
    S->ready[S->ready_head + S->nready++] = t;
    t->ready = 1;
}

/* take t off the ready list */
static void unready(ac_state *S, ac_task *t)
{
    ac_task **r = S->ready + S->ready_head;
    for (int i = 0; i < S->nready; i++) {
        if (r[i] == t) {
            memmove(r + i, r + i + 1, (size_t)(S->nready - i - 1) * sizeof *r);
            S->nready--;
            break;
        }
    }
    t->ready = 0;
}

ac_task *ac_task_current(lua_State *L)
{
    ac_state *S = STATE(L);
    return S->cur_co == L ? S->cur_task : NULL;
}

void ac_task_anchor(lua_State *L, ac_task *t, int idx, void *val)
{
    idx = lua_absindex(L, idx);
    push_task(L, t);
    lua_getiuservalue(L, -1, UVT_BOUND);
    int bound = lua_rawequal(L, -1, idx);
    lua_pop(L, 1);
    if (!bound && !t->guarded) {
        lua_pushvalue(L, idx);
        lua_setiuservalue(L, -2, UVT_BOUND);
    } else if (!bound) {                    /* it guards something else: keep it there */
        push_data(L, lua_gettop(L), 1);
        lua_pushvalue(L, idx);
        lua_setfield(L, -2, "_anchor");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    t->akey = lua_topointer(L, idx);
    t->aval = val;
}

int ac_task_wait(lua_State *L, ac_task *t, lua_KContext ctx, lua_KFunction k)
{
    t->status = TS_WAITING;
    lua_pushlightuserdata(L, &token);
    return lua_yieldk(L, 1, ctx, k);
}

void ac_task_check_cancel(lua_State *L, ac_task *t)
{
    if (t->cancel) {
        t->cancel = 0;
        ac_pusherror(L, "cancelled", ECANCELED, NULL);
        lua_error(L);
    }
}

/* report a task's error: asyncore.handle_task_error(task, err, traceback).
** Returns 1 with a value to re-raise on top (ExitNow in the handler). */
static int report(lua_State *L, int ti, int err, int tb, int msgh)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_MODULE);
    lua_getfield(L, -1, "handle_task_error");
    lua_remove(L, -2);
    lua_pushvalue(L, ti);
    lua_pushvalue(L, err);
    lua_pushvalue(L, tb);
    if (lua_pcall(L, 3, 0, msgh) != LUA_OK) {
        if (!ac_unwrap_error(L, lua_gettop(L)))
            return 1;                       /* ExitNow or Ctrl-C: leave the loop */
        fprintf(stderr, "asyncore: error in handle_task_error: %s\n", luaL_tolstring(L, -2, NULL));
        fflush(stderr);
        lua_pop(L, 4);
    }
    return 0;
}

/* the task at ti ended with `status`: it leaves the live set and the ready
** list, its joiners are woken, what it guards is closed */
static void finish(lua_State *L, int ti, ac_task *t, int status)
{
    ac_state *S = STATE(L);
    ti = lua_absindex(L, ti);
    t->status = (unsigned char)status;
    t->co = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, ti, UVT_CO);       /* the coroutine goes with its stack */
    if (t->ready)
        unready(S, t);
    if (t->live) {
        TASKS(L);
        lua_pushnil(L);
        lua_rawsetp(L, -2, t);
        lua_pop(L, 1);
        t->live = 0;
        S->ntasks--;
    }
    if (push_data(L, ti, 0)) {
        if (lua_getfield(L, -1, "_joiners") == LUA_TTABLE) {
            int n = (int)lua_rawlen(L, -1);
            for (int i = 1; i <= n; i++) {
                lua_rawgeti(L, -1, i);
                ac_task *j = totask(L, -1);
                if (j != NULL)
                    ac_task_wake(L, j);
                lua_pop(L, 1);
            }
            lua_pushnil(L);
            lua_setfield(L, -3, "_joiners");
        }
        lua_pop(L, 2);
    }
    if (t->guarded && lua_getiuservalue(L, ti, UVT_BOUND) != LUA_TNIL) {
        t->guarded = 0;
        lua_pushnil(L);
        lua_setiuservalue(L, ti, UVT_BOUND);
        lua_getfield(L, -1, "close");       /* guard:close() */
        lua_insert(L, -2);
        if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
            fprintf(stderr, "asyncore: error closing what a task guards: %s\n", luaL_tolstring(L, -1, NULL));
            fflush(stderr);
            lua_pop(L, 2);
        }
    } else if (t->guarded) {
        lua_pop(L, 1);
    }
}

/* is the value at idx the ECANCELED error table? */
static int is_cancel_error(lua_State *L, int idx)
{
    if (!ac_is_errorobj(L, idx))
        return 0;
    lua_getfield(L, idx, "errno");
    int e = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return e == ECANCELED;
}

/* resume t; returns 1 with a value to re-raise on top */
static int resume(lua_State *L, ac_task *t, int msgh)
{
    ac_state *S = STATE(L);
    lua_State *co = t->co;
    if (co == NULL || t->inside)
        return 0;
    int nargs = 0;
    if (!t->started) {
        t->started = 1;
        nargs = lua_gettop(co) - 1;         /* the function, then its arguments */
    }
    t->status = TS_RUNNING;
    ac_task *pt = S->cur_task;
    lua_State *pco = S->cur_co;
    S->cur_task = t;
    S->cur_co = co;
    t->inside = 1;
    int nres = 0;
    int st = lua_resume(co, L, nargs, &nres);
    t->inside = 0;
    S->cur_task = pt;
    S->cur_co = pco;
    if (st == LUA_YIELD) {
        int waits = nres >= 1 && lua_touserdata(co, -nres) == &token;
        lua_pop(co, nres);
        if (!waits && t->status == TS_RUNNING)
            ac_task_wake(L, t);             /* a stray yield: it goes on at the next pass */
        return 0;
    }
    int top = lua_gettop(L);
    push_task(L, t);                        /* top+1 */
    int ti = top + 1;
    if (st == LUA_OK) {
        lua_createtable(L, nres, 1);        /* results = {n = nres, ...} */
        int r = lua_gettop(L);
        lua_xmove(co, L, nres);
        for (int i = nres; i >= 1; i--)
            lua_rawseti(L, r, i);
        lua_pushinteger(L, nres);
        lua_setfield(L, r, "n");
        data_set(L, ti, "results");
        finish(L, ti, t, TS_DONE);
        lua_settop(L, top);
        return 0;
    }
    /* an error: its value, a traceback, then the coroutine closed */
    lua_xmove(co, L, 1);                    /* top+2: err */
    int err = top + 2;
    luaL_traceback(L, co, NULL, 0);         /* top+3: traceback */
    /* its <close> variables run; the thread's error (the same, or the error
    ** of a __close that failed) is left on its stack */
    if (close_thread(co, L) != LUA_OK && lua_gettop(co) > 0) {
        lua_xmove(co, L, 1);
        lua_replace(L, err);
    }
    int cancelled = is_cancel_error(L, err);
    lua_pushvalue(L, err);
    data_set(L, ti, "error");
    finish(L, ti, t, cancelled ? TS_CANCELLED : TS_FAILED);
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_EXITNOW);
    int exitnow = lua_rawequal(L, -1, err);
    lua_pop(L, 1);
    if (exitnow) {
        lua_pushvalue(L, err);
        return 1;                           /* ExitNow from a task leaves the loop */
    }
    if (!cancelled && report(L, ti, err, err + 1, msgh))
        return 1;
    lua_settop(L, top);
    return 0;
}

int ac_tasks_run(lua_State *L, int msgh)
{
    ac_state *S = STATE(L);
    int n = S->nready;                      /* those woken meanwhile wait for the next pass */
    for (int i = 0; i < n && S->nready > 0; i++) {
        ac_task *t = S->ready[S->ready_head++];
        if (--S->nready == 0)
            S->ready_head = 0;
        t->ready = 0;
        if (resume(L, t, msgh))
            return 1;
    }
    return 0;
}

/*
** core.task_spawn(guard, fn, ...): a task that runs fn(...) from the next
** pass (fn: a function or a callable object); `guard` (or nil) is closed
** (guard:close()) when the task ends. Returns the task.
*/
static int ltask_spawn(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checkany(L, 2);
    ac_task *t = lua_newuserdatauv(L, sizeof *t, UVT_COUNT);   /* n+1 */
    memset(t, 0, sizeof *t);
    t->magic = AC_TASK_MAGIC;
    t->status = TS_RUNNING;
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKMT);
    lua_setmetatable(L, n + 1);
    lua_State *co = lua_newthread(L);       /* n+2 */
    if (!lua_checkstack(co, n))
        return luaL_error(L, "spawn: too many arguments");
    for (int i = 2; i <= n; i++)
        lua_pushvalue(L, i);
    lua_xmove(L, co, n - 1);
    lua_setiuservalue(L, n + 1, UVT_CO);
    if (!lua_isnil(L, 1)) {
        lua_pushvalue(L, 1);
        lua_setiuservalue(L, n + 1, UVT_BOUND);
        t->guarded = 1;
    }
    t->co = co;
    TASKS(L);
    lua_pushvalue(L, n + 1);
    lua_rawsetp(L, -2, t);
    lua_pop(L, 1);
    t->live = 1;
    STATE(L)->ntasks++;
    ac_task_wake(L, t);
    return 1;
}

/* core.task_wake(task): ready it (a no-op for a task already ready or ended) */
static int ltask_wake(lua_State *L)
{
    ac_task_wake(L, checktask(L, 1));
    return 0;
}

/* cancel the task t at ti: the wait it is in raises ECANCELED; a task not
** started yet never runs; an ended one stays as it is */
static void cancel(lua_State *L, int ti, ac_task *t)
{
    if (t->status >= TS_DONE)
        return;
    if (!t->started) {
        finish(L, ti, t, TS_CANCELLED);
        return;
    }
    t->cancel = 1;
    if (ac_task_current(L) != t)
        ac_task_wake(L, t);
}

/* core.task_cancel(task): see Task:cancel */
static int ltask_cancel(lua_State *L)
{
    cancel(L, 1, checktask(L, 1));
    return 0;
}

static int suspend_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status, (void)ctx;
    ac_task *t = ac_task_current(L);
    if (t != NULL && t->cancel) {
        if (lua_type(L, 1) == LUA_TFUNCTION) {
            lua_pushvalue(L, 1);
            lua_call(L, 0, 0);
        }
        ac_task_check_cancel(L, t);
    }
    return 0;
}

/*
** core.task_suspend([undo]): the current task waits until something wakes
** it (callers check again what they wait for); when it was cancelled
** instead, undo() runs and the call raises ECANCELED.
*/
static int ltask_suspend(lua_State *L)
{
    ac_task *t = ac_task_current(L);
    if (t == NULL)
        return luaL_error(L, "suspend: not in a task");
    lua_settop(L, 1);
    return ac_task_wait(L, t, 0, suspend_k);
}

/* core.task_cancel_all(): cancel every live task (asyncore.shutdown) */
static int ltask_cancel_all(lua_State *L)
{
    lua_settop(L, 0);
    TASKS(L);                               /* 1 */
    lua_newtable(L);                        /* 2: a snapshot: cancelling changes the set */
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_rawseti(L, 2, ++n);
    }
    for (int i = 1; i <= n; i++) {
        lua_settop(L, 2);
        lua_rawgeti(L, 2, i);               /* 3 */
        ac_task *t = totask(L, 3);
        if (t != NULL)
            cancel(L, 3, t);
    }
    return 0;
}

/* core.task_current(): the task the calling coroutine runs, or nil */
static int ltask_current(lua_State *L)
{
    ac_task *t = ac_task_current(L);
    if (t == NULL)
        lua_pushnil(L);
    else
        push_task(L, t);
    return 1;
}

/* task.status, then the task's own fields, then the class (the metatable) */
static int task_index(lua_State *L)
{
    ac_task *t = checktask(L, 1);
    if (lua_rawequal(L, 2, KEY(K_STATUS))) {
        ac_pushkey(L, K_ST_RUNNING + t->status);
        return 1;
    }
    if (push_data(L, 1, 0)) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, -2) != LUA_TNIL)
            return 1;
    }
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKMT);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static int task_newindex(lua_State *L)
{
    checktask(L, 1);
    if (lua_rawequal(L, 2, KEY(K_STATUS)))
        return luaL_error(L, "task.status is read-only");
    lua_settop(L, 3);
    push_data(L, 1, 1);
    lua_insert(L, 2);
    lua_rawset(L, 2);
    return 0;
}

/* core.task_class(Task): the tasks' metatable; gets __index and __newindex */
static int ltask_class(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKMT);
    ac_copyupvalues(L);
    lua_pushcclosure(L, task_index, AC_NUP);
    lua_setfield(L, 1, "__index");
    ac_copyupvalues(L);
    lua_pushcclosure(L, task_newindex, AC_NUP);
    lua_setfield(L, 1, "__newindex");
    return 0;
}

/* core.task_counts(): live tasks, ready tasks; core.loop_depth() */
static int ltask_counts(lua_State *L)
{
    lua_pushinteger(L, STATE(L)->ntasks);
    lua_pushinteger(L, STATE(L)->nready);
    return 2;
}

static int lloop_depth(lua_State *L)
{
    lua_pushinteger(L, STATE(L)->loop_depth);
    return 1;
}

static const luaL_Reg task_funcs[] = {
    {"task_spawn", ltask_spawn}, {"task_wake", ltask_wake}, {"task_cancel", ltask_cancel},
    {"task_suspend", ltask_suspend}, {"task_current", ltask_current}, {"task_class", ltask_class},
    {"task_counts", ltask_counts}, {"task_cancel_all", ltask_cancel_all}, {"loop_depth", lloop_depth},
    {NULL, NULL}
};

void ac_task_open(lua_State *L, int st, int mt)
{
    lua_newtable(L);
    lua_setiuservalue(L, st, UV_TASKS);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, st, UV_TASKDATA);
    ac_setfuncs(L, task_funcs, st, mt);
}
