/*
** lsignal.h: signals delivered to the loop (lsignal.c): a self-pipe written
** by an async-signal-safe C handler, watched as an internal registration of
** the map being looped; the Lua handlers run from the pass.
*/
#ifndef AC_LSIGNAL_H
#define AC_LSIGNAL_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* core.signal_number, signal_watch, signal_init, signal_wait, and the
** process calls of the supervisor (fork, waitpid, kill, getpid) */
void ac_signal_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
