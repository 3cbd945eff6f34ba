/*
** config.h: platform detection, included first by every C file of the core.
**
** It turns on the GNU extensions (accept4, SOCK_NONBLOCK, MSG_NOSIGNAL) and says
** which poll backends this platform can compile: epoll on Linux, kqueue on the
** BSDs and macOS; select and poll everywhere. Every backend file guards itself
** with these macros, so the build lists every source file on every platform.
*/
#ifndef AC_CONFIG_H
#define AC_CONFIG_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#if defined(__linux__)
#define AC_HAVE_EPOLL 1
#define AC_HAVE_ACCEPT4 1
#define AC_HAVE_PPOLL 1
#endif


#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || \
    defined(__NetBSD__) || defined(__DragonFly__)
#define AC_HAVE_KQUEUE 1
#endif
#if defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__) || defined(__DragonFly__)
#define AC_HAVE_PPOLL 1
#endif

#include <sys/types.h>
#include <sys/socket.h>

/* epoll_pwait2() (Linux 5.11, glibc 2.35): waits with a timespec, not whole ms
** (glibc's version macros come with the headers above) */
#if defined(__linux__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#define AC_HAVE_EPOLL_PWAIT2 1
#endif

/* Where MSG_NOSIGNAL is missing (macOS), sock.c sets SO_NOSIGPIPE instead. */
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#define AC_NEED_NOSIGPIPE 1
#endif

#endif
