/*
** ltask.h: tasks (ltask.c): coroutines resumed by the loop. A task is a Lua
** table (asyncore's Task class) holding its coroutine; the core keeps the
** live ones (so loop() runs while one is alive) and the ready list, and the
** pass resumes the ready ones with lua_resume after the timers. A task
** waits by yielding the core's private token; any other yield (a stray
** coroutine.yield) only lets the others run, and it goes on at the next pass.
*/
#ifndef AC_LTASK_H
#define AC_LTASK_H
#include "lbind.h"
#pragma GCC visibility push(hidden)

/* live tasks, and tasks ready to run (the pass does not sleep while one is) */
int ac_tasks_alive(lua_State *L);
int ac_tasks_ready(lua_State *L);
/* resume the tasks ready now (made ready before this call); msgh: the
** message handler's stack index. Returns 1 with the value to re-raise on
** top when the loop must end (ExitNow, Ctrl-C in a task), else 0. */
int ac_tasks_run(lua_State *L, int msgh);
/* wake the task at t: it goes on the ready list (once) */
void ac_task_wake(lua_State *L, int t);
/* push the task whose coroutine is L, or nothing: returns 1 or 0 */
int ac_task_push_current(lua_State *L);
/* suspend the calling C function's task: it yields the token (with
** continuation k and ctx); whoever readies it resumes it. Call it as
** `return ac_task_wait(L, ctx, k)`; the task table must be at `t`. */
int ac_task_wait(lua_State *L, int t, lua_KContext ctx, lua_KFunction k);
/* after a wait: raise ECANCELED if the task at t was cancelled meanwhile */
void ac_task_check_cancel(lua_State *L, int t);
/* core.task_start, task_ready, task_cancel_unstarted, task_token */
void ac_task_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
