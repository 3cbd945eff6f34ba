/*
** sock.h: the operating-system socket layer. No Lua here.
**
** Every function returns 0 on success or a positive errno; EINTR is retried
** here and nowhere else. EAGAIN (would block) and EINPROGRESS (connect under
** way) are returned as results for the caller to interpret. Descriptors are
** always created non-blocking and close-on-exec; sends never raise SIGPIPE.
** Address resolution returns a negative getaddrinfo code (EAI_*) on failure.
*/
#ifndef AC_SOCK_H
#define AC_SOCK_H
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#pragma GCC visibility push(hidden)

typedef struct ac_sockaddr {
    struct sockaddr_storage ss;
    socklen_t len;
} ac_sockaddr;

int sock_open(int family, int type, int *fd);
int sock_close(int fd);
int sock_setblocking(int fd, int blocking);
int sock_setcloexec(int fd);
int sock_bind(int fd, const ac_sockaddr *a);
int sock_listen(int fd, int backlog);
/* *nfd is -1 when nothing was pending (returns EAGAIN) */
int sock_accept(int fd, int *nfd, ac_sockaddr *a);
int sock_connect(int fd, const ac_sockaddr *a);
/* `file` descriptors (pipes, ttys) use read/write instead of recv/send */
int sock_send(int fd, int file, const char *p, size_t n, size_t *sent);
int sock_sendv(int fd, struct iovec *iov, int iovcnt, size_t *sent);
int sock_recv(int fd, int file, char *p, size_t n, size_t *got);
int sock_sendto(int fd, const char *p, size_t n, const ac_sockaddr *a, size_t *sent);
int sock_recvfrom(int fd, char *p, size_t n, size_t *got, ac_sockaddr *a);
int sock_shutdown(int fd, int how);
int sock_peername(int fd, ac_sockaddr *a);
int sock_sockname(int fd, ac_sockaddr *a);
int sock_geterror(int fd, int *err);
int sock_setint(int fd, int level, int name, int value);
int sock_getint(int fd, int level, int name, int *value);

/* resolve host/port for `family` (AF_INET or AF_INET6); 0, or a negative EAI_* */
int sock_addr_inet(int family, const char *host, int port, ac_sockaddr *a);
/* 0 or ENAMETOOLONG */
int sock_addr_unix(const char *path, size_t len, ac_sockaddr *a);
/* the numeric host of an inet address into buf (at least 64 bytes); returns the port */
int sock_addr_host(const ac_sockaddr *a, char *buf, size_t buflen);

#pragma GCC visibility pop
#endif
