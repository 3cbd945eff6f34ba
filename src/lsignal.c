/*
** lsignal.c: signals delivered to the loop, and the process calls of the
** worker supervisor (see lsignal.h).
**
** A watched signal's C handler only notes it and writes a byte to a
** self-pipe (both async-signal-safe). The pipe's reading end is an internal
** registration of the map being looped (SF_INTERNAL, as the resolver's
** sockets): a signal that comes while the loop sleeps wakes it at once, and
** the pass reads the pipe and calls the Lua side's deliver(signum) for each
** signal noted, from the loop, under a protected call. Not signalfd: its
** blocked masks leak into child processes. A child of fork() makes a pipe of
** its own (the fork count of lreg.c says when), so parent and children never
** share one. When no signal is watched any more, the pipe is closed.
*/
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sys/types.h>
#include <sys/wait.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include "lsignal.h"
#include "lerror.h"

#ifndef NSIG
#define NSIG 65
#endif

static struct {
    int open;                       /* the self-pipe is made: */
    int rd, wr;
    unsigned fork_gen;              /* ac_fork_count when it was made */
    ac_socket s;                    /* its internal registration */
    int nwatched;
    unsigned char watched[NSIG];    /* our handler is installed */
    struct sigaction old[NSIG];     /* the disposition before it */
    volatile sig_atomic_t pending[NSIG];
} G;

static char deliver_key;            /* registry key of the Lua side's deliver(signum) */

static void on_signal(int sig)
{
    int e = errno;
    if (sig > 0 && sig < NSIG)
        G.pending[sig] = 1;
    if (G.open) {
        char c = 0;
        ssize_t r = write(G.wr, &c, 1);   /* a full pipe already wakes the loop */
        (void)r;
    }
    errno = e;
}

static void pipe_close(void)
{
    if (G.s.ms)
        ac_ms_unregister(G.s.ms, &G.s);
    G.s.ms = NULL;
    if (G.open) {
        G.open = 0;
        close(G.rd);
        close(G.wr);
    }
    G.s.fd = -1;
}

static unsigned signal_event(lua_State *L, int chan, ac_socket *s, unsigned ev);

static const ac_transport signal_transport = {
    "signal", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, signal_event
};

/* the pipe, made (again in a child of fork: the parent's stays the parent's) */
static int pipe_ready(void)
{
    if (G.open && G.fork_gen == ac_fork_count)
        return 0;
    if (G.open) {             /* inherited: the child's copies go, unregistered by ac_ms_fresh */
        G.s.ms = NULL;
        G.open = 0;
        close(G.rd);
        close(G.wr);
        for (int i = 0; i < NSIG; i++)
            G.pending[i] = 0;
    }
    int fds[2];
    if (pipe(fds) != 0)
        return errno;
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    memset(&G.s, 0, sizeof G.s);
    G.s.fd = fds[0];
    G.s.cidx = -1;
    G.s.mapfd = -1;
    G.s.flags = SF_INTERNAL;
    G.s.tp = &signal_transport;
    G.s.mode = AC_EV_READ;
    G.rd = fds[0];
    G.wr = fds[1];
    G.fork_gen = ac_fork_count;
    G.open = 1;
    return 0;
}

/* deliver the signals noted: the Lua side's deliver(signum) for each */
static void deliver(lua_State *L)
{
    for (int sig = 1; sig < NSIG; sig++) {
        if (!G.pending[sig])
            continue;
        G.pending[sig] = 0;
        if (!G.watched[sig])
            continue;
        int top = lua_gettop(L);
        ac_push_msgh(L);
        if (lua_rawgetp(L, LUA_REGISTRYINDEX, &deliver_key) != LUA_TFUNCTION) {
            lua_settop(L, top);
            continue;
        }
        lua_pushinteger(L, sig);
        /* the Lua side reports its handlers' errors itself: only ExitNow,
        ** Ctrl-C or a memory error come out here, and they leave the loop */
        if (lua_pcall(L, 1, 0, top + 1) != LUA_OK) {
            if (ac_unwrap_error(L, lua_gettop(L)))
                lua_settop(L, top);
            else
                lua_error(L);
        }
        lua_settop(L, top);
    }
}

static unsigned signal_event(lua_State *L, int chan, ac_socket *s, unsigned ev)
{
    (void)chan, (void)s, (void)ev;
    char buf[64];
    while (G.open && read(G.rd, buf, sizeof buf) > 0)
        ;
    deliver(L);
    return 0;
}

/* the pass hook: the pipe joins the map being looped */
static void signal_hook(lua_State *L, ac_mapstate *ms, int map, ac_monotime now, int64_t *wait_us)
{
    (void)L, (void)map, (void)now, (void)wait_us;
    if (G.nwatched == 0 || (G.s.ms == ms && G.fork_gen == ac_fork_count))
        return;                       /* nothing watched, or already watched here */
    if (pipe_ready() != 0 || G.s.ms == ms)
        return;
    if (G.s.ms)
        ac_ms_unregister(G.s.ms, &G.s);
    ac_ms_register_internal(ms, &G.s, AC_EV_READ);   /* on failure the next pass tries again */
}

static const struct {
    const char *name;
    int num;
} names[] = {
    {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    {"CHLD", SIGCHLD}, {"WINCH", SIGWINCH}, {"QUIT", SIGQUIT}, {"PIPE", SIGPIPE},
    {"ALRM", SIGALRM}, {NULL, 0}
};

/* core.signal_number(name or number) -> number, name */
static int lsig_number(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TNUMBER) {
        lua_Integer n = lua_tointeger(L, 1);
        if (!lua_isinteger(L, 1) || n <= 0 || n >= NSIG || n == SIGKILL || n == SIGSTOP)
            return luaL_error(L, "signal %s: not a signal that can be caught", lua_tostring(L, 1));
        lua_pushinteger(L, n);
        for (int i = 0; names[i].name; i++)
            if (names[i].num == n) {
                lua_pushstring(L, names[i].name);
                return 2;
            }
        lua_pushinteger(L, n);
        return 2;
    }
    const char *s = luaL_checkstring(L, 1);
    if (strncmp(s, "SIG", 3) == 0)
        s += 3;
    for (int i = 0; names[i].name; i++)
        if (strcmp(names[i].name, s) == 0) {
            lua_pushinteger(L, names[i].num);
            lua_pushstring(L, names[i].name);
            return 2;
        }
    return luaL_error(L, "unknown signal '%s' (INT, TERM, HUP, USR1, USR2, CHLD, WINCH, QUIT, "
                      "PIPE, ALRM, or a number)", lua_tostring(L, 1));
}

/* core.signal_watch(signum, on): our handler in (the disposition before it
** kept), or the disposition before it back */
static int lsig_watch(lua_State *L)
{
    lua_Integer sig = luaL_checkinteger(L, 1);
    luaL_argcheck(L, sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP, 1, "not a signal");
    int on = lua_toboolean(L, 2);
    if (on && !G.watched[sig]) {
        int err = pipe_ready();
        if (err)
            return ac_raise(L, "pipe", err);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
        if (sigaction((int)sig, &sa, &G.old[sig]) != 0)
            return ac_raise(L, "sigaction", errno);
        G.watched[sig] = 1;
        G.pending[sig] = 0;
        G.nwatched++;
    } else if (!on && G.watched[sig]) {
        sigaction((int)sig, &G.old[sig], NULL);
        G.watched[sig] = 0;
        G.pending[sig] = 0;
        if (--G.nwatched == 0)
            pipe_close();
    }
    return 0;
}

/* core.signal_init(deliver): deliver(signum) runs from the pass */
static int lsig_init(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &deliver_key);
    return 0;
}

/*
** core.signal_wait(timeout): the supervisor's wait, outside any loop: until
** a watched signal comes (or timeout seconds); returns the signals noted
** (their numbers, in a list), taken: the Lua handlers do not see them.
*/
static int lsig_wait(lua_State *L)
{
    double t = luaL_checknumber(L, 1);
    int err = pipe_ready();
    if (err)
        return ac_raise(L, "pipe", err);
    struct pollfd p = {G.rd, POLLIN, 0};
    int any = 0;
    for (int sig = 1; sig < NSIG; sig++)
        any |= G.pending[sig];
    if (!any && poll(&p, 1, t < 0 ? -1 : (int)(t * 1000 + 0.5)) < 0 && errno != EINTR)
        return ac_raise(L, "poll", errno);
    char buf[64];
    while (read(G.rd, buf, sizeof buf) > 0)
        ;
    lua_newtable(L);
    int n = 0;
    for (int sig = 1; sig < NSIG; sig++) {
        if (G.pending[sig]) {
            G.pending[sig] = 0;
            lua_pushinteger(L, sig);
            lua_rawseti(L, -2, ++n);
        }
    }
    return 1;
}

/* core.fork([parent_death]) -> pid (0 in the child); Lua's and C's buffered
** output is flushed first so that the child does not write it again. With
** parent_death (a signal number; Linux), the child gets it when the parent
** dies: workers do not outlive a supervisor that was killed. */
static int lsig_fork(lua_State *L)
{
    lua_Integer death = luaL_optinteger(L, 1, 0);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return ac_raise(L, "fork", errno);
#ifdef __linux__
    if (pid == 0 && death > 0 && death < NSIG) {
        prctl(PR_SET_PDEATHSIG, (unsigned long)death);
        if (getppid() != parent)      /* it died before the call */
            raise((int)death);
    }
#else
    (void)death, (void)parent;
#endif
    lua_pushinteger(L, pid);
    return 1;
}

/* core.waitpid() -> pid, "exit" | "signal", code; or nil when no child has
** ended (WNOHANG); false when there is no child at all */
static int lsig_waitpid(lua_State *L)
{
    int status;
    pid_t pid;
    do
        pid = waitpid(-1, &status, WNOHANG);
    while (pid < 0 && errno == EINTR);
    if (pid < 0) {
        if (errno == ECHILD) {
            lua_pushboolean(L, 0);
            return 1;
        }
        return ac_raise(L, "waitpid", errno);
    }
    if (pid == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushinteger(L, pid);
    if (WIFSIGNALED(status)) {
        lua_pushliteral(L, "signal");
        lua_pushinteger(L, WTERMSIG(status));
    } else {
        lua_pushliteral(L, "exit");
        lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 0);
    }
    return 3;
}

/* core.kill(pid, signum) -> true, or nil and an error table */
static int lsig_kill(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    lua_Integer sig = luaL_checkinteger(L, 2);
    luaL_argcheck(L, pid > 0, 1, "a process id expected");
    luaL_argcheck(L, sig >= 0 && sig < NSIG, 2, "not a signal");
    if (kill((pid_t)pid, (int)sig) != 0) {
        lua_pushnil(L);
        ac_pusherror(L, "kill", errno, NULL);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int lsig_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

/* core._exit(code): leave the process at once (a worker that cannot go on) */
static int lsig_exit(lua_State *L)
{
    fflush(NULL);
    _exit((int)luaL_optinteger(L, 1, 0));
    return 0;
}

/* the state closes: every disposition back, the pipe closed */
static int sig_gc(lua_State *L)
{
    (void)L;
    for (int sig = 1; sig < NSIG; sig++)
        if (G.watched[sig]) {
            sigaction(sig, &G.old[sig], NULL);
            G.watched[sig] = 0;
        }
    G.nwatched = 0;
    G.s.ms = NULL;            /* the map states go with the state */
    pipe_close();
    return 0;
}

static const luaL_Reg sig_funcs[] = {
    {"signal_number", lsig_number}, {"signal_watch", lsig_watch}, {"signal_init", lsig_init},
    {"signal_wait", lsig_wait}, {"fork", lsig_fork}, {"waitpid", lsig_waitpid},
    {"kill", lsig_kill}, {"getpid", lsig_getpid}, {"_exit", lsig_exit},
    {NULL, NULL}
};

void ac_signal_open(lua_State *L, int st, int mt)
{
    lua_newuserdatauv(L, 1, 0);   /* puts the dispositions back when the state closes */
    lua_newtable(L);
    lua_pushcfunction(L, sig_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "asyncore.signals");
    ac_add_pass_hook(signal_hook);
    ac_setfuncs(L, sig_funcs, st, mt);
}
