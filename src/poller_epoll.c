/*
** poller_epoll.c: the Linux epoll backend. Registrations persist in the
** kernel and change only when a descriptor's interest changes, so a pass costs
** what the ready descriptors cost, however many idle ones are registered.
** Level-triggered, like every other backend: what a handler leaves unread is
** reported again on the next pass. The generation number rides in the event's
** data next to the fd, so a descriptor closed and reused within one pass is
** recognised.
*/
#include "config.h"
#ifdef AC_HAVE_EPOLL
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/epoll.h>
#include "poller.h"

#define EPOLL_BATCH 1024

struct epoll_impl {
    int epfd;
    struct epoll_event ev[EPOLL_BATCH];
};

static int ep_open(struct poller *p)
{
    struct epoll_impl *e = malloc(sizeof *e);
    if (e == NULL)
        return ENOMEM;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        int err = errno;
        free(e);
        return err;
    }
    p->impl = e;
    return 0;
}

static int ep_set(struct poller *p, int fd, unsigned oldmask, unsigned newmask)
{
    struct epoll_impl *e = p->impl;
    struct epoll_event ev;
    int op;
    if (newmask == 0)
        op = EPOLL_CTL_DEL;
    else if (oldmask == 0)
        op = EPOLL_CTL_ADD;
    else
        op = EPOLL_CTL_MOD;
    ev.events = ((newmask & AC_EV_READ) ? (EPOLLIN | EPOLLPRI) : 0) |
                ((newmask & AC_EV_WRITE) ? EPOLLOUT : 0);
#ifdef EPOLLEXCLUSIVE
    if (newmask & AC_EV_EXCL) {
        /* a listener shared with other processes: one of them is woken. The
        ** flag is only allowed when adding: a change is a delete and an add */
        ev.events = (ev.events & ~(uint32_t)EPOLLPRI) | EPOLLEXCLUSIVE;   /* PRI is refused with it */
        if (op == EPOLL_CTL_MOD) {
            epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, &ev);
            op = EPOLL_CTL_ADD;
        }
    }
#endif
    ev.data.u64 = ((uint64_t)p->regs[fd].gen << 32) | (uint32_t)fd;
    if (epoll_ctl(e->epfd, op, fd, &ev) < 0) {
        int err = errno;
        /* the kernel already forgot a descriptor that was closed behind our back */
        if (op == EPOLL_CTL_DEL && (err == ENOENT || err == EBADF))
            return 0;
        if (op == EPOLL_CTL_MOD && err == ENOENT)
            return epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? errno : 0;
        if (op == EPOLL_CTL_ADD && err == EEXIST)
            return epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? errno : 0;
        return err;
    }
    return 0;
}

/* epoll_pwait2 is tried until the kernel (or valgrind) says it has none */
#ifdef AC_HAVE_EPOLL_PWAIT2
static int have_pwait2 = 1;
#endif

static int ep_wait(struct poller *p, int64_t timeout_us, struct ac_fired *out, int max, int *nout)
{
    struct epoll_impl *e = p->impl;
    if (max > EPOLL_BATCH)
        max = EPOLL_BATCH;
    if (max < 1)
        max = 1;
    int n;
#ifdef AC_HAVE_EPOLL_PWAIT2
    /* a timeout in whole milliseconds needs no timespec: epoll_wait is as good */
    if (have_pwait2 && timeout_us > 0 && timeout_us % 1000 != 0) {
        struct timespec ts;
        POLLER_TS(ts, timeout_us);
        n = epoll_pwait2(e->epfd, e->ev, max, &ts, NULL);
        if (n < 0 && errno == ENOSYS) {
            have_pwait2 = 0;
            n = epoll_wait(e->epfd, e->ev, max, POLLER_MS(timeout_us));
        }
    } else
#endif
        n = epoll_wait(e->epfd, e->ev, max, POLLER_MS(timeout_us));
    *nout = 0;
    if (n < 0)
        return errno;   /* EINTR too: the loop looks for a pending Ctrl-C */
    for (int i = 0; i < n; i++) {
        uint32_t ev = e->ev[i].events;
        out[i].fd = (int)(uint32_t)e->ev[i].data.u64;
        out[i].gen = (uint32_t)(e->ev[i].data.u64 >> 32);
        out[i].events = ((ev & EPOLLIN) ? AC_EV_READ : 0) | ((ev & EPOLLOUT) ? AC_EV_WRITE : 0) |
                        ((ev & EPOLLPRI) ? AC_EV_PRI : 0) | ((ev & EPOLLHUP) ? AC_EV_HUP : 0) |
                        ((ev & EPOLLERR) ? AC_EV_ERR : 0);
    }
    *nout = n;
    return 0;
}

static void ep_close(struct poller *p)
{
    struct epoll_impl *e = p->impl;
    if (e) {
        close(e->epfd);
        free(e);
        p->impl = NULL;
    }
}

static int ep_fd(const struct poller *p)
{
    return ((const struct epoll_impl *)p->impl)->epfd;
}

const struct poller_ops poller_epoll_ops = {"epoll", ep_open, ep_set, ep_wait, ep_close, ep_fd};
#endif
