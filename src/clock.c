/*
** clock.c: monotonic time in seconds (a double keeps nanoseconds for ~100 days
** of uptime, far more than a timer needs).
*/
#include "config.h"
#include <math.h>
#include <time.h>
#include "clock.h"

ac_monotime clock_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t ac_us_until(ac_monotime t, ac_monotime now)
{
    double us = (t - now) * 1e6;
    if (!(us > 0))
        return 0;
    if (us > 86400e6)
        return (int64_t)86400e6;
    return (int64_t)ceil(us);
}
