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
*/
#ifndef AC_LTRANSPORT_H
#define AC_LTRANSPORT_H
#include <stddef.h>
#include <sys/uio.h>
#pragma GCC visibility push(hidden)

struct ac_socket;

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
} ac_transport;

#pragma GCC visibility pop
#endif
