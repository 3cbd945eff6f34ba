/*
** lreg.h: map states (lreg.c). Each map (socket_map or a script's own table)
** has one: a poller and the registration of every channel added to it, by
** descriptor: its socket, generation and registered interest. The map table
** stays the truth for the script; the registration is what the poller knows.
*/
#ifndef AC_LREG_H
#define AC_LREG_H
#include "lsocket.h"
#include "poller.h"
#pragma GCC visibility push(hidden)

/*
** Channel modes (ac_socket.mode), read when a channel joins a map (lmode.c):
** which of its predicates and event methods are the stock C ones. A stock
** predicate is never called: its answer is computed here (ac_stock_mask).
*/
#define CM_RD_CUSTOM 0x01u  /* readable() is a Lua method: ask it every pass */
#define CM_WR_TRUE   0x00u  /* dispatcher's writable(): always */
#define CM_WR_SEND   0x02u  /* dispatcher_with_send's: not connected, or output waiting */
#define CM_WR_CHAT   0x04u  /* async_chat's: the same, over its producer queue */
#define CM_WR_CUSTOM 0x06u
#define CM_WR_MASK   0x06u
#define CM_RE_CUSTOM 0x08u  /* handle_read_event overridden */
#define CM_WE_CUSTOM 0x10u  /* handle_write_event overridden */
#define CM_CUSTOM_PRED(m) (((m) & CM_RD_CUSTOM) || ((m) & CM_WR_MASK) == CM_WR_CUSTOM)

#define ac_chat_wants_write(s) (((s)->flags & SF_CHAT_PENDING) != 0)

typedef struct ac_mapstate {
    struct poller p;
    struct ac_reg *regs;        /* fd -> {gen, registered mask} */
    ac_socket **socks;          /* fd -> registered socket */
    int nregs;
    int *custom;                /* fds whose predicates are Lua methods */
    int ncustom, capcustom;
    int npaused;                /* listeners resting after EMFILE */
    int *pend;                  /* fds of the sockets with SF_TP_LISTED (room for nregs) */
    int npend;
    int *expired;               /* fds of the sockets with SF_TO_LISTED (room for nregs) */
    int nexpired;
    ac_theap toheap;            /* channel timeouts: (deadline, gen, fd), lazily deleted */
    int nsocks;
    uint32_t pred_version;      /* the pred_version the channels' modes were read at */
    unsigned fork_gen;          /* ac_fork_count when its poller was made */
    int shutdown;               /* asyncore.shutdown() under way: loop() ends once the map is empty */
} ac_mapstate;

/* how many fork()s this process descends from (counted in each child): a map
** state made before a fork makes its poller again in the child (ac_ms_fresh) */
extern unsigned ac_fork_count;
/* after a fork: a new poller with every registration of the map state (the
** epoll set is the parent's, a kqueue is not inherited), internal ones
** dropped (their owners register again), listeners shared (AC_EV_EXCL);
** 0 or an errno. A no-op in the process that made it. */
int ac_ms_fresh(ac_mapstate *ms);

/* the map state of the table at `map`, created on first use; pushes it. With a
** backend name, the state moves to that backend if it uses another. */
ac_mapstate *ac_getmapstate(lua_State *L, int map, const char *backend);
/* make room for descriptor fd; 0 or ENOMEM */
int ac_ms_grow(ac_mapstate *ms, int fd);
/* set fd's registered interest; 0 or the poller's errno */
int ac_ms_setmask(ac_mapstate *ms, int fd, unsigned mask);
/* the socket's transport holds input the poller cannot see: flag it, and
** list it for the pass while its registration asks for reads (a socket
** whose reads are not wanted now is listed when they are again) */
void ac_ms_mark_pending(ac_socket *s);
/* list s for the pass if it holds input (SF_TP_PENDING or SF_HELD) and its
** registration asks for reads (resume_reading calls it) */
void ac_ms_list_input(ac_socket *s);
/* register an internal socket (SF_INTERNAL: no channel, no Lua) with mask;
** 0 or an errno */
int ac_ms_register_internal(ac_mapstate *ms, ac_socket *s, unsigned mask);
/* a timeout of s expired (its to_due bits are set): list it for the pass */
void ac_ms_list_expired(ac_mapstate *ms, ac_socket *s);
/* raise a poller's refusal (select: "descriptor too large") */
int ac_raise_setmask(lua_State *L, const char *backend, int fd, int err);
void ac_ms_add_custom(ac_mapstate *ms, ac_socket *s, int *errp);
void ac_ms_remove_custom(ac_mapstate *ms, ac_socket *s);
void ac_ms_unregister(ac_mapstate *ms, ac_socket *s);
/* the interest the stock predicates give the channel at chan (after the
** transport's say) */
unsigned ac_stock_mask(lua_State *L, int chan, ac_socket *s);
/* recompute a stock channel's interest after its state changed; may raise */
void ac_update_interest(lua_State *L, int chan, ac_socket *s);
/* is the channel at chan still registration gen of fd in ms? its socket,
** or NULL: the one way the pass asks it after running Lua code */
ac_socket *ac_still(lua_State *L, int chan, ac_mapstate *ms, int fd, uint32_t gen);
/* push the channel of socket s in the map it is registered in; 0 if none */
int ac_push_channel_of(lua_State *L, ac_socket *s);
/*
** Pass hooks: the seam where per-channel timers (timeouts) and resumable
** waiters (tasks) join the pass. Each registered hook runs at the start of
** every pass of every map (map: the map table's stack index) and may shorten
** the wait (*wait_us, < 0: none yet). The listeners' EMFILE rest is one.
*/
typedef void (*ac_pass_hook)(lua_State *L, ac_mapstate *ms, int map, ac_monotime now,
                             int64_t *wait_us);
void ac_add_pass_hook(ac_pass_hook h);
void ac_run_pass_hooks(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us);

/* core.release_map, core.map_backend, the map-state metatable */
void ac_reg_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
