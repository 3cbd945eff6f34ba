/*
** poller_select.c: the select(2) backend. Master sets hold the interest and
** are copied for every wait (select overwrites what it is given). A descriptor
** at or above FD_SETSIZE cannot be put in an fd_set: set() refuses it with
** EINVAL instead of writing past the set, and the binding says why.
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include "poller.h"

struct select_impl {
    fd_set rd, wr;
    int maxfd;          /* highest fd with any interest, or -1 */
    fd_set r, w, e;     /* the working copies */
};

static int sl_open(struct poller *p)
{
    struct select_impl *s = malloc(sizeof *s);
    if (s == NULL)
        return ENOMEM;
    FD_ZERO(&s->rd);
    FD_ZERO(&s->wr);
    s->maxfd = -1;
    p->impl = s;
    return 0;
}

static int sl_set(struct poller *p, int fd, unsigned oldmask, unsigned newmask)
{
    struct select_impl *s = p->impl;
    (void)oldmask;
    if (fd < 0 || fd >= FD_SETSIZE)
        return newmask ? EINVAL : 0;
    if (newmask & AC_EV_READ) FD_SET(fd, &s->rd); else FD_CLR(fd, &s->rd);
    if (newmask & AC_EV_WRITE) FD_SET(fd, &s->wr); else FD_CLR(fd, &s->wr);
    if (newmask && fd > s->maxfd)
        s->maxfd = fd;
    while (s->maxfd >= 0 && !FD_ISSET(s->maxfd, &s->rd) && !FD_ISSET(s->maxfd, &s->wr))
        s->maxfd--;
    return 0;
}

static int sl_wait(struct poller *p, int64_t timeout_us, struct ac_fired *out, int max, int *nout)
{
    struct select_impl *s = p->impl;
    struct timeval tv, *tvp = NULL;
    if (timeout_us >= 0) {
        tv.tv_sec = (time_t)(timeout_us / 1000000);
        tv.tv_usec = (suseconds_t)(timeout_us % 1000000);
        tvp = &tv;
    }
    memcpy(&s->r, &s->rd, sizeof s->r);
    memcpy(&s->w, &s->wr, sizeof s->w);
    FD_ZERO(&s->e);
    for (int fd = 0; fd <= s->maxfd; fd++)   /* exceptional conditions: as Python asks */
        if (FD_ISSET(fd, &s->rd) || FD_ISSET(fd, &s->wr))
            FD_SET(fd, &s->e);
    int n = select(s->maxfd + 1, &s->r, &s->w, &s->e, tvp);
    *nout = 0;
    if (n < 0)
        return errno;   /* EINTR too: the loop looks for a pending Ctrl-C */
    int k = 0;
    for (int fd = 0; fd <= s->maxfd && n > 0 && k < max; fd++) {
        unsigned ev = (FD_ISSET(fd, &s->r) ? AC_EV_READ : 0) | (FD_ISSET(fd, &s->w) ? AC_EV_WRITE : 0) |
                      (FD_ISSET(fd, &s->e) ? AC_EV_PRI : 0);
        if (ev == 0)
            continue;
        out[k].fd = fd;
        out[k].gen = p->regs[fd].gen;
        out[k].events = ev;
        k++;
    }
    *nout = k;
    return 0;
}

static void sl_close(struct poller *p)
{
    free(p->impl);
    p->impl = NULL;
}

static int sl_fd(const struct poller *p)
{
    (void)p;
    return -1;
}

const struct poller_ops poller_select_ops = {"select", sl_open, sl_set, sl_wait, sl_close, sl_fd};
