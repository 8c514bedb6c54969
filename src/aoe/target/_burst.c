/*
 * aoe.target._burst: the target's burst fast path, compiled.
 *
 * An optional accelerator for Engine.respond_batch (engine.py), which stays the reference:
 * this module answers only the frames that path calls plain (a READ or WRITE of sectors
 * inside the export, addressed to this MAC, to an export without a mask or reservation
 * list), with the same header rewrite and the same runs of adjacent requests, each taken
 * with one preadv/pwritev. At the first frame it would leave to the general code it stops
 * and returns that frame's index, so Python answers it and requests still take effect in
 * arrival order. A run the store does not take whole is handed back too (Python retries it
 * frame by frame and answers the failures). tests/test_target_burst.py feeds the same
 * bursts to both paths and compares every reply byte, the store and the counters.
 *
 * The byte offsets are those of aoe.protocol.fastpath.ATA_REQUEST_FIELDS and REPLY_HEAD.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../_pyattr.h"
#include "../net/_mmsg_lengths.h"

#define ATA_HEADER_LEN 36
#define ETH_MIN_FRAME 60
#define REQ_VERFLAGS 0x10 /* version 1, no flags */
#define RESP_VERFLAGS 0x18 /* version 1, response */
#define DRDY 0x40
#define WRITE_FLAG 0x01
#define EXT_FLAG 0x40
#define LBA28_MASK 0x0FFFFFFFULL
#define RUN_MAX 1024 /* IOV_MAX */
#define CACHED 8     /* exports remembered within one call */

typedef struct {
    uint8_t addr[3];
    PyObject *store; /* borrowed from the engine's address map; NULL: no such export */
    int fd;
    long long base;
    long long sectors;
    int read_only;
    int guarded;
    int direct; /* O_DIRECT through a bounce buffer: Python's to serve */
    long long bytes_read;
    long long bytes_written;
} export_t;

typedef struct {
    export_t exports[CACHED];
    int used;
    /* the pending run */
    export_t *run_exp;
    int run_write;
    long long run_pos, run_end;
    int run_len;
    struct iovec iov[RUN_MAX];
    int run_idx[RUN_MAX];
    /* consecutive frames of one initiator to one export, counted for its peer record */
    export_t *peer_exp;
    uint8_t peer_src[6];
    long peer_count;
    /* totals for the engine's counters */
    long long reads, bytes_read, writes, bytes_written;
} state_t;

static export_t FULL; /* find_export's answer when the call has seen CACHED addresses */

/* The export at this raw shelf.slot address (NULL store: none), looked up once per call;
 * &FULL when too many addresses came up in this call (Python takes the frame); NULL on a
 * Python error. */
static export_t *find_export(state_t *st, PyObject *by_addr, const uint8_t *addr)
{
    for (int k = 0; k < st->used; k++)
        if (memcmp(st->exports[k].addr, addr, 3) == 0)
            return &st->exports[k];
    if (st->used == CACHED)
        return &FULL;
    export_t *e = &st->exports[st->used];
    memset(e, 0, sizeof *e);
    memcpy(e->addr, addr, 3);
    PyObject *key = PyBytes_FromStringAndSize((const char *)addr, 3);
    if (key == NULL)
        return NULL;
    PyObject *store = PyDict_GetItemWithError(by_addr, key); /* borrowed */
    Py_DECREF(key);
    if (store == NULL && PyErr_Occurred())
        return NULL;
    if (store != NULL) {
        long long fd;
        if (attr_ll(store, "fd", &fd) < 0 || attr_ll(store, "base", &e->base) < 0
            || attr_ll(store, "sectors", &e->sectors) < 0
            || attr_bool(store, "read_only", &e->read_only) < 0
            || attr_bool(store, "guarded", &e->guarded) < 0
            || attr_bool(store, "direct", &e->direct) < 0)
            return NULL;
        e->fd = (int)fd;
    }
    e->store = store;
    st->used++;
    return e;
}

/* Add the counted frames to the peer record [frames, last seen] of one initiator. */
static int peer_flush(state_t *st, PyObject *now)
{
    if (st->peer_exp == NULL || st->peer_count == 0)
        return 0;
    PyObject *store = st->peer_exp->store;
    int rc = -1;
    PyObject *rec = NULL, *frames = NULL, *sum = NULL, *add = NULL;
    PyObject *peers = PyObject_GetAttrString(store, "peers");
    PyObject *key = PyBytes_FromStringAndSize((const char *)st->peer_src, 6);
    if (peers == NULL || key == NULL)
        goto done;
    rec = PyDict_GetItemWithError(peers, key);
    if (rec != NULL)
        Py_INCREF(rec);
    else if (PyErr_Occurred())
        goto done;
    else if ((rec = PyObject_CallMethod(store, "new_peer", "O", key)) == NULL)
        goto done;
    if ((frames = PySequence_GetItem(rec, 0)) == NULL)
        goto done;
    if ((add = PyLong_FromLong(st->peer_count)) == NULL)
        goto done;
    if ((sum = PyNumber_Add(frames, add)) == NULL)
        goto done;
    if (PySequence_SetItem(rec, 0, sum) < 0 || PySequence_SetItem(rec, 1, now) < 0)
        goto done;
    st->peer_count = 0;
    rc = 0;
done:
    Py_XDECREF(peers);
    Py_XDECREF(key);
    Py_XDECREF(rec);
    Py_XDECREF(frames);
    Py_XDECREF(add);
    Py_XDECREF(sum);
    return rc;
}

static int peer_count(state_t *st, export_t *e, const uint8_t *src, PyObject *now)
{
    if (st->peer_exp != e || memcmp(st->peer_src, src, 6) != 0) {
        if (peer_flush(st, now) < 0)
            return -1;
        st->peer_exp = e;
        memcpy(st->peer_src, src, 6);
    }
    st->peer_count++;
    return 0;
}

static ssize_t read_run(state_t *st)
{
    ssize_t got;
    Py_BEGIN_ALLOW_THREADS
    do
        got = preadv(st->run_exp->fd, st->iov, st->run_len, (off_t)st->run_pos);
    while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return got;
}

/* A run of one goes through pwrite until the kernel has all of it, as Store.write_from. */
static ssize_t write_run(state_t *st)
{
    ssize_t got = 0;
    size_t done = 0, total = st->iov[0].iov_len;
    const char *p = st->iov[0].iov_base;
    Py_BEGIN_ALLOW_THREADS
    if (st->run_len > 1) {
        do
            got = pwritev(st->run_exp->fd, st->iov, st->run_len, (off_t)st->run_pos);
        while (got < 0 && errno == EINTR);
    } else {
        while (done < total) {
            got = pwrite(st->run_exp->fd, p + done, total - done, (off_t)st->run_pos + done);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0)
                break;
            done += (size_t)got;
        }
        got = (ssize_t)done;
    }
    Py_END_ALLOW_THREADS
    return got;
}

/* Carry out the pending run. 0: done (or nothing pending); 1: the store did not take it
 * whole, and *failed describes it for Python; -1: a Python error. */
static int flush_run(state_t *st, PyObject **failed)
{
    if (st->run_len == 0)
        return 0;
    long long want = st->run_end - st->run_pos;
    ssize_t got = st->run_write ? write_run(st) : read_run(st);
    if (got == want) {
        if (st->run_write) {
            for (int k = 0; k < st->run_len; k++) /* the ack: zeros after the header */
                memset((char *)st->iov[k].iov_base, 0, ETH_MIN_FRAME - ATA_HEADER_LEN);
            st->writes += st->run_len;
            st->bytes_written += want;
            st->run_exp->bytes_written += want;
        } else {
            st->reads += st->run_len;
            st->bytes_read += want;
            st->run_exp->bytes_read += want;
        }
        st->run_len = 0;
        return 0;
    }
    PyObject *idx = PyList_New(st->run_len);
    if (idx == NULL)
        return -1;
    for (int k = 0; k < st->run_len; k++) {
        PyObject *i = PyLong_FromLong(st->run_idx[k]);
        if (i == NULL) {
            Py_DECREF(idx);
            return -1;
        }
        PyList_SET_ITEM(idx, k, i);
    }
    *failed = Py_BuildValue("(OOLLN)", st->run_exp->store, st->run_write ? Py_True : Py_False,
                            st->run_pos, st->run_end, idx);
    st->run_len = 0;
    return *failed == NULL ? -1 : 1;
}


static int set_out(PyObject *out, Py_ssize_t i, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    return PyList_SetItem(out, i, v); /* steals v */
}

/* Add what the call moved to each export's totals (what `aoe status` shows). */
static int export_totals(state_t *st)
{
    for (int k = 0; k < st->used; k++) {
        export_t *e = &st->exports[k];
        const char *names[2] = {"bytes_read", "bytes_written"};
        long long amounts[2] = {e->bytes_read, e->bytes_written};
        for (int j = 0; j < 2; j++) {
            if (amounts[j] == 0)
                continue;
            long long old;
            if (attr_ll(e->store, names[j], &old) < 0
                || attr_set_ll(e->store, names[j], old + amounts[j]) < 0)
                return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(burst_doc,
"burst(views, lengths, start, n, out, mac, by_addr, max_sectors, now)\n"
"    -> (next, replies, reads, bytes_read, writes, bytes_written, failed)\n\n"
"Answer frames start..n-1 in place as Engine.respond_batch does, up to the first frame\n"
"left to Python (next < n; not yet touched) or a run the store did not take whole\n"
"(failed = (store, write, pos, end, indices); frame next not yet touched).");

static PyObject *burst(PyObject *self, PyObject *args)
{
    PyObject *views, *lengths_obj, *out, *by_addr, *now;
    Py_ssize_t start, n;
    const char *mac;
    Py_ssize_t mac_len;
    int max_sectors;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OnnO!y#O!iO", &PyList_Type, &views, &lengths_obj, &start, &n,
                          &PyList_Type, &out, &mac, &mac_len, &PyDict_Type, &by_addr,
                          &max_sectors, &now))
        return NULL;
    if (mac_len != 6 || start < 0 || n > PyList_GET_SIZE(views) || n > PyList_GET_SIZE(out)) {
        PyErr_SetString(PyExc_ValueError, "bad burst arguments");
        return NULL;
    }
    lengths_t lengths;
    if (lengths_open(&lengths, lengths_obj) < 0)
        return NULL;
    state_t *st = PyMem_Calloc(1, sizeof *st);
    if (st == NULL) {
        lengths_close(&lengths);
        return PyErr_NoMemory();
    }
    PyObject *failed = NULL;
    Py_ssize_t replies = 0, i = start;
    int error = 0;
    static const uint8_t etype[2] = {0x88, 0xA2};

    for (; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(views, i);
        if (!PyMemoryView_Check(v)) {
            PyErr_SetString(PyExc_TypeError, "views must be memoryviews");
            error = 1;
            break;
        }
        Py_buffer *b = PyMemoryView_GET_BUFFER(v);
        uint8_t *f = b->buf;
        long length = lengths_get(&lengths, i);
        if (length == -1 && PyErr_Occurred()) {
            error = 1;
            break;
        }
        /* Not a plain unicast request to us (the header is read only once it is there). */
        if (length < ATA_HEADER_LEN || b->readonly || b->len < ATA_HEADER_LEN
            || !PyBuffer_IsContiguous(b, 'C') || f[14] != REQ_VERFLAGS || f[19] != 0
            || memcmp(f, mac, 6) != 0 || memcmp(f + 12, etype, 2) != 0) {
            if (set_out(out, i, -1) < 0) {
                error = 1;
                break;
            }
            continue;
        }
        export_t *e = find_export(st, by_addr, f + 16);
        if (e == NULL) {
            error = 1;
            break;
        }
        if (e == &FULL || (e->store != NULL && e->direct))
            break;
        if (e->store == NULL || e->guarded) {
            if (set_out(out, i, -1) < 0) {
                error = 1;
                break;
            }
            continue;
        }
        /* Plain READ or WRITE of sectors inside the export, or stop here for Python. */
        int aflags = f[24], count = f[26], op = f[27];
        if (count == 0 || count > max_sectors)
            break;
        long long nbytes = (long long)count << 9;
        long long end = ATA_HEADER_LEN + nbytes;
        int write;
        if (op == 0x24 || op == 0x20) {
            write = 0;
            if (aflags & WRITE_FLAG)
                break;
        } else if ((op == 0x34 || op == 0x30) && (aflags & WRITE_FLAG) && !e->read_only
                   && length >= end) {
            write = 1;
        } else {
            break;
        }
        if (end > b->len)
            break;
        unsigned long long lo = (unsigned long long)f[28] | (unsigned long long)f[29] << 8
                                | (unsigned long long)f[30] << 16
                                | (unsigned long long)f[31] << 24;
        unsigned long long hi = (unsigned long long)f[32] | (unsigned long long)f[33] << 8;
        unsigned long long lba = (op & 0x04 || aflags & EXT_FLAG) ? (lo | hi << 32)
                                                                   : (lo & LBA28_MASK);
        if (lba + (unsigned long long)count > (unsigned long long)e->sectors)
            break;
        long long pos = e->base + (long long)(lba << 9);
        /* The run before this frame goes first: a failure hands it back untouched. */
        if (st->run_len
            && (st->run_exp != e || pos != st->run_end || st->run_write != write
                || st->run_len == RUN_MAX)) {
            int rc = flush_run(st, &failed);
            if (rc < 0) {
                error = 1;
                break;
            }
            if (rc > 0)
                break;
        }
        if (peer_count(st, e, f + 6, now) < 0) {
            error = 1;
            break;
        }
        /* Reply header in place: dst <- src, src <- us, response, no error, DRDY. */
        memcpy(f, f + 6, 6);
        memcpy(f + 6, mac, 6);
        f[14] = RESP_VERFLAGS;
        f[15] = 0;
        f[25] = 0;
        f[27] = DRDY;
        if (st->run_len == 0) {
            st->run_exp = e;
            st->run_write = write;
            st->run_pos = pos;
            st->run_end = pos;
        }
        st->iov[st->run_len].iov_base = f + ATA_HEADER_LEN;
        st->iov[st->run_len].iov_len = (size_t)nbytes;
        st->run_idx[st->run_len++] = (int)i;
        st->run_end += nbytes;
        if (set_out(out, i, write ? ETH_MIN_FRAME : (long)end) < 0) {
            error = 1;
            break;
        }
        replies++;
    }
    if (!error && failed == NULL) {
        int rc = flush_run(st, &failed);
        if (rc < 0)
            error = 1;
    }
    if (!error && (peer_flush(st, now) < 0 || export_totals(st) < 0))
        error = 1;
    lengths_close(&lengths);
    PyObject *result = NULL;
    if (!error)
        result = Py_BuildValue("(nnLLLLO)", i, replies, st->reads, st->bytes_read, st->writes,
                               st->bytes_written, failed != NULL ? failed : Py_None);
    Py_XDECREF(failed);
    PyMem_Free(st);
    return result;
}

static PyMethodDef methods[] = {
    {"burst", burst, METH_VARARGS, burst_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_burst",
    "The target's burst fast path, compiled (optional; engine.py is the reference).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__burst(void)
{
    return PyModule_Create(&module);
}
