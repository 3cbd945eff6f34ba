/*
** ltls.h: TLS over OpenSSL (ltls.c): contexts, and the TLS transport that
** start_tls puts on a channel's socket.
*/
#ifndef AC_LTLS_H
#define AC_LTLS_H
#include "lchat.h"
#pragma GCC visibility push(hidden)

/* adds core.tls_context, core.tls (start_tls, tls_info), core.tls_numeric_host */
void ac_tls_open(lua_State *L, int st, int mt);

#pragma GCC visibility pop
#endif
