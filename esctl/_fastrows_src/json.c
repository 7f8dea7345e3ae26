/* esctl._fastrows: the JSON scan, one pass over a payload's bytes (UTF-8 and grammar as orjson
 * checks them, the envelope members found at the top level). */
#include "fastrows.h"

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


/* The bytes a checked string (its escapes valid, none of NUL or a surrogate) stands for, into
 * ``out``: their length, or -1 when they would not fit in ``cap``. */
Py_ssize_t unescape(const unsigned char *p, Py_ssize_t n, unsigned char *out,
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

/* After an object's member or an array's element: 1 another follows (its ',' passed), 2 the
 * container ends with ``closer`` (passed), 0 neither (not valid). */
static inline int after_item(Scan *s, unsigned char closer) {
    skip_ws(s);
    if (s->p >= s->end) return 0;
    if (*s->p == ',') {
        s->p++;
        skip_ws(s);
        return 1;
    }
    if (*s->p == closer) {
        s->p++;
        return 2;
    }
    return 0;
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
        switch (after_item(s, '}')) {
            case 1: continue;
            case 2: return 1;
            default: return 0;
        }
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
        switch (after_item(s, ']')) {
            case 1: continue;
            case 2: return 1;
            default: return 0;
        }
    }
}

/* A value at nesting ``depth`` (the container holding it); ``m``: record it there. */
int scan_value(Scan *s, int depth, Member *m) {
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
