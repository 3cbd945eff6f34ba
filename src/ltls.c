/*
** ltls.c: TLS over OpenSSL (1.1.1 or 3.x), as a transport (ltransport.h).
**
** A context (asyncore.tls_context) is an SSL_CTX with the library's settings
** (verification on for clients, session tickets, no renegotiation, read-ahead)
** and a small configuration of our own (ALPN list, SNI table) attached as ex
** data, so it lives exactly as long as the SSL_CTX does.
**
** start_tls puts an SSL object on a channel's socket and replaces its
** transport; the channel and the framing stay as they are and see plaintext.
** The SSL object talks to the socket through a BIO of ours:
**   - reads come first from `prefix` (bytes the channel had received but not
**     consumed when start_tls was called: a ClientHello behind a STARTTLS
**     line), then straight from the socket into OpenSSL's buffer;
**   - writes go straight to the socket; what the kernel does not take is kept
**     in `wout` and the write reports success, so OpenSSL never sees a
**     blocked write (no want-write anywhere), and plaintext queued before
**     start_tls (`clear`) always goes out before the first record.
** While the handshake runs, or `clear`/`wout` hold bytes, the socket carries
** SF_TP_EVENTS: the pass gives its events to tls_event first, which drives the
** handshake (the channel sees no event until it completes), flushes, and
** reports failures as "handshake" errors. Records OpenSSL read ahead are
** announced with ac_ms_mark_pending, so the pass delivers them without
** waiting for the socket to become readable again.
*/
#include "config.h"
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "ltls.h"
#include "lerror.h"
#include "lchat.h"
#include "errnames.h"

#define CTX_MT "asyncore.tls_context"
#define CTX_MAGIC UINT64_C(0x6c75612d61632d74)   /* "lua-ac-t" */
#define WRITE_MAX 65536     /* plaintext per SSL_write: bounds what `wout` may hold */

/* ---- contexts ---- */

typedef struct sni_entry {
    char *name;
    SSL_CTX *ctx;
} sni_entry;

/* ours, attached to each SSL_CTX as ex data and freed with it */
typedef struct tls_cfg {
    int server, verify;
    unsigned char *alpn;     /* wire format: length-prefixed names */
    unsigned alpnlen;
    sni_entry *sni;
    int nsni;
} tls_cfg;

typedef struct ac_tlsctx {
    uint64_t magic;
    SSL_CTX *ctx;
} ac_tlsctx;

static int cfg_index = -1;
static BIO_METHOD *bio_meth;

static void cfg_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    tls_cfg *cfg = ptr;
    if (cfg == NULL)
        return;
    for (int i = 0; i < cfg->nsni; i++) {
        free(cfg->sni[i].name);
        SSL_CTX_free(cfg->sni[i].ctx);
    }
    free(cfg->sni);
    free(cfg->alpn);
    free(cfg);
}

static tls_cfg *ctx_cfg(SSL_CTX *ctx)
{
    return SSL_CTX_get_ex_data(ctx, cfg_index);
}

static ac_tlsctx *checkctx(lua_State *L, int idx, const char *fname)
{
    ac_tlsctx *c = luaL_testudata(L, idx, CTX_MT);
    if (c == NULL) {
        const char *msg = lua_pushfstring(L, "tls_context expected, got %s", luaL_typename(L, idx));
        luaL_error(L, "bad argument #%d to '%s' (%s)", idx, fname, msg);
    }
    return c;
}

/* OpenSSL's words for its last error (and the queue emptied) */
static const char *ssl_words(char *buf, size_t n)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r == NULL && e)
        ERR_error_string_n(e, buf, n), r = buf;
    else if (r) {
        snprintf(buf, n, "%s", r);
        r = buf;
    }
    ERR_clear_error();
    return r ? r : "unknown error";
}

/* raise "tls_context: KEY: what" (the error queue is emptied) */
static int opt_error(lua_State *L, const char *key, const char *what)
{
    ERR_clear_error();
    return luaL_error(L, "tls_context: %s: %s", key, what);
}

static const char *opt_file(lua_State *L, int opts, const char *key, int dir)
{
    if (lua_getfield(L, opts, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        opt_error(L, key, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, -1)));
    const char *path = lua_tostring(L, -1);
    struct stat st;
    if (stat(path, &st) != 0)
        opt_error(L, key, lua_pushfstring(L, "cannot open '%s': %s", path, strerror(errno)));
    if (dir ? !S_ISDIR(st.st_mode) : S_ISDIR(st.st_mode))
        opt_error(L, key, lua_pushfstring(L, "'%s' is %s", path, dir ? "not a directory" : "a directory"));
    lua_pop(L, 1);   /* the string stays alive in the options table */
    return path;
}

static int ctx_gc(lua_State *L)
{
    ac_tlsctx *c = luaL_checkudata(L, 1, CTX_MT);
    if (c->ctx) {
        SSL_CTX_free(c->ctx);
        c->ctx = NULL;
    }
    return 0;
}

static int ctx_tostring(lua_State *L)
{
    ac_tlsctx *c = luaL_checkudata(L, 1, CTX_MT);
    tls_cfg *cfg = ctx_cfg(c->ctx);
    lua_pushfstring(L, "<tls_context %s%s at %p>", cfg->server ? "server" : "client",
                    cfg->verify ? " verifying" : "", (void *)c);
    return 1;
}

/* ALPN: the server picks the first of its names the client offers */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    tls_cfg *cfg = arg;
    for (unsigned i = 0; i < cfg->alpnlen; i += 1u + cfg->alpn[i]) {
        unsigned l = cfg->alpn[i];
        for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
            if (in[j] == l && j + 1u + l <= inlen && memcmp(in + j + 1, cfg->alpn + i + 1, l) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_NOACK;   /* no common protocol: go on without ALPN */
}

/* SNI: switch to the context registered for the name the client asked for */
static int sni_select(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    tls_cfg *cfg = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL)
        return SSL_TLSEXT_ERR_OK;
    for (int i = 0; i < cfg->nsni; i++)
        if (strcasecmp(name, cfg->sni[i].name) == 0) {
            SSL_set_SSL_CTX(ssl, cfg->sni[i].ctx);
            break;
        }
    return SSL_TLSEXT_ERR_OK;
}

static const char *const CTX_KEYS[] = {
    "mode", "certfile", "keyfile", "cafile", "capath", "verify", "alpn", "sni",
    "min_version", "ciphers", NULL
};

/* alpn = {"h2", "http/1.1"}: to the wire format, in cfg */
static void ctx_alpn(lua_State *L, int opts, tls_cfg *cfg)
{
    if (lua_getfield(L, opts, "alpn") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    int list = lua_gettop(L);
    if (!lua_istable(L, list))
        opt_error(L, "alpn", lua_pushfstring(L, "list of names expected, got %s", luaL_typename(L, list)));
    lua_Integer n = (lua_Integer)lua_rawlen(L, list);
    if (n == 0)
        opt_error(L, "alpn", "the list is empty");
    size_t total = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len = 0;
        if (lua_rawgeti(L, list, i) == LUA_TSTRING)
            lua_tolstring(L, -1, &len);
        if (len == 0 || len > 255)
            opt_error(L, "alpn", lua_pushfstring(L, "entry %d: a name of 1 to 255 bytes expected", (int)i));
        total += 1 + len;
        lua_pop(L, 1);
    }
    if (total > 65535)
        opt_error(L, "alpn", "the list is too long");
    unsigned char *w = malloc(total);
    if (w == NULL)
        ac_raise_nomem(L, "tls_context");
    size_t off = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, list, i);
        const char *p = lua_tolstring(L, -1, &len);
        w[off++] = (unsigned char)len;
        memcpy(w + off, p, len);
        off += len;
        lua_pop(L, 1);
    }
    cfg->alpn = w;
    cfg->alpnlen = (unsigned)total;
    lua_settop(L, list - 1);
}

/* sni = {["name"] = server_context, ...} */
static void ctx_sni(lua_State *L, int opts, tls_cfg *cfg, SSL_CTX *ctx)
{
    if (lua_getfield(L, opts, "sni") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    int tbl = lua_gettop(L);
    if (!lua_istable(L, tbl))
        opt_error(L, "sni", lua_pushfstring(L, "table of name = context expected, got %s", luaL_typename(L, tbl)));
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        lua_pop(L, 1);
        n++;
    }
    if (n == 0) {
        lua_settop(L, tbl - 1);
        return;
    }
    cfg->sni = calloc((size_t)n, sizeof *cfg->sni);
    if (cfg->sni == NULL)
        ac_raise_nomem(L, "tls_context");
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            opt_error(L, "sni", "the keys must be host names");
        const char *name = lua_tostring(L, -2);
        ac_tlsctx *sub = luaL_testudata(L, -1, CTX_MT);
        if (sub == NULL || sub->ctx == NULL)
            opt_error(L, "sni", lua_pushfstring(L, "'%s': tls_context expected, got %s", name, luaL_typename(L, -1)));
        if (!ctx_cfg(sub->ctx)->server)
            opt_error(L, "sni", lua_pushfstring(L, "'%s': a server context expected", name));
        char *copy = strdup(name);
        if (copy == NULL)
            ac_raise_nomem(L, "tls_context");
        SSL_CTX_up_ref(sub->ctx);
        cfg->sni[cfg->nsni].name = copy;
        cfg->sni[cfg->nsni].ctx = sub->ctx;
        cfg->nsni++;
        lua_pop(L, 1);
    }
    lua_settop(L, tbl - 1);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_select);
    SSL_CTX_set_tlsext_servername_arg(ctx, cfg);
}

static int boolopt(lua_State *L, int opts, const char *key, int dflt)
{
    int t = lua_getfield(L, opts, key);
    int v = dflt;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        opt_error(L, key, lua_pushfstring(L, "boolean expected, got %s", luaL_typename(L, -1)));
    lua_pop(L, 1);
    return v;
}

static const char *stropt(lua_State *L, int opts, const char *key)
{
    int t = lua_getfield(L, opts, key);
    const char *v = NULL;
    if (t == LUA_TSTRING)
        v = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        opt_error(L, key, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, -1)));
    lua_pop(L, 1);
    return v;
}

/* asyncore.tls_context(opts) */
static int ltls_context(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (int i = 0; CTX_KEYS[i]; i++)
                if (strcmp(lua_tostring(L, -1), CTX_KEYS[i]) == 0)
                    known = 1;
        if (!known)
            return luaL_error(L, "tls_context: unknown option '%s'", luaL_tolstring(L, -1, NULL));
    }
    const char *mode = stropt(L, 1, "mode");
    int server = 0;
    if (mode != NULL && strcmp(mode, "server") == 0)
        server = 1;
    else if (mode != NULL && strcmp(mode, "client") != 0)
        return opt_error(L, "mode", lua_pushfstring(L, "\"client\" or \"server\" expected, got \"%s\"", mode));
    int verify = boolopt(L, 1, "verify", !server);
    const char *certfile = opt_file(L, 1, "certfile", 0);
    const char *keyfile = opt_file(L, 1, "keyfile", 0);
    const char *cafile = opt_file(L, 1, "cafile", 0);
    const char *capath = opt_file(L, 1, "capath", 1);
    const char *minv = stropt(L, 1, "min_version");
    const char *ciphers = stropt(L, 1, "ciphers");
    int version = TLS1_2_VERSION;
    if (minv != NULL) {
        if (strcmp(minv, "TLSv1.3") == 0)
            version = TLS1_3_VERSION;
        else if (strcmp(minv, "TLSv1.2") != 0)
            return opt_error(L, "min_version", lua_pushfstring(L, "\"TLSv1.2\" or \"TLSv1.3\" expected, got \"%s\"", minv));
    }
    if (server && certfile == NULL)
        return opt_error(L, "certfile", "a server context needs a certificate (certfile and keyfile)");
    if (keyfile != NULL && certfile == NULL)
        return opt_error(L, "keyfile", "given without certfile");

    /* from here on the context is owned by a userdata: any error frees it */
    ac_tlsctx *c = lua_newuserdatauv(L, sizeof *c, 0);      /* 2 */
    c->magic = CTX_MAGIC;
    c->ctx = NULL;
    luaL_setmetatable(L, CTX_MT);
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL)
        return ac_raise_nomem(L, "tls_context");
    c->ctx = ctx;
    tls_cfg *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL || !SSL_CTX_set_ex_data(ctx, cfg_index, cfg)) {
        free(cfg);
        return ac_raise_nomem(L, "tls_context");
    }
    cfg->server = server;
    cfg->verify = verify;
    char words[256];

    SSL_CTX_set_min_proto_version(ctx, version);
    long opts = SSL_OP_NO_COMPRESSION;
#ifdef SSL_OP_NO_RENEGOTIATION
    opts |= SSL_OP_NO_RENEGOTIATION;
#endif
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    opts |= SSL_OP_IGNORE_UNEXPECTED_EOF;   /* a ragged end is an end of stream */
#endif
    if (server)
        opts |= SSL_OP_CIPHER_SERVER_PREFERENCE;
    SSL_CTX_set_options(ctx, opts);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (ciphers != NULL && !SSL_CTX_set_cipher_list(ctx, ciphers))
        return opt_error(L, "ciphers", lua_pushfstring(L, "no usable cipher in \"%s\"", ciphers));
    if (certfile != NULL) {
        if (!SSL_CTX_use_certificate_chain_file(ctx, certfile))
            return opt_error(L, "certfile", lua_pushfstring(L, "'%s': %s", certfile, ssl_words(words, sizeof words)));
        const char *kf = keyfile ? keyfile : certfile;
        if (!SSL_CTX_use_PrivateKey_file(ctx, kf, SSL_FILETYPE_PEM)) {
            if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
                return opt_error(L, "keyfile", lua_pushfstring(L, "'%s' does not match the certificate in '%s'", kf, certfile));
            return opt_error(L, "keyfile", lua_pushfstring(L, "'%s': %s", kf, ssl_words(words, sizeof words)));
        }
        if (!SSL_CTX_check_private_key(ctx))
            return opt_error(L, "keyfile", lua_pushfstring(L, "'%s' does not match the certificate in '%s'", kf, certfile));
    }
    if (cafile != NULL || capath != NULL) {
        if (!SSL_CTX_load_verify_locations(ctx, cafile, capath))
            return opt_error(L, cafile ? "cafile" : "capath",
                             lua_pushfstring(L, "'%s': %s", cafile ? cafile : capath, ssl_words(words, sizeof words)));
    } else if (verify && !SSL_CTX_set_default_verify_paths(ctx)) {
        return opt_error(L, "cafile", lua_pushfstring(L, "the system's trust store: %s", ssl_words(words, sizeof words)));
    }
    if (verify) {
        SSL_CTX_set_verify(ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, NULL);
        if (server && cafile != NULL) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cafile);
            if (names != NULL)
                SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (server) {
        /* sessions resume, by tickets */
        static const unsigned char sid[] = "lua-asyncore";
        SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
        /* resumption by tickets (stateless): no session kept per connection */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    }
    ctx_alpn(L, 1, cfg);
    if (cfg->alpn != NULL) {
        if (server)
            SSL_CTX_set_alpn_select_cb(ctx, alpn_select, cfg);
        else if (SSL_CTX_set_alpn_protos(ctx, cfg->alpn, cfg->alpnlen) != 0)
            return ac_raise_nomem(L, "tls_context");
    }
    ctx_sni(L, 1, cfg, ctx);
    if (cfg->nsni > 0 && !server)
        return opt_error(L, "sni", "only a server context chooses by name");
    ERR_clear_error();
    return 1;
}

/* ---- a connection ---- */

/* T_DEAD: a failure already reported; the channel waits for its close() */
enum { T_CONNECT, T_HANDSHAKE, T_OPEN, T_FAILED, T_DEAD };

typedef struct ac_tls {
    SSL *ssl;
    ac_socket *s;
    int state;               /* T_* */
    int server, verify;
    int ioerr;               /* errno of the BIO's last failed system call, or 0 */
    int notify;              /* the handshake completed: handle_handshake is due */
    int close_sent;          /* our close_notify is written (shutdown_when_done) */
    unsigned wanted;         /* the channel's own interest, as last told */
    ac_buffer prefix;        /* received before start_tls: the handshake reads it first */
    ac_buffer clear;         /* queued before start_tls: sent before any record */
    ac_buffer wout;          /* records the kernel did not take yet */
    int err_no;              /* T_FAILED: the error to raise */
    char errcode[64];
    char errmsg[320];
} ac_tls;

#define out_held(t) (buffer_len(&(t)->clear) > 0 || buffer_len(&(t)->wout) > 0)

/* send what is held (clear text first); 0, EAGAIN, or the errno */
static int flush_held(ac_tls *t)
{
    ac_buffer *bufs[2] = {&t->clear, &t->wout};
    for (int i = 0; i < 2; i++) {
        ac_buffer *b = bufs[i];
        while (buffer_len(b) > 0) {
            size_t sent;
            int err = sock_send(t->s->fd, 0, buffer_begin(b), buffer_len(b), &sent);
            if (err) {
                if (err != EAGAIN)
                    t->ioerr = err;
                return err;
            }
            buffer_consume(b, sent);
        }
        buffer_shrink(b);
    }
    return 0;
}

static int bio_write(BIO *b, const char *p, int n)
{
    ac_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->ioerr)
        return -1;
    size_t sent = 0;
    if (!out_held(t) || flush_held(t) == 0) {
        int err = sock_send(t->s->fd, 0, p, (size_t)n, &sent);
        if (err && err != EAGAIN) {
            t->ioerr = err;
            return -1;
        }
    }
    if (t->ioerr)
        return -1;
    if (sent < (size_t)n && buffer_append(&t->wout, p + sent, (size_t)n - sent) != 0) {
        t->ioerr = ENOMEM;
        return -1;
    }
    return n;
}

static int bio_read(BIO *b, char *p, int n)
{
    ac_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t have = buffer_len(&t->prefix);
    if (have > 0) {
        size_t k = have < (size_t)n ? have : (size_t)n;
        memcpy(p, buffer_begin(&t->prefix), k);
        buffer_consume(&t->prefix, k);
        if (buffer_len(&t->prefix) == 0)
            buffer_free(&t->prefix);
        return (int)k;
    }
    size_t got;
    int err = sock_recv(t->s->fd, 0, p, (size_t)n, &got);
    if (err == 0)
        return (int)got;
    if (err == EAGAIN) {
        BIO_set_retry_read(b);
        return -1;
    }
    t->ioerr = err;
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    (void)b;
    return 1;
}

/*
** Keep what failed, for the channel: op "handshake", a code naming the
** reason ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", ...) and
** OpenSSL's words. `r` and `e` are the failed call's result and SSL_get_error.
*/
static void record_failure(ac_tls *t, int e)
{
    unsigned long ec = ERR_peek_last_error();
    t->state = T_FAILED;
    t->err_no = EPROTO;
    if (ec != 0) {
        const char *reason = ERR_reason_error_string(ec);
        if (reason == NULL)
            reason = "unknown error";
        size_t i = 0;
        for (; reason[i] && i < sizeof t->errcode - 1; i++)
            t->errcode[i] = reason[i] == ' ' ? '_' : (char)toupper((unsigned char)reason[i]);
        t->errcode[i] = '\0';
        long vr = SSL_get_verify_result(t->ssl);
        if (ERR_GET_REASON(ec) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK)
            snprintf(t->errmsg, sizeof t->errmsg, "%s: %s", reason, X509_verify_cert_error_string(vr));
        else
            snprintf(t->errmsg, sizeof t->errmsg, "%s", reason);
    } else if (t->ioerr) {
        t->err_no = t->ioerr;
        const char *name = errnames_get(t->ioerr);
        snprintf(t->errcode, sizeof t->errcode, "%s", name ? name : "EIO");
        snprintf(t->errmsg, sizeof t->errmsg, "%s during the TLS handshake", strerror(t->ioerr));
    } else {
        (void)e;
        snprintf(t->errcode, sizeof t->errcode, "UNEXPECTED_EOF");
        snprintf(t->errmsg, sizeof t->errmsg, "the peer closed the connection during the TLS handshake");
    }
    ERR_clear_error();
}

/* report the failure to the channel at chan, once: then no more events */
static int raise_failure(lua_State *L, int chan, ac_socket *s, ac_tls *t)
{
    t->state = T_DEAD;
    s->flags &= ~SF_TP_PENDING;
    ac_update_interest(L, chan, s);
    ac_pusherror(L, "handshake", t->err_no, t->errmsg);
    lua_pushstring(L, t->errcode);
    lua_setfield(L, -2, "code");
    return lua_error(L);
}

/* the handshake's next step; 1 when it completed, 0 when it waits, -1 failed */
static int handshake_step(ac_tls *t)
{
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->state = T_OPEN;
        t->notify = 1;
        return 1;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    record_failure(t, e);
    flush_held(t);   /* the alert, best effort */
    return -1;
}

/* ---- the transport ---- */

/* the socket holds records the kernel did not take: ask for writability */
static void need_write(ac_socket *s)
{
    s->flags |= SF_TP_EVENTS;
    ac_mapstate *ms = s->ms;
    if (ms && s->fd >= 0 && s->fd < ms->nregs && ms->socks[s->fd] == s)
        ac_ms_setmask(ms, s->fd, ms->regs[s->fd].mask | AC_EV_WRITE);
}

static int tls_read(ac_socket *s, char *p, size_t n, size_t *got)
{
    ac_tls *t = s->tpstate;
    *got = 0;
    if (t->state != T_OPEN)
        return t->state >= T_FAILED ? EPROTO : EAGAIN;
    size_t total = 0;
    int err = 0;
    while (total < n) {
        size_t k;
        if (SSL_read_ex(t->ssl, p + total, n - total, &k)) {
            total += k;
            if (!SSL_has_pending(t->ssl))
                break;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            err = EAGAIN;
        } else if (e == SSL_ERROR_ZERO_RETURN) {
            err = -1;   /* end of stream (close_notify, or a ragged end) */
        } else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
            err = t->ioerr ? t->ioerr : -1;   /* 1.1.1: EOF without close_notify */
        } else {
            err = t->ioerr ? t->ioerr : EPROTO;
        }
        ERR_clear_error();
        break;
    }
    if (out_held(t))
        need_write(s);   /* a record OpenSSL answered (a key update) waits for the kernel */
    if (total > 0 || err == -1)
        s->last_io = ac_io_clock;
    if (total > 0) {
        *got = total;
        if (err != 0 && err != EAGAIN)
            ac_ms_mark_pending(s);            /* the end or the error: next read */
        else if (total == n && SSL_has_pending(t->ssl))
            ac_ms_mark_pending(s);
        else
            s->flags &= ~SF_TP_PENDING;
        return 0;
    }
    s->flags &= ~SF_TP_PENDING;
    return err == -1 ? 0 : err;
}

static int tls_write(ac_socket *s, const char *p, size_t n, size_t *sent)
{
    ac_tls *t = s->tpstate;
    *sent = 0;
    if (t->state != T_OPEN)
        return t->state >= T_FAILED ? EPROTO : EAGAIN;
    if (t->ioerr)
        return t->ioerr;
    if (out_held(t)) {
        int err = flush_held(t);
        if (err)
            return err;
    }
    if (n == 0)
        return 0;
    if (n > WRITE_MAX)
        n = WRITE_MAX;
    size_t w;
    if (!SSL_write_ex(t->ssl, p, n, &w)) {
        ERR_clear_error();
        return t->ioerr ? t->ioerr : EPROTO;
    }
    *sent = w;
    s->last_io = ac_io_clock;
    if (out_held(t))
        need_write(s);
    return 0;
}

static int tls_writev(ac_socket *s, struct iovec *iov, int iovcnt, size_t *sent)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) {
        size_t k;
        int err = tls_write(s, iov[i].iov_base, iov[i].iov_len, &k);
        if (err) {
            *sent = total;
            return total > 0 && err == EAGAIN ? 0 : err;
        }
        total += k;
        if (k < iov[i].iov_len || out_held((ac_tls *)s->tpstate))
            break;
    }
    *sent = total;
    return 0;
}

static int tls_flush(ac_socket *s)
{
    ac_tls *t = s->tpstate;
    if (!out_held(t))
        return 0;
    int err = flush_held(t);
    return err ? EAGAIN : 0;
}

/* the sending side: a close_notify, then (once it and everything held
** before it is sent: EAGAIN until then) the TCP FIN */
static int tls_shutdown(ac_socket *s, int how)
{
    ac_tls *t = s->tpstate;
    if (t->state == T_OPEN && how != SHUT_RD) {
        if (!t->close_sent) {
            t->close_sent = 1;
            SSL_shutdown(t->ssl);   /* the close_notify joins what is held */
            ERR_clear_error();
        }
        int err = flush_held(t);
        if (err)
            return err;
    }
    return sock_shutdown(s->fd, how);
}

static void tls_free(ac_tls *t)
{
    SSL_free(t->ssl);   /* and the BIO */
    buffer_free(&t->prefix);
    buffer_free(&t->clear);
    buffer_free(&t->wout);
    free(t);
}

/* close(): a close_notify, best effort (never waits), then free */
static void tls_close(ac_socket *s)
{
    ac_tls *t = s->tpstate;
    if (t == NULL)
        return;
    if (t->state == T_OPEN && !t->ioerr) {
        if (!t->close_sent) {
            SSL_shutdown(t->ssl);
            ERR_clear_error();
        }
        flush_held(t);
    }
    s->tpstate = NULL;
    tls_free(t);
}

static unsigned tls_interest(const ac_socket *s, unsigned wanted)
{
    ac_tls *t = s->tpstate;
    t->wanted = wanted;
    unsigned out = out_held(t) ? AC_EV_WRITE : 0;
    switch (t->state) {
    case T_CONNECT: return wanted | AC_EV_WRITE;
    case T_HANDSHAKE: return AC_EV_READ | out;
    case T_FAILED: return AC_EV_READ | AC_EV_WRITE;
    case T_DEAD: return 0;
    default: return wanted | out | (t->notify ? AC_EV_READ : 0);
    }
}

static int tls_pending(ac_socket *s)
{
    ac_tls *t = s->tpstate;
    if (t->state == T_FAILED || t->notify || buffer_len(&t->prefix) > 0)
        return 1;
    if (t->state != T_OPEN)
        return 0;
    if (SSL_pending(t->ssl) > 0)
        return 1;
    if (!SSL_has_pending(t->ssl))
        return 0;
    char c;
    int r = SSL_peek(t->ssl, &c, 1);   /* a whole record read ahead, or only a part? */
    if (r > 0)
        return 1;
    int e = SSL_get_error(t->ssl, r);
    ERR_clear_error();
    return e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
}

static void start_handshake(ac_tls *t)
{
    t->state = T_HANDSHAKE;
    /* a client speaks first; a server whose ClientHello came early reads it */
    if (!t->server || buffer_len(&t->prefix) > 0)
        handshake_step(t);
}

static const ac_transport tls_transport;

/* events while the handshake runs or records are held: see the top */
static unsigned tls_event(lua_State *L, int chan, ac_socket *s, unsigned ev)
{
    ac_tls *t = s->tpstate;
    uint32_t gen = s->gen;
    if (t->state == T_CONNECT) {
        if (s->flags & SF_CONNECTING) {
            ac_call_method(L, chan, K_HANDLE_CONNECT_EVENT, 0);
            s = ac_chan_same(L, chan, gen);
            if (s == NULL || s->tp != &tls_transport || (s->flags & SF_CONNECTING))
                return 0;
            t = s->tpstate;
            if (t->state != T_CONNECT)
                return 0;
        }
        start_handshake(t);
        ac_update_interest(L, chan, s);
        if (t->state == T_HANDSHAKE)
            return 0;
    }
    if (t->state == T_HANDSHAKE) {
        int r = handshake_step(t);
        if (r == 0) {
            if (out_held(t))
                flush_held(t);   /* a failure shows at the next step */
            ac_update_interest(L, chan, s);
            return 0;
        }
    }
    if (t->state == T_FAILED)
        return (unsigned)raise_failure(L, chan, s, t);
    if (t->state == T_DEAD)
        return 0;
    if (t->notify) {   /* completed (here, or already in start_tls's first step) */
        t->notify = 0;
        s->to_handshake = 0;   /* its timeout is over */
        if (!out_held(t) || flush_held(t) == 0)
            s->flags &= ~SF_TP_EVENTS;
        ac_update_interest(L, chan, s);
        ac_call_method(L, chan, K_HANDLE_HANDSHAKE, 0);
        /* data that came with the peer's last flight: read it now */
        s = ac_chan_same(L, chan, gen);
        if (s == NULL || s->tp != &tls_transport || s->tpstate != t || !SSL_has_pending(t->ssl))
            return 0;
        if ((s->flags & SF_TP_EVENTS) || s->ms == NULL || !(s->ms->regs[s->fd].mask & AC_EV_READ)) {
            /* records still held, or reads not wanted now: the pass comes back */
            ac_ms_mark_pending(s);
            return 0;
        }
        return AC_EV_READ;
    }
    /* open: what is held goes first */
    int err = flush_held(t);
    if (err == EAGAIN)
        return ev & ~AC_EV_WRITE;
    if (err)
        return (unsigned)ac_raise(L, "send", err);   /* the peer is gone: handle_close */
    s->flags &= ~SF_TP_EVENTS;
    ac_update_interest(L, chan, s);
    if (!(t->wanted & AC_EV_WRITE))
        ev &= ~AC_EV_WRITE;
    return ev;
}

static const ac_transport tls_transport = {
    "tls", tls_read, tls_write, tls_writev, tls_shutdown, tls_close, tls_interest,
    tls_pending, tls_flush, tls_event
};

/* is host a numeric IPv4 or IPv6 address? */
static int numeric_host(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/*
** core.tls.start_tls(self, ctx, server_hostname or nil): the Lua method
** checks the arguments and picks the default name; this puts TLS on the
** socket. Output queued so far goes out in the clear first; input received
** but not consumed feeds the handshake.
*/
static int ltls_start(lua_State *L)
{
    ac_socket *s = ac_checkchan(L, 1, "start_tls");
    ac_tlsctx *c = checkctx(L, 2, "start_tls");
    const char *host = luaL_optstring(L, 3, NULL);
    int deferred = lua_toboolean(L, 4);   /* asked for before the connect: nothing queued is clear text */
    lua_settop(L, 3);
    if (s->tp != &ac_plain_transport)
        return luaL_error(L, "start_tls: TLS is already on this channel");
    if (s->type != SOCK_STREAM || (s->flags & SF_FILE) || s->family == AF_UNSPEC)
        return luaL_error(L, "start_tls: TLS needs a stream socket");
    if (s->flags & SF_LISTENING)
        return luaL_error(L, "start_tls: this channel listens: start TLS on the channels it accepts");
    tls_cfg *cfg = ctx_cfg(c->ctx);
    if (!cfg->server && cfg->verify && host == NULL)
        return luaL_error(L, "start_tls: the context verifies the server's name and there is none "
                          "to check: connect to a host name, pass {server_hostname = ...}, "
                          "or make the context with verify = false");
    ac_tls *t = calloc(1, sizeof *t);
    if (t == NULL)
        return ac_raise_nomem(L, "start_tls");
    buffer_init(&t->prefix);
    buffer_init(&t->clear);
    buffer_init(&t->wout);
    t->s = s;
    t->server = cfg->server;
    t->verify = cfg->verify;
    ERR_clear_error();
    t->ssl = SSL_new(c->ctx);
    BIO *b = t->ssl ? BIO_new(bio_meth) : NULL;
    if (b == NULL) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return ac_raise_nomem(L, "start_tls");
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    int ok = 1;
    if (cfg->server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (host != NULL && numeric_host(host)) {
            if (cfg->verify)
                ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
        } else if (host != NULL) {
            ok = SSL_set_tlsext_host_name(t->ssl, host) && (!cfg->verify || SSL_set1_host(t->ssl, host));
        }
    }
    if (!ok) {
        tls_free(t);
        ERR_clear_error();
        return luaL_error(L, "start_tls: server_hostname '%s' cannot be used", host);
    }
    /* installed first, as failed: moving what the channel holds runs Lua
    ** code (producers), which may raise or close the channel; the socket
    ** owns t from here on */
    ac_pushkey(L, K_SOCKET);
    lua_rawget(L, 1);                                  /* 4: anchors s */
    t->state = T_FAILED;
    snprintf(t->errcode, sizeof t->errcode, "START_FAILED");
    snprintf(t->errmsg, sizeof t->errmsg, "start_tls failed while moving the queued output");
    s->tpstate = t;
    s->tp = &tls_transport;
    s->flags |= SF_TP_EVENTS;
    if (!deferred && buffer_len(&s->out) > 0) {
        ac_buffer tmp = t->clear;
        t->clear = s->out;
        s->out = tmp;
    }
    if (!deferred)
        ac_chat_handover(L, 1, &t->clear, &t->prefix);
    if (sock_isclosed(s) || s->tpstate != t)
        return 0;   /* a producer closed the channel */
    if (s->flags & SF_CONNECTING)
        t->state = T_CONNECT;
    else
        start_handshake(t);
    if (t->state == T_FAILED || t->notify || buffer_len(&t->prefix) > 0)
        ac_ms_mark_pending(s);   /* the pass reports it, or goes on */
    ac_update_interest(L, 1, s);
    return 0;
}

/* ---- tls_info ---- */

static void push_name(lua_State *L, X509_NAME *name)
{
    BIO *m = BIO_new(BIO_s_mem());
    if (m == NULL) {
        lua_pushnil(L);
        return;
    }
    X509_NAME_print_ex(m, name, 0, XN_FLAG_RFC2253);
    char *p;
    long n = BIO_get_mem_data(m, &p);
    lua_pushlstring(L, p, (size_t)n);
    BIO_free(m);
}

static void push_time(lua_State *L, const ASN1_TIME *tm)
{
    struct tm out;
    char buf[32];
    if (ASN1_TIME_to_tm(tm, &out) && strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &out) > 0)
        lua_pushstring(L, buf);
    else
        lua_pushnil(L);
}

static void push_cert(lua_State *L, X509 *cert)
{
    lua_createtable(L, 0, 4);
    push_name(L, X509_get_subject_name(cert));
    lua_setfield(L, -2, "subject");
    push_name(L, X509_get_issuer_name(cert));
    lua_setfield(L, -2, "issuer");
    push_time(L, X509_get0_notAfter(cert));
    lua_setfield(L, -2, "not_after");
    lua_newtable(L);
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int k = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_DNS) {
            const unsigned char *p = ASN1_STRING_get0_data(g->d.dNSName);
            lua_pushlstring(L, (const char *)p, (size_t)ASN1_STRING_length(g->d.dNSName));
            lua_rawseti(L, -2, ++k);
        }
    }
    GENERAL_NAMES_free(names);
    lua_setfield(L, -2, "dns_names");
}

/* dispatcher:tls_info(): nil before the handshake completed */
static int ltls_info(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    ac_socket *s = ac_chansock(L, 1);
    if (s == NULL || sock_isclosed(s) || s->tp != &tls_transport)
        return 0;
    ac_tls *t = s->tpstate;
    if (t->state != T_OPEN)
        return 0;
    lua_createtable(L, 0, 6);
    lua_pushstring(L, SSL_get_version(t->ssl));
    lua_setfield(L, -2, "version");
    lua_pushstring(L, SSL_get_cipher_name(t->ssl));
    lua_setfield(L, -2, "cipher");
    const unsigned char *alpn;
    unsigned alen;
    SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
    if (alen > 0) {
        lua_pushlstring(L, (const char *)alpn, alen);
        lua_setfield(L, -2, "alpn");
    }
    const char *sn = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
    if (sn) {
        lua_pushstring(L, sn);
        lua_setfield(L, -2, "server_name");
    }
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509 *peer = SSL_get1_peer_certificate(t->ssl);
#else
    X509 *peer = SSL_get_peer_certificate(t->ssl);
#endif
    if (peer) {
        push_cert(L, peer);
        lua_setfield(L, -2, "peer_certificate");
        X509_free(peer);
    }
    lua_pushboolean(L, t->verify && peer != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK);
    lua_setfield(L, -2, "verified");
    lua_pushboolean(L, SSL_session_reused(t->ssl));
    lua_setfield(L, -2, "resumed");
    return 1;
}

/* core.tls_numeric_host(host): is it an IP address (no SNI, no name check)? */
static int ltls_numeric(lua_State *L)
{
    lua_pushboolean(L, numeric_host(luaL_checkstring(L, 1)));
    return 1;
}

static const luaL_Reg tls_funcs[] = {
    {"start_tls", ltls_start},
    {"tls_info", ltls_info},
    {NULL, NULL}
};

/* the module's state closes: give the BIO method back (else a leak each
** time the core is unloaded) */
static int nstates;   /* Lua states that opened the core: the last one frees it */

static int meth_gc(lua_State *L)
{
    (void)L;
    if (--nstates == 0 && bio_meth != NULL) {
        BIO_meth_free(bio_meth);
        bio_meth = NULL;
    }
    return 0;
}

/* adds core.tls_context, core.tls (the methods) and core.tls_numeric_host */
void ac_tls_open(lua_State *L, int st, int mt)
{
#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "OpenSSL 1.1.1 or later is needed"
#endif
    if (cfg_index < 0)
        cfg_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, cfg_free);
    if (bio_meth == NULL) {
        bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "asyncore socket");
        if (bio_meth == NULL || cfg_index < 0)
            luaL_error(L, "asyncore: OpenSSL could not be set up");
        BIO_meth_set_write(bio_meth, bio_write);
        BIO_meth_set_read(bio_meth, bio_read);
        BIO_meth_set_ctrl(bio_meth, bio_ctrl);
        BIO_meth_set_create(bio_meth, bio_create);
        BIO_meth_set_destroy(bio_meth, bio_destroy);
    }
    nstates++;
    lua_newuserdatauv(L, 1, 0);               /* frees bio_meth when collected */
    lua_newtable(L);
    lua_pushcfunction(L, meth_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, "asyncore.tls_bio_method");
    luaL_newmetatable(L, CTX_MT);
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ctx_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "asyncore.tls_context");
    lua_setfield(L, -2, "__name");
    lua_setfield(L, -2, "_tls_context_mt");
    lua_newtable(L);
    ac_setfuncs(L, tls_funcs, st, mt);
    lua_setfield(L, -2, "tls");
    lua_pushcfunction(L, ltls_context);
    lua_setfield(L, -2, "tls_context");
    lua_pushcfunction(L, ltls_numeric);
    lua_setfield(L, -2, "tls_numeric_host");
    lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
    lua_setfield(L, -2, "tls_library");
}
