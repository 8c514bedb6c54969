/*
 * aoe.initiator._compiled: the session core's two per-frame loops, compiled.
 *
 * Optional accelerators for SessionCore.on_answers and SessionCore._cut (core.py), which
 * stay the reference and the owners of every rule. answers() takes only the clean answer,
 * the one that loop handles most often (a good ATA answer from the right MAC on the right
 * port, of the right length, to the latest transmission of an outstanding frame, on a path
 * that has not been timing out). For it, it does what core.py does, in the same order:
 * read data copied into the caller's buffer, the path's answered count, the RTT sample
 * (held, and folded once per batch through PathWindow.sample_rtt itself), the window step
 * written out in on_answers, the path's high-water mark, the frame forgotten with all its
 * tags, the request completed, the sending order trimmed (through
 * SessionCore._drop_answered unless the head simply moves on). At any other frame it stops
 * before touching anything and returns its index; core.py handles that frame and calls
 * again for the rest, so answers are taken in arrival order. cut() is _cut written out:
 * the same turns of RUN_FRAMES frames, the same tags, the same InFlight records (made as
 * InFlight.__init__ makes them) and the same header slots. The tests of the core run on
 * both paths, and tests/test_initiator_compiled.py compares two cores step by step.
 *
 * The byte offsets are those of aoe.protocol.fastpath.ATA_ANSWER.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include "../_pyattr.h"
#include "../net/_mmsg_lengths.h"

#define ATA_HEADER_LEN 36
#define ETH_MIN_FRAME 60
#define ERR_STATUS 0x21 /* ERR | DF */
#define MIN_QUEUED_WINDOW 8.0

enum {
    A_REQ, A_NBYTES, A_TAG, A_IO, A_TARGET_MAC, A_LAST_RX, A_TIMEOUTS_IN_ROW, A_IS_WRITE,
    A_NODATA, A_MV, A_OFF, A_PATH, A_ANSWERED, A_TRIES, A_SENT, A_SRTT, A_SAMPLE_RTT, A_CWND,
    A_SSTHRESH, A_LIMIT, A_DELAY_TARGET, A_PSEQ, A_HIGH, A_DONE, A_OLD_TAGS, A_OUTSTANDING,
    A_BUDGET, A_FRAMES_OUT, A_REMAINING, A_ERROR, A_TXQ, A_POPLEFT, A_LBA, A_COUNT, A_FIRST,
    A_FAST, A_TX, A_PREFIX, A_INDEX, A_FRAME_SECTORS, A_AFLAGS, A_CMD, A_LBA_BITS, A_ADDR,
    A_NEXT_LBA, A_NEXT_OFF, A_QUEUED, A_BUF, A_DATA_ADDRS, A_DATA_LENS, A_FLUSH, A_APPEND,
    A_ROTATE, N_NAMES
};

static const char *names[N_NAMES] = {
    "req", "nbytes", "tag", "io", "target_mac", "last_rx", "timeouts_in_row", "is_write",
    "nodata", "mv", "off", "path", "answered", "tries", "sent", "srtt", "sample_rtt", "cwnd",
    "ssthresh", "limit", "delay_target", "pseq", "high", "done", "old_tags", "outstanding",
    "budget", "frames_out", "remaining", "error", "txq", "popleft", "lba", "count", "first",
    "fast", "tx", "prefix", "index", "frame_sectors", "aflags", "cmd", "lba_bits", "addr",
    "next_lba", "next_off", "queued", "buf", "data_addrs", "data_lens", "flush", "append",
    "rotate",
};

static PyObject *S[N_NAMES]; /* the names, interned once */

/* Where each name's slot lives in the four classes the loop touches (configure()): their
 * __slots__ member descriptors give offsets, so a field is read with a load instead of an
 * attribute lookup. -1: the class has no such slot. */
typedef struct {
    PyTypeObject *type;
    Py_ssize_t off[N_NAMES];
} cls_t;

enum { C_FRAME, C_REQ, C_PATH, C_BUDGET, N_CLASSES };
static cls_t K[N_CLASSES];
static int configured = 0;

static int is(PyObject *obj, int cls)
{
    return Py_TYPE(obj) == K[cls].type;
}

/* The field (borrowed), or NULL with AttributeError when it was never set. */
static PyObject *field(PyObject *obj, int cls, int name)
{
    PyObject *v = *(PyObject **)((char *)obj + K[cls].off[name]);
    if (v == NULL)
        PyErr_SetObject(PyExc_AttributeError, S[name]);
    return v;
}

static int set_field(PyObject *obj, int cls, int name, PyObject *v) /* steals v */
{
    if (v == NULL)
        return -1;
    PyObject **slot = (PyObject **)((char *)obj + K[cls].off[name]);
    Py_XSETREF(*slot, v);
    return 0;
}

static int get_ll(PyObject *obj, int cls, int name, long long *out)
{
    PyObject *v = field(obj, cls, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int get_double(PyObject *obj, int cls, int name, double *out)
{
    PyObject *v = field(obj, cls, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyFloat_AsDouble(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int get_true(PyObject *obj, int cls, int name, int *out)
{
    PyObject *v = field(obj, cls, name);
    if (v == NULL)
        return -1;
    *out = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
    return *out < 0 ? -1 : 0;
}

static int set_ll(PyObject *obj, int cls, int name, long long v)
{
    return set_field(obj, cls, name, PyLong_FromLongLong(v));
}

static int add_ll(PyObject *obj, int cls, int name, long long delta)
{
    long long v;
    if (get_ll(obj, cls, name, &v) < 0)
        return -1;
    return set_ll(obj, cls, name, v + delta);
}


typedef enum { TAKEN, LEFT, FAILED } outcome_t;

/* Everything about one clean answer, read before anything is changed. */
typedef struct {
    PyObject *frame, *tx_path, *req, *path, *mv;
    long long nbytes, off;
    int is_write, nodata;
} answer_t;

static void answer_clear(answer_t *a)
{
    Py_XDECREF(a->tx_path);
    Py_XDECREF(a->req);
    Py_XDECREF(a->path);
    Py_XDECREF(a->mv);
    memset(a, 0, sizeof *a);
}

/* Is this the clean answer? LEFT (for core.py) if not; FAILED on a Python error. */
static outcome_t check(answer_t *a, PyObject *tags, PyObject *paths, PyObject *port,
                       const uint8_t *f, long n, PyObject *tag_obj, uint32_t tag)
{
    a->frame = PyDict_GetItemWithError(tags, tag_obj); /* borrowed */
    if (a->frame == NULL)
        return PyErr_Occurred() ? FAILED : LEFT;
    if (!is(a->frame, C_FRAME))
        return LEFT;
    Py_ssize_t pi = (Py_ssize_t)(tag & 0xFF);
    if (pi >= PyList_GET_SIZE(paths))
        return LEFT;
    PyObject *tx_path = PyList_GET_ITEM(paths, pi);
    if (!is(tx_path, C_PATH))
        return LEFT;
    PyObject *io = field(tx_path, C_PATH, A_IO), *mac;
    if (io == NULL || (mac = field(tx_path, C_PATH, A_TARGET_MAC)) == NULL)
        return FAILED;
    if (io != port || !PyBytes_Check(mac) || PyBytes_GET_SIZE(mac) != 6
        || memcmp(PyBytes_AS_STRING(mac), f + 6, 6) != 0)
        return LEFT;
    long long frame_tag, rows;
    if (get_ll(a->frame, C_FRAME, A_TAG, &frame_tag) < 0
        || get_ll(tx_path, C_PATH, A_TIMEOUTS_IN_ROW, &rows) < 0)
        return FAILED;
    /* An earlier transmission's answer, a path coming back, an ATA error: core.py's. */
    if (frame_tag != (long long)tag || rows != 0 || (f[27] & ERR_STATUS))
        return LEFT;
    PyObject *req = field(a->frame, C_FRAME, A_REQ), *path;
    if (req == NULL || (path = field(a->frame, C_FRAME, A_PATH)) == NULL)
        return FAILED;
    if (!is(req, C_REQ) || !is(path, C_PATH))
        return LEFT;
    if (get_ll(a->frame, C_FRAME, A_NBYTES, &a->nbytes) < 0
        || get_true(req, C_REQ, A_IS_WRITE, &a->is_write) < 0
        || get_true(req, C_REQ, A_NODATA, &a->nodata) < 0)
        return FAILED;
    if (a->is_write || a->nodata) {
        if (n != ATA_HEADER_LEN && n > ETH_MIN_FRAME)
            return LEFT;
    } else if (n != ATA_HEADER_LEN + a->nbytes) {
        return LEFT;
    }
    if (a->nbytes && !a->is_write) {
        PyObject *mv = field(req, C_REQ, A_MV);
        if (mv == NULL || get_ll(a->frame, C_FRAME, A_OFF, &a->off) < 0)
            return FAILED;
        if (!PyMemoryView_Check(mv))
            return LEFT;
        Py_buffer *b = PyMemoryView_GET_BUFFER(mv);
        if (b->readonly || b->itemsize != 1 || b->ndim != 1 || !PyBuffer_IsContiguous(b, 'C')
            || a->off < 0 || a->off + a->nbytes > b->len)
            return LEFT;
        a->mv = mv;
        Py_INCREF(mv);
    }
    a->tx_path = tx_path;
    a->req = req;
    a->path = path;
    Py_INCREF(tx_path);
    Py_INCREF(req);
    Py_INCREF(path);
    return TAKEN;
}

/* The window step of on_answers, written out as there. */
static int window_step(PyObject *path, double rtt)
{
    double cwnd, delay_target, ssthresh;
    long long limit;
    if (get_double(path, C_PATH, A_CWND, &cwnd) < 0
        || get_double(path, C_PATH, A_DELAY_TARGET, &delay_target) < 0)
        return -1;
    if (rtt < delay_target || cwnd < MIN_QUEUED_WINDOW) {
        if (get_double(path, C_PATH, A_SSTHRESH, &ssthresh) < 0
            || get_ll(path, C_PATH, A_LIMIT, &limit) < 0)
            return -1;
        cwnd += cwnd < ssthresh ? 1.0 : 1.0 / cwnd;
        return set_field(path, C_PATH, A_CWND,
                         PyFloat_FromDouble(cwnd < (double)limit ? cwnd : (double)limit));
    }
    if (rtt > 2.0 * delay_target && cwnd > MIN_QUEUED_WINDOW)
        return set_field(path, C_PATH, A_CWND, PyFloat_FromDouble(cwnd - 1.0 / cwnd));
    return 0;
}

/* Forget the frame: done, every tag it had, its window and buffer slots, its request's
 * count; the request is complete when nothing of it is left. */
static int forget(answer_t *a, PyObject *tags, PyObject *completed, PyObject *tag_obj)
{
    Py_INCREF(Py_True);
    if (set_field(a->frame, C_FRAME, A_DONE, Py_True) < 0 || PyDict_DelItem(tags, tag_obj) < 0)
        return -1;
    PyObject *old = field(a->frame, C_FRAME, A_OLD_TAGS);
    if (old == NULL)
        return -1;
    if (old != Py_None) {
        Py_INCREF(old);
        PyObject *it = PyObject_GetIter(old);
        Py_DECREF(old);
        if (it == NULL)
            return -1;
        PyObject *t;
        while ((t = PyIter_Next(it)) != NULL) {
            int rc = PyDict_DelItem(tags, t);
            Py_DECREF(t);
            if (rc < 0)
                break;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
    }
    PyObject *budget = field(a->path, C_PATH, A_BUDGET);
    if (budget == NULL)
        return -1;
    if (!is(budget, C_BUDGET)) {
        PyErr_SetString(PyExc_TypeError, "a path's budget is not a MacBudget");
        return -1;
    }
    if (add_ll(a->path, C_PATH, A_OUTSTANDING, -1) < 0
        || add_ll(budget, C_BUDGET, A_OUTSTANDING, -1) < 0
        || add_ll(a->req, C_REQ, A_FRAMES_OUT, -1) < 0)
        return -1;
    long long frames_out, remaining;
    if (get_ll(a->req, C_REQ, A_FRAMES_OUT, &frames_out) < 0
        || get_ll(a->req, C_REQ, A_REMAINING, &remaining) < 0)
        return -1;
    if (frames_out == 0 && remaining == 0) {
        PyObject *err = field(a->req, C_REQ, A_ERROR);
        if (err == NULL)
            return -1;
        if (err == Py_None && PyList_Append(completed, a->req) < 0)
            return -1;
    }
    return 0;
}

/* Trim the path's sending order: pop the head when it was this frame and the next one
 * simply follows; otherwise leave it to SessionCore._drop_answered. */
static int trim(answer_t *a, PyObject *drop_answered, PyObject *now)
{
    PyObject *txq = field(a->path, C_PATH, A_TXQ);
    if (txq == NULL)
        return -1;
    Py_INCREF(txq);
    int rc = -1, moved_on = 0;
    Py_ssize_t len = PyObject_Length(txq);
    if (len < 0)
        goto done;
    if (len > 1) {
        PyObject *head = PySequence_GetItem(txq, 0);
        if (head == NULL)
            goto done;
        int is_frame = head == a->frame;
        Py_DECREF(head);
        if (is_frame) {
            PyObject *next = PySequence_GetItem(txq, 1);
            if (next == NULL)
                goto done;
            if (is(next, C_FRAME)) {
                long long pseq, high;
                int done_flag;
                PyObject *next_path;
                if (get_ll(next, C_FRAME, A_PSEQ, &pseq) == 0
                    && get_ll(a->path, C_PATH, A_HIGH, &high) == 0
                    && get_true(next, C_FRAME, A_DONE, &done_flag) == 0
                    && (next_path = field(next, C_FRAME, A_PATH)) != NULL)
                    moved_on = pseq >= high && !done_flag && next_path == a->path;
            }
            Py_DECREF(next);
            if (PyErr_Occurred())
                goto done;
        }
    }
    PyObject *r = moved_on ? PyObject_CallMethodNoArgs(txq, S[A_POPLEFT])
                           : PyObject_CallFunctionObjArgs(drop_answered, a->path, now, NULL);
    if (r == NULL)
        goto done;
    Py_DECREF(r);
    rc = 0;
done:
    Py_DECREF(txq);
    return rc;
}

/* The clean RTT samples of one path not folded yet: a batch folds them once, the latest
 * with the lowest, through PathWindow.sample_rtt (as core.py's loop does). */
typedef struct {
    PyObject *path; /* owned; NULL when nothing waits */
    double last, low;
} held_t;

static int fold(held_t *h)
{
    if (h->path == NULL)
        return 0;
    PyObject *path = h->path, *last = PyFloat_FromDouble(h->last), *low = NULL, *r = NULL;
    h->path = NULL;
    if (last != NULL && (low = PyFloat_FromDouble(h->low)) != NULL)
        r = PyObject_CallMethodObjArgs(path, S[A_SAMPLE_RTT], last, low, NULL);
    Py_XDECREF(last);
    Py_XDECREF(low);
    Py_DECREF(path);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Take one clean answer (checked by check()). */
static int take(answer_t *a, held_t *held, PyObject *tags, PyObject *completed,
                PyObject *drop_answered, PyObject *now, double now_d, const uint8_t *f,
                PyObject *tag_obj)
{
    Py_INCREF(now);
    if (set_field(a->tx_path, C_PATH, A_LAST_RX, now) < 0)
        return -1;
    if (a->mv != NULL)
        memcpy((char *)PyMemoryView_GET_BUFFER(a->mv)->buf + a->off, f + ATA_HEADER_LEN,
               (size_t)a->nbytes);
    if (add_ll(a->path, C_PATH, A_ANSWERED, 1) < 0)
        return -1;
    long long tries, pseq, high;
    double rtt;
    if (get_ll(a->frame, C_FRAME, A_TRIES, &tries) < 0)
        return -1;
    if (tries == 1) {
        double sent;
        if (get_double(a->frame, C_FRAME, A_SENT, &sent) < 0)
            return -1;
        rtt = now_d - sent;
        if (held->path != a->path) {
            if (fold(held) < 0)
                return -1;
            Py_INCREF(a->path);
            held->path = a->path;
            held->low = rtt;
        } else if (rtt < held->low) {
            held->low = rtt;
        }
        held->last = rtt;
    } else if (get_double(a->path, C_PATH, A_SRTT, &rtt) < 0) {
        return -1;
    }
    if (window_step(a->path, rtt) < 0)
        return -1;
    if (get_ll(a->frame, C_FRAME, A_PSEQ, &pseq) < 0
        || get_ll(a->path, C_PATH, A_HIGH, &high) < 0)
        return -1;
    if (pseq > high && set_field(a->path, C_PATH, A_HIGH, PyLong_FromLongLong(pseq)) < 0)
        return -1;
    if (forget(a, tags, completed, tag_obj) < 0)
        return -1;
    return trim(a, drop_answered, now);
}

/* The slots each class must have, by the names above. */
static const int needs[N_CLASSES][24] = {
    [C_FRAME] = {A_REQ, A_NBYTES, A_TAG, A_OFF, A_PATH, A_TRIES, A_SENT, A_PSEQ, A_DONE,
                 A_OLD_TAGS, A_LBA, A_COUNT, A_FIRST, A_FAST, -1},
    [C_REQ] = {A_IS_WRITE, A_NODATA, A_MV, A_FRAMES_OUT, A_REMAINING, A_ERROR, A_AFLAGS, A_CMD,
               A_LBA_BITS, A_ADDR, A_NEXT_LBA, A_NEXT_OFF, -1},
    [C_PATH] = {A_IO, A_TARGET_MAC, A_LAST_RX, A_TIMEOUTS_IN_ROW, A_ANSWERED, A_SRTT, A_CWND,
                A_SSTHRESH, A_LIMIT, A_DELAY_TARGET, A_HIGH, A_OUTSTANDING, A_BUDGET, A_TXQ,
                A_TX, A_PREFIX, A_INDEX, A_FRAME_SECTORS, A_PSEQ, A_SENT, -1},
    [C_BUDGET] = {A_OUTSTANDING, -1},
};

/* --- cutting frames (SessionCore._cut) ------------------------------------------------ */

#define BATCH 64
#define TX_HEAD 64
#define RUN_FRAMES 16
#define TAG_SEQ_MASK 0x7FFFFF
#define SECTOR_SIZE 512

/* An outbox's per-slot payload addresses or lengths: a buffer of unsigned 64-bit ints
 * (GatherBatch's strided views) or any sequence of ints (a test's lists). */
typedef struct {
    PyObject *obj;
    Py_buffer view;
    int has_view;
} slots_t;

static int slots_open(slots_t *s, PyObject *obj)
{
    s->obj = obj;
    s->has_view = 0;
    if (PyObject_CheckBuffer(obj)
        && PyObject_GetBuffer(obj, &s->view, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE) == 0) {
        if (s->view.ndim == 1 && s->view.itemsize == 8 && s->view.format != NULL
            && strcmp(s->view.format, "Q") == 0 && s->view.shape[0] >= BATCH) {
            s->has_view = 1;
            return 0;
        }
        PyBuffer_Release(&s->view);
    }
    PyErr_Clear();
    return 0;
}

static int slots_set(slots_t *s, Py_ssize_t i, unsigned long long v)
{
    if (s->has_view) {
        *(unsigned long long *)((char *)s->view.buf + i * s->view.strides[0]) = v;
        return 0;
    }
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o == NULL)
        return -1;
    int rc = PySequence_SetItem(s->obj, i, o);
    Py_DECREF(o);
    return rc;
}

static void slots_close(slots_t *s)
{
    if (s->has_view)
        PyBuffer_Release(&s->view);
}

/* A new InFlight, as InFlight.__init__ makes it: a frame first sent on ``path`` at ``now``. */
static PyObject *new_frame(PyObject *req, long long lba, long long count, long long off,
                           long long nbytes, PyObject *path, PyObject *tag, long long pseq,
                           PyObject *now)
{
    PyTypeObject *type = K[C_FRAME].type;
    PyObject *f = type->tp_alloc(type, 0);
    if (f == NULL)
        return NULL;
    Py_INCREF(req);
    Py_INCREF(path);
    Py_INCREF(tag);
    Py_INCREF(Py_None);
    Py_INCREF(now);
    Py_INCREF(now);
    Py_INCREF(Py_False);
    Py_INCREF(Py_False);
    if (set_field(f, C_FRAME, A_REQ, req) < 0 || set_ll(f, C_FRAME, A_LBA, lba) < 0
        || set_ll(f, C_FRAME, A_COUNT, count) < 0 || set_ll(f, C_FRAME, A_OFF, off) < 0
        || set_ll(f, C_FRAME, A_NBYTES, nbytes) < 0 || set_field(f, C_FRAME, A_PATH, path) < 0
        || set_field(f, C_FRAME, A_TAG, tag) < 0 || set_field(f, C_FRAME, A_OLD_TAGS, Py_None) < 0
        || set_field(f, C_FRAME, A_SENT, now) < 0 || set_field(f, C_FRAME, A_FIRST, now) < 0
        || set_ll(f, C_FRAME, A_TRIES, 1) < 0 || set_ll(f, C_FRAME, A_PSEQ, pseq) < 0
        || set_field(f, C_FRAME, A_DONE, Py_False) < 0 || set_field(f, C_FRAME, A_FAST, Py_False) < 0) {
        Py_DECREF(f);
        return NULL;
    }
    return f;
}

/* The outbox of one path while frames are cut into it. */
typedef struct {
    PyObject *tx;
    Py_buffer buf;
    slots_t addrs, lens;
    Py_ssize_t q;
} outbox_t;

static int outbox_open(outbox_t *o, PyObject *tx)
{
    memset(o, 0, sizeof *o);
    o->tx = tx;
    long long q;
    if (attr_ll(tx, names[A_QUEUED], &q) < 0)
        return -1;
    o->q = (Py_ssize_t)q;
    PyObject *buf = PyObject_GetAttr(tx, S[A_BUF]);
    if (buf == NULL)
        return -1;
    int rc = PyObject_GetBuffer(buf, &o->buf, PyBUF_WRITABLE);
    Py_DECREF(buf);
    if (rc < 0)
        return -1;
    if (o->buf.len < BATCH * TX_HEAD) {
        PyBuffer_Release(&o->buf);
        PyErr_SetString(PyExc_ValueError, "an outbox smaller than BATCH slots");
        return -1;
    }
    PyObject *a = PyObject_GetAttr(tx, S[A_DATA_ADDRS]), *l = NULL;
    if (a == NULL || (l = PyObject_GetAttr(tx, S[A_DATA_LENS])) == NULL) {
        Py_XDECREF(a);
        PyBuffer_Release(&o->buf);
        return -1;
    }
    slots_open(&o->addrs, a);
    slots_open(&o->lens, l);
    Py_DECREF(a); /* the outbox keeps them alive */
    Py_DECREF(l);
    return 0;
}

static void outbox_close(outbox_t *o)
{
    slots_close(&o->addrs);
    slots_close(&o->lens);
    PyBuffer_Release(&o->buf);
}

static int outbox_flush(outbox_t *o)
{
    if (attr_set_ll(o->tx, names[A_QUEUED], o->q) < 0)
        return -1;
    PyObject *r = PyObject_CallMethodNoArgs(o->tx, S[A_FLUSH]);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    o->q = 0;
    return 0;
}

/* One request header in slot q, as ATA_REQUEST packs it. */
static int put_header(outbox_t *o, const char *prefix, uint32_t tag, int aflags, int count,
                      int cmd, unsigned long long wire_lba)
{
    if (wire_lba >> 48) {
        PyErr_SetString(PyExc_OverflowError, "LBA beyond 48 bits");
        return -1;
    }
    uint8_t *h = (uint8_t *)o->buf.buf + o->q * TX_HEAD;
    memcpy(h, prefix, 20);
    h[20] = tag & 0xFF;
    h[21] = (tag >> 8) & 0xFF;
    h[22] = (tag >> 16) & 0xFF;
    h[23] = (tag >> 24) & 0xFF;
    h[24] = (uint8_t)aflags;
    h[25] = 0;
    h[26] = (uint8_t)count;
    h[27] = (uint8_t)cmd;
    for (int b = 0; b < 6; b++)
        h[28 + b] = (wire_lba >> (8 * b)) & 0xFF;
    h[34] = h[35] = 0;
    return 0;
}

typedef struct {
    long long aflags, cmd, bits, addr, lba, off, remaining;
    int nodata, is_write;
} request_t;

static int request_read(PyObject *req, request_t *r)
{
    return get_true(req, C_REQ, A_NODATA, &r->nodata) < 0
           || get_true(req, C_REQ, A_IS_WRITE, &r->is_write) < 0
           || get_ll(req, C_REQ, A_REMAINING, &r->remaining) < 0
           || get_ll(req, C_REQ, A_AFLAGS, &r->aflags) < 0
           || get_ll(req, C_REQ, A_CMD, &r->cmd) < 0
           || get_ll(req, C_REQ, A_LBA_BITS, &r->bits) < 0
           || get_ll(req, C_REQ, A_ADDR, &r->addr) < 0
           || get_ll(req, C_REQ, A_NEXT_LBA, &r->lba) < 0
           || get_ll(req, C_REQ, A_NEXT_OFF, &r->off) < 0 ? -1 : 0;
}

PyDoc_STRVAR(cut_doc,
"cut(pending, tags, path, room, now, seq, turn) -> (seq, turn)\n\n"
"SessionCore._cut: up to room frames of the pending requests into path's outbox.");

static PyObject *cut(PyObject *self, PyObject *args)
{
    PyObject *pending, *tags, *path, *now;
    Py_ssize_t room;
    long long seq, run;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO!OnOLL", &pending, &PyDict_Type, &tags, &path, &room, &now,
                          &seq, &run))
        return NULL;
    if (!configured || !is(path, C_PATH)) {
        PyErr_SetString(PyExc_TypeError, "cut() needs configure() and a PathWindow");
        return NULL;
    }
    long long index, step, pseq;
    PyObject *tx = field(path, C_PATH, A_TX), *txq, *prefix_obj;
    if (tx == NULL || (txq = field(path, C_PATH, A_TXQ)) == NULL
        || (prefix_obj = field(path, C_PATH, A_PREFIX)) == NULL
        || get_ll(path, C_PATH, A_INDEX, &index) < 0
        || get_ll(path, C_PATH, A_FRAME_SECTORS, &step) < 0
        || get_ll(path, C_PATH, A_PSEQ, &pseq) < 0)
        return NULL;
    if (!PyBytes_Check(prefix_obj) || PyBytes_GET_SIZE(prefix_obj) != 20) {
        PyErr_SetString(PyExc_TypeError, "a path's prefix is 20 bytes");
        return NULL;
    }
    Py_INCREF(tx);
    Py_INCREF(txq);
    Py_INCREF(prefix_obj);
    const char *prefix = PyBytes_AS_STRING(prefix_obj);
    outbox_t o;
    if (outbox_open(&o, tx) < 0) {
        Py_DECREF(tx);
        Py_DECREF(txq);
        Py_DECREF(prefix_obj);
        return NULL;
    }
    Py_ssize_t done = 0;
    int failed = 0;
    while (!failed && done < room) {
        Py_ssize_t waiting = PyObject_Length(pending);
        if (waiting < 0) {
            failed = 1;
            break;
        }
        if (waiting == 0)
            break;
        if (o.q == BATCH && outbox_flush(&o) < 0) {
            failed = 1;
            break;
        }
        PyObject *req = PySequence_GetItem(pending, 0);
        if (req == NULL) {
            failed = 1;
            break;
        }
        request_t r;
        if (!is(req, C_REQ)) {
            PyErr_SetString(PyExc_TypeError, "a pending request is not a Request");
            failed = 1;
        } else if (request_read(req, &r) < 0) {
            failed = 1;
        }
        if (failed) {
            Py_DECREF(req);
            break;
        }
        long long most, k;
        if (r.nodata) {
            most = 0;
            k = 1; /* a flush: one frame, no sectors */
        } else {
            most = step;
            k = (r.remaining + step - 1) / step;
        }
        int several = waiting > 1;
        if (several && k > RUN_FRAMES - run)
            k = RUN_FRAMES - run;
        if (k > room - done)
            k = room - done;
        if (k > BATCH - o.q)
            k = BATCH - o.q;
        for (long long j = 0; j < k && !failed; j++) {
            long long n = r.remaining < most ? r.remaining : most;
            long long nbytes = n * SECTOR_SIZE;
            seq = (seq + 1) & TAG_SEQ_MASK;
            uint32_t tag = (uint32_t)((seq << 8) | index);
            pseq += 1;
            PyObject *tag_obj = PyLong_FromUnsignedLong(tag);
            PyObject *frame = tag_obj == NULL ? NULL
                : new_frame(req, r.lba, n, r.off, nbytes, path, tag_obj, pseq, now);
            if (frame == NULL || PyDict_SetItem(tags, tag_obj, frame) < 0) {
                failed = 1;
            } else {
                PyObject *rv = PyObject_CallMethodOneArg(txq, S[A_APPEND], frame);
                if (rv == NULL)
                    failed = 1;
                Py_XDECREF(rv);
            }
            Py_XDECREF(frame);
            Py_XDECREF(tag_obj);
            if (failed
                || put_header(&o, prefix, tag, (int)r.aflags, (int)n, (int)r.cmd,
                              (unsigned long long)(r.lba | r.bits)) < 0
                || slots_set(&o.lens, o.q, r.is_write ? (unsigned long long)nbytes : 0) < 0
                || (r.is_write
                    && slots_set(&o.addrs, o.q, (unsigned long long)(r.addr + r.off)) < 0)) {
                failed = 1;
                break;
            }
            o.q++;
            r.lba += n;
            r.off += nbytes;
            r.remaining -= n;
        }
        if (!failed) {
            done += k;
            long long frames_out;
            if (r.nodata)
                r.remaining = 0;
            if (set_ll(req, C_REQ, A_NEXT_LBA, r.lba) < 0
                || set_ll(req, C_REQ, A_NEXT_OFF, r.off) < 0
                || get_ll(req, C_REQ, A_FRAMES_OUT, &frames_out) < 0
                || set_ll(req, C_REQ, A_FRAMES_OUT, frames_out + k) < 0
                || set_ll(req, C_REQ, A_REMAINING, r.remaining) < 0)
                failed = 1;
        }
        Py_DECREF(req);
        if (failed)
            break;
        PyObject *rv = NULL;
        if (r.remaining == 0) {
            rv = PyObject_CallMethodNoArgs(pending, S[A_POPLEFT]);
            run = 0;
        } else if (several) {
            run += k;
            if (run >= RUN_FRAMES) {
                PyObject *minus_one = PyLong_FromLong(-1);
                rv = minus_one == NULL ? NULL
                    : PyObject_CallMethodOneArg(pending, S[A_ROTATE], minus_one);
                Py_XDECREF(minus_one);
                run = 0;
            } else {
                rv = Py_None;
                Py_INCREF(rv);
            }
        } else {
            rv = Py_None;
            Py_INCREF(rv);
        }
        if (rv == NULL)
            failed = 1;
        Py_XDECREF(rv);
    }
    outbox_close(&o);
    PyObject *budget = NULL;
    if (!failed
        && (attr_set_ll(tx, names[A_QUEUED], o.q) < 0 || set_ll(path, C_PATH, A_PSEQ, pseq) < 0
            || add_ll(path, C_PATH, A_OUTSTANDING, done) < 0
            || (budget = field(path, C_PATH, A_BUDGET)) == NULL || !is(budget, C_BUDGET)
            || add_ll(budget, C_BUDGET, A_OUTSTANDING, done) < 0
            || add_ll(path, C_PATH, A_SENT, done) < 0)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a path's budget is not a MacBudget");
        failed = 1;
    }
    Py_DECREF(tx);
    Py_DECREF(txq);
    Py_DECREF(prefix_obj);
    if (failed)
        return NULL;
    return Py_BuildValue("(LL)", seq, run);
}

PyDoc_STRVAR(configure_doc,
"configure(InFlight, Request, PathWindow, MacBudget)\n\n"
"Learn where the fields the loop uses live in these classes' __slots__.");

static PyObject *configure(PyObject *self, PyObject *args)
{
    PyObject *classes[N_CLASSES];
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyType_Type, &classes[C_FRAME], &PyType_Type,
                          &classes[C_REQ], &PyType_Type, &classes[C_PATH], &PyType_Type,
                          &classes[C_BUDGET]))
        return NULL;
    cls_t learned[N_CLASSES];
    for (int c = 0; c < N_CLASSES; c++) {
        PyTypeObject *type = (PyTypeObject *)classes[c];
        learned[c].type = type;
        for (int k = 0; k < N_NAMES; k++)
            learned[c].off[k] = -1;
        for (int j = 0; needs[c][j] >= 0; j++) {
            int name = needs[c][j];
            PyObject *d = PyDict_GetItemWithError(type->tp_dict, S[name]); /* borrowed */
            if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_TypeError, "%s.%U is not a slot", type->tp_name,
                                 S[name]);
                return NULL;
            }
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
                PyErr_Format(PyExc_TypeError, "%s.%U is not a plain slot", type->tp_name,
                             S[name]);
                return NULL;
            }
            learned[c].off[name] = m->offset;
        }
    }
    for (int c = 0; c < N_CLASSES; c++) {
        Py_XDECREF(K[c].type);
        Py_INCREF(learned[c].type);
        K[c] = learned[c];
    }
    configured = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(answers_doc,
"answers(tags, paths, completed, drop_answered, now, port, buf, lengths, start, count,\n"
"        size, rx_ok) -> (next, answers)\n\n"
"Take the clean answers among frames start..count-1 of a received batch (frame i is\n"
"lengths[i] bytes at i * size in buf) as SessionCore.on_answers does, up to the first\n"
"other frame: next is its index (count when none), not yet touched.");

static PyObject *answers(PyObject *self, PyObject *args)
{
    PyObject *tags, *paths, *completed, *drop_answered, *now, *port, *buf_obj, *lengths_obj;
    Py_ssize_t start, count, size;
    const char *rx_ok;
    Py_ssize_t rx_ok_len;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!O!OOOOOnnny#", &PyDict_Type, &tags, &PyList_Type, &paths,
                          &PyList_Type, &completed, &drop_answered, &now, &port,
                          &buf_obj, &lengths_obj, &start, &count, &size, &rx_ok, &rx_ok_len))
        return NULL;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "answers() before configure()");
        return NULL;
    }
    if (rx_ok_len != 8 || start < 0 || size <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad answers arguments");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(buf_obj, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    lengths_t lengths;
    if (lengths_open(&lengths, lengths_obj) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    double now_d = PyFloat_AsDouble(now);
    if (now_d == -1.0 && PyErr_Occurred()) {
        lengths_close(&lengths);
        PyBuffer_Release(&buf);
        return NULL;
    }
    Py_ssize_t i = start, taken = 0;
    int failed = 0;
    held_t held = {NULL, 0.0, 0.0};
    for (; i < count; i++) {
        long n = lengths_get(&lengths, i);
        if (n == -1 && PyErr_Occurred()) {
            failed = 1;
            break;
        }
        Py_ssize_t base = i * size;
        if (n < ATA_HEADER_LEN || n > size || base + size > buf.len)
            break;
        const uint8_t *f = (const uint8_t *)buf.buf + base;
        if (memcmp(f + 12, rx_ok, 8) != 0)
            break;
        uint32_t tag = (uint32_t)f[20] | (uint32_t)f[21] << 8 | (uint32_t)f[22] << 16
                       | (uint32_t)f[23] << 24;
        PyObject *tag_obj = PyLong_FromUnsignedLong(tag);
        if (tag_obj == NULL) {
            failed = 1;
            break;
        }
        answer_t a;
        memset(&a, 0, sizeof a);
        outcome_t o = check(&a, tags, paths, port, f, n, tag_obj, tag);
        if (o == TAKEN) {
            Py_INCREF(a.frame); /* tags held it; forget() drops that reference */
            if (take(&a, &held, tags, completed, drop_answered, now, now_d, f, tag_obj) < 0)
                o = FAILED;
            else
                taken++;
            Py_DECREF(a.frame);
        }
        answer_clear(&a);
        Py_DECREF(tag_obj);
        if (o == FAILED) {
            failed = 1;
            break;
        }
        if (o == LEFT)
            break;
    }
    lengths_close(&lengths);
    PyBuffer_Release(&buf);
    if (failed) {
        Py_CLEAR(held.path);
        return NULL;
    }
    if (fold(&held) < 0)
        return NULL;
    return Py_BuildValue("(nn)", i, taken);
}

static PyMethodDef methods[] = {
    {"answers", answers, METH_VARARGS, answers_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {"cut", cut, METH_VARARGS, cut_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_compiled",
    "The session core's per-frame loops, compiled (optional; core.py is the reference).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__compiled(void)
{
    for (int k = 0; k < N_NAMES; k++)
        if ((S[k] = PyUnicode_InternFromString(names[k])) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
