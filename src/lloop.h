/*
** lloop.h: the event loop (lloop.c): core.loop runs passes over a map state;
** core.backends lists the pollers. The top of the binding: it uses every
** file below it and no file uses it (but lcore.c, which opens it).
*/
#ifndef AC_LLOOP_H
#define AC_LLOOP_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

void ac_loop_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
