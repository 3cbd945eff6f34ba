/*
** lstream.h: task streams (lstream.c): the stream methods that run for
** every message (read, read_until, read_some, write) in C, read formats cut
** out of an async_chat's input buffer in stream mode, and the wake of a
** waiting reader straight from the pass.
*/
#ifndef AC_LSTREAM_H
#define AC_LSTREAM_H
#include "lchat.h"
#pragma GCC visibility push(hidden)

/* a stream's sflags (lchat.h): what sends its reads and writes to the Lua side */
#define STR_ERR      0x01u   /* the stream failed: its error is the Lua side's _err */
#define STR_TIMEOUT  0x02u   /* settimeout() set a timeout */
#define STR_WPAUSED  0x04u   /* output above the high mark: a writer waits */
#define STR_READABLE 0x08u   /* a read event woke the reader: it reads the socket itself */
#define STR_CREADER  0x10u   /* the reader waits in the C read (not the Lua side's): the
                                pass may leave the reading to it */
#define STR_TIMEDOUT 0x20u   /* the C read's deadline (its socket's to_op) passed */

/* a read event on the stream channel at chan: when a task waits to read it,
** that task is woken to read the socket itself and 1 is returned (the
** channel's handle_read is not called); else 0 */
int ac_stream_readable(lua_State *L, int chan);
/* the read deadline of the stream channel at chan passed (TO_OP): its task,
** if one waits in the C read, is woken to return nil, ETIMEDOUT */
void ac_stream_timed_out(lua_State *L, int chan);
/* core.stream_take, stream_buffered, stream_flag, stream_slot, stream_wake,
** stream_methods */
void ac_stream_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
