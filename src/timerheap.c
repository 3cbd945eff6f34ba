/*
** timerheap.c: the heap of timerheap.h.
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include "timerheap.h"

static int before(const struct theap_entry *a, const struct theap_entry *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

void theap_init(ac_theap *h)
{
    h->e = NULL;
    h->n = h->cap = 0;
}

void theap_free(ac_theap *h)
{
    free(h->e);
    theap_init(h);
}

int theap_push(ac_theap *h, ac_monotime deadline, uint64_t seq, int64_t id)
{
    if (h->n == h->cap) {
        size_t ncap = h->cap ? h->cap * 2 : 16;
        struct theap_entry *p = realloc(h->e, ncap * sizeof *p);
        if (p == NULL)
            return ENOMEM;
        h->e = p;
        h->cap = ncap;
    }
    struct theap_entry x = {deadline, seq, id};
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(&x, &h->e[parent]))
            break;
        h->e[i] = h->e[parent];
        i = parent;
    }
    h->e[i] = x;
    return 0;
}

void theap_pop(ac_theap *h)
{
    if (h->n == 0)
        return;
    struct theap_entry x = h->e[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(&h->e[c + 1], &h->e[c]))
            c++;
        if (!before(&h->e[c], &x))
            break;
        h->e[i] = h->e[c];
        i = c;
    }
    if (n > 0)
        h->e[i] = x;
}
