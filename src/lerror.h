/*
** lerror.h: error objects (lerror.c). An operating-system failure is raised
** as a table {errno, code, op, message[, address]} whose metatable gives
** "connect: Connection refused (ECONNREFUSED)" as its string.
*/
#ifndef AC_LERROR_H
#define AC_LERROR_H
#include "lbind.h"
#pragma GCC visibility push(hidden)

/* push an error object: err > 0 an errno, < 0 a getaddrinfo code; `message`
** (or NULL: the system's text) */
int ac_pusherror(lua_State *L, const char *op, int err, const char *message);
int lerror_new(lua_State *L);
int ac_raise(lua_State *L, const char *op, int err);
/* the same, naming the address (field `address`; "bind 127.0.0.1:80: ...") */
int ac_raise_at(lua_State *L, const char *op, int err, const char *address);
/* a closed socket used: EBADF, "closed socket" */
int ac_raise_closed(lua_State *L, const char *op);
/* out of memory, the one way: an error object of `op` with ENOMEM */
int ac_raise_nomem(lua_State *L, const char *op);
/* the errors Python's asyncore treats as "the peer is gone" */
int ac_is_disconnect(int err);
int ac_is_errorobj(lua_State *L, int idx);
int lerror_is_error(lua_State *L);
void ac_error_open(lua_State *L);

#pragma GCC visibility pop
#endif
