/* esctl._fastrows: the hot paths of `migrate redis-to-pg`, `migrate verify` and
 * `migrate --transforms` in C, used through esctl/fastpath.py (and esctl.layout,
 * esctl.redisio.resp for the reads).
 *
 * Each function gives what the Python code it stands in for gives, for the input it is sure of,
 * and says "not sure" (None, False) for any other: a value that is no plain JSON object in the
 * common form, an envelope member written with an escape or repeated, a number with a large
 * exponent, a \u escape of NUL or of a surrogate, events not stored in version order, an id
 * that is not ASCII, ... The caller then runs the Python code, which decides. So the compiled
 * code never changes what esctl accepts, reports or writes; tests/test_fastrows.py holds each
 * function to the Python code.
 *
 * Per payload one pass over its bytes: the UTF-8 checked as orjson checks it, the JSON grammar as
 * RFC 8259 (orjson's), the top-level members $type, Version, AggregateType, TimeStamp and Id
 * found and checked; then the row built in one allocation, or the payload compared with jsonb.
 *
 * The parts: json.c (the scan), stamp.c (time stamps), events.c (the checks, a migration's
 * rows, the transforms' events), rows.c (the rows of the transforms' events), verify.c (against
 * PostgreSQL's jsonb), reads.c (the event hashes' keys and HGETs); what they share is in
 * fastrows.h.
 */
#include "fastrows.h"

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
    {"binary_rows", (PyCFunction)(void (*)(void))fast_binary_rows, METH_FASTCALL,
     "binary_rows(moments, versions, type_names, payloads, event_type_of, cache) -> [row, ...] "
     "| None\n\n"
     "esctl.migrate.rows.binary_row of each event; None when not sure of one (the Python code "
     "then builds them)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "esctl._fastrows",
    "The hot path of migrate redis-to-pg in C (see esctl/_fastrows_src/).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastrows(void) {
    if (!events_init() || !rows_init()) return NULL;
    crc_init();
    return PyModule_Create(&module);
}
