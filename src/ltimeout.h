/*
** ltimeout.h: per-channel timeouts (ltimeout.c): connect, handshake, idle.
*/
#ifndef AC_LTIMEOUT_H
#define AC_LTIMEOUT_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* the socket s joined map state ms (a new generation): arm what it has set */
void ac_timeout_rearm(ac_mapstate *ms, ac_socket *s);
/* one of s's deadlines was set or moved (a stream's to_op): make sure an entry
** comes no later than the earliest; 0 or ENOMEM */
int ac_timeout_arm(ac_mapstate *ms, ac_socket *s);
/* adds core.set_timeout; registers the pass hook */
void ac_timeout_open(lua_State *L, int st, int mt);
/* microseconds until the map state's next channel timeout is due (0: due
** now), or -1 when none is armed; nothing is changed (asyncore.next_timeout) */
int64_t ac_timeouts_wait_us(ac_mapstate *ms, ac_monotime now);

#pragma GCC visibility pop
#endif
