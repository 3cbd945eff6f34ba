/*
** lflow.h: flow control (lflow.c). Reading paused and resumed (a switch on
** the socket that the stock interest and the pass honour), the write marks
** of the queueing classes (dispatcher_with_send, async_chat: one mechanism,
** fed the bytes each has queued), the end of the stream (allow_half_open ->
** handle_read_eof, else handle_close) and the half-close that
** shutdown_when_done ends with.
*/
#ifndef AC_LFLOW_H
#define AC_LFLOW_H
#include "lreg.h"
#pragma GCC visibility push(hidden)

/* read write_high_water / write_low_water of the channel at chan into s;
** raises on a bad value, naming it (lmode reads them with the channel's mode) */
void ac_flow_read_marks(lua_State *L, int chan, ac_socket *s);
/* is the value at idx the name of a write mark? */
int ac_flow_is_mark_key(lua_State *L, int idx);

/* the channel's queued output changed to q bytes: a mark crossed? (a compare
** when none is: the fast paths pay nothing more) */
#define ac_flow_check(L, chan, s, q)                                                   \
    do {                                                                               \
        if (((s)->flags & SF_WR_PAUSED) ? (size_t)(q) <= (s)->wr_low                   \
                                        : (size_t)(q) > (s)->wr_high)                  \
            ac_flow_cross(L, chan, s);                                                 \
    } while (0)
/* a mark was crossed: flip SF_WR_PAUSED, call handle_pause_writing or
** handle_resume_writing. Runs Lua code: the caller asks again after it. */
void ac_flow_cross(lua_State *L, int chan, ac_socket *s);

/*
** The read side of the channel at chan ended: err 0 is the end of the stream
** (handle_read_eof with allow_half_open, else handle_close), an errno a
** vanished peer (handle_close). Either way nothing more is read: no read
** interest from now on. Runs Lua code.
*/
void ac_flow_read_end(lua_State *L, int chan, ac_socket *s, int err);

/*
** Everything queued before shutdown_when_done() is sent: shut the sending
** side down (the transport's close_notify first). 0 once done, EAGAIN while
** the transport still holds output (call again when writable), or the errno
** of a vanished peer (the caller drops its output and calls handle_close).
** Runs no Lua code; after a 0 the caller calls ac_flow_shut_done, which
** calls handle_close if the peer had already finished too.
*/
int ac_flow_shutdown(lua_State *L, int chan, ac_socket *s);
void ac_flow_shut_done(lua_State *L, int chan, ac_socket *s);

/* the default handle_close of a queueing class (`queued`: its queue holds
** something): should it send what is queued before closing? (a connected
** channel whose sending side is open, with output queued or held by its
** transport) */
int ac_flow_drain_first(lua_State *L, int chan, ac_socket *s, int queued);

/* adds core.flow: pause_reading, resume_reading, reading_paused and the
** default handle_pause_writing / handle_resume_writing */
void ac_flow_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
