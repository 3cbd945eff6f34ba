/*
** lmode.h: channel modes (lmode.c). When a channel joins a map, and whenever
** one of its predicates or event methods changes, its mode is read: which of
** readable, writable, handle_read_event and handle_write_event are the stock C
** functions. Stock channels cost nothing per pass; the others are asked every
** pass. The stock functions register themselves here (no file needs another's
** function by name).
**
** Adding a stock predicate or event method: the C function (lchan.c or
** lchat.c) registered with ac_stock_register, an AC_STOCK_* entry below, a
** CM_* bit (lreg.h) and its case in find_mode (lmode.c), and its answer in
** ac_stock_mask (lreg.c).
*/
#ifndef AC_LMODE_H
#define AC_LMODE_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

enum ac_stock {
    AC_STOCK_READABLE,      /* dispatcher.readable: always */
    AC_STOCK_WRITABLE,      /* dispatcher.writable: always */
    AC_STOCK_DS_WRITABLE,   /* dispatcher_with_send.writable */
    AC_STOCK_CHAT_WRITABLE, /* async_chat.writable */
    AC_STOCK_READ_EVENT,    /* dispatcher.handle_read_event */
    AC_STOCK_WRITE_EVENT,   /* dispatcher.handle_write_event */
    AC_STOCK_COUNT
};

void ac_stock_register(enum ac_stock which, lua_CFunction f);
/* called when a channel whose writable is async_chat's is (re)registered:
** lchat.c marks the socket with its queue state */
void ac_mode_on_chat(void (*attach)(lua_State *L, int chan, ac_socket *s));
/* is the value at idx the name of a method that makes up a mode? */
int ac_is_mode_key(lua_State *L, int idx);
/* a predicate was set on a class since ms's modes were read: read them again
** (the map table at index map) */
void ac_refresh_modes(lua_State *L, ac_state *S, ac_mapstate *ms, int map);
/* core.add_channel, del_channel, update_interest, chan_newindex, class_changed */
void ac_mode_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
