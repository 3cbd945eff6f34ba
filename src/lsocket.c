/*
** lsocket.c: the socket userdata ("asyncore.socket") and its methods.
**
** Created closed, then opened (liolib's order), so a memory error can never
** leak a descriptor. One idempotent close serves close(), __gc and __close: it
** takes the socket out of its map's poller first. Using a closed socket raises
** an error object that says "closed socket". Would-block is a result, not an
** error: recv gives nil, send gives 0, accept gives nil, connect gives false.
*/
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/un.h>
#include "lsocket.h"
#include "lerror.h"

#define RBUF_MAX (4u << 20)   /* recv(n) reads at most this much at once */

/* The reused receive buffer, grown to n (capped); may return a smaller one. */
char *ac_rbuf(ac_state *S, size_t n)
{
    if (n > RBUF_MAX)
        n = RBUF_MAX;
    if (n > S->rbufsize) {
        char *p = realloc(S->rbuf, n);
        if (p == NULL)
            return NULL;
        S->rbuf = p;
        S->rbufsize = n;
    }
    return S->rbuf;
}

ac_socket *ac_tosock(lua_State *L, int idx)
{
    return ac_testud(L, idx, sizeof(ac_socket), AC_SOCK_MAGIC);
}

ac_socket *ac_checksock(lua_State *L, int idx, const char *op)
{
    ac_socket *s = ac_tosock(L, idx);
    if (s == NULL)
        luaL_typeerror(L, idx, "asyncore.socket");
    if (sock_isclosed(s))
        ac_raise_closed(L, op);
    return s;
}

/* ---- the plain transport: the system calls themselves ---- */

ac_monotime ac_io_clock;

/* a transfer that moved bytes (or saw the end) is activity for the idle timeout */
static int plain_read(ac_socket *s, char *p, size_t n, size_t *got)
{
    int err = sock_recv(s->fd, s->flags & SF_FILE, p, n, got);
    if (err == 0)
        s->last_io = ac_io_clock;
    return err;
}

static int plain_write(ac_socket *s, const char *p, size_t n, size_t *sent)
{
    int err = sock_send(s->fd, s->flags & SF_FILE, p, n, sent);
    if (*sent > 0)
        s->last_io = ac_io_clock;
    return err;
}

static int plain_writev(ac_socket *s, struct iovec *iov, int iovcnt, size_t *sent)
{
    int err;
    if (s->flags & SF_FILE)   /* a pipe: one piece at a time */
        err = sock_send(s->fd, 1, iov[0].iov_base, iov[0].iov_len, sent);
    else if (iovcnt == 1)
        err = sock_send(s->fd, 0, iov[0].iov_base, iov[0].iov_len, sent);
    else
        err = sock_sendv(s->fd, iov, iovcnt, sent);
    if (*sent > 0)
        s->last_io = ac_io_clock;
    return err;
}

static int plain_shutdown(ac_socket *s, int how)
{
    return sock_shutdown(s->fd, how);
}

static void plain_close(ac_socket *s)
{
    (void)s;
}

const ac_transport ac_plain_transport = {
    "plain", plain_read, plain_write, plain_writev, plain_shutdown, plain_close, NULL, NULL, NULL,
    NULL
};

void (*ac_sock_unregister)(struct ac_mapstate *ms, ac_socket *s) = NULL;

ac_socket *ac_chansock(lua_State *L, int chan)
{
    if (lua_type(L, chan) != LUA_TTABLE)
        return NULL;
    chan = lua_absindex(L, chan);
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, chan);
    ac_socket *s = ac_tosock(L, -1);
    lua_pop(L, 1);
    return s;
}

ac_socket *ac_checkchan(lua_State *L, int chan, const char *op)
{
    luaL_checktype(L, chan, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, chan);
    if (s == NULL)
        luaL_error(L, "%s: the dispatcher has no socket", op);
    if (sock_isclosed(s))
        ac_raise_closed(L, op);
    return s;
}

ac_socket *ac_chan_same(lua_State *L, int chan, uint32_t gen)
{
    ac_socket *s = ac_chansock(L, chan);
    return (s && !sock_isclosed(s) && s->gen == gen) ? s : NULL;
}

ac_socket *ac_newsock(lua_State *L)
{
    ac_socket *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->magic = AC_SOCK_MAGIC;
    s->fd = -1;
    s->cidx = -1;
    s->mapfd = -1;
    s->tp = &ac_plain_transport;
    s->wr_high = s->wr_low = SIZE_MAX;   /* until a channel's mode says */
    buffer_init(&s->out);
    lua_pushvalue(L, lua_upvalueindex(UP_SOCKMT));
    lua_setmetatable(L, -2);
    return s;
}

/* Close: leave the poller, close the descriptor, free buffers. Never raises. */
void ac_sock_close(lua_State *L, ac_socket *s)
{
    (void)L;
    if (s->ms && ac_sock_unregister)
        ac_sock_unregister(s->ms, s);
    if (s->fd >= 0) {
        s->tp->close(s);
        s->tp = &ac_plain_transport;
        s->tpstate = NULL;
        sock_close(s->fd);
        s->fd = -1;
    }
    s->flags &= SF_FILE;
    s->to_idle = s->to_connect = s->to_handshake = s->to_op = s->to_armed = 0;   /* never after close */
    s->to_due = 0;
    buffer_free(&s->out);
}

/* ---- addresses ---- */

void ac_pushaddr(lua_State *L, const ac_sockaddr *a)
{
    if (a->len < (socklen_t)sizeof a->ss.ss_family) {
        /* no address: recvfrom() on a stream socket (Python gives None too) */
        lua_pushnil(L);
        return;
    }
    if (a->ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)&a->ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = a->len > off ? a->len - off : 0;
        if (n > sizeof sun->sun_path)
            n = sizeof sun->sun_path;
        if (n > 0 && sun->sun_path[0] != '\0')
            n = strnlen(sun->sun_path, n);
        lua_pushlstring(L, sun->sun_path, n);
        return;
    }
    char host[64];
    int port = sock_addr_host(a, host, sizeof host);
    lua_createtable(L, 2, 0);
    lua_pushstring(L, host);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, port);
    lua_rawseti(L, -2, 2);
}

void ac_pushaddrtext(lua_State *L, const ac_sockaddr *a)
{
    if (a->len < (socklen_t)sizeof a->ss.ss_family) {
        lua_pushliteral(L, "?");
        return;
    }
    if (a->ss.ss_family == AF_UNIX) {
        ac_pushaddr(L, a);
        if (lua_rawlen(L, -1) == 0) {
            lua_pop(L, 1);
            lua_pushliteral(L, "(unnamed Unix socket)");
        }
        return;
    }
    char host[64];
    int port = sock_addr_host(a, host, sizeof host);
    lua_pushfstring(L, a->ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
}

/*
** Read an address at idx for socket s: a path string for a Unix socket, a
** {host, port} table, or host and port as two arguments (then *nargs is 2).
*/
/* raise err of op, naming the address a (when known) */
static int raise_at(lua_State *L, const char *op, int err, const ac_sockaddr *a)
{
    const char *text = NULL;
    if (a != NULL) {
        ac_pushaddrtext(L, a);
        text = lua_tostring(L, -1);
    }
    return ac_raise_at(L, op, err, text);
}

/*
** An address of the other family than the socket's: say which family the
** socket has and how to get the other, instead of a resolver failure.
*/
static void check_family_of(lua_State *L, const ac_socket *s, const char *host, const char *op)
{
    unsigned char buf[sizeof(struct in6_addr)];
    const char *msg = NULL;
    if (s->family == AF_INET && inet_pton(AF_INET6, host, buf) == 1)
        msg = "%s is an IPv6 address but the socket is IPv4 (inet): create it with "
              "create_socket(\"inet6\") (or asyncore.socket(\"inet6\"))";
    else if (s->family == AF_INET6 && inet_pton(AF_INET, host, buf) == 1)
        msg = "%s is an IPv4 address but the socket is IPv6 (inet6): create it with "
              "create_socket(\"inet\") (or asyncore.socket(\"inet\")), or use ::ffff:%s";
    if (msg) {
        lua_pushfstring(L, msg, host, host);
        ac_pusherror(L, op, EAFNOSUPPORT, lua_tostring(L, -1));
        lua_error(L);
    }
}

int ac_checkaddr(lua_State *L, int idx, const ac_socket *s, ac_sockaddr *a, int *nargs, const char *op)
{
    const char *host;
    lua_Integer port;
    int err;
    if (nargs)
        *nargs = 1;
    if (s->family == AF_UNIX) {
        size_t len;
        if (lua_type(L, idx) != LUA_TSTRING)
            return luaL_typeerror(L, idx, "string");
        const char *path = lua_tolstring(L, idx, &len);
        err = sock_addr_unix(path, len, a);
        if (err)
            luaL_argerror(L, idx, "path too long for a Unix socket");
        return 0;
    }
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_rawgeti(L, idx, 1);
        lua_rawgeti(L, idx, 2);
        host = lua_tostring(L, -2);
        if (host == NULL || !lua_isinteger(L, -1))
            luaL_argerror(L, idx, "address table must be {host, port}");
        port = lua_tointeger(L, -1);
        lua_pop(L, 2);
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        host = lua_tostring(L, idx);
        port = luaL_checkinteger(L, idx + 1);
        if (nargs)
            *nargs = 2;
    } else {
        return luaL_typeerror(L, idx, "table or string");
    }
    if (port < 0 || port > 65535)
        luaL_argerror(L, idx, "port out of range");
    check_family_of(L, s, host, op);
    err = sock_addr_inet(s->family, host, (int)port, a);
    if (err)
        ac_raise(L, "getaddrinfo", err);
    return 0;
}

/* ---- families, types, options ---- */

static const char *const family_names[] = {"inet", "inet6", "unix", NULL};
static const int family_values[] = {AF_INET, AF_INET6, AF_UNIX};
static const char *const type_names[] = {"stream", "dgram", NULL};
static const int type_values[] = {SOCK_STREAM, SOCK_DGRAM};

static int check_family(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return AF_INET;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer f = luaL_checkinteger(L, idx);
        for (int i = 0; i < 3; i++)
            if (f == family_values[i])
                return (int)f;
        return luaL_argerror(L, idx, "unknown address family");
    }
    return family_values[luaL_checkoption(L, idx, NULL, family_names)];
}

static int check_type(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return SOCK_STREAM;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer t = luaL_checkinteger(L, idx);
        if (t == SOCK_STREAM || t == SOCK_DGRAM)
            return (int)t;
        return luaL_argerror(L, idx, "unknown socket type");
    }
    return type_values[luaL_checkoption(L, idx, NULL, type_names)];
}

/* asyncore.socket([family [, type]]) */
int lsocket_new(lua_State *L)
{
    int family = check_family(L, 1);
    int type = check_type(L, 2);
    ac_socket *s = ac_newsock(L);
    int fd, err = sock_open(family, type, &fd);
    if (err)
        return ac_raise(L, "socket", err);
    s->fd = fd;
    s->family = family;
    s->type = type;
    s->flags = SF_NONBLOCK;
    return 1;
}

/* core.fileno_of(file): the descriptor of a Lua io file */
int lsocket_fileno_of(lua_State *L)
{
    luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    if (p->closef == NULL || p->f == NULL)
        return luaL_argerror(L, 1, "attempt to use a closed file");
    lua_pushinteger(L, fileno(p->f));
    return 1;
}

/*
** core.wrapfd(fd): a socket object over dup(fd), non-blocking, for pipes and
** ttys (file_dispatcher). Writing to a pipe has no MSG_NOSIGNAL, so SIGPIPE is
** ignored here, but only if nobody installed a handler for it.
*/
int lsocket_wrapfd(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "not a file descriptor");
    ac_socket *s = ac_newsock(L);
    int nfd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0)
        return ac_raise(L, "dup", errno);
    s->fd = nfd;
    s->family = AF_UNSPEC;
    s->type = 0;
    s->flags = SF_FILE;
    int err = sock_setblocking(nfd, 0);
    if (err)
        return ac_raise(L, "fcntl", err);
    s->flags |= SF_NONBLOCK;
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
    return 1;
}

/*
** core.discard_urgent(sock): read and drop any urgent (out-of-band) byte
** waiting on the socket, so its priority event stops firing. Nothing waiting,
** a closed socket, or not a stream socket: nothing happens.
*/
int lsocket_discard_urgent(lua_State *L)
{
    ac_socket *s = ac_tosock(L, 1);
    if (s == NULL)
        return luaL_typeerror(L, 1, "asyncore.socket");
    if (sock_isclosed(s) || (s->flags & SF_FILE) || s->type != SOCK_STREAM)
        return 0;
    char b[64];
    while (recv(s->fd, b, sizeof b, MSG_OOB) > 0)
        ;
    return 0;
}

/*
** asyncore.realpath(path): the canonical absolute path (symbolic links,
** "." and ".." resolved), or nil and an error table when it does not exist.
** For servers that must keep what they serve inside a directory.
*/
int lsocket_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (strlen(path) != lua_rawlen(L, 1))
        return luaL_argerror(L, 1, "path contains a zero byte");
    char *r = realpath(path, NULL);
    if (r == NULL) {
        lua_pushnil(L);
        ac_pusherror(L, "realpath", errno, NULL);
        return 2;
    }
    lua_pushstring(L, r);
    free(r);
    return 1;
}

/* ---- methods ---- */

static int lsock_fileno(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "fileno");
    lua_pushinteger(L, s->fd);
    return 1;
}

static int lsock_bind(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "bind");
    ac_sockaddr a;
    ac_checkaddr(L, 2, s, &a, NULL, "bind");
    int err = sock_bind(s->fd, &a);
    if (err)
        return raise_at(L, "bind", err, &a);
    lua_pushboolean(L, 1);
    return 1;
}

static int lsock_listen(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "listen");
    lua_Integer backlog = luaL_optinteger(L, 2, 128);
    if (backlog < 0)
        backlog = 0;
    if (backlog > 65535)
        backlog = 65535;
    int err = sock_listen(s->fd, (int)backlog);
    if (err) {
        ac_sockaddr a;
        return raise_at(L, "listen", err, sock_sockname(s->fd, &a) == 0 ? &a : NULL);
    }
    s->flags |= SF_LISTENING;
    lua_pushboolean(L, 1);
    return 1;
}

/*
** Accepted and connected TCP sockets get TCP_NODELAY: request/response
** protocols must not wait on Nagle's algorithm (the loop already gathers
** what a batch of handlers writes). setsockopt("nodelay", false) undoes it.
*/
static void set_nodelay(const ac_socket *s)
{
    if ((s->family == AF_INET || s->family == AF_INET6) && s->type == SOCK_STREAM)
        sock_setint(s->fd, IPPROTO_TCP, TCP_NODELAY, 1);
}

/*
** Accept one connection: pushes sock and (want_addr) addr and returns the
** count, or returns 0 with *err set (EAGAIN when none was pending).
*/
int ac_accept(lua_State *L, ac_socket *s, int *errp, int want_addr)
{
    ac_sockaddr a;
    ac_socket *ns = ac_newsock(L);
    int nfd, err = sock_accept(s->fd, &nfd, &a);
    if (err) {
        lua_pop(L, 1);
        *errp = err;
        return 0;
    }
    ns->fd = nfd;
    ns->family = s->family;
    ns->type = s->type;
    ns->flags = SF_NONBLOCK | SF_FROM_ACCEPT;
    set_nodelay(ns);
    if (want_addr)
        ac_pushaddr(L, &a);
    *errp = 0;
    /* remembered while handle_accept runs: an error there closes this one */
    lua_pushvalue(L, want_addr ? -2 : -1);
    lua_setiuservalue(L, lua_upvalueindex(UP_STATE), UV_ACCEPTED);
    return want_addr ? 2 : 1;
}

static int lsock_accept(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "accept");
    int err, n = ac_accept(L, s, &err, 1);
    if (n)
        return n;
    if (err == EAGAIN || err == ECONNABORTED) {
        lua_pushnil(L);
        return 1;
    }
    return ac_raise(L, "accept", err);
}

static int lsock_connect(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "connect");
    ac_sockaddr a;
    ac_checkaddr(L, 2, s, &a, NULL, "connect");
    if (!(s->flags & SF_NODELAY_SET))
        set_nodelay(s);
    int err = sock_connect(s->fd, &a);
    if (err == 0 || err == EISCONN) {
        s->flags &= ~SF_CONNECTING;
        lua_pushboolean(L, 1);
        return 1;
    }
    if (err == EINPROGRESS || err == EALREADY || err == EAGAIN) {
        s->flags |= SF_CONNECTING;
        lua_pushboolean(L, 0);
        return 1;
    }
    return raise_at(L, "connect", err, &a);
}

/* the bytes of string arg idx from position i to j (Lua string.sub rules) */
static const char *check_span(lua_State *L, int idx, size_t *n)
{
    size_t len;
    const char *p = luaL_checklstring(L, idx, &len);
    lua_Integer i = luaL_optinteger(L, idx + 1, 1);
    lua_Integer j = luaL_optinteger(L, idx + 2, -1);
    if (i < 0) i = (lua_Integer)len + i + 1;
    if (j < 0) j = (lua_Integer)len + j + 1;
    if (i < 1) i = 1;
    if (j > (lua_Integer)len) j = (lua_Integer)len;
    if (i > j) {
        *n = 0;
        return p;
    }
    *n = (size_t)(j - i + 1);
    return p + i - 1;
}

static int lsock_send(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "send");
    size_t n, sent;
    const char *p = check_span(L, 2, &n);
    int err = sock_send(s->fd, s->flags & SF_FILE, p, n, &sent);
    if (err && err != EAGAIN)
        return ac_raise(L, "send", err);
    lua_pushinteger(L, (lua_Integer)sent);
    return 1;
}

static int lsock_recv(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "recv");
    lua_Integer n = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, n >= 0, 2, "negative size");
    if (n == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    char *buf = ac_rbuf(STATE(L), (size_t)n);
    if (buf == NULL)
        return ac_raise_nomem(L, "recv");
    size_t got, cap = (size_t)n < STATE(L)->rbufsize ? (size_t)n : STATE(L)->rbufsize;
    int err = sock_recv(s->fd, s->flags & SF_FILE, buf, cap, &got);
    if (err == EAGAIN) {
        lua_pushnil(L);
        return 1;
    }
    if (err)
        return ac_raise(L, "recv", err);
    lua_pushlstring(L, buf, got);
    return 1;
}

static int lsock_sendto(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "sendto");
    size_t n, sent;
    const char *p = luaL_checklstring(L, 2, &n);
    ac_sockaddr a;
    ac_checkaddr(L, 3, s, &a, NULL, "sendto");
    int err = sock_sendto(s->fd, p, n, &a, &sent);
    if (err && err != EAGAIN)
        return ac_raise(L, "sendto", err);
    lua_pushinteger(L, (lua_Integer)sent);
    return 1;
}

static int lsock_recvfrom(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "recvfrom");
    lua_Integer n = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, n >= 0, 2, "negative size");
    char *buf = ac_rbuf(STATE(L), n > 0 ? (size_t)n : 1);
    if (buf == NULL)
        return ac_raise_nomem(L, "recvfrom");
    size_t got, cap = (size_t)n < STATE(L)->rbufsize ? (size_t)n : STATE(L)->rbufsize;
    ac_sockaddr a;
    int err = sock_recvfrom(s->fd, buf, cap, &got, &a);
    if (err == EAGAIN) {
        lua_pushnil(L);
        return 1;
    }
    if (err)
        return ac_raise(L, "recvfrom", err);
    lua_pushlstring(L, buf, got);
    ac_pushaddr(L, &a);
    return 2;
}

static int lsock_shutdown(lua_State *L)
{
    static const char *const hows[] = {"read", "write", "both", NULL};
    static const int howv[] = {SHUT_RD, SHUT_WR, SHUT_RDWR};
    ac_socket *s = ac_checksock(L, 1, "shutdown");
    int how = howv[luaL_checkoption(L, 2, "both", hows)];
    int err = sock_shutdown(s->fd, how);
    if (err)
        return ac_raise(L, "shutdown", err);
    lua_pushboolean(L, 1);
    return 1;
}

static int lsock_close(lua_State *L)
{
    ac_socket *s = ac_tosock(L, 1);
    if (s == NULL)
        return luaL_typeerror(L, 1, "asyncore.socket");
    ac_sock_close(L, s);
    return 0;
}

static int lsock_getpeername(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "getpeername");
    ac_sockaddr a;
    int err = sock_peername(s->fd, &a);
    if (err)
        return ac_raise(L, "getpeername", err);
    ac_pushaddr(L, &a);
    return 1;
}

static int lsock_getsockname(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "getsockname");
    ac_sockaddr a;
    int err = sock_sockname(s->fd, &a);
    if (err)
        return ac_raise(L, "getsockname", err);
    ac_pushaddr(L, &a);
    return 1;
}

static int lsock_setblocking(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "setblocking");
    luaL_checkany(L, 2);
    int blocking = lua_toboolean(L, 2);
    if (blocking || !(s->flags & SF_NONBLOCK)) {   /* sockets start non-blocking */
        int err = sock_setblocking(s->fd, blocking);
        if (err)
            return ac_raise(L, "setblocking", err);
        if (blocking) s->flags &= ~SF_NONBLOCK; else s->flags |= SF_NONBLOCK;
    }
    return 0;
}

static const char *const opt_names[] = {"reuseaddr", "reuseport", "nodelay", "keepalive",
                                        "rcvbuf", "sndbuf", "error", NULL};
enum { OPT_BOOL, OPT_INT, OPT_READONLY };
static const struct { int level, name, kind; } opt_info[] = {
    {SOL_SOCKET, SO_REUSEADDR, OPT_BOOL},
#ifdef SO_REUSEPORT
    {SOL_SOCKET, SO_REUSEPORT, OPT_BOOL},
#else
    {SOL_SOCKET, -1, OPT_BOOL},
#endif
    {IPPROTO_TCP, TCP_NODELAY, OPT_BOOL},
    {SOL_SOCKET, SO_KEEPALIVE, OPT_BOOL},
    {SOL_SOCKET, SO_RCVBUF, OPT_INT},
    {SOL_SOCKET, SO_SNDBUF, OPT_INT},
    {SOL_SOCKET, SO_ERROR, OPT_READONLY},
};

static int lsock_setsockopt(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "setsockopt");
    int o = luaL_checkoption(L, 2, NULL, opt_names);
    int value;
    if (opt_info[o].kind == OPT_READONLY)
        return luaL_argerror(L, 2, "option is read-only");
    if (opt_info[o].kind == OPT_BOOL) {
        luaL_checkany(L, 3);
        value = lua_isinteger(L, 3) ? lua_tointeger(L, 3) != 0 : lua_toboolean(L, 3);
    } else {
        lua_Integer v = luaL_checkinteger(L, 3);
        luaL_argcheck(L, v >= 0 && v <= 0x7fffffff, 3, "out of range");
        value = (int)v;
    }
    if (opt_info[o].name < 0)
        return ac_raise(L, "setsockopt", ENOPROTOOPT);
    int err = sock_setint(s->fd, opt_info[o].level, opt_info[o].name, value);
    if (err)
        return ac_raise(L, "setsockopt", err);
    if (opt_info[o].level == IPPROTO_TCP && opt_info[o].name == TCP_NODELAY)
        s->flags |= SF_NODELAY_SET;
    lua_pushboolean(L, 1);
    return 1;
}

static int lsock_getsockopt(lua_State *L)
{
    ac_socket *s = ac_checksock(L, 1, "getsockopt");
    int o = luaL_checkoption(L, 2, NULL, opt_names);
    int value;
    if (opt_info[o].name < 0)
        return ac_raise(L, "getsockopt", ENOPROTOOPT);
    int err = sock_getint(s->fd, opt_info[o].level, opt_info[o].name, &value);
    if (err)
        return ac_raise(L, "getsockopt", err);
    if (opt_info[o].kind == OPT_BOOL)
        lua_pushboolean(L, value != 0);
    else
        lua_pushinteger(L, value);
    return 1;
}

static int lsock_gc(lua_State *L)
{
    ac_socket *s = ac_tosock(L, 1);
    if (s == NULL)
        return 0;
    ac_sock_close(L, s);
    return 0;
}

static int lsock_tostring(lua_State *L)
{
    ac_socket *s = ac_tosock(L, 1);
    if (s == NULL)
        return luaL_typeerror(L, 1, "asyncore.socket");
    if (sock_isclosed(s))
        lua_pushliteral(L, "asyncore.socket (closed)");
    else
        lua_pushfstring(L, "asyncore.socket fd=%d (%p)", s->fd, (void *)s);
    return 1;
}

static const luaL_Reg sock_methods[] = {
    {"fileno", lsock_fileno}, {"bind", lsock_bind}, {"listen", lsock_listen},
    {"accept", lsock_accept}, {"connect", lsock_connect}, {"send", lsock_send},
    {"recv", lsock_recv}, {"sendto", lsock_sendto}, {"recvfrom", lsock_recvfrom},
    {"shutdown", lsock_shutdown}, {"close", lsock_close}, {"getpeername", lsock_getpeername},
    {"getsockname", lsock_getsockname}, {"setblocking", lsock_setblocking},
    {"setsockopt", lsock_setsockopt}, {"getsockopt", lsock_getsockopt},
    {NULL, NULL}
};

/*
** Fill the socket metatable (at upvalue 2 of the caller's functions, and on
** the stack top): __index with the methods, __gc, __close, __tostring.
*/
void ac_socket_open(lua_State *L, int st, int mt)
{
    lua_newtable(L);                    /* methods */
    ac_setfuncs(L, sock_methods, st, mt);
    lua_setfield(L, mt, "__index");
    static const luaL_Reg meta[] = {
        {"__gc", lsock_gc}, {"__close", lsock_gc}, {"__tostring", lsock_tostring}, {NULL, NULL}
    };
    lua_pushvalue(L, mt);
    ac_setfuncs(L, meta, st, mt);
    lua_pushliteral(L, "asyncore.socket");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}
