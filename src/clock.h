/*
** clock.h: the one clock the core uses, CLOCK_MONOTONIC, in seconds.
*/
#ifndef AC_CLOCK_H
#define AC_CLOCK_H
#include <stdint.h>
#include "ac.h"
#pragma GCC visibility push(hidden)
ac_monotime clock_now(void);
/* whole microseconds from `now` until `t`, rounded up (0 if past, at most a day) */
int64_t ac_us_until(ac_monotime t, ac_monotime now);
#pragma GCC visibility pop
#endif
