/*
 * The received lengths of a batch, as the compiled loops read them: FrameBatch.lengths
 * (aoe/net/mmsg.py: recvmmsg's msg_len fields, a strided view of unsigned ints) or any
 * sequence of ints (tests). Included by target/_burst.c and initiator/_compiled.c.
 */
#ifndef AOE_MMSG_LENGTHS_H
#define AOE_MMSG_LENGTHS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

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

/* Frame i's length; -1 past the end (or, with a Python error set, for a bad item). */
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

#endif
