/*
** sock.c: the socket layer of sock.h over POSIX.
*/
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>
#include "sock.h"

int sock_setblocking(int fd, int blocking)
{
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0)
        return errno;
    flags = blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags) < 0 ? errno : 0;
}

int sock_setcloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD, 0);
    if (flags < 0)
        return errno;
    return fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0 ? errno : 0;
}

int sock_open(int family, int type, int *fd)
{
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC)
    *fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*fd < 0)
        return errno;
#else
    *fd = socket(family, type, 0);
    if (*fd < 0)
        return errno;
    int err = sock_setblocking(*fd, 0);
    if (!err)
        err = sock_setcloexec(*fd);
    if (err) {
        close(*fd);
        *fd = -1;
        return err;
    }
#endif
#ifdef AC_NEED_NOSIGPIPE
    int one = 1;
    setsockopt(*fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    return 0;
}

int sock_close(int fd)
{
    /* on Linux the descriptor is gone even when close() reports EINTR */
    if (close(fd) < 0 && errno != EINTR)
        return errno;
    return 0;
}

int sock_bind(int fd, const ac_sockaddr *a)
{
    return bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ? errno : 0;
}

int sock_listen(int fd, int backlog)
{
    return listen(fd, backlog) < 0 ? errno : 0;
}

int sock_accept(int fd, int *nfd, ac_sockaddr *a)
{
    for (;;) {
        a->len = sizeof a->ss;
#ifdef AC_HAVE_ACCEPT4
        *nfd = accept4(fd, (struct sockaddr *)&a->ss, &a->len, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
        *nfd = accept(fd, (struct sockaddr *)&a->ss, &a->len);
#endif
        if (*nfd >= 0)
            break;
        if (errno == EINTR)
            continue;
        int err = errno;
        if (err == EWOULDBLOCK)
            err = EAGAIN;
        return err;
    }
#ifndef AC_HAVE_ACCEPT4
    int err = sock_setblocking(*nfd, 0);
    if (!err)
        err = sock_setcloexec(*nfd);
    if (err) {
        close(*nfd);
        *nfd = -1;
        return err;
    }
#endif
#ifdef AC_NEED_NOSIGPIPE
    int one = 1;
    setsockopt(*nfd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    return 0;
}

int sock_connect(int fd, const ac_sockaddr *a)
{
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0)
        return 0;
    /* an interrupted connect goes on in the background: report it as under way */
    if (errno == EINTR)
        return EINPROGRESS;
    return errno == EWOULDBLOCK ? EAGAIN : errno;
}

int sock_send(int fd, int file, const char *p, size_t n, size_t *sent)
{
    for (;;) {
        ssize_t r = file ? write(fd, p, n) : send(fd, p, n, MSG_NOSIGNAL);
        if (r >= 0) {
            *sent = (size_t)r;
            return 0;
        }
        *sent = 0;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
}

int sock_sendv(int fd, struct iovec *iov, int iovcnt, size_t *sent)
{
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)iovcnt;
    for (;;) {
        ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (r >= 0) {
            *sent = (size_t)r;
            return 0;
        }
        *sent = 0;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
}

int sock_recv(int fd, int file, char *p, size_t n, size_t *got)
{
    for (;;) {
        ssize_t r = file ? read(fd, p, n) : recv(fd, p, n, 0);
        if (r >= 0) {
            *got = (size_t)r;
            return 0;
        }
        *got = 0;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
}

int sock_sendto(int fd, const char *p, size_t n, const ac_sockaddr *a, size_t *sent)
{
    for (;;) {
        ssize_t r = sendto(fd, p, n, MSG_NOSIGNAL, (const struct sockaddr *)&a->ss, a->len);
        if (r >= 0) {
            *sent = (size_t)r;
            return 0;
        }
        *sent = 0;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
}

int sock_recvfrom(int fd, char *p, size_t n, size_t *got, ac_sockaddr *a)
{
    for (;;) {
        a->len = sizeof a->ss;
        ssize_t r = recvfrom(fd, p, n, 0, (struct sockaddr *)&a->ss, &a->len);
        if (r >= 0) {
            *got = (size_t)r;
            return 0;
        }
        *got = 0;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? EAGAIN : errno;
    }
}

int sock_shutdown(int fd, int how)
{
    return shutdown(fd, how) < 0 ? errno : 0;
}

int sock_peername(int fd, ac_sockaddr *a)
{
    a->len = sizeof a->ss;
    return getpeername(fd, (struct sockaddr *)&a->ss, &a->len) < 0 ? errno : 0;
}

int sock_sockname(int fd, ac_sockaddr *a)
{
    a->len = sizeof a->ss;
    return getsockname(fd, (struct sockaddr *)&a->ss, &a->len) < 0 ? errno : 0;
}

int sock_geterror(int fd, int *err)
{
    socklen_t len = sizeof *err;
    *err = 0;
    return getsockopt(fd, SOL_SOCKET, SO_ERROR, err, &len) < 0 ? errno : 0;
}

int sock_setint(int fd, int level, int name, int value)
{
    return setsockopt(fd, level, name, &value, sizeof value) < 0 ? errno : 0;
}

int sock_getint(int fd, int level, int name, int *value)
{
    socklen_t len = sizeof *value;
    *value = 0;
    return getsockopt(fd, level, name, value, &len) < 0 ? errno : 0;
}

int sock_addr_inet(int family, const char *host, int port, ac_sockaddr *a)
{
    memset(a, 0, sizeof *a);
    /* the common numeric cases need no resolver */
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((unsigned short)port);
        a->len = sizeof *sin;
        if (host[0] == '\0') {
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
            return 0;
        }
        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1)
            return 0;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((unsigned short)port);
        a->len = sizeof *sin6;
        if (host[0] == '\0') {
            sin6->sin6_addr = in6addr_any;
            return 0;
        }
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1)
            return 0;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = family;
    hints.ai_flags = AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int r = getaddrinfo(host, portstr, &hints, &res);
    if (r != 0)
        return r < 0 ? r : -r;
    if (res->ai_addrlen > sizeof a->ss) {
        freeaddrinfo(res);
        return EAI_FAMILY < 0 ? EAI_FAMILY : -EAI_FAMILY;
    }
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = (socklen_t)res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int sock_addr_unix(const char *path, size_t len, ac_sockaddr *a)
{
    struct sockaddr_un *sun = (struct sockaddr_un *)&a->ss;
    memset(a, 0, sizeof *a);
    if (len >= sizeof sun->sun_path)
        return ENAMETOOLONG;
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, len);
    a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return 0;
}

/* dotted quad of an IPv4 address into buf (at least 16 bytes): what
** inet_ntop writes, at a fraction of its cost (every accept formats one) */
static void ipv4_text(const struct in_addr *in, char *buf)
{
    const unsigned char *b = (const unsigned char *)in;
    char *p = buf;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = '.';
    }
    p[-1] = '\0';
}

int sock_addr_host(const ac_sockaddr *a, char *buf, size_t buflen)
{
    buf[0] = '\0';
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->ss;
        if (buflen >= 16)
            ipv4_text(&sin->sin_addr, buf);
        else
            inet_ntop(AF_INET, &sin->sin_addr, buf, (socklen_t)buflen);
        return ntohs(sin->sin_port);
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, buf, (socklen_t)buflen);
        return ntohs(sin6->sin6_port);
    }
    return 0;
}
