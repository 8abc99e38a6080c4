/*
 * The key filter's bit work in C: storage/keyfilter.py's `_add` and `may_hold`, bit for bit.
 *
 *   add(bits, mask, keys)       sets the three bits of each key of the list `keys` in the bytearray `bits`
 *   may_hold(segments, key)     whether some (bits, mask, capacity) of the list `segments` has all three
 *
 * A key's bits are those storage/keyfilter.py computes from Python's own hash of it: with h the hash as
 * an unsigned 64-bit number, a = h & 0xffffffff and b = (h >> 32) | 1, the bits (a + i * b) & mask for
 * i = 0, 1, 2. So a filter filled by one and read by the other answers the same (tests/test_keyfilter.py
 * compares them). Each call holds the interpreter lock throughout, as the Python code's steps do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* A key's a and b, or -1 with an exception set (a key that cannot be hashed). */
static int spread(PyObject *key, uint64_t *a, uint64_t *b) {
    Py_hash_t h = PyObject_Hash(key);
    if (h == -1 && PyErr_Occurred()) return -1;
    uint64_t u = (uint64_t)h;
    *a = u & 0xffffffffu;
    *b = (u >> 32) | 1;
    return 0;
}

/* The bits and mask of a segment, checked: the mask must address a bit inside the array. */
static int segment(PyObject *bits, PyObject *mask, unsigned char **data, uint64_t *m) {
    if (!PyByteArray_Check(bits) || !PyLong_Check(mask)) {
        PyErr_SetString(PyExc_TypeError, "a segment is a bytearray and an int mask");
        return -1;
    }
    *m = PyLong_AsUnsignedLongLong(mask);
    if (*m == (uint64_t)-1 && PyErr_Occurred()) return -1;
    if ((*m >> 3) >= (uint64_t)PyByteArray_GET_SIZE(bits)) {
        PyErr_SetString(PyExc_ValueError, "the mask addresses bits past the segment");
        return -1;
    }
    *data = (unsigned char *)PyByteArray_AS_STRING(bits);
    return 0;
}

static PyObject *add(PyObject *self, PyObject *args) {
    PyObject *bits, *mask, *keys;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOO!", &bits, &mask, &PyList_Type, &keys)) return NULL;
    unsigned char *data;
    uint64_t m;
    if (segment(bits, mask, &data, &m) < 0) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        uint64_t a, b;
        if (spread(PyList_GET_ITEM(keys, i), &a, &b) < 0) return NULL;
        for (int j = 0; j < 3; j++) {
            uint64_t at = (a + (uint64_t)j * b) & m;
            data[at >> 3] |= (unsigned char)(1u << (at & 7));
        }
    }
    Py_RETURN_NONE;
}

static PyObject *may_hold(PyObject *self, PyObject *args) {
    PyObject *segments, *key;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &segments, &key)) return NULL;
    uint64_t a, b;
    if (spread(key, &a, &b) < 0) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(segments); i++) {
        PyObject *seg = PyList_GET_ITEM(segments, i);
        if (!PyTuple_Check(seg) || PyTuple_GET_SIZE(seg) < 2) {
            PyErr_SetString(PyExc_TypeError, "a segment is a (bits, mask, capacity) tuple");
            return NULL;
        }
        unsigned char *data;
        uint64_t m;
        if (segment(PyTuple_GET_ITEM(seg, 0), PyTuple_GET_ITEM(seg, 1), &data, &m) < 0) return NULL;
        int all = 1;
        for (int j = 0; j < 3 && all; j++) {
            uint64_t at = (a + (uint64_t)j * b) & m;
            all = (data[at >> 3] >> (at & 7)) & 1;
        }
        if (all) Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"add", add, METH_VARARGS, "add(bits, mask, keys): set the bits of each key in one segment."},
    {"may_hold", may_hold, METH_VARARGS, "may_hold(segments, key): whether some segment has all of key's bits."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_keyfilter_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__keyfilter_native(void) { return PyModule_Create(&module); }
