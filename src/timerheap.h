/*
** timerheap.h: a binary min-heap of (deadline, seq) entries naming timers by id.
**
** Ordered by deadline, then by seq, so timers due at the same instant fire in
** the order they were armed. The heap knows nothing of cancellation: a cancelled
** or re-armed timer leaves its old entry behind, and the binding skips entries
** whose (id, seq) no longer match a live timer (lazy deletion, as Redis's ae).
** No Lua here.
*/
#ifndef AC_TIMERHEAP_H
#define AC_TIMERHEAP_H
#include <stdint.h>
#include "ac.h"
#pragma GCC visibility push(hidden)

struct theap_entry {
    ac_monotime deadline;
    uint64_t seq;
    int64_t id;
};

typedef struct ac_theap {
    struct theap_entry *e;
    size_t n, cap;
} ac_theap;

void theap_init(ac_theap *h);
void theap_free(ac_theap *h);
int theap_push(ac_theap *h, ac_monotime deadline, uint64_t seq, int64_t id); /* 0 or ENOMEM */
#define theap_top(h) ((h)->n ? &(h)->e[0] : NULL)
void theap_pop(ac_theap *h);

#pragma GCC visibility pop
#endif
