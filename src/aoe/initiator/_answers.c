/*
 * aoe.initiator._answers: the session core's answer loop, compiled.
 *
 * An optional accelerator for SessionCore.on_answers (core.py), which stays the
 * reference and the owner of every rule: this module takes only the clean answer, the one
 * that loop handles most often (a good ATA answer from the right MAC on the right port,
 * of the right length, to the latest transmission of an outstanding frame, on a path
 * that has not been timing out). For it, it does what core.py does, in the same order:
 * read data copied into the caller's buffer, the path's answered count, the RTT sample
 * (through PathWindow.sample_rtt itself), the window step written out in on_answers, the
 * path's high-water mark, the frame forgotten with all its tags, the request completed,
 * the sending order trimmed (through SessionCore._drop_answered unless the head simply
 * moves on). At any other frame it stops before touching anything and returns its index;
 * core.py handles that frame and calls again for the rest, so answers are taken in
 * arrival order. The tests of the core run on both paths.
 *
 * The byte offsets are those of aoe.protocol.fastpath.ATA_ANSWER.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h>

#include <stdint.h>
#include <string.h>

#define ATA_HEADER_LEN 36
#define ETH_MIN_FRAME 60
#define ERR_STATUS 0x21 /* ERR | DF */
#define MIN_QUEUED_WINDOW 8.0

enum {
    A_REQ, A_NBYTES, A_TAG, A_IO, A_TARGET_MAC, A_LAST_RX, A_TIMEOUTS_IN_ROW, A_IS_WRITE,
    A_NODATA, A_MV, A_OFF, A_PATH, A_ANSWERED, A_TRIES, A_SENT, A_SRTT, A_SAMPLE_RTT, A_CWND,
    A_SSTHRESH, A_LIMIT, A_DELAY_TARGET, A_PSEQ, A_HIGH, A_DONE, A_OLD_TAGS, A_OUTSTANDING,
    A_BUDGET, A_FRAMES_OUT, A_REMAINING, A_ERROR, A_TXQ, A_POPLEFT, N_NAMES
};

static const char *names[N_NAMES] = {
    "req", "nbytes", "tag", "io", "target_mac", "last_rx", "timeouts_in_row", "is_write",
    "nodata", "mv", "off", "path", "answered", "tries", "sent", "srtt", "sample_rtt", "cwnd",
    "ssthresh", "limit", "delay_target", "pseq", "high", "done", "old_tags", "outstanding",
    "budget", "frames_out", "remaining", "error", "txq", "popleft",
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

static int add_ll(PyObject *obj, int cls, int name, long long delta)
{
    long long v;
    if (get_ll(obj, cls, name, &v) < 0)
        return -1;
    return set_field(obj, cls, name, PyLong_FromLongLong(v + delta));
}

/* Received lengths: a buffer of unsigned ints (recvmmsg's, strided) or a sequence. */
typedef struct {
    Py_buffer view;
    int has_view;
    PyObject *seq;
} lengths_t;

static int lengths_open(lengths_t *l, PyObject *obj)
{
    l->has_view = 0;
    l->seq = NULL;
    if (PyObject_CheckBuffer(obj)
        && PyObject_GetBuffer(obj, &l->view, PyBUF_STRIDES | PyBUF_FORMAT) == 0) {
        if (l->view.ndim == 1 && l->view.itemsize == 4 && l->view.format != NULL
            && strcmp(l->view.format, "I") == 0) {
            l->has_view = 1;
            return 0;
        }
        PyBuffer_Release(&l->view);
    }
    PyErr_Clear();
    l->seq = PySequence_Fast(obj, "lengths must be a sequence of ints");
    return l->seq == NULL ? -1 : 0;
}

static long lengths_get(lengths_t *l, Py_ssize_t i)
{
    if (l->has_view) {
        if (i >= l->view.shape[0])
            return -1;
        return (long)*(const uint32_t *)((const char *)l->view.buf + i * l->view.strides[0]);
    }
    if (i >= PySequence_Fast_GET_SIZE(l->seq))
        return -1;
    return PyLong_AsLong(PySequence_Fast_GET_ITEM(l->seq, i));
}

static void lengths_close(lengths_t *l)
{
    if (l->has_view)
        PyBuffer_Release(&l->view);
    Py_XDECREF(l->seq);
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

/* Take one clean answer (checked by check()). */
static int take(answer_t *a, PyObject *tags, PyObject *completed, PyObject *drop_answered,
                PyObject *now, double now_d, const uint8_t *f, PyObject *tag_obj)
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
        PyObject *sample = PyFloat_FromDouble(rtt);
        if (sample == NULL)
            return -1;
        PyObject *r = PyObject_CallMethodOneArg(a->path, S[A_SAMPLE_RTT], sample);
        Py_DECREF(sample);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
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
static const int needs[N_CLASSES][16] = {
    [C_FRAME] = {A_REQ, A_NBYTES, A_TAG, A_OFF, A_PATH, A_TRIES, A_SENT, A_PSEQ, A_DONE,
                 A_OLD_TAGS, -1},
    [C_REQ] = {A_IS_WRITE, A_NODATA, A_MV, A_FRAMES_OUT, A_REMAINING, A_ERROR, -1},
    [C_PATH] = {A_IO, A_TARGET_MAC, A_LAST_RX, A_TIMEOUTS_IN_ROW, A_ANSWERED, A_SRTT, A_CWND,
                A_SSTHRESH, A_LIMIT, A_DELAY_TARGET, A_HIGH, A_OUTSTANDING, A_BUDGET, A_TXQ,
                -1},
    [C_BUDGET] = {A_OUTSTANDING, -1},
};

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
            if (take(&a, tags, completed, drop_answered, now, now_d, f, tag_obj) < 0)
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
    if (failed)
        return NULL;
    return Py_BuildValue("(nn)", i, taken);
}

static PyMethodDef methods[] = {
    {"answers", answers, METH_VARARGS, answers_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_answers",
    "The session core's answer loop, compiled (optional; core.py is the reference).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__answers(void)
{
    for (int k = 0; k < N_NAMES; k++)
        if ((S[k] = PyUnicode_InternFromString(names[k])) == NULL)
            return NULL;
    return PyModule_Create(&module);
}
