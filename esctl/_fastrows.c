/* esctl._fastrows: the hot path of `migrate redis-to-pg` in C.
 *
 * clean_rows(aggregate_id, values, first_version, known_type, gunzip, event_type_of)
 *
 * gives what esctl.migrate.rows.clean_rows(esctl.streams.clean_payloads(...)) gives for a stream
 * with nothing wrong at all: (aggregate type, [binary COPY row, ...]). It never judges a payload
 * wrong: it returns None for anything it is not sure of (a value that is no plain JSON object
 * in the common form, an envelope field written with an escape, a number with a large exponent,
 * a \u escape of a surrogate or of NUL, events not stored in version order, ...), and the caller
 * then runs the Python path, which decides. So what it accepts is a subset of what the Python
 * path accepts, with the same rows; tests/test_fastrows.py holds the two together.
 *
 * Per payload it makes one pass over the bytes: the UTF-8 checked as orjson checks it, the JSON
 * grammar as RFC 8259 (orjson's), the top-level members $type, Version, AggregateType, TimeStamp
 * and Id found and checked, and the row built in one allocation. No Python object per member.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 512 /* orjson refuses deeper than 1024; deeper than this: not sure */

/* What the scan found of one top-level member's value. */
typedef struct {
    const unsigned char *start; /* a string: its bytes between the quotes; a number: its text */
    Py_ssize_t len;
    int kind;  /* 0 absent, 1 plain string (no escape), 2 other string, 3 integer, 4 other */
    int count; /* times the member appeared */
} Member;

enum { M_TYPE, M_VERSION, M_AGGTYPE, M_TIMESTAMP, M_ID, M_COUNT };

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    Member members[M_COUNT];
} Scan;

/* 0: not sure (or not valid); 1: ok. */

static inline void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One UTF-8 sequence starting at a byte >= 0x80: its length, or 0 when it is not well formed
 * (overlong, a surrogate, beyond U+10FFFF, cut). */
static Py_ssize_t utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p >= 2 && (p[1] & 0xC0) == 0x80) return 2;
        return 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* a surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
            || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* beyond U+10FFFF */
        return 4;
    }
    return 0;
}

/* Whether the 8 bytes at p are all plain ASCII inside a string: none of '"', '\\', a control
 * character or a byte >= 0x80 (exact tests of "some byte is ...", a word at a time). */
static inline int plain8(const unsigned char *p) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t x, quote, backslash;
    memcpy(&x, p, 8);
    quote = x ^ (ones * '"');
    backslash = x ^ (ones * '\\');
    return ((((quote - ones) & ~quote) | ((backslash - ones) & ~backslash)
             | ((x - ones * 0x20) & ~x) | x)
            & highs)
           == 0;
}

/* The closing quote of a valid string whose bytes start at p (after its opening quote). */
static inline const unsigned char *string_end(const unsigned char *p, const unsigned char *end) {
    for (;;) {
        const unsigned char *q = memchr(p, '"', (size_t)(end - p)), *b = q;
        while (b > p && b[-1] == '\\') b--;
        if (((q - b) & 1) == 0) return q; /* an even run of backslashes before it: not escaped */
        p = q + 1;
    }
}

/* A string, s->p on its opening quote. Sets *escaped when it holds an escape. */
static int scan_string(Scan *s, const unsigned char **start, Py_ssize_t *len, int *escaped) {
    const unsigned char *p = s->p + 1, *end = s->end;
    *start = p;
    *escaped = 0;
    while (p < end) {
        unsigned char c;
        while (end - p >= 8 && plain8(p)) p += 8;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
        if (p >= end) break;
        c = *p;
        if (c == '"') {
            *len = p - *start;
            s->p = p + 1;
            return 1;
        }
        if (c == '\\') {
            *escaped = 1;
            if (p + 1 >= end) return 0;
            c = p[1];
            if (c == 'u') {
                int a, b, d, e;
                if (end - p < 6) return 0;
                a = hexval(p[2]), b = hexval(p[3]), d = hexval(p[4]), e = hexval(p[5]);
                if (a < 0 || b < 0 || d < 0 || e < 0) return 0;
                {
                    int code = (a << 12) | (b << 8) | (d << 4) | e;
                    /* NUL: PostgreSQL's jsonb refuses it; surrogates: left to the Python path */
                    if (code == 0 || (code >= 0xD800 && code <= 0xDFFF)) return 0;
                }
                p += 6;
                continue;
            }
            if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r'
                || c == 't') {
                p += 2;
                continue;
            }
            return 0;
        }
        if (c < 0x20) return 0;
        if (c < 0x80) {
            p++;
            continue;
        }
        {
            Py_ssize_t n = utf8_seq(p, end);
            if (n == 0) return 0;
            p += n;
        }
    }
    return 0;
}

/* A number, s->p on its first byte. *integer: digits only (no sign, fraction or exponent). */
static int scan_number(Scan *s, int *integer) {
    const unsigned char *p = s->p, *end = s->end, *digits;
    *integer = 1;
    if (p < end && *p == '-') {
        *integer = 0;
        p++;
    }
    digits = p;
    if (p >= end) return 0;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return 0;
    }
    /* orjson turns an integer beyond 64 bits into a float, and refuses one beyond a double */
    if (p - digits > 300) return 0;
    if (p < end && *p == '.') {
        const unsigned char *f;
        *integer = 0;
        p++;
        f = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == f) return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        const unsigned char *x;
        *integer = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        x = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == x) return 0;
        /* a large exponent could overflow a double, which orjson refuses: not sure */
        if (p - x > 2 || (p - digits) > 200) return 0;
    }
    s->p = p;
    return 1;
}

static int scan_value(Scan *s, int depth, Member *m);

/* The bytes a checked string (its escapes valid, none of NUL or a surrogate) stands for, into
 * ``out``: their length, or -1 when they would not fit in ``cap``. */
static Py_ssize_t unescape(const unsigned char *p, Py_ssize_t n, unsigned char *out,
                           Py_ssize_t cap) {
    const unsigned char *end = p + n;
    Py_ssize_t w = 0;
    while (p < end) {
        unsigned char c = *p;
        if (c != '\\') {
            if (w >= cap) return -1;
            out[w++] = c;
            p++;
            continue;
        }
        c = p[1];
        if (c == 'u') {
            int code = (hexval(p[2]) << 12) | (hexval(p[3]) << 8) | (hexval(p[4]) << 4)
                       | hexval(p[5]);
            p += 6;
            if (code < 0x80) {
                if (w + 1 > cap) return -1;
                out[w++] = (unsigned char)code;
            } else if (code < 0x800) {
                if (w + 2 > cap) return -1;
                out[w++] = (unsigned char)(0xC0 | (code >> 6));
                out[w++] = (unsigned char)(0x80 | (code & 0x3F));
            } else {
                if (w + 3 > cap) return -1;
                out[w++] = (unsigned char)(0xE0 | (code >> 12));
                out[w++] = (unsigned char)(0x80 | ((code >> 6) & 0x3F));
                out[w++] = (unsigned char)(0x80 | (code & 0x3F));
            }
            continue;
        }
        if (w >= cap) return -1;
        switch (c) {
            case 'b': out[w++] = '\b'; break;
            case 'f': out[w++] = '\f'; break;
            case 'n': out[w++] = '\n'; break;
            case 'r': out[w++] = '\r'; break;
            case 't': out[w++] = '\t'; break;
            default: out[w++] = c; break; /* " \\ / */
        }
        p += 2;
    }
    return w;
}

static int scan_literal(Scan *s, const char *word, Py_ssize_t n) {
    if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0) return 0;
    s->p += n;
    return 1;
}

static int member_index(const unsigned char *key, Py_ssize_t len) {
    switch (len) {
        case 2:
            return memcmp(key, "Id", 2) == 0 ? M_ID : -1;
        case 5:
            return memcmp(key, "$type", 5) == 0 ? M_TYPE : -1;
        case 7:
            return memcmp(key, "Version", 7) == 0 ? M_VERSION : -1;
        case 9:
            return memcmp(key, "TimeStamp", 9) == 0 ? M_TIMESTAMP : -1;
        case 13:
            return memcmp(key, "AggregateType", 13) == 0 ? M_AGGTYPE : -1;
        default:
            return -1;
    }
}

static int scan_object(Scan *s, int depth) {
    s->p++; /* '{' */
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 1;
    }
    for (;;) {
        const unsigned char *key;
        Py_ssize_t klen;
        int escaped, which = -1;
        Member *m = NULL;
        if (s->p >= s->end || *s->p != '"') return 0;
        if (!scan_string(s, &key, &klen, &escaped)) return 0;
        if (depth == 1) {
            if (escaped) {
                /* a key written with an escape that names a member: not sure */
                unsigned char plain[16];
                Py_ssize_t n = unescape(key, klen, plain, (Py_ssize_t)sizeof plain);
                if (n >= 0 && member_index(plain, n) >= 0) return 0;
            } else {
                which = member_index(key, klen);
            }
            if (which >= 0) {
                m = &s->members[which];
                if (++m->count > 1) return 0; /* a repeated member: the last wins, not sure */
            }
        }
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') return 0;
        s->p++;
        skip_ws(s);
        if (!scan_value(s, depth, m)) return 0;
        skip_ws(s);
        if (s->p >= s->end) return 0;
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (*s->p == '}') {
            s->p++;
            return 1;
        }
        return 0;
    }
}

static int scan_array(Scan *s, int depth) {
    s->p++; /* '[' */
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 1;
    }
    for (;;) {
        if (!scan_value(s, depth, NULL)) return 0;
        skip_ws(s);
        if (s->p >= s->end) return 0;
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (*s->p == ']') {
            s->p++;
            return 1;
        }
        return 0;
    }
}

/* A value at nesting ``depth`` (the container holding it); ``m``: record it there. */
static int scan_value(Scan *s, int depth, Member *m) {
    const unsigned char *start = s->p;
    if (s->p >= s->end) return 0;
    switch (*s->p) {
        case '{':
            if (depth >= MAX_DEPTH || !scan_object(s, depth + 1)) return 0;
            break;
        case '[':
            if (depth >= MAX_DEPTH || !scan_array(s, depth + 1)) return 0;
            break;
        case '"': {
            const unsigned char *str;
            Py_ssize_t len;
            int escaped;
            if (!scan_string(s, &str, &len, &escaped)) return 0;
            if (m) {
                m->start = str;
                m->len = len;
                m->kind = escaped ? 2 : 1;
            }
            return 1;
        }
        case 't':
            if (!scan_literal(s, "true", 4)) return 0;
            break;
        case 'f':
            if (!scan_literal(s, "false", 5)) return 0;
            break;
        case 'n':
            if (!scan_literal(s, "null", 4)) return 0;
            break;
        default: {
            int integer;
            if (!scan_number(s, &integer)) return 0;
            if (m) {
                m->start = start;
                m->len = s->p - start;
                m->kind = integer ? 3 : 4;
            }
            return 1;
        }
    }
    if (m) {
        m->start = start;
        m->len = s->p - start;
        m->kind = 4;
    }
    return 1;
}

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

/* A TimeStamp's fields, as datetime.fromisoformat reads them. */
typedef struct {
    int y, mo, d, h, mi, sec, frac; /* frac: microseconds, a 7th digit truncated */
    int offset;                     /* minutes east of UTC */
} Stamp;

static int parse_stamp(const unsigned char *t, Py_ssize_t n, Stamp *st) {
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

static int64_t stamp_micros(const Stamp *st) {
    int64_t days = days_from_civil(st->y, st->mo, st->d) - PG_EPOCH_DAYS;
    int64_t secs = days * 86400 + st->h * 3600 + st->mi * 60 + st->sec - st->offset * 60;
    return secs * 1000000 + st->frac;
}

static int timestamp_micros(const unsigned char *t, Py_ssize_t n, int64_t *out) {
    Stamp st;
    if (!parse_stamp(t, n, &st)) return 0;
    *out = stamp_micros(&st);
    return 1;
}

/* ---- rows ---- */

static inline void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void put64(unsigned char *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static const char GZIP_PREFIX[] = "H4sI";
static const unsigned char ZSTD_MAGIC[] = {0x28, 0xB5, 0x2F, 0xFD};

/* The decoded payload of one stored value (a new reference), Py_None when not sure, NULL with an
 * exception set only for one that is not an Exception (KeyboardInterrupt, ...). */
static PyObject *payload_of(PyObject *value, PyObject *gunzip) {
    const char *raw;
    Py_ssize_t n;
    if (!PyBytes_CheckExact(value)) Py_RETURN_NONE;
    raw = PyBytes_AS_STRING(value);
    n = PyBytes_GET_SIZE(value);
    if (n >= 4 && memcmp(raw, GZIP_PREFIX, 4) == 0) {
        PyObject *out = PyObject_CallOneArg(gunzip, value);
        if (out == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
            PyErr_Clear(); /* the Python path names the problem */
            Py_RETURN_NONE;
        }
        if (!PyBytes_CheckExact(out)) {
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        return out;
    }
    if (n >= 4 && memcmp(raw, ZSTD_MAGIC, 4) == 0) Py_RETURN_NONE;
    Py_INCREF(value);
    return value;
}

/* What one payload says, once checked: its event type's bytes (borrowed from the cache), the
 * time in PostgreSQL's microseconds, its Version. */
typedef struct {
    PyObject *event_type;
    int64_t micros;
    long version;
    Stamp stamp;
    Member type_name, timestamp; /* where the $type and the TimeStamp text are */
} Checked;

/* Check one payload as clean_payloads does: 1 ok (``*out`` filled), 0 not sure, -1 an error.
 * ``*agg`` and ``*agg_len``: the aggregate type the stream has so far (set from the first event
 * when NULL). */
static int check_event(PyObject *payload, const char *id, Py_ssize_t id_len, long expected,
                       const unsigned char **agg, Py_ssize_t *agg_len, PyObject *event_type_of,
                       PyObject *type_cache, Checked *out) {
    Scan s;
    Member *mt, *mv, *ma, *ms, *mid;
    long version = 0;
    PyObject *type_name, *event_type;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);

    memset(&s, 0, sizeof s);
    s.p = data;
    s.end = data + n;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{' || !scan_value(&s, 0, NULL)) return 0;
    skip_ws(&s);
    if (s.p != s.end) return 0;

    mt = &s.members[M_TYPE], mv = &s.members[M_VERSION], ma = &s.members[M_AGGTYPE];
    ms = &s.members[M_TIMESTAMP], mid = &s.members[M_ID];
    if (mt->kind != 1 || ma->kind != 1 || ms->kind != 1 || mv->kind != 3) return 0;
    if (mid->kind == 2) {
        /* an id written with escapes (a tab, a quote, a backslash): compare what it stands for */
        unsigned char plain[256];
        Py_ssize_t k = unescape(mid->start, mid->len, plain, (Py_ssize_t)sizeof plain);
        if (k != id_len || memcmp(plain, id, (size_t)k) != 0) return 0;
    } else if (mid->kind != 1 || mid->len != id_len
               || memcmp(mid->start, id, (size_t)id_len) != 0) {
        return 0;
    }
    if (mv->len > 10) return 0;
    for (Py_ssize_t i = 0; i < mv->len; i++) version = version * 10 + (mv->start[i] - '0');
    if (version != expected || version > 2147483647L) return 0;
    if (*agg == NULL) {
        *agg = ma->start;
        *agg_len = ma->len;
    } else if (ma->len != *agg_len || memcmp(ma->start, *agg, (size_t)ma->len) != 0) {
        return 0;
    }
    if (!parse_stamp(ms->start, ms->len, &out->stamp)) return 0;
    out->micros = stamp_micros(&out->stamp);
    out->version = version;
    out->type_name = *mt;
    out->timestamp = *ms;
    out->event_type = NULL;
    if (event_type_of == NULL) return 1; /* the event type is not asked for */

    /* the event type's bytes, cached per $type */
    type_name = PyBytes_FromStringAndSize((const char *)mt->start, mt->len);
    if (type_name == NULL) return -1;
    event_type = PyDict_GetItemWithError(type_cache, type_name);
    if (event_type == NULL) {
        PyObject *text;
        if (PyErr_Occurred()) {
            Py_DECREF(type_name);
            return -1;
        }
        text = PyUnicode_DecodeUTF8((const char *)mt->start, mt->len, "strict");
        if (text == NULL) {
            Py_DECREF(type_name);
            return -1;
        }
        event_type = PyObject_CallOneArg(event_type_of, text);
        Py_DECREF(text);
        if (event_type == NULL || !PyBytes_CheckExact(event_type)
            || PyDict_SetItem(type_cache, type_name, event_type) < 0) {
            Py_XDECREF(event_type);
            Py_DECREF(type_name);
            return PyErr_Occurred() ? -1 : 0;
        }
        Py_DECREF(event_type); /* the cache holds it */
    }
    Py_DECREF(type_name);
    out->event_type = event_type;
    return 1;
}

/* One event's binary COPY row: >iqiii{n}sib + payload (8, micros, 4, version, n, event type,
 * len(payload)+1, 1 for jsonb's version). */
static PyObject *binary_row(PyObject *payload, const Checked *ev) {
    Py_ssize_t n = PyBytes_GET_SIZE(payload), et_len = PyBytes_GET_SIZE(ev->event_type);
    PyObject *row = PyBytes_FromStringAndSize(NULL, 4 + 8 + 4 + 4 + 4 + et_len + 4 + 1 + n);
    unsigned char *w;
    if (row == NULL) return NULL;
    w = (unsigned char *)PyBytes_AS_STRING(row);
    put32(w, 8);
    put64(w + 4, (uint64_t)ev->micros);
    put32(w + 12, 4);
    put32(w + 16, (uint32_t)ev->version);
    put32(w + 20, (uint32_t)et_len);
    memcpy(w + 24, PyBytes_AS_STRING(ev->event_type), (size_t)et_len);
    w += 24 + et_len;
    put32(w, (uint32_t)(n + 1));
    w[4] = 1;
    memcpy(w + 5, PyBytes_AS_STRING(payload), (size_t)n);
    return row;
}

/* One event's row, or Py_None when not sure; NULL on an error. */
static PyObject *event_row(PyObject *payload, const char *id, Py_ssize_t id_len, long expected,
                           const unsigned char **agg, Py_ssize_t *agg_len, PyObject *event_type_of,
                           PyObject *type_cache) {
    Checked ev;
    int ok = check_event(payload, id, id_len, expected, agg, agg_len, event_type_of, type_cache,
                         &ev);
    if (ok < 0) return NULL;
    if (ok == 0) Py_RETURN_NONE;
    return binary_row(payload, &ev);
}

/* ---- verify: a payload against PostgreSQL's jsonb text ----
 *
 * PostgreSQL prints a jsonb value in one form: object keys sorted (shorter first, then by
 * bytes), a repeated key kept once (its last value), ", " and ": " between members, strings
 * with only '"', '\\', \b \f \n \r \t and other control characters (as \u00xx) escaped, numbers
 * as numeric prints them. Writing a payload in that form and comparing the bytes decides
 * "identical" exactly. This writes it into a comparison with PostgreSQL's text as it goes (no
 * buffer) and gives up (not sure) on what it does not write the way PostgreSQL does: a key with
 * an escape, a repeated key, a number with an exponent. */

typedef struct {
    const unsigned char *p; /* PostgreSQL's text still to match */
    const unsigned char *end;
} Match;

static inline int emit(Match *m, const void *bytes, Py_ssize_t n) {
    if (m->end - m->p < n || memcmp(m->p, bytes, (size_t)n) != 0) return 0;
    m->p += n;
    return 1;
}

/* The end of a valid value starting at p (after scan_value accepted the whole payload). */
static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end) {
    int depth = 0;
    do {
        unsigned char c = *p;
        if (c == '"') {
            p = string_end(p + 1, end) + 1;
        } else if (c == '{' || c == '[') {
            depth++;
            p++;
        } else if (c == '}' || c == ']') {
            depth--;
            p++;
        } else if (c == ',' || c == ':' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            p++;
        } else {
            while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n'
                   && *p != '\r' && *p != '\t')
                p++;
        }
    } while (depth > 0 && p < end);
    return p;
}

static int canon_string(Match *m, const unsigned char *p, Py_ssize_t n) {
    const unsigned char *end = p + n, *run = p;
    static const char hex[] = "0123456789abcdef";
    while (p < end) {
        int code;
        unsigned char utf8[4];
        p = memchr(p, '\\', (size_t)(end - p));
        if (p == NULL) break;
        if (!emit(m, run, p - run)) return 0;
        switch (p[1]) {
            case 'u':
                code = (hexval(p[2]) << 12) | (hexval(p[3]) << 8) | (hexval(p[4]) << 4)
                       | hexval(p[5]);
                p += 6;
                break;
            case 'b': code = '\b'; p += 2; break;
            case 'f': code = '\f'; p += 2; break;
            case 'n': code = '\n'; p += 2; break;
            case 'r': code = '\r'; p += 2; break;
            case 't': code = '\t'; p += 2; break;
            default: code = p[1]; p += 2; break; /* " \\ / */
        }
        run = p;
        switch (code) {
            case '"': if (!emit(m, "\\\"", 2)) return 0; continue;
            case '\\': if (!emit(m, "\\\\", 2)) return 0; continue;
            case '\b': if (!emit(m, "\\b", 2)) return 0; continue;
            case '\f': if (!emit(m, "\\f", 2)) return 0; continue;
            case '\n': if (!emit(m, "\\n", 2)) return 0; continue;
            case '\r': if (!emit(m, "\\r", 2)) return 0; continue;
            case '\t': if (!emit(m, "\\t", 2)) return 0; continue;
            default: break;
        }
        if (code < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[code >> 4], hex[code & 15]};
            if (!emit(m, esc, 6)) return 0;
        } else if (code < 0x80) {
            utf8[0] = (unsigned char)code;
            if (!emit(m, utf8, 1)) return 0;
        } else if (code < 0x800) {
            utf8[0] = (unsigned char)(0xC0 | (code >> 6));
            utf8[1] = (unsigned char)(0x80 | (code & 0x3F));
            if (!emit(m, utf8, 2)) return 0;
        } else {
            utf8[0] = (unsigned char)(0xE0 | (code >> 12));
            utf8[1] = (unsigned char)(0x80 | ((code >> 6) & 0x3F));
            utf8[2] = (unsigned char)(0x80 | (code & 0x3F));
            if (!emit(m, utf8, 3)) return 0;
        }
    }
    return emit(m, run, end - run);
}

typedef struct {
    const unsigned char *key; /* between the quotes, no escape */
    Py_ssize_t len;
    const unsigned char *value;
} Pair;

static int pair_order(const void *a, const void *b) {
    const Pair *x = a, *y = b;
    int c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    c = memcmp(x->key, y->key, (size_t)x->len);
    if (c != 0) return c;
    return x->value < y->value ? -1 : (x->value > y->value); /* stable: input order */
}

static const unsigned char *canon_value(Match *m, const unsigned char *p,
                                        const unsigned char *end, int depth);

static inline const unsigned char *ws(const unsigned char *p, const unsigned char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static const unsigned char *canon_object(Match *m, const unsigned char *p,
                                         const unsigned char *end, int depth) {
    Pair local[32], *pairs = local;
    Py_ssize_t count = 0, cap = 32;
    const unsigned char *after = NULL;
    p = ws(p + 1, end);
    while (*p == '"') {
        const unsigned char *k = p + 1, *q = string_end(k, end);
        if (memchr(k, '\\', (size_t)(q - k)) != NULL) goto unsure; /* a key with an escape */
        if (count == cap) {
            Pair *grown;
            cap *= 2;
            grown = pairs == local ? PyMem_Malloc(sizeof(Pair) * (size_t)cap)
                                   : PyMem_Realloc(pairs, sizeof(Pair) * (size_t)cap);
            if (grown == NULL) goto unsure;
            if (pairs == local) memcpy(grown, local, sizeof local);
            pairs = grown;
        }
        pairs[count].key = k;
        pairs[count].len = q - k;
        p = ws(ws(q + 1, end) + 1, end); /* past ':' */
        pairs[count].value = p;
        count++;
        p = ws(skip_value(p, end), end);
        if (*p == ',') p = ws(p + 1, end);
    }
    after = p + 1; /* past '}' */
    if (count > 1) qsort(pairs, (size_t)count, sizeof(Pair), pair_order);
    if (!emit(m, "{", 1)) goto unsure;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0) {
            if (pairs[i].len == pairs[i - 1].len
                && memcmp(pairs[i].key, pairs[i - 1].key, (size_t)pairs[i].len) == 0)
                goto unsure; /* a repeated key */
            if (!emit(m, ", ", 2)) goto unsure;
        }
        if (!emit(m, "\"", 1) || !emit(m, pairs[i].key, pairs[i].len) || !emit(m, "\": ", 3)
            || canon_value(m, pairs[i].value, end, depth + 1) == NULL)
            goto unsure;
    }
    if (!emit(m, "}", 1)) goto unsure;
    if (pairs != local) PyMem_Free(pairs);
    return after;
unsure:
    if (pairs != local) PyMem_Free(pairs);
    return NULL;
}

static const unsigned char *canon_value(Match *m, const unsigned char *p,
                                        const unsigned char *end, int depth) {
    const unsigned char *q;
    if (depth > MAX_DEPTH) return NULL;
    switch (*p) {
        case '{':
            return canon_object(m, p, end, depth);
        case '[': {
            int first = 1;
            if (!emit(m, "[", 1)) return NULL;
            p = ws(p + 1, end);
            while (*p != ']') {
                if (!first && !emit(m, ", ", 2)) return NULL;
                first = 0;
                p = canon_value(m, p, end, depth + 1);
                if (p == NULL) return NULL;
                p = ws(p, end);
                if (*p == ',') p = ws(p + 1, end);
            }
            return emit(m, "]", 1) ? p + 1 : NULL;
        }
        case '"':
            q = string_end(p + 1, end);
            if (!emit(m, "\"", 1) || !canon_string(m, p + 1, q - p - 1) || !emit(m, "\"", 1))
                return NULL;
            return q + 1;
        case 't':
            return emit(m, "true", 4) ? p + 4 : NULL;
        case 'f':
            return emit(m, "false", 5) ? p + 5 : NULL;
        case 'n':
            return emit(m, "null", 4) ? p + 4 : NULL;
        default: {
            /* numeric prints a plain decimal as written, but a zero without its sign */
            int zero = 1;
            const unsigned char *start = p;
            q = p;
            if (*q == '-') q++;
            for (; q < end && ((*q >= '0' && *q <= '9') || *q == '.'); q++)
                if (*q >= '1' && *q <= '9') zero = 0;
            if (q < end && (*q == 'e' || *q == 'E')) return NULL; /* an exponent: not sure */
            if (*start == '-' && zero) start++;
            return emit(m, start, q - start) ? q : NULL;
        }
    }
}

/* Whether ``payload`` (checked valid by scan_value) is what PostgreSQL's jsonb ``text`` says. */
static int same_as_jsonb(PyObject *payload, const unsigned char *text, Py_ssize_t n) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(payload);
    const unsigned char *end = p + PyBytes_GET_SIZE(payload);
    Match m = {text, text + n};
    p = canon_value(&m, ws(p, end), end, 0);
    return p != NULL && m.p == m.end;
}

/* A PostgreSQL timestamptz as verify reads it (esctl.pgevents.binary_column_loaders): an int,
 * microseconds since 2000-01-01 UTC. 1 and *out set; 0 when it is no such int. */
static int pg_micros(PyObject *value, int64_t *out) {
    int overflow;
    long long micros;
    if (!PyLong_CheckExact(value)) return 0;
    micros = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (micros == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = micros;
    return 1;
}

static int utf8_equals(PyObject *text, const char *bytes, Py_ssize_t n) {
    Py_ssize_t len;
    const char *u;
    if (!PyUnicode_Check(text)) return 0;
    u = PyUnicode_AsUTF8AndSize(text, &len);
    if (u == NULL) {
        PyErr_Clear();
        return 0;
    }
    return len == n && memcmp(u, bytes, (size_t)n) == 0;
}

/* identical(aggregate_id, values, aggregate_type, versions, time_stamps, event_types,
 *           event_data, gunzip, event_type_of, type_cache) -> bool */
static PyObject *fast_identical(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *seq = NULL, *gunzip, *event_type_of, *type_cache, *result = NULL;
    PyObject *columns[5] = {NULL, NULL, NULL, NULL, NULL}; /* values, 4 PostgreSQL columns */
    PyObject **payloads = NULL;
    const char *id;
    Py_ssize_t id_len, count, done = 0, agg_len = 0;
    const unsigned char *agg = NULL;

    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "identical takes 10 arguments");
        return NULL;
    }
    gunzip = args[7], event_type_of = args[8], type_cache = args[9];
    if (!PyDict_CheckExact(type_cache)) {
        PyErr_SetString(PyExc_TypeError, "identical: the type cache must be a dict");
        return NULL;
    }
    id = PyUnicode_AsUTF8AndSize(args[0], &id_len);
    if (id == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    {
        const int at[5] = {1, 3, 4, 5, 6};
        for (int c = 0; c < 5; c++) {
            columns[c] = PySequence_Fast(args[at[c]], "identical: columns must be sequences");
            if (columns[c] == NULL) goto error;
        }
    }
    seq = columns[0];
    count = PySequence_Fast_GET_SIZE(seq);
    result = Py_False;
    for (int c = 1; c < 5; c++)
        if (PySequence_Fast_GET_SIZE(columns[c]) != count) goto done;
    if (count == 0) goto done;
    payloads = PyMem_Calloc((size_t)count, sizeof(PyObject *));
    if (payloads == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Checked ev;
        PyObject *payload = payload_of(PySequence_Fast_GET_ITEM(seq, i), gunzip), *data;
        PyObject *version = PySequence_Fast_GET_ITEM(columns[1], i);
        int64_t micros;
        int ok;
        if (payload == NULL) goto error;
        payloads[done++] = payload;
        if (payload == Py_None) goto done;
        ok = check_event(payload, id, id_len, (long)(i + 1), &agg, &agg_len, event_type_of,
                         type_cache, &ev);
        if (ok < 0) goto error;
        if (ok == 0 || !PyLong_CheckExact(version)) goto done;
        {
            int overflow;
            if (PyLong_AsLongAndOverflow(version, &overflow) != ev.version || overflow) goto done;
        }
        if (!pg_micros(PySequence_Fast_GET_ITEM(columns[2], i), &micros) || micros != ev.micros)
            goto done;
        if (!utf8_equals(PySequence_Fast_GET_ITEM(columns[3], i),
                         PyBytes_AS_STRING(ev.event_type), PyBytes_GET_SIZE(ev.event_type)))
            goto done;
        data = PySequence_Fast_GET_ITEM(columns[4], i);
        if (!PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) < 1
            || PyBytes_AS_STRING(data)[0] != 1
            || !same_as_jsonb(payload, (const unsigned char *)PyBytes_AS_STRING(data) + 1,
                              PyBytes_GET_SIZE(data) - 1))
            goto done;
    }
    if (utf8_equals(args[2], (const char *)agg, agg_len)) result = Py_True;
done:
    Py_INCREF(result);
    goto cleanup;
error:
    result = NULL;
cleanup:
    if (payloads != NULL) {
        for (Py_ssize_t i = 0; i < done; i++) Py_DECREF(payloads[i]);
        PyMem_Free(payloads);
    }
    for (int c = 0; c < 5; c++) Py_XDECREF(columns[c]);
    return result;
}

/* ---- the transforms' hot path: esctl.streams.clean_payloads ---- */

static PyObject *zones[2 * 1440 + 1]; /* datetime.timezone per offset in minutes, made once */

static PyObject *zone(int offset) {
    PyObject **slot = &zones[offset + 1440];
    if (*slot == NULL) {
        PyObject *delta = PyDelta_FromDSU(0, offset * 60, 0);
        if (delta == NULL) return NULL;
        *slot = PyTimeZone_FromOffset(delta); /* offset 0: datetime.timezone.utc */
        Py_DECREF(delta);
    }
    return *slot;
}

/* The ``$type`` as a str, one object per distinct name (``names``: bytes -> str). */
static PyObject *type_name_of(const Member *m, PyObject *names) {
    PyObject *key = PyBytes_FromStringAndSize((const char *)m->start, m->len), *name;
    if (key == NULL) return NULL;
    name = PyDict_GetItemWithError(names, key);
    if (name != NULL) {
        Py_DECREF(key);
        return Py_NewRef(name);
    }
    if (PyErr_Occurred() || (name = PyUnicode_DecodeUTF8((const char *)m->start, m->len,
                                                         "strict")) == NULL
        || PyDict_SetItem(names, key, name) < 0) {
        Py_XDECREF(name);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(key);
    return name;
}

/* One CleanPayload (``payload_type``, a NamedTuple of six fields; ``data`` None), NULL on an
 * error. */
static PyObject *clean_payload(PyObject *payload, const Checked *ev, PyObject *payload_type,
                               PyObject *names) {
    PyObject *fields[6] = {NULL, NULL, NULL, NULL, NULL, NULL}, *item, *tz;
    const Stamp *st = &ev->stamp;
    fields[0] = PyLong_FromLong(ev->version);
    fields[1] = type_name_of(&ev->type_name, names);
    fields[2] = PyUnicode_DecodeASCII((const char *)ev->timestamp.start, ev->timestamp.len,
                                      "strict");
    tz = zone(st->offset);
    fields[3] = tz == NULL ? NULL
                           : PyDateTimeAPI->DateTime_FromDateAndTime(
                                 st->y, st->mo, st->d, st->h, st->mi, st->sec, st->frac, tz,
                                 PyDateTimeAPI->DateTimeType);
    fields[4] = Py_NewRef(payload);
    fields[5] = Py_NewRef(Py_None); /* the parsed payload: the caller parses it if it needs it */
    for (int i = 0; i < 6; i++) {
        if (fields[i] == NULL) {
            for (int j = 0; j < 6; j++) Py_XDECREF(fields[j]);
            return NULL;
        }
    }
    item = ((PyTypeObject *)payload_type)->tp_alloc((PyTypeObject *)payload_type, 6);
    if (item == NULL) {
        for (int j = 0; j < 6; j++) Py_DECREF(fields[j]);
        return NULL;
    }
    for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(item, i, fields[i]); /* steals */
    return item;
}

/* clean_payloads(aggregate_id, values, first_version, known_type, gunzip, payload_type, names)
 * -> (aggregate_type, [CleanPayload, ...]) | None */
static PyObject *fast_clean_payloads(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *aggregate_id, *values, *known_type, *gunzip, *payload_type, *names;
    PyObject *seq = NULL, *events = NULL, *result = NULL, *agg_type = NULL;
    PyObject **payloads = NULL;
    const char *id;
    Py_ssize_t id_len, count, done = 0, agg_len = 0;
    const unsigned char *agg = NULL;
    long first_version;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "clean_payloads takes 7 arguments");
        return NULL;
    }
    aggregate_id = args[0], values = args[1], known_type = args[3], gunzip = args[4];
    payload_type = args[5], names = args[6];
    if (!PyType_Check(payload_type) || !PyType_IsSubtype((PyTypeObject *)payload_type,
                                                         &PyTuple_Type)
        || !PyDict_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "clean_payloads: a tuple type and a dict");
        return NULL;
    }
    first_version = PyLong_AsLong(args[2]);
    if (first_version == -1 && PyErr_Occurred()) return NULL;
    id = PyUnicode_AsUTF8AndSize(aggregate_id, &id_len);
    if (id == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (known_type != Py_None) {
        if (!PyUnicode_Check(known_type)) Py_RETURN_NONE;
        agg = (const unsigned char *)PyUnicode_AsUTF8AndSize(known_type, &agg_len);
        if (agg == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    seq = PySequence_Fast(values, "clean_payloads: values must be a sequence");
    if (seq == NULL) return NULL;
    count = PySequence_Fast_GET_SIZE(seq);
    if (count == 0) {
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    payloads = PyMem_Calloc((size_t)count, sizeof(PyObject *));
    events = PyList_New(count);
    if (payloads == NULL || events == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Checked ev;
        PyObject *payload = payload_of(PySequence_Fast_GET_ITEM(seq, i), gunzip), *item;
        int ok;
        if (payload == NULL) goto error;
        payloads[done++] = payload;
        if (payload == Py_None) goto unsure;
        ok = check_event(payload, id, id_len, first_version + (long)i, &agg, &agg_len, NULL,
                         NULL, &ev);
        if (ok < 0) goto error;
        if (ok == 0) goto unsure;
        item = clean_payload(payload, &ev, payload_type, names);
        if (item == NULL) goto error;
        PyList_SET_ITEM(events, i, item);
    }
    agg_type = known_type != Py_None ? Py_NewRef(known_type)
                                     : PyUnicode_DecodeUTF8((const char *)agg, agg_len, "strict");
    if (agg_type == NULL) goto error;
    result = PyTuple_Pack(2, agg_type, events);
    Py_DECREF(agg_type);
    goto cleanup;
unsure:
    result = Py_NewRef(Py_None);
    goto cleanup;
error:
    result = NULL;
cleanup:
    Py_XDECREF(events);
    if (payloads != NULL) {
        for (Py_ssize_t i = 0; i < done; i++) Py_DECREF(payloads[i]);
        PyMem_Free(payloads);
    }
    Py_DECREF(seq);
    return result;
}

/* ---- reading the event hashes: the lookups' keys, and the commands packed ---- */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* zlib.crc32 of ``n`` bytes */
static uint32_t crc32_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFU;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFU;
}

#define PARTITIONS 655360 /* esctl.layout.PARTITION_COUNT */

/* lookup_orders(prefix, legacy, commit_ids) -> [(first key, second key), ...] | None
 *
 * esctl.layout.event_hash_lookup_orders with its key prefix (``EventStore:APP:``) and the
 * legacy key given: each commit id's partitioned hash (CRC-32 of the id mod 655,360) and the
 * legacy hash, the legacy first for an id of digits. None when an id is not ASCII (Python's
 * isdigit knows other digits): the Python function decides then. */
static PyObject *fast_lookup_orders(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *prefix, *legacy, *seq, *out;
    const char *pre;
    Py_ssize_t pre_len, count;
    char *key;
    if (nargs != 3 || !PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "lookup_orders(prefix, legacy, commit_ids)");
        return NULL;
    }
    prefix = args[0], legacy = args[1];
    pre = PyUnicode_AsUTF8AndSize(prefix, &pre_len);
    if (pre == NULL) return NULL;
    seq = PySequence_Fast(args[2], "lookup_orders: commit ids must be a sequence");
    if (seq == NULL) return NULL;
    count = PySequence_Fast_GET_SIZE(seq);
    out = PyList_New(count);
    key = PyMem_Malloc((size_t)pre_len + 16);
    if (out == NULL || key == NULL) {
        Py_XDECREF(out);
        PyMem_Free(key);
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    memcpy(key, pre, (size_t)pre_len);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PySequence_Fast_GET_ITEM(seq, i), *partitioned, *pair;
        const unsigned char *text;
        Py_ssize_t n;
        int digits_only = 1, len;
        if (!PyUnicode_CheckExact(id) || !PyUnicode_IS_ASCII(id)) {
            Py_DECREF(out);
            PyMem_Free(key);
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        text = PyUnicode_1BYTE_DATA(id);
        n = PyUnicode_GET_LENGTH(id);
        for (Py_ssize_t k = 0; k < n; k++)
            if (text[k] < '0' || text[k] > '9') {
                digits_only = 0;
                break;
            }
        if (n == 0) digits_only = 0; /* "".isdigit() is False */
        len = snprintf(key + pre_len, 16, "%u", (unsigned)(crc32_of(text, n) % PARTITIONS));
        partitioned = PyUnicode_FromStringAndSize(key, pre_len + len);
        if (partitioned == NULL) {
            Py_DECREF(out);
            PyMem_Free(key);
            Py_DECREF(seq);
            return NULL;
        }
        pair = digits_only ? PyTuple_Pack(2, legacy, partitioned)
                           : PyTuple_Pack(2, partitioned, legacy);
        Py_DECREF(partitioned);
        if (pair == NULL) {
            Py_DECREF(out);
            PyMem_Free(key);
            Py_DECREF(seq);
            return NULL;
        }
        PyList_SET_ITEM(out, i, pair);
    }
    PyMem_Free(key);
    Py_DECREF(seq);
    return out;
}

/* pack_three(commands) -> bytes | None
 *
 * RESP for commands of three str arguments each (HGET key field: the bulk of pipelined reads),
 * in one buffer, as esctl.redisio.resp.pack_commands writes them; None when a command is not
 * three str or a str is not UTF-8 (a surrogate): the Python function packs them then. */
static PyObject *fast_pack_three(PyObject *module, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "pack_three: commands must be a sequence"), *out;
    Py_ssize_t count, size = 0, w = 0;
    char *buf;
    if (seq == NULL) return NULL;
    count = PySequence_Fast_GET_SIZE(seq);
    /* first pass: check and size */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *command = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_CheckExact(command) || PyTuple_GET_SIZE(command) != 3) goto unsure;
        size += 4; /* *3\r\n */
        for (int a = 0; a < 3; a++) {
            PyObject *text = PyTuple_GET_ITEM(command, a);
            Py_ssize_t n;
            if (!PyUnicode_CheckExact(text)) goto unsure;
            if (PyUnicode_AsUTF8AndSize(text, &n) == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                    Py_DECREF(seq);
                    return NULL;
                }
                PyErr_Clear();
                goto unsure;
            }
            size += 1 + 20 + 2 + n + 2; /* $len\r\n data \r\n, len at most 20 digits */
        }
    }
    buf = PyMem_Malloc((size_t)size + 1);
    if (buf == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *command = PySequence_Fast_GET_ITEM(seq, i);
        memcpy(buf + w, "*3\r\n", 4);
        w += 4;
        for (int a = 0; a < 3; a++) {
            Py_ssize_t n;
            const char *data = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(command, a), &n);
            w += snprintf(buf + w, 24, "$%zd\r\n", n);
            memcpy(buf + w, data, (size_t)n);
            w += n;
            buf[w++] = '\r';
            buf[w++] = '\n';
        }
    }
    out = PyBytes_FromStringAndSize(buf, w);
    PyMem_Free(buf);
    Py_DECREF(seq);
    return out;
unsure:
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyObject *fast_clean_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *aggregate_id, *values, *known_type, *gunzip, *event_type_of, *type_cache;
    PyObject *seq = NULL, *rows = NULL, *result = NULL, *agg_type = NULL;
    PyObject **payloads = NULL;
    const char *id;
    Py_ssize_t id_len, count, done = 0, agg_len = 0;
    const unsigned char *agg = NULL;
    long first_version;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "clean_rows takes 7 arguments");
        return NULL;
    }
    aggregate_id = args[0], values = args[1], known_type = args[3], gunzip = args[4];
    event_type_of = args[5], type_cache = args[6];
    first_version = PyLong_AsLong(args[2]);
    if (first_version == -1 && PyErr_Occurred()) return NULL;
    if (!PyDict_CheckExact(type_cache)) {
        PyErr_SetString(PyExc_TypeError, "clean_rows: the type cache must be a dict");
        return NULL;
    }
    id = PyUnicode_AsUTF8AndSize(aggregate_id, &id_len);
    if (id == NULL) {
        /* an id that is no valid UTF-8 str (a lone surrogate): the Python path decides */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (known_type != Py_None) {
        if (!PyUnicode_Check(known_type)) Py_RETURN_NONE;
        agg = (const unsigned char *)PyUnicode_AsUTF8AndSize(known_type, &agg_len);
        if (agg == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    seq = PySequence_Fast(values, "clean_rows: values must be a sequence");
    if (seq == NULL) return NULL;
    count = PySequence_Fast_GET_SIZE(seq);
    if (count == 0) {
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    /* every payload is kept until the end: the aggregate type points into the first one */
    payloads = PyMem_Calloc((size_t)count, sizeof(PyObject *));
    rows = PyList_New(count);
    if (payloads == NULL || rows == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *payload = payload_of(PySequence_Fast_GET_ITEM(seq, i), gunzip), *row;
        if (payload == NULL) goto done;
        payloads[done++] = payload;
        if (payload == Py_None) {
            result = Py_None;
            goto done;
        }
        row = event_row(payload, id, id_len, first_version + (long)i, &agg, &agg_len,
                        event_type_of, type_cache);
        if (row == NULL) goto done;
        if (row == Py_None) {
            result = row; /* the reference is given back below */
            Py_DECREF(row);
            goto done;
        }
        PyList_SET_ITEM(rows, i, row);
    }
    if (known_type != Py_None) {
        agg_type = Py_NewRef(known_type);
    } else {
        agg_type = PyUnicode_DecodeUTF8((const char *)agg, agg_len, "strict");
        if (agg_type == NULL) goto done;
    }
    result = PyTuple_Pack(2, agg_type, rows);
    Py_DECREF(agg_type);
    if (result == NULL) goto done;
    Py_DECREF(rows);
    rows = NULL;
    for (Py_ssize_t i = 0; i < done; i++) Py_DECREF(payloads[i]);
    PyMem_Free(payloads);
    Py_DECREF(seq);
    return result;

done:
    Py_XDECREF(rows);
    if (payloads != NULL) {
        for (Py_ssize_t i = 0; i < done; i++) Py_DECREF(payloads[i]);
        PyMem_Free(payloads);
    }
    Py_DECREF(seq);
    if (result == Py_None) Py_RETURN_NONE;
    return NULL;
}

static PyMethodDef methods[] = {
    {"clean_rows", (PyCFunction)(void (*)(void))fast_clean_rows, METH_FASTCALL,
     "clean_rows(aggregate_id, values, first_version, known_type, gunzip, event_type_of, "
     "type_cache) -> (aggregate_type, rows) | None\n\n"
     "esctl.migrate.rows.clean_rows(esctl.streams.clean_payloads(...)) for the payloads it is "
     "sure of; None for any other stream (the Python path then decides)."},
    {"lookup_orders", (PyCFunction)(void (*)(void))fast_lookup_orders, METH_FASTCALL,
     "lookup_orders(prefix, legacy, commit_ids) -> [(first key, second key), ...] | None\n\n"
     "esctl.layout.event_hash_lookup_orders for ASCII commit ids; None otherwise."},
    {"pack_three", (PyCFunction)fast_pack_three, METH_O,
     "pack_three(commands) -> bytes | None\n\n"
     "esctl.redisio.resp.pack_commands for commands of three str arguments; None otherwise."},
    {"clean_payloads", (PyCFunction)(void (*)(void))fast_clean_payloads, METH_FASTCALL,
     "clean_payloads(aggregate_id, values, first_version, known_type, gunzip, payload_type, "
     "names) -> (aggregate_type, [payload_type(...), ...]) | None\n\n"
     "esctl.streams.clean_payloads for the streams it is sure of, each event's data None (not "
     "parsed); None for any other stream."},
    {"identical", (PyCFunction)(void (*)(void))fast_identical, METH_FASTCALL,
     "identical(aggregate_id, values, aggregate_type, versions, time_stamps, event_types, "
     "event_data, gunzip, event_type_of, type_cache) -> bool\n\n"
     "True when a stream esctl.migrate.rows.fast_rows would take is exactly its PostgreSQL "
     "columns as verify reads them (esctl.pgevents.PgStream); False: not sure (the Python "
     "path then decides)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "esctl._fastrows",
    "The hot path of migrate redis-to-pg in C (see esctl/_fastrows.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastrows(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    crc_init();
    return PyModule_Create(&module);
}
