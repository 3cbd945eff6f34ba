/*
** lchan.h: the stock methods of dispatcher and dispatcher_with_send that run
** on every event (lchan.c), and the read/write event dispatch the loop calls.
*/
#ifndef AC_LCHAN_H
#define AC_LCHAN_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* handle_read_event / handle_write_event of the channel at chan, as Python's;
** run Lua code */
int ac_chan_read_event(lua_State *L, int chan, ac_socket *s);
int ac_chan_write_event(lua_State *L, int chan, ac_socket *s);
/* adds core.dispatcher and core.dispatcher_with_send; registers the stock
** methods (lmode.h) and the EMFILE rest (a pass hook) */
void ac_chan_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
