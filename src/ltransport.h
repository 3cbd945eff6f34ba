/*
** ltransport.h: the seam between a channel and its socket. Every byte the
** stock methods move (dispatcher recv/send, dispatcher_with_send's buffer,
** async_chat's framing and output queue) goes through the socket's transport.
** The plain transport (lsocket.c) is the system calls themselves; a transport
** that wraps it (TLS) replaces s->tp and keeps the channels unchanged: it
** carries plaintext on read/write, and tells the registration layer which
** poller interest it needs (a handshake may need to read while the channel
** only wants to write).
**
** All return 0 or an errno: EAGAIN when it would block; a read of 0 bytes
** with 0 returned is the end of the stream.
**
** A transport that holds state of its own (a handshake under way, records it
** decrypted ahead, output the kernel did not take yet) says so on the socket:
** SF_TP_EVENTS (lsocket.h) makes the pass give the socket's events to
** `event` first; input it holds that the poller cannot see is announced with
** ac_ms_mark_pending (lreg.h), and the pass then delivers a read event
** without waiting, as long as `pending` says a read would return something.
*/
#ifndef AC_LTRANSPORT_H
#define AC_LTRANSPORT_H
#include <stddef.h>
#include <sys/uio.h>
#pragma GCC visibility push(hidden)

struct ac_socket;
struct lua_State;

typedef struct ac_transport {
    const char *name;
    int (*read)(struct ac_socket *s, char *p, size_t n, size_t *got);
    int (*write)(struct ac_socket *s, const char *p, size_t n, size_t *sent);
    int (*writev)(struct ac_socket *s, struct iovec *iov, int iovcnt, size_t *sent);
    int (*shutdown)(struct ac_socket *s, int how);
    /* release what the transport holds; the socket closes the descriptor */
    void (*close)(struct ac_socket *s);
    /* the interest (AC_EV_*) to register when the channel wants `wanted`;
    ** NULL: the same */
    unsigned (*interest)(const struct ac_socket *s, unsigned wanted);
    /* does a read return data, an end or an error now, though the poller may
    ** not say so? NULL: never */
    int (*pending)(struct ac_socket *s);
    /* 0 when the transport holds no output of its own, EAGAIN while it does
    ** (close_when_done waits for it); NULL: it never holds any */
    int (*flush)(struct ac_socket *s);
    /* while SF_TP_EVENTS is set: the socket's events (AC_EV_*), before the
    ** channel at `chan` sees them. Runs under the pass's protected call: it
    ** may call the channel's methods and raise. Returns the events left for
    ** the channel. */
    unsigned (*event)(struct lua_State *L, int chan, struct ac_socket *s, unsigned ev);
} ac_transport;

#pragma GCC visibility pop
#endif
