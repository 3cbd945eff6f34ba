/*
** ac.h: types and constants shared by every part of the C core.
**
** Event bits are kept distinct (read, write, priority, hang-up, error) so the
** dispatcher can do what Python's asyncore does with each of them. The
** visibility pragma hides every symbol of the core except luaopen_asyncore_core.
*/
#ifndef AC_AC_H
#define AC_AC_H

#include <stdint.h>
#include <stddef.h>

#define AC_VERSION "lua-asyncore 0.1.0"

#if defined(__GNUC__)
#define AC_API __attribute__((visibility("default")))
#else
#define AC_API
#endif

/* interest and fired-event bits */
#define AC_EV_READ  0x01u
#define AC_EV_WRITE 0x02u
#define AC_EV_PRI   0x04u
#define AC_EV_HUP   0x08u
#define AC_EV_ERR   0x10u
#define AC_EV_TIMEOUT 0x20u  /* not from a poller: a channel's timeout expired (ltimeout.c) */
#define AC_EV_EXCL  0x40u    /* interest only: a listener shared by processes; epoll wakes one
                                waiter (EPOLLEXCLUSIVE), the other backends ignore it */

/* one fired event, as every backend reports it */
struct ac_fired {
    int fd;
    unsigned events;
    uint32_t gen;       /* registration generation, to drop stale events */
};

/* seconds on the monotonic clock */
typedef double ac_monotime;

#endif
