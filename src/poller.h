/*
** poller.h: one interface over the poll backends (select, poll, epoll, kqueue).
**
** A backend is a table of operations (struct poller_ops); all compiled backends
** coexist, so a script picks one at run time. The caller owns the registration
** state: `regs`, indexed by fd, holds each descriptor's generation number and
** registered mask, and `set` is told the old and the new mask, so a backend
** never keeps a copy of its own and an unchanged interest costs no call.
** Backends report what fired as {fd, events, gen} with the event bits kept
** apart (read, write, priority, hang-up, error). No Lua here; 0 or errno.
*/
#ifndef AC_POLLER_H
#define AC_POLLER_H
#include <stdint.h>
#include <time.h>
#include "ac.h"
#pragma GCC visibility push(hidden)

struct ac_reg {
    uint32_t gen;       /* generation of the registration now on this fd */
    unsigned mask;      /* AC_EV_READ | AC_EV_WRITE as registered */
};

struct poller {
    const struct poller_ops *ops;
    void *impl;                 /* the backend's private state */
    const struct ac_reg *regs;  /* the caller's table, indexed by fd */
    int nregs;
};

struct poller_ops {
    const char *name;
    int  (*open)(struct poller *p);
    /* regs[fd] already holds the new gen when this is called */
    int  (*set)(struct poller *p, int fd, unsigned oldmask, unsigned newmask);
    /*
    ** timeout_us < 0 waits without limit. Backends wait at least timeout_us
    ** (rounding up where the system call counts coarser units), so a timer is
    ** never run early, and no longer than the kernel's granularity demands.
    ** Fills out[0..*nout). A wait cut short by a signal returns EINTR
    ** (with *nout = 0), so the caller can act on it.
    */
    int  (*wait)(struct poller *p, int64_t timeout_us, struct ac_fired *out, int max, int *nout);
    void (*close)(struct poller *p);
    /* the descriptor that is readable when the wait has events (epoll,
    ** kqueue), or -1 (select, poll): for embedding in another loop */
    int  (*fd)(const struct poller *p);
};

/* a microsecond timeout as a timespec (for the calls that take one) */
#define POLLER_TS(ts, us) ((ts).tv_sec = (time_t)((us) / 1000000), \
                           (ts).tv_nsec = (long)((us) % 1000000) * 1000L)
/* ... and as milliseconds, rounded up (for poll() and epoll_wait()) */
#define POLLER_MS(us) ((us) < 0 ? -1 : (int)(((us) + 999) / 1000))

/* the compiled backends, best first; NULL-terminated */
extern const struct poller_ops *const poller_list[];
/* the backend called `name` ("auto" = the best), or NULL */
const struct poller_ops *poller_find(const char *name);

extern const struct poller_ops poller_select_ops;
extern const struct poller_ops poller_poll_ops;
#ifdef AC_HAVE_EPOLL
extern const struct poller_ops poller_epoll_ops;
#endif
#ifdef AC_HAVE_KQUEUE
extern const struct poller_ops poller_kqueue_ops;
#endif

#pragma GCC visibility pop
#endif
