/* esctl._fastrows: a payload's TimeStamp (codec.TIMESTAMP_RE, then datetime.fromisoformat). */
#include "fastrows.h"

/* ---- TimeStamp: codec.TIMESTAMP_RE, then datetime.fromisoformat, in microseconds since
 * 2000-01-01 UTC (PostgreSQL's binary timestamptz). ---- */

static int digits(const unsigned char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

#define PG_EPOCH_DAYS 10957 /* 2000-01-01 from 1970-01-01 */


int parse_stamp(const unsigned char *t, Py_ssize_t n, Stamp *st) {
    int oh = 0, om = 0, sign = 0;
    Py_ssize_t i;
    st->frac = 0;
    /* YYYY-MM-DDTHH:MM:SS */
    if (n < 20 || t[4] != '-' || t[7] != '-' || t[10] != 'T' || t[13] != ':' || t[16] != ':')
        return 0;
    if (!digits(t, 4, &st->y) || !digits(t + 5, 2, &st->mo) || !digits(t + 8, 2, &st->d)
        || !digits(t + 11, 2, &st->h) || !digits(t + 14, 2, &st->mi)
        || !digits(t + 17, 2, &st->sec))
        return 0;
    i = 19;
    if (t[i] == '.') {
        int nd = 0;
        i++;
        while (i < n && t[i] >= '0' && t[i] <= '9') {
            if (nd < 6) st->frac = st->frac * 10 + (t[i] - '0');
            nd++;
            i++;
        }
        if (nd < 1 || nd > 7) return 0;
        for (int k = nd; k < 6; k++) st->frac *= 10; /* a 7th digit is truncated */
    }
    if (i >= n) return 0;
    if (t[i] == 'Z') {
        if (i + 1 != n) return 0;
    } else if (t[i] == '+' || t[i] == '-') {
        sign = t[i] == '-' ? -1 : 1;
        if (i + 6 != n || t[i + 3] != ':' || !digits(t + i + 1, 2, &oh)
            || !digits(t + i + 4, 2, &om))
            return 0;
        if (oh > 23 || om > 59) return 0;
    } else {
        return 0;
    }
    if (st->y < 1 || st->mo < 1 || st->mo > 12 || st->d < 1
        || st->d > days_in_month(st->y, st->mo) || st->h > 23 || st->mi > 59 || st->sec > 59)
        return 0;
    st->offset = sign * (oh * 60 + om);
    return 1;
}

int64_t stamp_micros(const Stamp *st) {
    int64_t days = days_from_civil(st->y, st->mo, st->d) - PG_EPOCH_DAYS;
    int64_t secs = days * 86400 + st->h * 3600 + st->mi * 60 + st->sec - st->offset * 60;
    return secs * 1000000 + st->frac;
}
