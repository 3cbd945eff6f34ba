/*
** clock.c: monotonic time in seconds (a double keeps nanoseconds for ~100 days
** of uptime, far more than a timer needs).
*/
#include "config.h"
#include <time.h>
#include "clock.h"

ac_monotime clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
