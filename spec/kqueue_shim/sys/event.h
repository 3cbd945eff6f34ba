/*
** A stand-in for the BSDs' <sys/event.h>, for `make check-kqueue` on Linux:
** the declarations src/poller_kqueue.c uses, with the BSD names and meanings.
** kqueue_shim.c implements them over epoll, so the kqueue backend can be
** compiled and run through the specs on a machine that has no kqueue.
*/
#ifndef AC_KQUEUE_SHIM_H
#define AC_KQUEUE_SHIM_H
#include <stdint.h>
#include <time.h>

struct kevent {
    uintptr_t ident;        /* the descriptor */
    short filter;           /* EVFILT_* */
    unsigned short flags;   /* EV_* */
    unsigned int fflags;    /* filter flags (the socket error with EV_EOF) */
    intptr_t data;
    void *udata;            /* handed back with every event of this filter */
};

#define EVFILT_READ  (-1)
#define EVFILT_WRITE (-2)

#define EV_ADD    0x0001    /* add or modify (udata is replaced) */
#define EV_DELETE 0x0002    /* remove; ENOENT when it is not there */
#define EV_ERROR  0x4000
#define EV_EOF    0x8000    /* the read side ended (READ) / the peer is gone (WRITE) */

#define EV_SET(kevp, a, b, c, d, e, f) do {                                  \
        struct kevent *kev_ = (kevp);                                        \
        kev_->ident = (a); kev_->filter = (b); kev_->flags = (c);            \
        kev_->fflags = (d); kev_->data = (e); kev_->udata = (f);             \
    } while (0)

int kqueue(void);
int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents, const struct timespec *timeout);

#endif
