/* forker: fork() and waitpid() for the specs (the library has no fork of its
** own yet). Built at test time: cc -shared -fPIC forker.c -o forker.so */
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lua.h>
#include <lauxlib.h>

static int l_fork(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)fork());
    return 1;
}

static int l_wait(lua_State *L)
{
    int st = 0;
    pid_t p = waitpid((pid_t)luaL_checkinteger(L, 1), &st, 0);
    lua_pushinteger(L, p);
    lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 2;
}

int luaopen_forker(lua_State *L);
int luaopen_forker(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_fork);
    lua_setfield(L, -2, "fork");
    lua_pushcfunction(L, l_wait);
    lua_setfield(L, -2, "wait");
    return 1;
}
