/*
** lsocket.h: the socket userdata ("asyncore.socket", lsocket.c), which every
** channel holds as self.socket, and its plain transport.
*/
#ifndef AC_LSOCKET_H
#define AC_LSOCKET_H
#include "lbind.h"
#include "buffer.h"
#include "clock.h"
#include "sock.h"
#include "ltransport.h"
#pragma GCC visibility push(hidden)

/* socket flags */
#define SF_FILE      0x01u  /* a pipe or tty: read()/write() */
#define SF_NONBLOCK  0x02u
#define SF_LISTENING 0x04u
#define SF_ACCEPTED  0x08u  /* the last accept() on this listener returned a connection */
#define SF_CONNECTING 0x10u /* a non-blocking connect is under way (cleared when it ends) */
#define SF_CHAT_PENDING 0x20u /* its async_chat channel has output queued */
#define SF_NOFD_LOGGED 0x40u  /* a listener said it ran out of descriptors (until an accept works) */
#define SF_NODELAY_SET 0x80u  /* the script set TCP_NODELAY itself: connect leaves it */
#define SF_TP_EVENTS  0x100u  /* the transport takes the socket's events first (tp->event) */
#define SF_TP_PENDING 0x200u  /* the transport holds input the poller cannot see */
#define SF_TP_LISTED  0x400u  /* ... and the socket is on its map state's pending list */
#define SF_TO_LISTED  0x800u  /* a timeout expired: on its map state's expired list */
#define SF_INTERNAL  0x1000u  /* a registration of the core's own (resolver): no channel;
                                 the pass gives its events to tp->event with chan 0 */
/* flow control (lflow.c) */
#define SF_RD_PAUSED 0x2000u  /* pause_reading(): no read interest, nothing read */
#define SF_RD_EOF    0x4000u  /* end of stream seen: no read interest any more */
#define SF_RD_OFF    (SF_RD_PAUSED | SF_RD_EOF)
#define SF_WR_PAUSED 0x8000u  /* queued output rose above the high mark: handle_pause_writing
                                 was called, handle_resume_writing not yet */
#define SF_FROM_ACCEPT 0x10000u /* made by accept(): the server side of its connection */
#define SF_DS_CLOSE  0x20000u /* dispatcher_with_send: close_when_done() asked */
#define SF_SHUT_REQ  0x40000u /* shutdown_when_done() asked, not yet done */
#define SF_WR_SHUT   0x80000u /* the sending side is shut down (FIN sent) */
#define SF_HELD     0x100000u /* the channel holds input it did not deliver (async_chat
                                 frames held while reading was paused) */
#define SF_EXCLUSIVE 0x400000u /* a listener inherited across fork(): registered with AC_EV_EXCL */
#define SF_STREAM  0x200000u /* its channel is a task stream: a read event wakes the reader (lstream.c) */

/* timeout kinds (ac_socket.to_due) */
#define TO_CONNECT   0x1u
#define TO_HANDSHAKE 0x2u
#define TO_IDLE      0x4u
#define TO_OP        0x8u   /* a stream's read in a task (lstream.c) */

/*
** Sockets (and chat states) begin with a magic number: with the userdata's
** size it tells them from any other userdata in two loads. Scripts cannot
** write into a userdata's memory, so they cannot forge one.
*/
#define AC_SOCK_MAGIC UINT64_C(0x6c75612d61632d73)   /* "lua-ac-s" */

struct ac_mapstate;   /* lreg.h */

typedef struct ac_socket {
    uint64_t magic;         /* AC_SOCK_MAGIC */
    int fd;                 /* -1 once closed */
    unsigned flags;         /* SF_* */
    uint32_t gen;           /* registration generation while in a map */
    int cidx;               /* index in the map state's custom list, or -1 */
    int mapfd;              /* the key it has in its map (kept after close), or -1 */
    unsigned char family, type;   /* AF_* (AF_UNSPEC for a file), SOCK_* (0 for a file) */
    unsigned char mode;     /* CM_* (lreg.h): how the loop asks for its interest */
    unsigned char to_due;   /* TO_* that expired and wait to be delivered */
    struct ac_mapstate *ms; /* the map state it is registered in, or NULL */
    ac_monotime paused_until; /* a listener out of descriptors rests until then */
    ac_buffer out;          /* dispatcher_with_send's output */
    size_t wr_high, wr_low; /* write_high_water, write_low_water (SIZE_MAX: off), read
                               with the channel's mode */
    const ac_transport *tp; /* how bytes move: ac_plain_transport, or a wrapper */
    void *tpstate;          /* the wrapper's state (NULL for the plain transport) */
    /* timeouts (ltimeout.c): deadlines on the monotonic clock, 0 = none */
    ac_monotime last_io;    /* the last transfer (ac_io_clock then) */
    ac_monotime to_idle;    /* idle timeout, seconds */
    ac_monotime to_connect, to_handshake;
    ac_monotime to_op;      /* a stream's read waiting in a task gives up then (lstream.c) */
    ac_monotime to_armed;   /* deadline of its live entry in the map state's heap */
} ac_socket;

#define sock_isclosed(s) ((s)->fd < 0)

extern const ac_transport ac_plain_transport;

/* the time transfers record as their socket's last_io: set at the start of
** every pass (and by set_timeout), so a transfer pays a store, not a clock read */
extern ac_monotime ac_io_clock;

/* how a registered socket leaves its map state when it closes: lreg.c
** installs it (the socket layer sits below the registration layer) */
extern void (*ac_sock_unregister)(struct ac_mapstate *ms, ac_socket *s);

ac_socket *ac_tosock(lua_State *L, int idx);          /* NULL when not a socket */
ac_socket *ac_checksock(lua_State *L, int idx, const char *op);  /* open socket or error */
ac_socket *ac_newsock(lua_State *L);                   /* pushes a closed socket */
/* a channel's socket (self.socket): NULL when it has none; ac_checkchan
** raises unless it has an open one */
ac_socket *ac_chansock(lua_State *L, int chan);
ac_socket *ac_checkchan(lua_State *L, int chan, const char *op);
/* after a Lua call: is the channel at chan still on an open socket of
** registration generation gen? That socket, or NULL. The one way the stock
** methods ask "is my channel still the one I was called for" (the pass asks
** it of the map's registration: ac_still, lreg.h) */
ac_socket *ac_chan_same(lua_State *L, int chan, uint32_t gen);
/* the same question when the caller keeps the socket s anchored on its stack
** (async_chat's framing asks it after every handler): no lookup */
#define ac_sock_same(s, g) (!sock_isclosed(s) && (s)->gen == (g))
void ac_sock_close(lua_State *L, ac_socket *s);
void ac_pushaddr(lua_State *L, const ac_sockaddr *a);
/* the address as text: "127.0.0.1:80", "[::1]:80", or a Unix path */
void ac_pushaddrtext(lua_State *L, const ac_sockaddr *a);
/* `op` names the operation in the errors it raises */
int ac_checkaddr(lua_State *L, int idx, const ac_socket *s, ac_sockaddr *a, int *nargs, const char *op);
/* the state's reused receive buffer, grown to n (capped); may be smaller */
char *ac_rbuf(ac_state *S, size_t n);
/* accept one: pushes sock and (with want_addr) its peer's address and
** returns how many it pushed (2 or 1), or returns 0 with *errp */
int ac_accept(lua_State *L, ac_socket *s, int *errp, int want_addr);
void ac_socket_open(lua_State *L, int st, int mt);
int lsocket_new(lua_State *L);
int lsocket_wrapfd(lua_State *L);
int lsocket_fileno_of(lua_State *L);
int lsocket_discard_urgent(lua_State *L);
int lsocket_realpath(lua_State *L);

#pragma GCC visibility pop
#endif
