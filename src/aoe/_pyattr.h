/*
 * Attributes of ordinary Python objects read and written by name, for the compiled loops
 * (target/_burst.c, initiator/_compiled.c) where a lookup per call, not per frame, is
 * cheap enough. Fields read per frame go through the classes' slot offsets instead.
 */
#ifndef AOE_PYATTR_H
#define AOE_PYATTR_H

#include <Python.h>

static inline int attr_ll(PyObject *obj, const char *name, long long *out)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static inline int attr_bool(PyObject *obj, const char *name, int *out)
{
    PyObject *v = PyObject_GetAttrString(obj, name);
    if (v == NULL)
        return -1;
    *out = PyObject_IsTrue(v);
    Py_DECREF(v);
    return *out < 0 ? -1 : 0;
}

static inline int attr_set_ll(PyObject *obj, const char *name, long long value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttrString(obj, name, v);
    Py_DECREF(v);
    return rc;
}

#endif
