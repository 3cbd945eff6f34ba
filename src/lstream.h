/*
** lstream.h: the reads of task streams (lstream.c): read formats cut out of
** an async_chat's input buffer in stream mode, in C.
*/
#ifndef AC_LSTREAM_H
#define AC_LSTREAM_H
#include "lbind.h"
#pragma GCC visibility push(hidden)

/* core.stream_take, core.stream_buffered */
void ac_stream_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
