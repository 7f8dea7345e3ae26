/* esctl._fastrows: verify's clean stream against its PostgreSQL columns. */
#include "fastrows.h"

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
PyObject *fast_identical(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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
