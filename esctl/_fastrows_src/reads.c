/* esctl._fastrows: reading the event hashes (the lookups' keys, the HGETs packed). */
#include "fastrows.h"

/* ---- reading the event hashes: the lookups' keys, and the commands packed ---- */

static uint32_t crc_table[256];

void crc_init(void) {
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
PyObject *fast_lookup_orders(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
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
PyObject *fast_pack_three(PyObject *module, PyObject *arg) {
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
