/* esctl._fastrows: a stream's payloads checked as esctl.streams.clean_payloads checks them; a
 * migration's binary COPY rows; the transforms' CleanPayload tuples. */
#include "fastrows.h"

/* datetime.h defines its C API pointer per compilation unit: this part imports it. */
#include <datetime.h>

int events_init(void) {
    PyDateTime_IMPORT;
    return PyDateTimeAPI != NULL;
}

/* ---- rows ---- */

static const char GZIP_PREFIX[] = "H4sI";
static const unsigned char ZSTD_MAGIC[] = {0x28, 0xB5, 0x2F, 0xFD};

/* The decoded payload of one stored value (a new reference), Py_None when not sure, NULL with an
 * exception set only for one that is not an Exception (KeyboardInterrupt, ...). */
PyObject *payload_of(PyObject *value, PyObject *gunzip) {
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


/* Check one payload as clean_payloads does: 1 ok (``*out`` filled), 0 not sure, -1 an error.
 * ``*agg`` and ``*agg_len``: the aggregate type the stream has so far (set from the first event
 * when NULL). */
int check_event(PyObject *payload, const char *id, Py_ssize_t id_len, long expected,
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

/* One event's binary COPY row (rows.c builds it). */
static PyObject *binary_row(PyObject *payload, const Checked *ev) {
    return copy_row(payload, ev->micros, (uint32_t)ev->version, ev->event_type);
}

/* What clean_rows and clean_payloads are given for one stream, read once. */
typedef struct {
    const char *id; /* the aggregate id's UTF-8 */
    Py_ssize_t id_len;
    const unsigned char *agg; /* the known aggregate type's UTF-8, or NULL */
    Py_ssize_t agg_len;
    PyObject *seq; /* the values (a new reference), at least one */
    Py_ssize_t count;
} StreamArgs;

/* 1: ``out`` filled (release ``out->seq``); 0: not sure (an id or a known type that is no
 * valid UTF-8 str, no values); -1: an error. */
static int stream_args(PyObject *aggregate_id, PyObject *known_type, PyObject *values,
                       StreamArgs *out) {
    out->agg = NULL;
    out->agg_len = 0;
    out->id = PyUnicode_AsUTF8AndSize(aggregate_id, &out->id_len);
    if (out->id == NULL) goto unsure; /* a lone surrogate: the Python path decides */
    if (known_type != Py_None) {
        if (!PyUnicode_Check(known_type)) return 0;
        out->agg = (const unsigned char *)PyUnicode_AsUTF8AndSize(known_type, &out->agg_len);
        if (out->agg == NULL) goto unsure;
    }
    out->seq = PySequence_Fast(values, "the values must be a sequence");
    if (out->seq == NULL) return -1;
    out->count = PySequence_Fast_GET_SIZE(out->seq);
    if (out->count == 0) {
        Py_DECREF(out->seq);
        return 0;
    }
    return 1;
unsure:
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyErr_Clear();
    return 0;
}

/* What one checked event becomes: a row (clean_rows) or a CleanPayload (clean_payloads); NULL
 * on an error. */
typedef PyObject *(*MakeItem)(PyObject *payload, const Checked *ev, void *ctx);

/* What clean_rows and clean_payloads share: ``args`` are (aggregate_id, values, first_version,
 * known_type, gunzip, ...); each value's payload checked (``event_type_of`` and ``type_cache``:
 * its event type looked up, or NULL) and made an item by ``make``. (aggregate_type, [item, ...]),
 * Py_None when not sure of one, NULL on an error. */
static PyObject *clean_stream(PyObject *const *args, PyObject *event_type_of,
                              PyObject *type_cache, MakeItem make, void *ctx) {
    PyObject *known_type = args[3], *gunzip = args[4];
    PyObject *items = NULL, *result = NULL, *agg_type;
    PyObject **payloads = NULL;
    Py_ssize_t done = 0;
    StreamArgs in;
    long first_version = PyLong_AsLong(args[2]);

    if (first_version == -1 && PyErr_Occurred()) return NULL;
    switch (stream_args(args[0], known_type, args[1], &in)) {
        case -1: return NULL;
        case 0: Py_RETURN_NONE;
        default: break;
    }
    /* every payload is kept until the end: the aggregate type points into the first one */
    payloads = PyMem_Calloc((size_t)in.count, sizeof(PyObject *));
    items = PyList_New(in.count);
    if (payloads == NULL || items == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < in.count; i++) {
        Checked ev;
        PyObject *payload = payload_of(PySequence_Fast_GET_ITEM(in.seq, i), gunzip), *item;
        int ok;
        if (payload == NULL) goto error;
        payloads[done++] = payload;
        if (payload == Py_None) goto unsure;
        ok = check_event(payload, in.id, in.id_len, first_version + (long)i, &in.agg, &in.agg_len,
                         event_type_of, type_cache, &ev);
        if (ok < 0) goto error;
        if (ok == 0) goto unsure;
        item = make(payload, &ev, ctx);
        if (item == NULL) goto error;
        PyList_SET_ITEM(items, i, item);
    }
    agg_type = known_type != Py_None
                   ? Py_NewRef(known_type)
                   : PyUnicode_DecodeUTF8((const char *)in.agg, in.agg_len, "strict");
    if (agg_type == NULL) goto error;
    result = PyTuple_Pack(2, agg_type, items);
    Py_DECREF(agg_type);
    goto cleanup;
unsure:
    result = Py_NewRef(Py_None);
    goto cleanup;
error:
    result = NULL;
cleanup:
    Py_XDECREF(items);
    if (payloads != NULL) {
        for (Py_ssize_t i = 0; i < done; i++) Py_DECREF(payloads[i]);
        PyMem_Free(payloads);
    }
    Py_DECREF(in.seq);
    return result;
}

static PyObject *row_item(PyObject *payload, const Checked *ev, void *ctx) {
    return binary_row(payload, ev);
}

/* clean_rows(aggregate_id, values, first_version, known_type, gunzip, event_type_of,
 * type_cache) -> (aggregate_type, [row, ...]) | None */
PyObject *fast_clean_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "clean_rows takes 7 arguments");
        return NULL;
    }
    if (!PyDict_CheckExact(args[6])) {
        PyErr_SetString(PyExc_TypeError, "clean_rows: the type cache must be a dict");
        return NULL;
    }
    return clean_stream(args, args[5], args[6], row_item, NULL);
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

/* What clean_payloads makes each event with: its NamedTuple type and the $type cache. */
typedef struct {
    PyObject *payload_type, *names;
} PayloadTypes;

static PyObject *payload_item(PyObject *payload, const Checked *ev, void *ctx) {
    const PayloadTypes *t = ctx;
    return clean_payload(payload, ev, t->payload_type, t->names);
}

/* clean_payloads(aggregate_id, values, first_version, known_type, gunzip, payload_type, names)
 * -> (aggregate_type, [CleanPayload, ...]) | None */
PyObject *fast_clean_payloads(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PayloadTypes types;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "clean_payloads takes 7 arguments");
        return NULL;
    }
    types.payload_type = args[5], types.names = args[6];
    if (!PyType_Check(types.payload_type)
        || !PyType_IsSubtype((PyTypeObject *)types.payload_type, &PyTuple_Type)
        || !PyDict_CheckExact(types.names)) {
        PyErr_SetString(PyExc_TypeError, "clean_payloads: a tuple type and a dict");
        return NULL;
    }
    return clean_stream(args, NULL, NULL, payload_item, &types);
}
