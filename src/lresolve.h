/*
** lresolve.h: name resolution on c-ares (lresolve.c): lookups that never
** block the loop; c-ares's sockets are internal registrations of the map
** being looped.
*/
#ifndef AC_LRESOLVE_H
#define AC_LRESOLVE_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* lookups are under way or answers wait for delivery: loop() goes on */
int ac_resolve_busy(void);
/* microseconds until the resolver has work (0: answers wait to be
** delivered), or -1 when it has none; nothing is changed */
int64_t ac_resolve_wait_us(void);
/* adds core.resolve_start, resolve_failure, set_resolver, resolver_pending;
** registers the pass hook */
void ac_resolve_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
