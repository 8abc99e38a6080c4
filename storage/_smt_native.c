/*
 * The state tree's update in C: storage/smt.py's `_Update.apply` from a root, node for node.
 *
 * The same nodes and roots as the Python code (tests/test_smt_native.py compares the two on random
 * trees and updates); it exists for speed only, since every block's execution rebuilds the tree's
 * changed paths, several hashes per changed key. SHA-256 comes from libcrypto (ler/_sha256.h); without
 * it the module does not load and storage/smt.py keeps to Python.
 *
 *   update(get, checked, root, items) -> (new_root, new_nodes)
 *
 * get(h) returns the stored encoding of node h or None; checked(h, data) returns `data` when it is a
 * well-formed node and raises otherwise (storage/smt.py's `_checked`, so the errors are the same).
 * `items` is a list of (key, value or None) sorted by key, keys 32 bytes, already checked by the caller.
 * `new_nodes` is a dict hash -> encoding of every node the update made.
 *
 *   merkle_root(leaves) -> root
 *
 * Also here, for its SHA-256: a block's tx_root (ler/block.py's `tx_root`, RFC 6962 over the tx ids),
 * which storage/chain.py computes for every block it makes or checks; tests/test_smt_native.py compares
 * it with ler/merkle.py's `root`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../ler/_sha256.h"

#define KEY 32
#define NODE_LEN 65
#define TAG_LEAF 0x00
#define TAG_NODE 0x01

static PyObject *EMPTY;  /* 32 zero bytes */

static int is_empty(PyObject *h) {
    return PyBytes_GET_SIZE(h) == KEY && memcmp(PyBytes_AS_STRING(h), PyBytes_AS_STRING(EMPTY), KEY) == 0;
}

static int bit(const unsigned char *key, int i) { return (key[i >> 3] >> (7 - (i & 7))) & 1; }

typedef struct {
    PyObject *get, *checked, *new_nodes;
} Upd;

/* A subtree: its hash (a new reference) and whether it is one leaf (-1: not known). */
typedef struct { PyObject *h; int leaf; } Sub;

static Sub fail(void) { Sub s = {NULL, 0}; return s; }

/* An entry to build from: key and value (borrowed, alive for the whole update). */
typedef struct { const unsigned char *key; PyObject *value; } Entry;

/* Whether `data` is a stored node's encoding: an inner node, or a leaf. */
static int well_formed(PyObject *data) {
    if (!PyBytes_Check(data)) return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    return (n == NODE_LEN && d[0] == TAG_NODE) || (n >= 1 + KEY && d[0] == TAG_LEAF);
}

/* The stored node `h`, checked (a new reference), or NULL with an exception set. */
static PyObject *load(Upd *u, PyObject *h) {
    PyObject *data = PyObject_CallOneArg(u->get, h);
    if (data == NULL || well_formed(data)) return data;
    /* Missing or malformed: `checked` raises the tree's own error for it. */
    PyObject *r = PyObject_CallFunctionObjArgs(u->checked, h, data, NULL);
    Py_DECREF(data);
    if (r != NULL && !well_formed(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_SystemError, "a malformed state node passed its check");
        return NULL;
    }
    return r;
}

/* NodeStoreError (storage/smt.py's, loaded by then) for a path deeper than keys have bits: only a
 * damaged or altered store can hold one, e.g. an inner node stored under a hash that one of its children
 * repeats. */
static void too_deep(PyObject *h) {
    PyObject *mod = PyImport_ImportModule("storage.smt");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "NodeStoreError") : NULL;
    Py_XDECREF(mod);
    if (cls == NULL) return;
    PyObject *hex = PyObject_CallMethod(h, "hex", NULL);
    if (hex != NULL) {
        PyErr_Format(cls, "state node %U lies deeper than a key has bits: the store is damaged", hex);
        Py_DECREF(hex);
    }
    Py_DECREF(cls);
}

static PyObject *put(Upd *u, PyObject *data, const unsigned char *digest) {
    PyObject *h = PyBytes_FromStringAndSize((const char *)digest, KEY);
    if (h == NULL) return NULL;
    if (PyDict_SetItem(u->new_nodes, h, data) < 0) { Py_DECREF(h); return NULL; }
    return h;
}

static PyObject *inner(Upd *u, PyObject *left, PyObject *right) {
    PyObject *data = PyBytes_FromStringAndSize(NULL, NODE_LEN);
    if (data == NULL) return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(data), digest[KEY];
    d[0] = TAG_NODE;
    memcpy(d + 1, PyBytes_AS_STRING(left), KEY);
    memcpy(d + 1 + KEY, PyBytes_AS_STRING(right), KEY);
    sha2(d, NODE_LEN, NULL, 0, digest);
    PyObject *h = put(u, data, digest);
    Py_DECREF(data);
    return h;
}

static PyObject *leaf(Upd *u, const unsigned char *key, PyObject *value) {
    Py_ssize_t nv = PyBytes_GET_SIZE(value);
    PyObject *data = PyBytes_FromStringAndSize(NULL, 1 + KEY + nv);
    if (data == NULL) return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(data), vh[KEY], digest[KEY];
    d[0] = TAG_LEAF;
    memcpy(d + 1, key, KEY);
    memcpy(d + 1 + KEY, PyBytes_AS_STRING(value), nv);
    sha2((const unsigned char *)PyBytes_AS_STRING(value), nv, NULL, 0, vh);
    sha2(d, 1 + KEY, vh, KEY, digest);
    PyObject *h = put(u, data, digest);
    Py_DECREF(data);
    return h;
}

static PyObject *slice(PyObject *data, Py_ssize_t at) {
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + at, KEY);
}

static int sub_is_leaf(Upd *u, Sub s) {
    if (s.leaf >= 0) return s.leaf;
    if (is_empty(s.h)) return 0;
    PyObject *data = load(u, s.h);
    if (data == NULL) return -1;
    int r = PyBytes_AS_STRING(data)[0] == TAG_LEAF;
    Py_DECREF(data);
    return r;
}

/* Steals both subtrees' references. */
static Sub join(Upd *u, Sub l, Sub r) {
    Sub out;
    if (is_empty(l.h)) {
        int rl = is_empty(r.h) ? 1 : sub_is_leaf(u, r);
        if (rl < 0) goto error;
        if (rl) {
            out.leaf = !is_empty(r.h);
            out.h = r.h;
            Py_DECREF(l.h);
            return out;
        }
    }
    if (is_empty(r.h)) {
        int ll = sub_is_leaf(u, l);
        if (ll < 0) goto error;
        if (ll) {
            out.h = l.h;
            out.leaf = 1;
            Py_DECREF(r.h);
            return out;
        }
    }
    out.h = inner(u, l.h, r.h);
    out.leaf = 0;
    Py_DECREF(l.h);
    Py_DECREF(r.h);
    return out.h ? out : fail();
error:
    Py_DECREF(l.h);
    Py_DECREF(r.h);
    return fail();
}

/* The two stored leaves k1 (under h1) and k2 (under h2) as the subtree at `depth`. Borrows h1, h2. */
static Sub pair(Upd *u, int depth, const unsigned char *k1, PyObject *h1, const unsigned char *k2, PyObject *h2) {
    int p = 0;
    while (p < 8 * KEY && bit(k1, p) == bit(k2, p)) p++;
    PyObject *h = bit(k1, p) ? inner(u, h2, h1) : inner(u, h1, h2);
    for (int level = p - 1; h != NULL && level >= depth; level--) {
        PyObject *next = bit(k1, level) ? inner(u, EMPTY, h) : inner(u, h, EMPTY);
        Py_DECREF(h);
        h = next;
    }
    Sub s = {h, 0};
    return h ? s : fail();
}

/* A fresh subtree at `depth` of entries[0..n) (sorted by key, sharing their first `depth` bits). */
static Sub build(Upd *u, int depth, Entry *e, Py_ssize_t n) {
    Sub s;
    if (n == 0) {
        Py_INCREF(EMPTY);
        s.h = EMPTY;
        s.leaf = 0;
        return s;
    }
    if (n == 1) {
        s.h = leaf(u, e[0].key, e[0].value);
        s.leaf = 1;
        return s.h ? s : fail();
    }
    if (n == 2) {
        PyObject *h1 = leaf(u, e[0].key, e[0].value);
        if (h1 == NULL) return fail();
        PyObject *h2 = leaf(u, e[1].key, e[1].value);
        if (h2 == NULL) { Py_DECREF(h1); return fail(); }
        s = pair(u, depth, e[0].key, h1, e[1].key, h2);
        Py_DECREF(h1);
        Py_DECREF(h2);
        return s;
    }
    /* Split by bit `depth`, keeping the order. (Sorted entries sharing their first `depth` bits are
     * split already; a leaf from a damaged store may not share them, and is then put where Python puts it.) */
    Entry *parts = PyMem_Malloc(n * sizeof(Entry));
    if (parts == NULL) { PyErr_NoMemory(); return fail(); }
    Py_ssize_t cut = 0, back = n;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!bit(e[i].key, depth)) parts[cut++] = e[i];
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        if (bit(e[i].key, depth)) parts[--back] = e[i];
    Sub l = build(u, depth + 1, parts, cut);
    Sub r = l.h ? build(u, depth + 1, parts + cut, n - cut) : fail();
    PyMem_Free(parts);
    if (l.h == NULL) return fail();
    if (r.h == NULL) { Py_DECREF(l.h); return fail(); }
    return join(u, l, r);
}

/* Entries from items[0..n) with a value (deletions of absent keys drop out). */
static Py_ssize_t present(PyObject **keys, PyObject **values, Py_ssize_t n, Entry *out) {
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (values[i] == Py_None) continue;
        out[m].key = (const unsigned char *)PyBytes_AS_STRING(keys[i]);
        out[m].value = values[i];
        m++;
    }
    return m;
}

/* One (untouched sibling, went right) step of a path from the subtree down to a changed key. */
typedef struct { PyObject *sibling; int right; } Step;

/* `s` rejoined with the siblings of path[0..n), bottom up. Steals s.h; leaves the path's references. */
static Sub rejoin(Upd *u, Sub s, Step *path, int n) {
    for (int i = n - 1; i >= 0 && s.h != NULL; i--) {
        PyObject *sib = path[i].sibling;
        if (!is_empty(s.h) && !is_empty(sib)) {
            PyObject *h = path[i].right ? inner(u, sib, s.h) : inner(u, s.h, sib);
            Py_DECREF(s.h);
            s.h = h;
            s.leaf = 0;
        } else {
            Sub other = {sib, -1};
            Py_INCREF(sib);
            s = path[i].right ? join(u, other, s) : join(u, s, other);
        }
    }
    return s.h ? s : fail();
}

static Sub apply_one(Upd *u, Sub sub, int depth, PyObject *key, PyObject *value) {
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    Step path[8 * KEY + 1];
    int n = 0;
    PyObject *h = sub.h;
    Py_INCREF(h);
    int d = depth;
    Sub out = fail();
    while (!is_empty(h)) {
        PyObject *data = load(u, h);
        if (data == NULL) goto done;
        const unsigned char *dd = (const unsigned char *)PyBytes_AS_STRING(data);
        if (dd[0] == TAG_LEAF) {
            const unsigned char *old_key = dd + 1;
            Py_ssize_t nold = PyBytes_GET_SIZE(data) - 1 - KEY;
            if (memcmp(old_key, k, KEY) == 0) {
                int same = value != Py_None && PyBytes_GET_SIZE(value) == nold
                    && memcmp(PyBytes_AS_STRING(value), dd + 1 + KEY, nold) == 0;
                Py_DECREF(data);
                if (same) { Py_INCREF(sub.h); out = sub; goto done; }
                Entry e = {k, value};
                Sub b = build(u, d, &e, value != Py_None ? 1 : 0);
                out = b.h ? rejoin(u, b, path, n) : fail();
                goto done;
            }
            if (value == Py_None) {
                Py_DECREF(data);
                Py_INCREF(sub.h);
                out = sub;
                goto done;
            }
            unsigned char ok[KEY];
            memcpy(ok, old_key, KEY);
            Py_DECREF(data);
            PyObject *nh = leaf(u, k, value);
            if (nh == NULL) goto done;
            Sub pr = pair(u, d, ok, h, k, nh);
            Py_DECREF(nh);
            out = pr.h ? rejoin(u, pr, path, n) : fail();
            goto done;
        }
        if (d >= 8 * KEY) {
            Py_DECREF(data);
            too_deep(h);
            goto done;
        }
        int right = bit(k, d);
        PyObject *sib = slice(data, right ? 1 : 1 + KEY);
        PyObject *next = slice(data, right ? 1 + KEY : 1);
        Py_DECREF(data);
        if (sib == NULL || next == NULL) { Py_XDECREF(sib); Py_XDECREF(next); goto done; }
        path[n].sibling = sib;
        path[n].right = right;
        n++;
        Py_DECREF(h);
        h = next;
        d++;
    }
    if (value == Py_None) {
        Py_INCREF(sub.h);
        out = sub;
    } else {
        Sub lf = {leaf(u, k, value), 1};
        out = lf.h ? rejoin(u, lf, path, n) : fail();
    }
done:
    Py_DECREF(h);
    for (int i = 0; i < n; i++) Py_DECREF(path[i].sibling);
    return out;
}

/* `sub` (borrowed) at `depth` after keys[0..n) = values[0..n). A new reference, or fail(). */
static Sub apply(Upd *u, Sub sub, int depth, PyObject **keys, PyObject **values, Py_ssize_t n) {
    if (n == 1) return apply_one(u, sub, depth, keys[0], values[0]);
    if (is_empty(sub.h)) {
        Entry *e = PyMem_Malloc(n * sizeof(Entry));
        if (e == NULL) { PyErr_NoMemory(); return fail(); }
        Sub s = build(u, depth, e, present(keys, values, n, e));
        PyMem_Free(e);
        return s;
    }
    PyObject *data = load(u, sub.h);
    if (data == NULL) return fail();
    const unsigned char *dd = (const unsigned char *)PyBytes_AS_STRING(data);
    if (dd[0] == TAG_LEAF) {
        /* One leaf: merged with the items and rebuilt, unless the items leave it as it is. */
        Entry *e = PyMem_Malloc((n + 1) * sizeof(Entry));
        if (e == NULL) { Py_DECREF(data); PyErr_NoMemory(); return fail(); }
        const unsigned char *old_key = dd + 1;
        Py_ssize_t nold = PyBytes_GET_SIZE(data) - 1 - KEY;
        PyObject *old_value = PyBytes_FromStringAndSize((const char *)dd + 1 + KEY, nold);
        if (old_value == NULL) { Py_DECREF(data); PyMem_Free(e); return fail(); }
        Py_ssize_t m = 0;
        int old_placed = 0, unchanged = 1;
        for (Py_ssize_t i = 0; i <= n; i++) {
            int c = i < n ? memcmp(PyBytes_AS_STRING(keys[i]), old_key, KEY) : 1;
            if (!old_placed && c >= 0) {
                old_placed = 1;
                if (c == 0) {  /* the item decides the old key's fate */
                    if (values[i] == Py_None) { unchanged = 0; continue; }
                    if (PyBytes_GET_SIZE(values[i]) != nold
                        || memcmp(PyBytes_AS_STRING(values[i]), old_key + KEY, nold) != 0) unchanged = 0;
                    e[m].key = old_key; e[m].value = values[i]; m++;
                    continue;
                }
                e[m].key = old_key; e[m].value = old_value; m++;
            }
            if (i == n) break;
            if (values[i] == Py_None) continue;
            unchanged = 0;
            e[m].key = (const unsigned char *)PyBytes_AS_STRING(keys[i]); e[m].value = values[i]; m++;
        }
        Sub s;
        if (unchanged && m == 1) {
            Py_INCREF(sub.h);
            s.h = sub.h;
            s.leaf = 1;
        } else {
            s = build(u, depth, e, m);
        }
        Py_DECREF(old_value);
        Py_DECREF(data);
        PyMem_Free(e);
        return s;
    }
    /* An inner node: the items going left (bit `depth` 0) come first. */
    if (depth >= 8 * KEY) {
        Py_DECREF(data);
        too_deep(sub.h);
        return fail();
    }
    Py_ssize_t cut = 0;
    while (cut < n && !bit((const unsigned char *)PyBytes_AS_STRING(keys[cut]), depth)) cut++;
    PyObject *left = slice(data, 1), *right = slice(data, 1 + KEY);
    Py_DECREF(data);
    if (left == NULL || right == NULL) { Py_XDECREF(left); Py_XDECREF(right); return fail(); }
    Sub l = {left, -1}, r = {right, -1}, nl, nr;
    if (cut) {
        nl = apply(u, l, depth + 1, keys, values, cut);
        if (nl.h == NULL) goto error;
    } else {
        nl = l;
        Py_INCREF(left);
    }
    if (cut < n) {
        nr = apply(u, r, depth + 1, keys + cut, values + cut, n - cut);
        if (nr.h == NULL) { Py_DECREF(nl.h); goto error; }
    } else {
        nr = r;
        Py_INCREF(right);
    }
    int same = memcmp(PyBytes_AS_STRING(nl.h), PyBytes_AS_STRING(left), KEY) == 0
        && memcmp(PyBytes_AS_STRING(nr.h), PyBytes_AS_STRING(right), KEY) == 0;
    Py_DECREF(left);
    Py_DECREF(right);
    if (same) {
        Py_DECREF(nl.h);
        Py_DECREF(nr.h);
        Sub s = {sub.h, 0};
        Py_INCREF(sub.h);
        return s;
    }
    return join(u, nl, nr);
error:
    Py_DECREF(left);
    Py_DECREF(right);
    return fail();
}

static PyObject *update(PyObject *self, PyObject *args) {
    PyObject *get, *checked, *root, *items;
    if (!PyArg_ParseTuple(args, "OOSO!:update", &get, &checked, &root, &PyList_Type, &items)) return NULL;
    if (PyBytes_GET_SIZE(root) != KEY) {
        PyErr_SetString(PyExc_ValueError, "a root is 32 bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n == 0) return Py_BuildValue("(O{})", root);
    PyObject **keys = PyMem_Malloc(2 * n * sizeof(PyObject *));
    if (keys == NULL) return PyErr_NoMemory();
    PyObject **values = keys + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PyList_GET_ITEM(items, i);
        if (!PyTuple_Check(it) || PyTuple_GET_SIZE(it) != 2) goto bad;
        keys[i] = PyTuple_GET_ITEM(it, 0);
        values[i] = PyTuple_GET_ITEM(it, 1);
        if (!PyBytes_Check(keys[i]) || PyBytes_GET_SIZE(keys[i]) != KEY) goto bad;
        if (values[i] != Py_None && !PyBytes_Check(values[i])) goto bad;
        if (i && memcmp(PyBytes_AS_STRING(keys[i - 1]), PyBytes_AS_STRING(keys[i]), KEY) >= 0) goto bad;
    }
    Upd u = {get, checked, PyDict_New()};
    if (u.new_nodes == NULL) { PyMem_Free(keys); return NULL; }
    Sub s = {root, -1};
    Sub out = apply(&u, s, 0, keys, values, n);
    PyMem_Free(keys);
    if (out.h == NULL) { Py_DECREF(u.new_nodes); return NULL; }
    PyObject *r = PyTuple_Pack(2, out.h, u.new_nodes);
    Py_DECREF(out.h);
    Py_DECREF(u.new_nodes);
    return r;
bad:
    PyMem_Free(keys);
    PyErr_SetString(PyExc_ValueError, "items: (32-byte key, bytes or None) pairs in strictly ascending key order");
    return NULL;
}

/* merkle_root(leaves): RFC 6962's MTH over a list of bytes, as ler/merkle.py's `root` gives it (leaf
 * SHA-256(0x00 || d), node SHA-256(0x01 || left || right)). Every block's tx_root is one, made by its
 * proposer and checked by every other node. The leaves are pushed left to right and the stack of perfect
 * subtrees merged as in ler/merkle.py's `_mth`; at most 64 are pending, one per bit of the count. */
static PyObject *merkle_root(PyObject *self, PyObject *args) {
    PyObject *leaves;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!:merkle_root", &PyList_Type, &leaves)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(leaves);
    unsigned char stack[64][KEY], pair[1 + 2 * KEY];
    int top = 0;
    if (n == 0) {
        sha2(NULL, 0, NULL, 0, stack[0]);
        return PyBytes_FromStringAndSize((const char *)stack[0], KEY);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *leaf = PyList_GET_ITEM(leaves, i);
        if (!PyBytes_Check(leaf)) {
            PyErr_SetString(PyExc_TypeError, "leaves: a list of bytes");
            return NULL;
        }
        static const unsigned char zero = 0x00;
        sha2(&zero, 1, (const unsigned char *)PyBytes_AS_STRING(leaf), (size_t)PyBytes_GET_SIZE(leaf), stack[top]);
        top++;
        for (size_t count = (size_t)i + 1; !(count & 1); count >>= 1) {  /* merge equal subtrees */
            pair[0] = TAG_NODE;
            memcpy(pair + 1, stack[top - 2], KEY);
            memcpy(pair + 1 + KEY, stack[top - 1], KEY);
            top--;
            sha2(pair, sizeof pair, NULL, 0, stack[top - 1]);
        }
    }
    while (top > 1) {  /* fold the rest from the right: the smaller subtrees are on top */
        pair[0] = TAG_NODE;
        memcpy(pair + 1, stack[top - 2], KEY);
        memcpy(pair + 1 + KEY, stack[top - 1], KEY);
        top--;
        sha2(pair, sizeof pair, NULL, 0, stack[top - 1]);
    }
    return PyBytes_FromStringAndSize((const char *)stack[0], KEY);
}

static PyMethodDef methods[] = {
    {"update", update, METH_VARARGS, "update(get, checked, root, items) -> (new_root, new_nodes)"},
    {"merkle_root", merkle_root, METH_VARARGS, "merkle_root(leaves) -> RFC 6962 root of the list of bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_smt_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__smt_native(void) {
    if (sha256_load() < 0) {
        PyErr_SetString(PyExc_ImportError, "no libcrypto with a working SHA-256 found");
        return NULL;
    }
    EMPTY = PyBytes_FromStringAndSize(NULL, KEY);
    if (EMPTY == NULL) return NULL;
    memset(PyBytes_AS_STRING(EMPTY), 0, KEY);
    return PyModule_Create(&module);
}
