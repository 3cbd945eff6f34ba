/*
** clock.h: the one clock the core uses, CLOCK_MONOTONIC, in seconds.
*/
#ifndef AC_CLOCK_H
#define AC_CLOCK_H
#include "ac.h"
#pragma GCC visibility push(hidden)
ac_monotime clock_now(void);
#pragma GCC visibility pop
#endif
