/* esctl._fastrows: what its parts share (see module.c for what the module does). */
#ifndef ESCTL_FASTROWS_H
#define ESCTL_FASTROWS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
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


/* A TimeStamp's fields, as datetime.fromisoformat reads them. */
typedef struct {
    int y, mo, d, h, mi, sec, frac; /* frac: microseconds, a 7th digit truncated */
    int offset;                     /* minutes east of UTC */
} Stamp;

/* What one payload says, once checked: its event type's bytes (borrowed from the cache), the
 * time in PostgreSQL's microseconds, its Version. */
typedef struct {
    PyObject *event_type;
    int64_t micros;
    long version;
    Stamp stamp;
    Member type_name, timestamp; /* where the $type and the TimeStamp text are */
} Checked;

/* Big-endian integers, as binary COPY writes them. */
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

/* ---- json.c: one pass over a payload's bytes (0: not sure or not valid; 1: ok) ---- */

static inline void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static inline int hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
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

int scan_value(Scan *s, int depth, Member *m);
Py_ssize_t unescape(const unsigned char *p, Py_ssize_t n, unsigned char *out, Py_ssize_t cap);

/* ---- stamp.c: a TimeStamp as datetime.fromisoformat reads it ---- */

#define PG_EPOCH_DAYS 10957 /* 2000-01-01 from 1970-01-01 */
int parse_stamp(const unsigned char *t, Py_ssize_t n, Stamp *st);
int64_t stamp_micros(const Stamp *st);

/* ---- events.c: a stream's payloads checked; a migration's rows; the transforms' events ---- */

PyObject *payload_of(PyObject *value, PyObject *gunzip);
int check_event(PyObject *payload, const char *id, Py_ssize_t id_len, long expected,
                const unsigned char **agg, Py_ssize_t *agg_len, PyObject *event_type_of,
                PyObject *type_cache, Checked *out);
PyObject *fast_clean_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *fast_clean_payloads(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int events_init(void); /* the datetime C API, for this part alone: 0 on an error */

/* ---- rows.c: a binary COPY row; the rows of events already checked (the transforms') ---- */

PyObject *copy_row(PyObject *payload, int64_t micros, uint32_t version, PyObject *event_type);
PyObject *fast_binary_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int rows_init(void); /* the datetime C API, for this part alone: 0 on an error */

/* ---- verify.c: a clean stream against PostgreSQL's columns ---- */

PyObject *fast_identical(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* ---- reads.c: the event hashes' lookup keys, and HGETs packed ---- */

void crc_init(void);
PyObject *fast_lookup_orders(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *fast_pack_three(PyObject *module, PyObject *arg);

#endif
