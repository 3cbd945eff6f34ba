/*
** buffer.c: the byte window of buffer.h.
*/
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "buffer.h"

#define BUFFER_MIN 256
#define BUFFER_KEEP 65536   /* an empty buffer larger than this gives memory back */

void buffer_init(ac_buffer *b)
{
    b->data = NULL;
    b->first = b->last = b->cap = 0;
}

void buffer_free(ac_buffer *b)
{
    free(b->data);
    buffer_init(b);
}

int buffer_reserve(ac_buffer *b, size_t n)
{
    size_t len = b->last - b->first;
    if (b->cap - b->last >= n)
        return 0;
    if (b->first > 0) {            /* slide the live bytes to the front first */
        memmove(b->data, b->data + b->first, len);
        b->first = 0;
        b->last = len;
        if (b->cap - len >= n)
            return 0;
    }
    if (n > SIZE_MAX / 4 - len)
        return ENOMEM;
    size_t ncap = b->cap < BUFFER_MIN ? BUFFER_MIN : b->cap;
    while (ncap - len < n)
        ncap *= 2;
    char *p = realloc(b->data, ncap);
    if (p == NULL)
        return ENOMEM;
    b->data = p;
    b->cap = ncap;
    return 0;
}

int buffer_append(ac_buffer *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int err = buffer_reserve(b, n);
    if (err)
        return err;
    memcpy(b->data + b->last, p, n);
    b->last += n;
    return 0;
}

void buffer_consume(ac_buffer *b, size_t n)
{
    if (n >= b->last - b->first) {
        b->first = b->last = 0;
        buffer_shrink(b);
    } else {
        b->first += n;
    }
}

void buffer_clear(ac_buffer *b)
{
    b->first = b->last = 0;
    buffer_shrink(b);
}

void buffer_shrink(ac_buffer *b)
{
    if (b->first == b->last && b->cap > BUFFER_KEEP)
        buffer_free(b);
}

void buffer_idle(ac_buffer *b)
{
    if (b->data != NULL && b->first == b->last)
        buffer_free(b);
}

size_t buffer_find(const ac_buffer *b, size_t from, const char *needle, size_t nlen)
{
    size_t len = b->last - b->first;
    const char *base = b->data + b->first;
    if (nlen == 0 || from > len || len - from < nlen)
        return (size_t)-1;
    const char *p = base + from;
    const char *end = base + len - nlen + 1;   /* last possible start + 1 */
    while (p < end) {
        const char *q = memchr(p, needle[0], (size_t)(end - p));
        if (q == NULL)
            return (size_t)-1;
        if (memcmp(q + 1, needle + 1, nlen - 1) == 0)
            return (size_t)(q - base);
        p = q + 1;
    }
    return (size_t)-1;
}
