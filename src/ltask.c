/*
** ltask.c: tasks, the coroutines the loop resumes (see ltask.h).
**
** Handlers run under a protected call from C and cannot yield, so a task
** never runs inside one: whatever wakes a task (a timer, another task
** ending, a cancel) only puts it on the ready list, and the pass resumes
** the ready tasks after its timers, with lua_resume. A task that waits
** yields the private token (the address of `token`); the Lua side
** (asyncore.lua) arranges beforehand what will wake it. When a task ends,
** its results or error are stored on it, the tasks joining it are woken,
** and an error other than its cancellation goes to
** asyncore.handle_task_error(task, err, traceback). A task that ended in an
** error has its coroutine closed (lua_resetthread): its to-be-closed
** variables run.
*/
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "ltask.h"
#include "lerror.h"

static char token;   /* its address is what a waiting task yields */

#if LUA_VERSION_NUM > 504 || (defined(LUA_VERSION_RELEASE_NUM) && LUA_VERSION_RELEASE_NUM >= 50406)
#define close_thread(co, from) lua_closethread(co, from)
#else
#define close_thread(co, from) ((void)(from), lua_resetthread(co))
#endif

#define TASKS(L) lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKS)
#define READY(L) lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_READY)

int ac_tasks_alive(lua_State *L)
{
    return STATE(L)->ntasks;
}

int ac_tasks_ready(lua_State *L)
{
    return STATE(L)->nready;
}

/* a task's own fields, raw (the Task class is its metatable): push t[k] */
static int tget(lua_State *L, int t, enum ac_key k)
{
    ac_pushkey(L, k);
    return lua_rawget(L, t);
}

/* t[k] = the value on top (popped) */
static void tset(lua_State *L, int t, enum ac_key k)
{
    ac_pushkey(L, k);
    lua_insert(L, -2);
    lua_rawset(L, t);
}

static void set_status(lua_State *L, int t, enum ac_key st)
{
    ac_pushkey(L, st);
    tset(L, t, K_STATUS);
}

static int terminal(lua_State *L, int t)
{
    tget(L, t, K_STATUS);
    int r = lua_rawequal(L, -1, KEY(K_ST_DONE)) || lua_rawequal(L, -1, KEY(K_ST_FAILED)) ||
            lua_rawequal(L, -1, KEY(K_ST_CANCELLED));
    lua_pop(L, 1);
    return r;
}

/* put the task at t on the ready list (once) */
static void make_ready(lua_State *L, int t)
{
    t = lua_absindex(L, t);
    tget(L, t, K_READY);
    int already = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (already || terminal(L, t))
        return;
    lua_pushboolean(L, 1);
    tset(L, t, K_READY);
    ac_state *S = STATE(L);
    READY(L);
    lua_pushvalue(L, t);
    lua_rawseti(L, -2, S->ready_head + S->nready++);
    lua_pop(L, 1);
}

void ac_task_wake(lua_State *L, int t)
{
    make_ready(L, t);
}

int ac_task_push_current(lua_State *L)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKCO);
    lua_pushthread(L);
    if (lua_rawget(L, -2) != LUA_TTABLE) {
        lua_pop(L, 2);
        return 0;
    }
    lua_remove(L, -2);
    return 1;
}

int ac_task_wait(lua_State *L, int t, lua_KContext ctx, lua_KFunction k)
{
    set_status(L, t, K_ST_WAITING);
    lua_pushlightuserdata(L, &token);
    return lua_yieldk(L, 1, ctx, k);
}

void ac_task_check_cancel(lua_State *L, int t)
{
    if (tget(L, t, K_CANCEL) != LUA_TNIL && lua_toboolean(L, -1)) {
        lua_pushnil(L);
        tset(L, t, K_CANCEL);
        ac_pusherror(L, "cancelled", ECANCELED, NULL);
        lua_error(L);
    }
    lua_pop(L, 1);
}

/* the task at t ended with `status`: leave the live set, wake its joiners */
static void finish(lua_State *L, int t, const char *status)
{
    ac_state *S = STATE(L);
    t = lua_absindex(L, t);
    lua_pushstring(L, status);
    lua_setfield(L, t, "status");
    lua_pushnil(L);
    lua_setfield(L, t, "co");          /* the coroutine goes with its stack */
    TASKS(L);
    lua_pushvalue(L, t);
    if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, t);
        lua_pushnil(L);
        lua_rawset(L, -3);
        S->ntasks--;
    } else {
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "_joiners") == LUA_TTABLE) {
        int n = (int)lua_rawlen(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            make_ready(L, -1);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setfield(L, t, "_joiners");
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

/* report a task's error: asyncore.handle_task_error(task, err, traceback).
** Returns 1 with a value to re-raise on top (ExitNow in the handler). */
static int report(lua_State *L, int t, int err, int tb, int msgh)
{
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_MODULE);
    lua_getfield(L, -1, "handle_task_error");
    lua_remove(L, -2);
    lua_pushvalue(L, t);
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

/* resume the task at t; returns 1 with a value to re-raise on top */
static int resume(lua_State *L, int t, int msgh)
{
    lua_pushnil(L);
    tset(L, t, K_READY);
    if (terminal(L, t))
        return 0;
    tget(L, t, K_CO);
    lua_State *co = lua_tothread(L, -1);
    if (co == NULL) {
        lua_pop(L, 1);
        return 0;
    }
    int cot = lua_gettop(L);                /* anchors the coroutine */
    set_status(L, t, K_ST_RUNNING);
    lua_pushboolean(L, 1);
    tset(L, t, K_STARTED);
    int nres = 0;
    int st = lua_resume(co, L, 0, &nres);
    if (st == LUA_YIELD) {
        int waits = nres >= 1 && lua_touserdata(co, -nres) == &token;
        lua_pop(co, nres);
        if (!waits) {
            tget(L, t, K_STATUS);
            int running = lua_rawequal(L, -1, KEY(K_ST_RUNNING));
            lua_pop(L, 1);
            if (running)
                make_ready(L, t);           /* a stray yield: it goes on at the next pass */
        }
        lua_settop(L, cot - 1);
        return 0;
    }
    if (st == LUA_OK) {
        lua_createtable(L, nres, 1);        /* results = {n = nres, ...} */
        int r = lua_gettop(L);
        lua_xmove(co, L, nres);
        for (int i = nres; i >= 1; i--)
            lua_rawseti(L, r, i);
        lua_pushinteger(L, nres);
        lua_setfield(L, r, "n");
        lua_setfield(L, t, "results");
        finish(L, t, "done");
        lua_settop(L, cot - 1);
        return 0;
    }
    /* an error: its value, a traceback, then the coroutine closed */
    lua_xmove(co, L, 1);                    /* cot+1: err */
    int err = lua_gettop(L);
    luaL_traceback(L, co, NULL, 0);         /* err+1: traceback */
    /* its <close> variables run; the thread's error (the same, or the error
    ** of a __close that failed) is left on its stack */
    if (close_thread(co, L) != LUA_OK && lua_gettop(co) > 0) {
        lua_xmove(co, L, 1);
        lua_replace(L, err);
    }
    int cancelled = is_cancel_error(L, err);
    lua_pushvalue(L, err);
    lua_setfield(L, t, "error");
    finish(L, t, cancelled ? "cancelled" : "failed");
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_EXITNOW);
    int exitnow = lua_rawequal(L, -1, err);
    lua_pop(L, 1);
    if (exitnow) {
        lua_pushvalue(L, err);
        return 1;                           /* ExitNow from a task leaves the loop */
    }
    if (!cancelled && report(L, t, err, err + 1, msgh))
        return 1;
    lua_settop(L, cot - 1);
    return 0;
}

int ac_tasks_run(lua_State *L, int msgh)
{
    ac_state *S = STATE(L);
    int n = S->nready;                      /* those woken meanwhile wait for the next pass */
    if (n == 0)
        return 0;
    int top = lua_gettop(L);
    READY(L);                               /* top+1: the list */
    for (int i = 0; i < n; i++) {
        lua_settop(L, top + 1);
        lua_Integer at = S->ready_head++;
        S->nready--;
        lua_rawgeti(L, top + 1, at);
        lua_pushnil(L);
        lua_rawseti(L, top + 1, at);
        if (lua_type(L, top + 2) == LUA_TTABLE && resume(L, top + 2, msgh)) {
            if (S->nready == 0)
                S->ready_head = 1;
            lua_replace(L, top + 1);        /* the value to re-raise */
            lua_settop(L, top + 1);
            return 1;
        }
    }
    if (S->nready == 0)
        S->ready_head = 1;                  /* keep the keys small */
    lua_settop(L, top);
    return 0;
}

/*
** core.task_start(task, fn): fn (no arguments) becomes the task's coroutine;
** the task is live and ready: it starts at the next pass.
*/
static int ltask_start(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    lua_State *co = lua_newthread(L);       /* 3 */
    lua_pushvalue(L, 2);
    lua_xmove(L, co, 1);
    lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_TASKCO);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_setfield(L, 1, "co");
    lua_pushliteral(L, "running");
    lua_setfield(L, 1, "status");
    TASKS(L);
    lua_pushvalue(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    STATE(L)->ntasks++;
    make_ready(L, 1);
    return 0;
}

/* core.task_ready(task): wake it (a no-op for a task already ready or ended) */
static int ltask_ready(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    make_ready(L, 1);
    return 0;
}

/* core.task_finish(task, status): end a task that never ran (cancelled
** before its first pass) */
static int ltask_finish(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *status = luaL_checkstring(L, 2);
    if (!terminal(L, 1))
        finish(L, 1, status);
    return 0;
}

/* core.task_current(): the task the calling coroutine runs, or nil */
static int ltask_current(lua_State *L)
{
    if (!ac_task_push_current(L))
        lua_pushnil(L);
    return 1;
}

/* core.task_token(): what a waiting task yields */
static int ltask_token(lua_State *L)
{
    lua_pushlightuserdata(L, &token);
    return 1;
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
    {"task_start", ltask_start}, {"task_ready", ltask_ready}, {"task_finish", ltask_finish},
    {"task_token", ltask_token}, {"task_current", ltask_current}, {"task_counts", ltask_counts}, {"loop_depth", lloop_depth},
    {NULL, NULL}
};

void ac_task_open(lua_State *L, int st, int mt)
{
    lua_newtable(L);
    lua_setiuservalue(L, st, UV_TASKS);
    lua_newtable(L);
    lua_setiuservalue(L, st, UV_READY);
    ((ac_state *)lua_touserdata(L, st))->ready_head = 1;
    lua_newtable(L);                        /* weak keys: a coroutine -> its task */
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, st, UV_TASKCO);
    ac_setfuncs(L, task_funcs, st, mt);
}
