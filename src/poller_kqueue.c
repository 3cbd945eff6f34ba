/*
** poller_kqueue.c: the kqueue backend (BSDs, macOS). Read and write interest
** are two filters; a change of interest adds or deletes only the filter that
** changed. The generation number travels in udata. Compiled only where
** AC_HAVE_KQUEUE is set (config.h); on Linux this file is empty.
*/
#include "config.h"
#ifdef AC_HAVE_KQUEUE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/event.h>
#include <sys/time.h>
#include "poller.h"

#define KQ_BATCH 1024

struct kq_impl {
    int kq;
    struct kevent ev[KQ_BATCH];
};

static int kq_open(struct poller *p)
{
    struct kq_impl *k = malloc(sizeof *k);
    if (k == NULL)
        return ENOMEM;
    k->kq = kqueue();
    if (k->kq < 0) {
        int err = errno;
        free(k);
        return err;
    }
    p->impl = k;
    return 0;
}

static int kq_set(struct poller *p, int fd, unsigned oldmask, unsigned newmask)
{
    struct kq_impl *k = p->impl;
    struct kevent ch[2];
    int n = 0;
    void *udata = (void *)(uintptr_t)p->regs[fd].gen;
    if ((oldmask ^ newmask) & AC_EV_READ) {
        EV_SET(&ch[n], fd, EVFILT_READ, (newmask & AC_EV_READ) ? EV_ADD : EV_DELETE, 0, 0, udata);
        n++;
    } else if (newmask & AC_EV_READ) {   /* refresh the generation */
        EV_SET(&ch[n], fd, EVFILT_READ, EV_ADD, 0, 0, udata);
        n++;
    }
    if ((oldmask ^ newmask) & AC_EV_WRITE) {
        EV_SET(&ch[n], fd, EVFILT_WRITE, (newmask & AC_EV_WRITE) ? EV_ADD : EV_DELETE, 0, 0, udata);
        n++;
    } else if (newmask & AC_EV_WRITE) {
        EV_SET(&ch[n], fd, EVFILT_WRITE, EV_ADD, 0, 0, udata);
        n++;
    }
    if (n == 0)
        return 0;
    if (kevent(k->kq, ch, n, NULL, 0, NULL) < 0) {
        if (newmask == 0 && (errno == ENOENT || errno == EBADF))
            return 0;
        return errno;
    }
    return 0;
}

static int kq_wait(struct poller *p, int64_t timeout_us, struct ac_fired *out, int max, int *nout)
{
    struct kq_impl *k = p->impl;
    struct timespec ts, *tsp = NULL;
    if (timeout_us >= 0) {
        POLLER_TS(ts, timeout_us);
        tsp = &ts;
    }
    if (max > KQ_BATCH)
        max = KQ_BATCH;
    int n = kevent(k->kq, NULL, 0, k->ev, max > 0 ? max : 1, tsp);
    *nout = 0;
    if (n < 0)
        return errno;   /* EINTR too: the loop looks for a pending Ctrl-C */
    int m = 0;
    for (int i = 0; i < n; i++) {
        const struct kevent *e = &k->ev[i];
        unsigned ev = e->filter == EVFILT_READ ? AC_EV_READ : e->filter == EVFILT_WRITE ? AC_EV_WRITE : 0;
        if (e->flags & EV_ERROR) {
            ev = AC_EV_ERR;
        } else if ((e->flags & EV_EOF) && e->filter == EVFILT_WRITE) {
            ev |= AC_EV_HUP;
        }
        out[m].fd = (int)e->ident;
        out[m].gen = (uint32_t)(uintptr_t)e->udata;
        out[m].events = ev;
        m++;
    }
    *nout = m;
    return 0;
}

static void kq_close(struct poller *p)
{
    struct kq_impl *k = p->impl;
    if (k) {
        close(k->kq);
        free(k);
        p->impl = NULL;
    }
}

static int kq_fd(const struct poller *p)
{
    return ((const struct kq_impl *)p->impl)->kq;
}

const struct poller_ops poller_kqueue_ops = {"kqueue", kq_open, kq_set, kq_wait, kq_close, kq_fd};
#endif
