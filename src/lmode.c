/*
** lmode.c: channel modes (see lmode.h), and the functions that put a channel
** in a map or take it out: add_channel, del_channel, dispatcher.__newindex
** (an override set on a live instance) and class_changed (one set on a class).
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include "lmode.h"
#include "ltimeout.h"
#include "lflow.h"
#include "lerror.h"

/* the stock functions, as registered by lchan.c and lchat.c at luaopen */
static lua_CFunction stock[AC_STOCK_COUNT];
static void (*chat_attach)(lua_State *L, int chan, ac_socket *s);

void ac_stock_register(enum ac_stock which, lua_CFunction f)
{
    stock[which] = f;
}

void ac_mode_on_chat(void (*attach)(lua_State *L, int chan, ac_socket *s))
{
    chat_attach = attach;
}

static unsigned find_mode(lua_State *L, int chan)
{
    unsigned mode = 0;
    ac_pushkey(L, K_READABLE);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != stock[AC_STOCK_READABLE])
        mode |= CM_RD_CUSTOM;
    ac_pushkey(L, K_WRITABLE);
    lua_gettable(L, chan);
    lua_CFunction w = lua_tocfunction(L, -1);
    if (w == stock[AC_STOCK_WRITABLE])
        mode |= CM_WR_TRUE;
    else if (w == stock[AC_STOCK_DS_WRITABLE])
        mode |= CM_WR_SEND;
    else if (w == stock[AC_STOCK_CHAT_WRITABLE])
        mode |= CM_WR_CHAT;
    else
        mode |= CM_WR_CUSTOM;
    ac_pushkey(L, K_HANDLE_READ_EVENT);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != stock[AC_STOCK_READ_EVENT])
        mode |= CM_RE_CUSTOM;
    ac_pushkey(L, K_HANDLE_WRITE_EVENT);
    lua_gettable(L, chan);
    if (lua_tocfunction(L, -1) != stock[AC_STOCK_WRITE_EVENT])
        mode |= CM_WE_CUSTOM;
    lua_pop(L, 4);
    return mode;
}

/* argument 2 of add_channel/del_channel: the map given, else self._map, else socket_map */
static void check_map_arg(lua_State *L)
{
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        ac_pushkey(L, K_MAP);
        lua_gettable(L, 1);
        if (lua_isnil(L, 2)) {
            lua_pop(L, 1);
            lua_getiuservalue(L, lua_upvalueindex(UP_STATE), UV_SOCKETMAP);
        }
    }
    luaL_checktype(L, 2, LUA_TTABLE);
}

/* is the value at idx the name of a method that makes up a channel's mode? */
int ac_is_mode_key(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TSTRING &&
           (lua_rawequal(L, idx, KEY(K_READABLE)) || lua_rawequal(L, idx, KEY(K_WRITABLE)) ||
            lua_rawequal(L, idx, KEY(K_HANDLE_READ_EVENT)) ||
            lua_rawequal(L, idx, KEY(K_HANDLE_WRITE_EVENT)));
}

/*
** Read which of the channel's predicates and event methods are the stock ones
** (its mode) and set its registration to match: stock channels get their
** interest now, the others join the list whose predicates each pass calls.
** Returns 0, or an errno with *mask set when the poller refused the interest.
*/
static int ms_apply_mode(lua_State *L, int chan, ac_mapstate *ms, ac_socket *s, int *mask)
{
    *mask = 0;
    s->mode = find_mode(L, chan);
    if ((s->mode & CM_WR_MASK) == CM_WR_CHAT && chat_attach)
        chat_attach(L, chan, s);
    int err;
    if (CM_CUSTOM_PRED(s->mode)) {
        ac_ms_add_custom(ms, s, &err);
        return err;
    }
    ac_ms_remove_custom(ms, s);
    err = ac_ms_setmask(ms, s->fd, ac_stock_mask(L, chan, s));
    *mask = err != 0;
    return err;
}

/* raise what ms_apply_mode returned: the poller's refusal, or `op` out of memory */
static int raise_mode_error(lua_State *L, ac_mapstate *ms, int fd, int err, int mask, const char *op)
{
    return mask ? ac_raise_setmask(L, ms->p.ops->name, fd, err) : ac_raise(L, op, err);
}

/*
** A predicate or event method was set on a class since the modes of this
** map's channels were read: read them again. Runs before a pass.
*/
void ac_refresh_modes(lua_State *L, ac_state *S, ac_mapstate *ms, int map)
{
    ms->pred_version = S->pred_version;
    int top = lua_gettop(L);
    for (int fd = 0; fd < ms->nregs; fd++) {
        ac_socket *s = ms->socks[fd];
        if (s == NULL)
            continue;
        lua_settop(L, top);
        if (lua_rawgeti(L, map, fd) != LUA_TTABLE || ac_chansock(L, top + 1) != s)
            continue;
        ac_flow_read_marks(L, top + 1, s);
        int mask;
        int err = ms_apply_mode(L, top + 1, ms, s, &mask);
        if (err)
            raise_mode_error(L, ms, fd, err, mask, "loop");
    }
    lua_settop(L, top);
}

/*
** dispatcher.__newindex(self, key, value): a field new to the instance. When
** it overrides readable, writable, handle_read_event or handle_write_event of
** a channel in a map, the channel's mode is read again at once, so the loop
** asks the new method from the next pass on, as Python's asyncore would.
*/
static int lmode_newindex(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 3);
    int watched = ac_is_mode_key(L, 2);
    int mark = !watched && ac_flow_is_mark_key(L, 2);
    lua_rawset(L, 1);
    if (mark) {
        ac_socket *s = ac_chansock(L, 1);
        if (s != NULL)
            ac_flow_read_marks(L, 1, s);
    }
    if (watched) {
        ac_socket *s = ac_chansock(L, 1);
        if (s != NULL && s->ms != NULL && !sock_isclosed(s)) {
            int mask;
            int err = ms_apply_mode(L, 1, s->ms, s, &mask);
            if (err)
                return raise_mode_error(L, s->ms, s->fd, err, mask, "__newindex");
        }
    }
    return 0;
}

/*
** dispatcher:add_channel([map]): put the channel in the map (default: the
** one it was made for) and register its socket with that map's poller, with
** its mode (ms_apply_mode). A method set later on the instance is seen through
** dispatcher.__newindex, one set on a class before the next pass.
*/
static int lmode_add_channel(lua_State *L)
{
    ac_state *S = STATE(L);
    ac_socket *s = ac_checkchan(L, 1, "add_channel");
    check_map_arg(L);
    lua_settop(L, 2);
    ac_flow_read_marks(L, 1, s);
    ac_mapstate *ms = ac_getmapstate(L, 2, NULL);   /* 3: ms */
    if (s->ms && s->ms != ms)
        ac_ms_unregister(s->ms, s);
    int fd = s->fd;
    int err = ac_ms_grow(ms, fd);
    if (err)
        return ac_raise(L, "add_channel", err);
    if (ms->socks[fd] && ms->socks[fd] != s)
        ac_ms_unregister(ms, ms->socks[fd]);
    if (ms->socks[fd] == NULL) {
        ms->socks[fd] = s;
        ms->nsocks++;
        if (++S->gen == 0)
            S->gen = 1;
        s->gen = S->gen;
        if (ms->regs[fd].mask)                     /* left over: clear it */
            ac_ms_setmask(ms, fd, 0);
        ms->regs[fd].gen = s->gen;
        if (s->to_idle > 0 || s->to_connect > 0 || s->to_handshake > 0)
            ac_timeout_rearm(ms, s);   /* its entries elsewhere went stale */
    }
    s->ms = ms;
    s->mapfd = fd;
    int mask;
    err = ms_apply_mode(L, 1, ms, s, &mask);
    if (err) {
        ac_ms_unregister(ms, s);
        return raise_mode_error(L, ms, fd, err, mask, "add_channel");
    }
    lua_pushvalue(L, 1);
    lua_rawseti(L, 2, fd);
    return 0;
}

/* dispatcher:del_channel([map]): leave the map and the poller */
static int lmode_del_channel(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    check_map_arg(L);
    if (s == NULL)
        return 0;
    if (s->ms)
        ac_ms_unregister(s->ms, s);
    if (s->mapfd >= 0) {
        lua_rawgeti(L, 2, s->mapfd);
        if (lua_rawequal(L, -1, 1)) {
            lua_pushnil(L);
            lua_rawseti(L, 2, s->mapfd);
        }
        s->mapfd = -1;
    }
    return 0;
}

/* dispatcher update of stock interest: core.update_interest(self) */
static int lmode_update_interest(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s && !sock_isclosed(s))
        ac_update_interest(L, 1, s);
    return 0;
}

/*
** core.class_changed([key]): asyncore.class calls it whenever a class changes
** (key: the field set; none when a class is made). A new class changes no
** channel's mode, so only a predicate or event method set makes the loop
** read the modes of its channels again.
*/
static int lmode_class_changed(lua_State *L)
{
    ac_state *S = STATE(L);
    S->class_version++;
    if (ac_is_mode_key(L, 1) || ac_flow_is_mark_key(L, 1))
        S->pred_version++;   /* the channels' modes (and marks) are read again */
    return 0;
}

static const luaL_Reg mode_funcs[] = {
    {"add_channel", lmode_add_channel},
    {"del_channel", lmode_del_channel},
    {"update_interest", lmode_update_interest},
    {"chan_newindex", lmode_newindex},
    {"class_changed", lmode_class_changed},
    {NULL, NULL}
};

/* adds the channel-mode functions to the module table on top */
void ac_mode_open(lua_State *L, int st, int mt)
{
    ac_setfuncs(L, mode_funcs, st, mt);
}
