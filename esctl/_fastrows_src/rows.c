/* esctl._fastrows: the binary COPY rows of events already checked, as
 * esctl.migrate.rows.binary_row builds them one at a time (the transforms' rows). */
#include "fastrows.h"

/* datetime.h defines its C API pointer per compilation unit: this part imports it. */
#include <datetime.h>

static PyObject *utcoffset_name; /* "utcoffset", interned */

int rows_init(void) {
    PyDateTime_IMPORT;
    utcoffset_name = PyUnicode_InternFromString("utcoffset");
    return PyDateTimeAPI != NULL && utcoffset_name != NULL;
}

/* ``(moment - PG_EPOCH) // MICROSECOND``: 1 and ``*out`` set; 0: not sure (not an aware
 * datetime, an offset that is no timedelta); -1: an error (utcoffset raised). */
static int moment_micros(PyObject *moment, int64_t *out) {
    PyObject *tz, *offset;
    Stamp st;
    if (!PyDateTime_CheckExact(moment) || !((PyDateTime_DateTime *)moment)->hastzinfo) return 0;
    tz = PyDateTime_DATE_GET_TZINFO(moment);
    offset = PyObject_CallMethodOneArg(tz, utcoffset_name, moment);
    if (offset == NULL) return -1;
    if (!PyDelta_CheckExact(offset)) { /* None: a naive time, which Python refuses to subtract */
        Py_DECREF(offset);
        return 0;
    }
    st.y = PyDateTime_GET_YEAR(moment);
    st.mo = PyDateTime_GET_MONTH(moment);
    st.d = PyDateTime_GET_DAY(moment);
    st.h = PyDateTime_DATE_GET_HOUR(moment);
    st.mi = PyDateTime_DATE_GET_MINUTE(moment);
    st.sec = PyDateTime_DATE_GET_SECOND(moment);
    st.frac = PyDateTime_DATE_GET_MICROSECOND(moment);
    st.offset = 0;
    *out = stamp_micros(&st)
           - ((int64_t)PyDateTime_DELTA_GET_DAYS(offset) * 86400
              + PyDateTime_DELTA_GET_SECONDS(offset))
                 * 1000000
           - PyDateTime_DELTA_GET_MICROSECONDS(offset);
    Py_DECREF(offset);
    return 1;
}

/* The event type's bytes of a ``$type`` str, borrowed from ``cache`` (str -> bytes; filled
 * with ``event_type_of(type_name)``); NULL with an error, or with none when not sure. */
static PyObject *row_type(PyObject *type_name, PyObject *event_type_of, PyObject *cache) {
    PyObject *found;
    if (!PyUnicode_CheckExact(type_name)) return NULL;
    found = PyDict_GetItemWithError(cache, type_name);
    if (found != NULL || PyErr_Occurred()) return found;
    found = PyObject_CallOneArg(event_type_of, type_name);
    if (found == NULL) return NULL;
    if (!PyBytes_CheckExact(found) || PyDict_SetItem(cache, type_name, found) < 0) {
        Py_DECREF(found);
        return NULL; /* (not bytes: not sure, no error set) */
    }
    Py_DECREF(found);   /* the cache holds it */
    return found;
}

/* One event's binary COPY row, without the field count and aggregate_key the writer puts in
 * front: >iqiii{n}sib + payload (8, micros, 4, version, n, event type, len(payload)+1, 1 for
 * jsonb's version). NULL on an error. */
PyObject *copy_row(PyObject *payload, int64_t micros, uint32_t version, PyObject *event_type) {
    Py_ssize_t n = PyBytes_GET_SIZE(payload), et_len = PyBytes_GET_SIZE(event_type);
    PyObject *row = PyBytes_FromStringAndSize(NULL, 4 + 8 + 4 + 4 + 4 + et_len + 4 + 1 + n);
    unsigned char *w;
    if (row == NULL) return NULL;
    w = (unsigned char *)PyBytes_AS_STRING(row);
    put32(w, 8);
    put64(w + 4, (uint64_t)micros);
    put32(w + 12, 4);
    put32(w + 16, version);
    put32(w + 20, (uint32_t)et_len);
    memcpy(w + 24, PyBytes_AS_STRING(event_type), (size_t)et_len);
    w += 24 + et_len;
    put32(w, (uint32_t)(n + 1));
    w[4] = 1; /* jsonb's version */
    memcpy(w + 5, PyBytes_AS_STRING(payload), (size_t)n);
    return row;
}

/* binary_rows(moments, versions, type_names, payloads, event_type_of, cache)
 * -> [row, ...] | None: esctl.migrate.rows.binary_row of each, or None when not sure of one
 * (the Python code then builds them, and raises what it raises). */
PyObject *fast_binary_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *seqs[4] = {NULL, NULL, NULL, NULL}, *rows = NULL;
    Py_ssize_t count = 0;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "binary_rows takes 6 arguments");
        return NULL;
    }
    for (int k = 0; k < 4; k++) {
        seqs[k] = PySequence_Fast(args[k], "binary_rows takes sequences");
        if (seqs[k] == NULL) goto done;
        if (k > 0 && PySequence_Fast_GET_SIZE(seqs[k]) != count) goto not_sure;
        count = PySequence_Fast_GET_SIZE(seqs[k]);
    }
    if (!PyDict_CheckExact(args[5])) goto not_sure;
    rows = PyList_New(count);
    if (rows == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *version = PySequence_Fast_GET_ITEM(seqs[1], i);
        PyObject *payload = PySequence_Fast_GET_ITEM(seqs[3], i), *event_type, *row;
        int64_t micros;
        long long v;
        int overflow, ok;
        ok = moment_micros(PySequence_Fast_GET_ITEM(seqs[0], i), &micros);
        if (ok < 0) goto error;
        if (ok == 0 || !PyLong_CheckExact(version) || !PyBytes_CheckExact(payload)) goto not_sure;
        v = PyLong_AsLongLongAndOverflow(version, &overflow);
        if (overflow || v < INT32_MIN || v > INT32_MAX) goto not_sure; /* struct.error there */
        event_type = row_type(PySequence_Fast_GET_ITEM(seqs[2], i), args[4], args[5]);
        if (event_type == NULL) {
            if (PyErr_Occurred()) goto error;
            goto not_sure;
        }
        row = copy_row(payload, micros, (uint32_t)v, event_type);
        if (row == NULL) goto error;
        PyList_SET_ITEM(rows, i, row);
    }
    goto done;
not_sure:
    Py_CLEAR(rows);
    rows = Py_NewRef(Py_None);
    goto done;
error:
    Py_CLEAR(rows);
done:
    for (int k = 0; k < 4; k++) Py_XDECREF(seqs[k]);
    return rows;
}
