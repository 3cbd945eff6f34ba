/*
** lchat.h: asynchat's framing engine and output queue (lchat.c).
*/
#ifndef AC_LCHAT_H
#define AC_LCHAT_H
#include "lreg.h"
#include "ltask.h"
#pragma GCC visibility push(hidden)

#define AC_CHAT_MAGIC UINT64_C(0x6c75612d61632d63)   /* "lua-ac-c": see AC_SOCK_MAGIC */

/* what only framing chats use, made on first use (chat_fr in lchat.c): a
** stream or a chat that frames with its own collector never makes it */
typedef struct ac_chat_fr {
    ac_buffer collected;    /* the stock collect_incoming_data's store */
    ac_buffer batch;        /* small pushes of the batch being framed, copied together
                               while the queue is empty (they precede the queue) */
} ac_chat_fr;

/* the C state of an async_chat channel (its `_chat` field); the fields past
** `stream` are a task stream's (lstream.c) */
typedef struct ac_chat {
    uint64_t magic;         /* AC_CHAT_MAGIC */
    ac_buffer in;           /* received, not yet framed */
    ac_chat_fr *fr;         /* collected data and the batch buffer, or NULL */
    char *term;             /* TERM_STRING: the bytes */
    size_t termlen;
    lua_Integer count;      /* TERM_COUNT: bytes still expected */
    size_t scanned;         /* `in` bytes already known not to start a match */
    lua_Integer head, tail; /* the FIFO: keys head .. tail-1 of the user value */
    size_t head_off;        /* bytes of the head string already sent */
    size_t queued;          /* bytes waiting: the batch, the queue's strings (less head_off) */
    /* what the channel's class says, read once per class version (see chat_class) */
    const void *cls;        /* the instance's dispatch table when read, or NULL */
    int cls_in_size, cls_out_size;   /* 1 .. INT_MAX */
    uint32_t cls_version;
    unsigned char cls_collect_stock, cls_initiate_stock;
    unsigned char kind;     /* TERM_* */
    unsigned char close_queued; /* close_when_done(): 1 queued, 2 reached (handle_close runs) */
    unsigned char shut;     /* shutdown_when_done() was asked: nothing more may be pushed */
    unsigned char finalized; /* its __gc ran and freed the buffers */
    unsigned char framing;   /* handle_read is delivering frames: pushes wait for its end */
    unsigned char stream;    /* a task stream (lstream.c): input is kept in `in`, not framed */
    unsigned char sflags;    /* a stream's STR_* (lstream.h) */
    /* the tasks waiting on a stream: to read, to write, for its connect or
    ** handshake. Each waits with the stream on its own stack (anchored) and
    ** clears its slot when it goes on. */
    ac_task *reader, *writer, *waiter;
    ac_socket *sock;         /* a stream's socket, the last one its channel attached
                                (the chat holds it), or NULL */
} ac_chat;

/* the chat state of the channel at chan (self._chat), or NULL */
ac_chat *ac_chat_of(lua_State *L, int chan);

/* a handler of the channel at chan failed (the loop caught it): if it was
** framing a batch, the batch is over; its queue state goes to the poller */
void ac_chat_after_error(lua_State *L, int chan);
/* the chat-state metatable: made before any function gets its upvalues */
void ac_chat_meta(lua_State *L, int st);
/* adds core.chat (the async_chat methods) and core.chat_new; registers the
** stock writable and the attach hook (lmode.h) */
void ac_chat_open(lua_State *L, int st, int mt);

/* async_chat:push(data) with self, data at 1, 2 (a stream's write);
** leaves its result on top */
int ac_chat_push(lua_State *L);
/* after a stream's input was consumed: reading again if it was held off */
void ac_chat_stream_consumed(lua_State *L, int chan, ac_chat *c, ac_socket *s);
/* can a stream's write go straight to the socket (nothing queued or held)? */
int ac_chat_write_now(ac_chat *c, ac_socket *s);

/* start_tls (ltls.c): queued output to `clear`, unframed input to `prefix` */
void ac_chat_handover(lua_State *L, int chan, ac_buffer *clear, ac_buffer *prefix);

#pragma GCC visibility pop
#endif
