/*
** buffer.h: a growable byte window, used for every buffer the core keeps
** (dispatcher_with_send's output, asynchat's input and output).
**
** Bytes live in data[first .. last). Consuming moves `first`; when the window
** empties both indices return to 0, and appending compacts before it grows, so
** a buffer that is drained as fast as it fills never moves memory. No Lua here:
** functions return 0 or ENOMEM.
*/
#ifndef AC_BUFFER_H
#define AC_BUFFER_H
#include <stddef.h>
#pragma GCC visibility push(hidden)

typedef struct ac_buffer {
    char *data;
    size_t first, last, cap;
} ac_buffer;

#define buffer_len(b)   ((b)->last - (b)->first)
#define buffer_begin(b) ((b)->data + (b)->first)

void buffer_init(ac_buffer *b);
void buffer_free(ac_buffer *b);
/* make room for n more bytes after `last`; returns 0 or ENOMEM */
int buffer_reserve(ac_buffer *b, size_t n);
int buffer_append(ac_buffer *b, const void *p, size_t n);
void buffer_consume(ac_buffer *b, size_t n);
void buffer_clear(ac_buffer *b);
/* first offset (from `first`) >= from where needle starts, or (size_t)-1 */
size_t buffer_find(const ac_buffer *b, size_t from, const char *needle, size_t nlen);
/* release memory of a large buffer once it is empty */
void buffer_shrink(ac_buffer *b);
/* its owner goes idle (maybe for long): an empty buffer gives its memory back,
** whatever its size */
void buffer_idle(ac_buffer *b);

#pragma GCC visibility pop
#endif
