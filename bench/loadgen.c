/*
 * loadgen: the load client of `make bench`, in C so that it is not the
 * bottleneck. Opens N connections to an echo server, then for a fixed time
 * each sends a 64-byte message and waits for all of it to come back before
 * sending the next (request/response). Reads the server's CPU time
 * (utime+stime from /proc/PID/stat) at the start and end of the measured
 * window. Prints one line:  conns=N rt=COUNT secs=S rt_per_s=X cpu_us_per_rt=Y
 *
 * usage: loadgen HOST PORT CONNS SECONDS SERVER_PID
 *        loadgen sink HOST PORT SERVER_PID
 * The sink mode connects once, reads until the server closes, and prints
 *   bytes=N secs=S mb_per_s=X cpu_s_per_gib=Y
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

struct conn { int fd; int got; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double server_cpu(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* fields after ")": state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

/* read everything the server sends until it closes */
static int sink(const char *host, int port, int pid)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("connect");
        return 1;
    }
    static char buf[1 << 20];
    double cpu0 = server_cpu(pid), t0 = now();
    long long total = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0) { perror("read"); return 1; }
        if (r == 0) break;
        total += r;
    }
    double t1 = now(), cpu1 = server_cpu(pid);
    printf("bytes=%lld secs=%.3f mb_per_s=%.1f cpu_s_per_gib=%.3f\n", total, t1 - t0,
           total / (t1 - t0) / 1e6, total ? (cpu1 - cpu0) * 1073741824.0 / total : 0.0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "sink") == 0) {
        alarm(120);
        return sink(argv[2], atoi(argv[3]), atoi(argv[4]));
    }
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen HOST PORT CONNS SECONDS SERVER_PID | loadgen sink HOST PORT SERVER_PID\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconn = atoi(argv[3]), pid = atoi(argv[5]);
    double secs = atof(argv[4]);
    alarm((unsigned)secs + 60);   /* a hard bound, whatever happens */
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    int ep = epoll_create1(0);
    struct conn *c = calloc(nconn, sizeof *c);
    char msg[MSG], buf[65536];
    memset(msg, 'x', MSG);
    for (int i = 0; i < nconn; i++) {
        c[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c[i].fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(c[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* one blocking exchange first: every connection is up before the clock starts */
        if (write(c[i].fd, msg, MSG) != MSG) { perror("write"); return 1; }
        int got = 0;
        while (got < MSG) {
            ssize_t r = read(c[i].fd, buf, sizeof buf);
            if (r <= 0) { perror("read"); return 1; }
            got += (int)r;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
    }
    double cpu0 = server_cpu(pid), t0 = now(), end = t0 + secs;
    long rt = 0;
    for (int i = 0; i < nconn; i++)
        if (write(c[i].fd, msg, MSG) != MSG) { perror("write"); return 1; }
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct conn *x = &c[evs[k].data.u32];
            ssize_t r = read(x->fd, buf, sizeof buf);
            if (r <= 0) { fprintf(stderr, "server closed a connection\n"); return 1; }
            x->got += (int)r;
            if (x->got >= MSG) {
                x->got -= MSG;
                rt++;
                if (write(x->fd, msg, MSG) != MSG) { perror("write"); return 1; }
            }
        }
    }
    double t1 = now(), cpu1 = server_cpu(pid);
    printf("conns=%d rt=%ld secs=%.2f rt_per_s=%.0f cpu_us_per_rt=%.2f\n", nconn, rt, t1 - t0,
           rt / (t1 - t0), rt ? (cpu1 - cpu0) * 1e6 / rt : 0.0);
    return 0;
}
