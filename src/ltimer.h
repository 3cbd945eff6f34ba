/*
** ltimer.h: call_later / call_every and the timers' run (ltimer.c). Timers
** belong to the process, not to a map: every pass of every loop() runs the
** ones that are due.
*/
#ifndef AC_LTIMER_H
#define AC_LTIMER_H
#include "lbind.h"
#include "clock.h"
#pragma GCC visibility push(hidden)

void ac_timer_open(lua_State *L, int st, int mt);
/* run the timers due now (armed before this call); msgh: the message
** handler's stack index. Returns 1 with the value to re-raise on top when
** the loop must end (ExitNow, Ctrl-C), else 0. */
int ac_timers_run(lua_State *L, ac_state *S, int msgh);
/* microseconds to wait (< 0: no limit), bounded by the next timer */
int64_t ac_timers_wait_us(ac_state *S, ac_monotime now, int64_t wait_us);

#pragma GCC visibility pop
#endif
