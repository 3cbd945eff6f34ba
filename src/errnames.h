/*
** errnames.h: errno value -> symbolic name ("ECONNREFUSED"), for error objects.
*/
#ifndef AC_ERRNAMES_H
#define AC_ERRNAMES_H
#pragma GCC visibility push(hidden)
/* the name of err, or NULL when the table does not know it */
const char *errnames_get(int err);
#pragma GCC visibility pop
#endif
