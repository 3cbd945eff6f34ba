/*
** poller.c: the list of compiled backends, ordered by preference (the first
** is what "auto" means), and lookup by name.
*/
#include "config.h"
#include <string.h>
#include "poller.h"

const struct poller_ops *const poller_list[] = {
#ifdef AC_HAVE_EPOLL
    &poller_epoll_ops,
#endif
#ifdef AC_HAVE_KQUEUE
    &poller_kqueue_ops,
#endif
    &poller_poll_ops,
    &poller_select_ops,
    NULL
};

const struct poller_ops *poller_find(const char *name)
{
    if (strcmp(name, "auto") == 0)
        return poller_list[0];
    for (int i = 0; poller_list[i]; i++)
        if (strcmp(poller_list[i]->name, name) == 0)
            return poller_list[i];
    return NULL;
}
