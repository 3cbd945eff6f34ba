/*
** ltask.h: tasks (ltask.c): coroutines resumed by the loop. A task is a
** userdata (its C state below; asyncore's Task class is its metatable)
** holding its coroutine; the core keeps the live ones (so loop() runs while
** one is alive) and the ready list, and the pass resumes the ready ones with
** lua_resume after the timers. A task waits by yielding the core's private
** token; any other yield (a stray coroutine.yield) only lets the others
** run, and it goes on at the next pass. What waits for a task (a stream's
** reader, say) keeps its C state: a live task is anchored by the core.
*/
#ifndef AC_LTASK_H
#define AC_LTASK_H
#include "lbind.h"
#pragma GCC visibility push(hidden)

enum { TS_RUNNING, TS_WAITING, TS_DONE, TS_FAILED, TS_CANCELLED };

typedef struct ac_task {
    uint32_t magic;         /* AC_TASK_MAGIC */
    unsigned status : 3;    /* TS_* */
    unsigned ready : 1;     /* on the ready list */
    unsigned started : 1;   /* resumed at least once */
    unsigned cancel : 1;    /* cancel() asked: the wait it is in raises ECANCELED */
    unsigned live : 1;      /* in the live set */
    unsigned inside : 1;    /* being resumed now */
    unsigned guarded : 1;   /* it closes what it is bound to when it ends */
    unsigned hasdata : 1;   /* it has a table of Lua-side fields (UV_TASKDATA) */
    lua_State *co;          /* its coroutine; NULL once it ended */
    /* what the task last resolved (a stream's chat from the stream table,
    ** lstream.c): akey is the object's address, aval what it resolves to;
    ** the task anchors the object, so the address cannot be reused */
    const void *akey;
    void *aval;
} ac_task;

/* live tasks, and tasks ready to run (the pass does not sleep while one is) */
int ac_tasks_alive(lua_State *L);
int ac_tasks_ready(lua_State *L);
/* resume the tasks ready now (made ready before this call); msgh: the
** message handler's stack index. Returns 1 with the value to re-raise on
** top when the loop must end (ExitNow, Ctrl-C in a task), else 0. */
int ac_tasks_run(lua_State *L, int msgh);
/* put a live task on the ready list (once); no Lua call */
void ac_task_wake(lua_State *L, ac_task *t);
/* the task whose coroutine is L (running now), or NULL */
ac_task *ac_task_current(lua_State *L);
/* suspend the calling C function's task t (current): it yields the token
** (with continuation k and ctx); whoever readies it resumes it. Call it as
** `return ac_task_wait(L, t, ctx, k)`. */
int ac_task_wait(lua_State *L, ac_task *t, lua_KContext ctx, lua_KFunction k);
/* after a wait: raise ECANCELED if t was cancelled meanwhile */
void ac_task_check_cancel(lua_State *L, ac_task *t);
/* remember that the object at idx resolves to val (t->akey, t->aval); the
** task anchors the object */
void ac_task_anchor(lua_State *L, ac_task *t, int idx, void *val);
/* core.task_spawn, task_wake, task_cancel, task_suspend, task_current, ... */
void ac_task_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
