/*
** lac.h: what the Lua-binding files (l*.c) share. Only these files include
** lua.h; the rest of the core is plain C.
**
** Module state (struct ac_state) is one userdata created by luaopen and given
** to every function as upvalue 1, with the socket metatable as upvalue 2: no
** registry lookups by name on hot paths. Its user values hold the Lua-side
** data: the weak map -> map-state table, the pending timers, ExitNow, the
** asyncore module table and the default socket_map.
*/
#ifndef AC_LAC_H
#define AC_LAC_H
#include "config.h"
#include <lua.h>
#include <lauxlib.h>
#include "ac.h"
#include "buffer.h"
#include "poller.h"
#include "sock.h"
#include "timerheap.h"
#pragma GCC visibility push(hidden)

/* user values of the state userdata */
enum { UV_MAPS = 1, UV_TIMERS, UV_EXITNOW, UV_MODULE, UV_SOCKETMAP, UV_WRAPMT,
       UV_MSGH,      /* the callbacks' message handler (see loop_msgh) */
       UV_ACCEPTED,  /* the socket the last accept() returned, while handle_accept runs */
       UV_COUNT = UV_ACCEPTED };

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
} ac_state;

struct ac_mapstate;

/* socket flags */
#define SF_FILE      0x01u  /* a pipe or tty: read()/write() */
#define SF_NONBLOCK  0x02u
#define SF_LISTENING 0x04u
#define SF_ACCEPTED  0x08u  /* the last accept() on this listener returned a connection */
#define SF_CONNECTING 0x10u /* a non-blocking connect is under way (cleared when it ends) */
#define SF_CHAT_PENDING 0x20u /* its async_chat channel has output queued */
#define SF_NODELAY_SET 0x80u  /* the script set TCP_NODELAY itself: connect leaves it */
#define SF_NOFD_LOGGED 0x40u  /* a listener said it ran out of descriptors (until an accept works) */

/* channel modes, found at add_channel from the methods the channel has */
#define CM_RD_CUSTOM 0x01u  /* readable() is a Lua method: ask it every pass */
#define CM_WR_TRUE   0x00u  /* dispatcher's writable(): always */
#define CM_WR_SEND   0x02u  /* dispatcher_with_send's: not connected, or output waiting */
#define CM_WR_CHAT   0x04u  /* async_chat's: the same, over its producer queue */
#define CM_WR_CUSTOM 0x06u
#define CM_WR_MASK   0x06u
#define CM_RE_CUSTOM 0x08u  /* handle_read_event overridden */
#define CM_WE_CUSTOM 0x10u  /* handle_write_event overridden */
#define CM_CUSTOM_PRED(m) (((m) & CM_RD_CUSTOM) || ((m) & CM_WR_MASK) == CM_WR_CUSTOM)

/*
** Sockets and chat states begin with a magic number: with the userdata's size
** it tells them from any other userdata in two loads, where a metatable
** comparison costs a table fetch and a stack slot on every method call.
** Scripts cannot write into a userdata's memory, so they cannot forge one.
*/
#define AC_SOCK_MAGIC UINT64_C(0x6c75612d61632d73)   /* "lua-ac-s" */
#define AC_CHAT_MAGIC UINT64_C(0x6c75612d61632d63)   /* "lua-ac-c" */

typedef struct ac_socket {
    uint64_t magic;         /* AC_SOCK_MAGIC */
    int fd;                 /* -1 once closed */
    int family, type;
    unsigned flags;
    unsigned mode;          /* CM_* */
    uint32_t gen;           /* registration generation while in a map */
    int cidx;               /* index in the map state's custom list, or -1 */
    int mapfd;              /* the key it has in its map (kept after close), or -1 */
    struct ac_mapstate *ms; /* the map state it is registered in, or NULL */
    ac_monotime paused_until; /* a listener out of descriptors rests until then */
    ac_buffer out;          /* dispatcher_with_send's output */
} ac_socket;

#define sock_isclosed(s) ((s)->fd < 0)

typedef struct ac_mapstate {
    struct poller p;
    struct ac_reg *regs;        /* fd -> {gen, registered mask} */
    ac_socket **socks;          /* fd -> registered socket */
    int nregs;
    int *custom;                /* fds whose predicates are Lua methods */
    int ncustom, capcustom;
    int npaused;                /* listeners resting after EMFILE */
    int nsocks;
    uint32_t pred_version;      /* the pred_version the channels' modes were read at */
} ac_mapstate;

#define STATE(L) ((ac_state *)lua_touserdata(L, lua_upvalueindex(1)))

/*
** Every C function of the core has the same upvalues: the state, the socket
** metatable, then the field names the hot paths look up, as ready Lua strings
** (lua_getfield with a C string goes through the string cache and a strcmp
** on every call; pushing an upvalue is a copy).
*/
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
    X(AC_OUT_BUFFER_SIZE, "ac_out_buffer_size") X(CHAT, "_chat") X(MORE, "more") X(INITIATE_SEND, "initiate_send") X(INDEX, "__index")

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

/* push the AC_NUP upvalues: the state and socket metatable at st, mt (absolute),
** then the key strings */
void ac_pushupvalues(lua_State *L, int st, int mt);
/* push a copy of the calling C function's own upvalues */
void ac_copyupvalues(lua_State *L);
/* luaL_setfuncs into the table on top, with the standard upvalues */
void ac_setfuncs(lua_State *L, const luaL_Reg *l, int st, int mt);

/* lerror.c */
int ac_pusherror(lua_State *L, const char *op, int err, const char *message);
int ac_raise(lua_State *L, const char *op, int err);
/* the same, naming the address (field `address`; "bind 127.0.0.1:80: ...") */
int ac_raise_at(lua_State *L, const char *op, int err, const ac_sockaddr *a);
int ac_raise_closed(lua_State *L, const char *op);
int ac_is_disconnect(int err);
void ac_error_open(lua_State *L);
int ac_is_errorobj(lua_State *L, int idx);
int lerror_is_error(lua_State *L);

/* lsocket.c */
ac_socket *ac_tosock(lua_State *L, int idx);          /* NULL when not a socket */
void *ac_testud(lua_State *L, int idx, size_t size, uint64_t magic);
ac_socket *ac_checksock(lua_State *L, int idx, const char *op);  /* open socket or error */
ac_socket *ac_newsock(lua_State *L);                   /* pushes a closed socket */
void ac_sock_close(lua_State *L, ac_socket *s);
void ac_pushaddr(lua_State *L, const ac_sockaddr *a);
/* the address as text: "127.0.0.1:80", "[::1]:80", or a Unix path */
void ac_pushaddrtext(lua_State *L, const ac_sockaddr *a);
/* `op` names the operation in the errors it raises */
int ac_checkaddr(lua_State *L, int idx, const ac_socket *s, ac_sockaddr *a, int *nargs, const char *op);
char *ac_rbuf(ac_state *S, size_t n);
void ac_socket_open(lua_State *L, int st, int mt);
int lsocket_new(lua_State *L);
int lsocket_wrapfd(lua_State *L);
int lsocket_fileno_of(lua_State *L);
int lsocket_discard_urgent(lua_State *L);
int lsocket_realpath(lua_State *L);
int ac_accept(lua_State *L, ac_socket *s, int *errp);

/* lloop.c */
void ms_unregister(ac_mapstate *ms, ac_socket *s);
void ac_update_interest(lua_State *L, int chan, ac_socket *s);
ac_socket *ac_chansock(lua_State *L, int chan);        /* the channel's socket or NULL */
ac_socket *ac_checkchan(lua_State *L, int chan, const char *op);
ac_mapstate *ac_getmapstate(lua_State *L, int map, const char *backend);
int ac_rawbool(lua_State *L, int t, enum ac_key k);
/* push the message handler every callback runs under (ExitNow and Ctrl-C pass
** through it, other errors come out wrapped with their traceback) */
void ac_push_msgh(lua_State *L);
/* is the value at idx a wrapped callback error? then push err, traceback */
int ac_unwrap_error(lua_State *L, int idx);
/* push the channel of socket s in the map it is registered in; 0 if none */
int ac_push_channel_of(lua_State *L, ac_socket *s);
void ac_loop_open(lua_State *L, int st, int mt);

/* ltimer.c */
void ac_timer_open(lua_State *L, int st, int mt);
int ac_timers_run(lua_State *L, ac_state *S, int msgh);
int64_t ac_timers_wait_us(ac_state *S, ac_monotime now, int64_t wait_us);
/* lloop.c: is the value at idx "readable", "writable", "handle_read_event" or
** "handle_write_event" (the methods a channel's mode is read from)? */
int ac_is_mode_key(lua_State *L, int idx);

/* lchan.c */
void ac_chan_open(lua_State *L, int st, int mt);
/* the stock methods, which the loop recognises by address (see find_mode in lloop.c) */
extern const lua_CFunction ac_stock_readable, ac_stock_writable, ac_stock_ds_writable,
    ac_stock_chat_writable, ac_stock_read_event, ac_stock_write_event;
int ac_chan_read_event(lua_State *L, int chan, ac_socket *s);
int ac_chan_write_event(lua_State *L, int chan, ac_socket *s);
int ac_call_method(lua_State *L, int chan, enum ac_key name, int nargs);

/* lchat.c */
void ac_chat_open(lua_State *L, int st, int mt);
void ac_chat_meta(lua_State *L, int st);
#define ac_chat_wants_write(s) (((s)->flags & SF_CHAT_PENDING) != 0)
/* after add_channel: mark the socket with the channel's queue state */
void ac_chat_attach(lua_State *L, int chan, ac_socket *s);

#pragma GCC visibility pop
#endif
