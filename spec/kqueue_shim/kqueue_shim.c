/*
** kqueue_shim.c: kqueue() and kevent() for Linux, over epoll, so that
** `make check-kqueue` can compile src/poller_kqueue.c and run the specs through
** it on a machine without kqueue. It keeps the BSD rules the backend relies on:
** a filter per (descriptor, EVFILT_READ | EVFILT_WRITE), each with its own udata;
** EV_ADD adds or modifies; EV_DELETE of a filter that is not there fails with
** ENOENT; a closed descriptor loses its filters; level-triggered; EV_EOF on a
** read filter when the peer stopped sending and on a write filter when the
** connection is gone. What it cannot give is
** what BSD kqueue has no portable way to say either: out-of-band data.
**
** Test scaffolding only: never part of the library.
*/
#define _GNU_SOURCE 1
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include "sys/event.h"

struct filters {
    unsigned char rd, wr;   /* registered filters (as this shim last saw them) */
    void *urd, *uwr;
};

struct kq {
    struct filters *f;      /* indexed by descriptor */
    int nf;
};

static struct kq *queues;   /* indexed by the epoll descriptor that is the kqueue */
static int nqueues;

static int grow(void **arr, int *n, int want, size_t size)
{
    if (want < *n)
        return 0;
    int m = *n ? *n : 64;
    while (m <= want)
        m *= 2;
    char *p = realloc(*arr, (size_t)m * size);
    if (p == NULL)
        return -1;
    memset(p + (size_t)*n * size, 0, (size_t)(m - *n) * size);
    *arr = p;
    *n = m;
    return 0;
}

int kqueue(void)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return -1;
    if (grow((void **)&queues, &nqueues, ep, sizeof *queues) < 0) {
        close(ep);
        errno = ENOMEM;
        return -1;
    }
    free(queues[ep].f);     /* left by an earlier kqueue on this number */
    queues[ep].f = NULL;
    queues[ep].nf = 0;
    return ep;
}

static int apply(int ep, struct kq *q, const struct kevent *c)
{
    int fd = (int)c->ident;
    if (c->filter != EVFILT_READ && c->filter != EVFILT_WRITE) {
        errno = EINVAL;
        return -1;
    }
    if (grow((void **)&q->f, &q->nf, fd, sizeof *q->f) < 0) {
        errno = ENOMEM;
        return -1;
    }
    struct filters *f = &q->f[fd];
    int was = f->rd || f->wr;
    unsigned char *on = c->filter == EVFILT_READ ? &f->rd : &f->wr;
    if (c->flags & EV_DELETE) {
        if (!*on) {
            errno = ENOENT;
            return -1;
        }
        *on = 0;
    } else if (c->flags & EV_ADD) {
        *on = 1;
        if (c->filter == EVFILT_READ)
            f->urd = c->udata;
        else
            f->uwr = c->udata;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = (f->rd ? (EPOLLIN | EPOLLRDHUP) : 0) | (f->wr ? EPOLLOUT : 0);
    ev.data.fd = fd;
    if (ev.events == 0) {
        /* the descriptor may be closed already: then its filters went with it */
        if (epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) < 0 && errno != ENOENT && errno != EBADF)
            return -1;
        return 0;
    }
    /* what this shim remembers may be stale (the descriptor was closed and
    ** its number reused): the kernel's answer decides */
    int op = was ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(ep, op, fd, &ev) == 0)
        return 0;
    if (op == EPOLL_CTL_MOD && errno == ENOENT)
        return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (op == EPOLL_CTL_ADD && errno == EEXIST)
        return epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    if (errno == EBADF)   /* a closed descriptor: nothing to watch */
        memset(f, 0, sizeof *f);
    return -1;
}

int kevent(int kq, const struct kevent *changelist, int nchanges,
           struct kevent *eventlist, int nevents, const struct timespec *timeout)
{
    if (kq < 0 || kq >= nqueues) {
        errno = EBADF;
        return -1;
    }
    struct kq *q = &queues[kq];
    for (int i = 0; i < nchanges; i++)
        if (apply(kq, q, &changelist[i]) < 0)
            return -1;
    if (nevents <= 0)
        return 0;
    int ms = -1;
    if (timeout)
        ms = (int)(timeout->tv_sec * 1000 + (timeout->tv_nsec + 999999) / 1000000);
    struct epoll_event ev[256];
    int max = nevents / 2 < 1 ? 1 : nevents / 2 > 256 ? 256 : nevents / 2;
    int n = epoll_wait(kq, ev, max, ms);
    if (n < 0)
        return -1;
    int k = 0;
    for (int i = 0; i < n; i++) {
        int fd = ev[i].data.fd;
        unsigned e = ev[i].events;
        if (fd >= q->nf)
            continue;
        const struct filters *f = &q->f[fd];
        if (f->rd && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
            EV_SET(&eventlist[k], (uintptr_t)fd, EVFILT_READ,
                   (e & (EPOLLRDHUP | EPOLLHUP)) ? EV_EOF : 0, 0, 0, f->urd);
            k++;
        }
        if (f->wr && (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
            /* (BSD puts the socket error in fflags; reading it here would clear
            ** it for the connect check, and the backend does not use it) */
            EV_SET(&eventlist[k], (uintptr_t)fd, EVFILT_WRITE,
                   (e & (EPOLLHUP | EPOLLERR)) ? EV_EOF : 0, 0, 0, f->uwr);
            k++;
        }
    }
    return k;
}
