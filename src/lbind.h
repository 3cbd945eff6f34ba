/*
** lbind.h: the foundation of the Lua binding, used by every l*.c file and
** using none of them. Only the binding files include lua.h; the floor below
** (sock, poller, buffer, timerheap, clock) is plain C.
**
** Module state (struct ac_state) is one userdata created by luaopen and given
** to every C function as upvalue 1, with the socket metatable as upvalue 2
** and then the field names the hot paths look up, as ready Lua strings
** (pushing an upvalue is a copy; lua_getfield with a C string hashes it).
** The state's user values hold the Lua-side data (UV_*).
*/
#ifndef AC_LBIND_H
#define AC_LBIND_H
#include "config.h"
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include "ac.h"
#include "timerheap.h"
#pragma GCC visibility push(hidden)

/* user values of the state userdata */
enum { UV_MAPS = 1,   /* weak table: map -> map state (lreg.c) */
       UV_TIMERS,     /* id -> armed timer (ltimer.c) */
       UV_EXITNOW, UV_MODULE, UV_SOCKETMAP,
       UV_WRAPMT,     /* metatable of a callback error wrapped with its traceback */
       UV_MSGH,       /* the callbacks' message handler (ac_push_msgh) */
       UV_ACCEPTED,   /* the socket the last accept() returned, while handle_accept runs */
       UV_TASKS,      /* the live tasks: light userdata (its C state) -> task (ltask.c) */
       UV_TASKMT,     /* the tasks' metatable, asyncore's Task class (ltask.c) */
       UV_TASKDATA,   /* weak-keyed: task -> its table of Lua-side fields, for the
                         tasks that have one (ltask.c) */
       UV_COUNT = UV_TASKDATA };

typedef struct ac_state {
    char *rbuf;             /* the reused receive buffer */
    size_t rbufsize;
    ac_theap heap;          /* timer deadlines */
    uint64_t timer_seq;     /* arming order, also marks a timer's live heap entry */
    int64_t timer_next_id;
    int ntimers;            /* timers armed now */
    uint32_t gen;           /* last registration generation handed out */
    uint32_t class_version; /* bumped by class.lua whenever a class changes */
    uint32_t pred_version;  /* bumped when a class's readable, writable or
                               handle_read/write_event changes */
    /* tasks (ltask.c): the live ones are anchored in UV_TASKS; the ready
    ** list holds their C states in order (ready[head .. head+nready-1]) */
    int ntasks, nready;
    int ready_head, ready_cap;
    struct ac_task **ready;
    struct ac_task *cur_task; /* the task being resumed, and its coroutine */
    lua_State *cur_co;
    int loop_depth;         /* loop() calls under way (lloop.c) */
    int handled;            /* events handled by the last loop() (asyncore.step) */
} ac_state;

#define STATE(L) ((ac_state *)lua_touserdata(L, lua_upvalueindex(1)))

#define AC_KEYS(X) \
    X(SOCKET, "socket") X(CONNECTED, "connected") X(ACCEPTING, "accepting") \
    X(CONNECTING, "connecting") X(DEBUG, "debug") X(HANDLE_READ, "handle_read") \
    X(HANDLE_WRITE, "handle_write") X(HANDLE_CLOSE, "handle_close") \
    X(HANDLE_ACCEPT, "handle_accept") X(HANDLE_ACCEPTED, "handle_accepted") \
    X(HANDLE_CONNECT, "handle_connect") X(HANDLE_CONNECT_EVENT, "handle_connect_event") \
    X(HANDLE_READ_EVENT, "handle_read_event") X(HANDLE_WRITE_EVENT, "handle_write_event") \
    X(HANDLE_EXPT_EVENT, "handle_expt_event") X(HANDLE_ERROR, "handle_error") \
    X(READABLE, "readable") X(WRITABLE, "writable") X(MAP, "_map") X(LOG_INFO, "log_info") \
    X(ACCEPT, "accept") X(CLOSE, "close") X(FOUND_TERMINATOR, "found_terminator") \
    X(COLLECT_INCOMING_DATA, "collect_incoming_data") X(HANDLE_OVERFLOW, "handle_overflow") \
    X(MAX_IN_BUFFER, "max_in_buffer") X(AC_IN_BUFFER_SIZE, "ac_in_buffer_size") \
    X(AC_OUT_BUFFER_SIZE, "ac_out_buffer_size") X(CHAT, "_chat") X(MORE, "more") \
    X(INITIATE_SEND, "initiate_send") X(INDEX, "__index") \
    X(HANDLE_HANDSHAKE, "handle_handshake") X(ALLOW_HALF_OPEN, "allow_half_open") \
    X(HANDLE_READ_EOF, "handle_read_eof") X(HANDLE_PAUSE_WRITING, "handle_pause_writing") \
    X(HANDLE_RESUME_WRITING, "handle_resume_writing") X(WRITE_HIGH_WATER, "write_high_water") \
    X(WRITE_LOW_WATER, "write_low_water") \
    X(STATUS, "status") \
    X(ST_RUNNING, "running") X(ST_WAITING, "waiting") X(ST_DONE, "done") \
    X(ST_FAILED, "failed") X(ST_CANCELLED, "cancelled")

enum ac_key {
#define AC_KEY_ENUM(name, str) K_##name,
    AC_KEYS(AC_KEY_ENUM)
#undef AC_KEY_ENUM
    K_COUNT
};

#define UP_STATE 1
#define UP_SOCKMT 2
#define AC_NUP (2 + K_COUNT)
#define KEY(k) lua_upvalueindex(3 + (k))
#define ac_pushkey(L, k) lua_pushvalue(L, KEY(k))

/* push the AC_NUP upvalues: the state and socket metatable at st, mt
** (absolute indices), then the key strings */
void ac_pushupvalues(lua_State *L, int st, int mt);
/* push a copy of the calling C function's own upvalues */
void ac_copyupvalues(lua_State *L);
/* luaL_setfuncs into the table on top, with the standard upvalues */
void ac_setfuncs(lua_State *L, const luaL_Reg *l, int st, int mt);

/* is t[k] (raw) true? a non-boolean value counts as true */
int ac_rawbool(lua_State *L, int t, enum ac_key k);
/* is t[k] true as Lua reads it: the instance's own field, else its class's?
** (`connected`: a served stream's class says it, the instance need not) */
int ac_chanbool(lua_State *L, int t, enum ac_key k);
/* the userdata at idx if it is `size` bytes and starts with `magic`, else
** NULL (inline: it runs on every method call) */
static inline void *ac_testud(lua_State *L, int idx, size_t size, uint64_t magic)
{
    void *p = lua_touserdata(L, idx);
    if (p != NULL && lua_rawlen(L, idx) == size && *(const uint64_t *)p == magic)
        return p;
    return NULL;
}
/* chan:name(args...) with the nargs values on top (popped); errors propagate */
void ac_call_method(lua_State *L, int chan, enum ac_key name, int nargs);

/*
** Handler failures, one way everywhere: callbacks run under lua_pcall with
** the message handler ac_push_msgh pushes. ExitNow and Ctrl-C
** ("interrupted!") pass through it untouched (they leave the loop); any
** other error comes out wrapped with its traceback. ac_unwrap_error tells the
** two apart: for a wrapped error it pushes err and traceback and returns 1.
*/
void ac_push_msgh(lua_State *L);
int ac_unwrap_error(lua_State *L, int idx);
/* after ac_unwrap_error said 0: raise the value at idx again, as it is */
int ac_reraise(lua_State *L, int idx);
/* create the message handler (once, at luaopen) */
void ac_bind_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
