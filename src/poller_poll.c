/*
** poller_poll.c: the poll(2) backend. Keeps a dense pollfd array and, per
** fd, its index in it (removal swaps the last entry into the hole), so a
** change of interest costs O(1) and a wait hands the kernel only the
** descriptors that want something.
*/
#include "config.h"
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include "poller.h"

struct poll_impl {
    struct pollfd *pfd;
    int n, cap;
    int *index;         /* fd -> position in pfd, or -1 */
    int nindex;
};

static int pl_open(struct poller *p)
{
    struct poll_impl *q = calloc(1, sizeof *q);
    if (q == NULL)
        return ENOMEM;
    p->impl = q;
    return 0;
}

static short pl_events(unsigned mask)
{
    return (short)(((mask & AC_EV_READ) ? (POLLIN | POLLPRI) : 0) |
                   ((mask & AC_EV_WRITE) ? POLLOUT : 0));
}

static int pl_set(struct poller *p, int fd, unsigned oldmask, unsigned newmask)
{
    struct poll_impl *q = p->impl;
    (void)oldmask;
    if (fd >= q->nindex) {
        if (newmask == 0)
            return 0;
        int nn = q->nindex ? q->nindex : 64;
        while (nn <= fd)
            nn *= 2;
        int *ni = realloc(q->index, (size_t)nn * sizeof *ni);
        if (ni == NULL)
            return ENOMEM;
        for (int i = q->nindex; i < nn; i++)
            ni[i] = -1;
        q->index = ni;
        q->nindex = nn;
    }
    int at = q->index[fd];
    if (newmask == 0) {
        if (at >= 0) {
            q->pfd[at] = q->pfd[--q->n];
            q->index[q->pfd[at].fd] = at;
            q->index[fd] = -1;
        }
        return 0;
    }
    if (at < 0) {
        if (q->n == q->cap) {
            int nc = q->cap ? q->cap * 2 : 64;
            struct pollfd *np = realloc(q->pfd, (size_t)nc * sizeof *np);
            if (np == NULL)
                return ENOMEM;
            q->pfd = np;
            q->cap = nc;
        }
        at = q->n++;
        q->pfd[at].fd = fd;
        q->index[fd] = at;
    }
    q->pfd[at].events = pl_events(newmask);
    q->pfd[at].revents = 0;
    return 0;
}

static int pl_wait(struct poller *p, int64_t timeout_us, struct ac_fired *out, int max, int *nout)
{
    struct poll_impl *q = p->impl;
#ifdef AC_HAVE_PPOLL
    struct timespec ts;
    if (timeout_us >= 0)
        POLLER_TS(ts, timeout_us);
    int n = ppoll(q->pfd, (nfds_t)q->n, timeout_us >= 0 ? &ts : NULL, NULL);
#else
    int n = poll(q->pfd, (nfds_t)q->n, POLLER_MS(timeout_us));
#endif
    *nout = 0;
    if (n < 0)
        return errno;   /* EINTR too: the loop looks for a pending Ctrl-C */
    int k = 0;
    for (int i = 0; i < q->n && k < n && k < max; i++) {
        short r = q->pfd[i].revents;
        if (r == 0)
            continue;
        int fd = q->pfd[i].fd;
        out[k].fd = fd;
        out[k].gen = p->regs[fd].gen;
        out[k].events = ((r & POLLIN) ? AC_EV_READ : 0) | ((r & POLLOUT) ? AC_EV_WRITE : 0) |
                        ((r & POLLPRI) ? AC_EV_PRI : 0) | ((r & POLLHUP) ? AC_EV_HUP : 0) |
                        ((r & (POLLERR | POLLNVAL)) ? AC_EV_ERR : 0);
        k++;
    }
    *nout = k;
    return 0;
}

static void pl_close(struct poller *p)
{
    struct poll_impl *q = p->impl;
    if (q) {
        free(q->pfd);
        free(q->index);
        free(q);
        p->impl = NULL;
    }
}

static int pl_fd(const struct poller *p)
{
    (void)p;
    return -1;
}

const struct poller_ops poller_poll_ops = {"poll", pl_open, pl_set, pl_wait, pl_close, pl_fd};
