/*
** lchat.h: asynchat's framing engine and output queue (lchat.c).
*/
#ifndef AC_LCHAT_H
#define AC_LCHAT_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* a handler of the channel at chan failed (the loop caught it): if it was
** framing a batch, the batch is over; its queue state goes to the poller */
void ac_chat_after_error(lua_State *L, int chan);
/* the chat-state metatable: made before any function gets its upvalues */
void ac_chat_meta(lua_State *L, int st);
/* adds core.chat (the async_chat methods) and core.chat_new; registers the
** stock writable and the attach hook (lmode.h) */
void ac_chat_open(lua_State *L, int st, int mt);

/* a task stream's input (lstream.c): the `in` buffer of the channel at chan
** and the count of its bytes known not to hold a separator, or NULL when it
** is not a stream */
ac_buffer *ac_chat_stream_input(lua_State *L, int chan, size_t **scanned);
/* async_chat:push(data) with self, data at 1, 2 (a stream's write) */
int ac_chat_push(lua_State *L);
/* after a stream's input was consumed: reading again if it was held off */
void ac_chat_stream_consumed(lua_State *L, int chan, ac_buffer *in);

/* start_tls (ltls.c): queued output to `clear`, unframed input to `prefix` */
void ac_chat_handover(lua_State *L, int chan, ac_buffer *clear, ac_buffer *prefix);

#pragma GCC visibility pop
#endif
