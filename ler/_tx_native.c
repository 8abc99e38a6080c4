/*
 * A record anchor's decoding in C: what ler/tx.py's `Tx.decode` gives for the transaction a node meets
 * most, several times faster. Every node decodes every anchor once, at admission.
 *
 *   init(Tx, RecordAnchor, "record.anchor")
 *   anchor(data, tx_id) -> Tx or None
 *   sha256(data) -> digest (libcrypto's, see _sha256.h; absent if it was not found)
 *
 * `anchor` returns the Tx (its body a RecordAnchor, `raw` the input, `signing` the bytes its signature
 * covers) when `data` is a record.anchor transaction in exactly the form codec.encode gives, with the
 * usual forms of its values: ASCII strings, both dids of 56 characters (did:key:z and 47 base-58 digits).
 * For anything else it returns None, and ler/tx.py decodes the input in Python, which accepts or refuses
 * it and names what is wrong. So this code may decline what Python accepts, but it must never accept
 * what Python refuses, nor build a different value: tests/test_tx_native.py compares the two on valid
 * transactions and on mutated ones. `tx_id` is SHA-256(data), which the caller has computed.
 *
 * The checks are those of Tx.from_obj, RecordAnchor's fields and its __post_init__: the chain id and
 * record type patterns, the field sizes and limits, and that each did's number is 0xed01 || key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_sha256.h"

#define MAX_TX_BYTES 4096

static PyObject *TX, *ANCHOR, *TYPE;   /* the classes and the type's name, from init() */
static PyObject *EMPTY_ARGS;
static PyObject *F_chain, *F_type, *F_signer, *F_nonce, *F_body, *F_sig, *F_raw, *F_tx_id, *F_signing;
static PyObject *F_record, *F_issuer, *F_holder, *F_rtype, *F_commitment, *F_expires;
static signed char B58[256];

typedef struct { const unsigned char *p, *end; } Cur;

/* The exact bytes `s` next. */
static int lit(Cur *c, const char *s, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, s, (size_t)n) != 0) return 0;
    c->p += n;
    return 1;
}

/* A string of at most `max` ASCII characters in canonical form: fixstr below 32 bytes, str8 above. */
static int ascii_str(Cur *c, const unsigned char **s, Py_ssize_t *n, Py_ssize_t max) {
    Py_ssize_t len, head;
    if (c->p >= c->end) return 0;
    if ((c->p[0] & 0xe0) == 0xa0) {
        len = c->p[0] & 0x1f;
        head = 1;
    } else if (c->p[0] == 0xd9 && c->end - c->p >= 2 && c->p[1] >= 32) {
        len = c->p[1];
        head = 2;
    } else {
        return 0;
    }
    if (len > max || c->end - c->p - head < len) return 0;
    const unsigned char *q = c->p + head;
    for (Py_ssize_t i = 0; i < len; i++)
        if (q[i] & 0x80) return 0;
    *s = q;
    *n = len;
    c->p = q + len;
    return 1;
}

/* Bytes of exactly `size` (below 256) in canonical form, bin8. */
static int bin_of(Cur *c, Py_ssize_t size, const unsigned char **s) {
    if (c->end - c->p < 2 + size || c->p[0] != 0xc4 || c->p[1] != size) return 0;
    *s = c->p + 2;
    c->p += 2 + size;
    return 1;
}

/* An unsigned integer below 2**64 in its shortest form. */
static int uint_of(Cur *c, uint64_t *v) {
    if (c->p >= c->end) return 0;
    unsigned b = c->p[0];
    if (b < 0x80) {
        *v = b;
        c->p++;
        return 1;
    }
    int n = b == 0xcc ? 1 : b == 0xcd ? 2 : b == 0xce ? 4 : b == 0xcf ? 8 : 0;
    if (n == 0 || c->end - c->p < 1 + n) return 0;
    uint64_t x = 0;
    for (int i = 0; i < n; i++) x = (x << 8) | c->p[1 + i];
    uint64_t least = n == 1 ? 0x80 : n == 2 ? 0x100 : n == 4 ? 0x10000 : 0x100000000ULL;
    if (x < least) return 0;  /* a shorter form exists */
    *v = x;
    c->p += 1 + n;
    return 1;
}

/* [A-Za-z0-9][A-Za-z0-9._-]{0,63} */
static int chain_ok(const unsigned char *s, Py_ssize_t n) {
    if (n < 1 || n > 64) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        int alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '_' && ch != '-'))) return 0;
    }
    return 1;
}

/* [a-z0-9][a-z0-9_-]{0,39}(\.[a-z0-9][a-z0-9_-]{0,39}){0,7}, and at most 200 characters (the field's limit). */
static int rtype_ok(const unsigned char *s, Py_ssize_t n) {
    if (n < 1 || n > 200) return 0;
    int segments = 1;
    Py_ssize_t run = 0;  /* characters of the current segment */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        if (ch == '.') {
            if (run == 0 || ++segments > 8) return 0;
            run = 0;
            continue;
        }
        int alnum = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9');
        if (!alnum && (run == 0 || (ch != '_' && ch != '-'))) return 0;
        if (++run > 40) return 0;
    }
    return run > 0;
}

/* A did:key in its usual form: "did:key:z" and 47 base-58 digits whose number is 0xed01 || key. */
static int did_ok(const unsigned char *s, Py_ssize_t n) {
    if (n != 56 || memcmp(s, "did:key:z", 9) != 0) return 0;
    uint32_t v[9] = {0};  /* the number, 32 bits a limb, lowest first: 58**47 < 2**288 */
    for (int i = 9; i < 56; i++) {
        int d = B58[s[i]];
        if (d < 0) return 0;
        uint64_t carry = (uint64_t)d;
        for (int j = 0; j < 9; j++) {
            uint64_t t = (uint64_t)v[j] * 58 + carry;
            v[j] = (uint32_t)t;
            carry = t >> 32;
        }
    }
    return v[8] == 0xed01;  /* the number >> 256 */
}

static int set(PyObject *obj, PyObject *name, PyObject *value) {
    if (value == NULL) return -1;
    int r = PyObject_GenericSetAttr(obj, name, value);  /* as a frozen dataclass's __init__ does */
    Py_DECREF(value);
    return r;
}

static PyObject *make_anchor(const unsigned char *record, const unsigned char *issuer, const unsigned char *holder,
                             const unsigned char *rtype, Py_ssize_t rtype_n, const unsigned char *commitment,
                             int has_expires, uint64_t expires) {
    PyObject *a = PyBaseObject_Type.tp_new((PyTypeObject *)ANCHOR, EMPTY_ARGS, NULL);
    if (a == NULL) return NULL;
    if (set(a, F_record, PyBytes_FromStringAndSize((const char *)record, 16)) < 0 ||
        set(a, F_issuer, PyUnicode_FromStringAndSize((const char *)issuer, 56)) < 0 ||
        set(a, F_holder, PyUnicode_FromStringAndSize((const char *)holder, 56)) < 0 ||
        set(a, F_rtype, PyUnicode_FromStringAndSize((const char *)rtype, rtype_n)) < 0 ||
        set(a, F_commitment, PyBytes_FromStringAndSize((const char *)commitment, 32)) < 0 ||
        set(a, F_expires, has_expires ? PyLong_FromUnsignedLongLong(expires) : Py_NewRef(Py_None)) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *anchor(PyObject *self, PyObject *args) {
    PyObject *data, *tx_id;
    if (!PyArg_ParseTuple(args, "OO", &data, &tx_id)) return NULL;
    if (TX == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init() was not called");
        return NULL;
    }
    if (!PyBytes_CheckExact(data) || !PyBytes_CheckExact(tx_id) || PyBytes_GET_SIZE(tx_id) != 32 ||
        PyBytes_GET_SIZE(data) > MAX_TX_BYTES)
        Py_RETURN_NONE;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Cur c = {d, d + PyBytes_GET_SIZE(data)};
    const unsigned char *record, *issuer, *holder, *rtype, *commitment, *chain, *sig, *signer;
    Py_ssize_t n, rtype_n, chain_n;
    uint64_t expires = 0, nonce;
    int has_expires = 0;

    /* {body: {commitment, expires, holder, issuer, record, rtype}, chain, nonce, sig, signer, type} */
    if (!lit(&c, "\x86", 1)) Py_RETURN_NONE;
    const unsigned char *body_at = c.p;
    if (!lit(&c, "\xa4" "body" "\x86" "\xaa" "commitment", 17) || !bin_of(&c, 32, &commitment) ||
        !lit(&c, "\xa7" "expires", 8))
        Py_RETURN_NONE;
    if (c.p < c.end && c.p[0] == 0xc0) {
        c.p++;
    } else if (uint_of(&c, &expires)) {
        has_expires = 1;
    } else {
        Py_RETURN_NONE;
    }
    if (!lit(&c, "\xa6" "holder", 7) || !ascii_str(&c, &holder, &n, 64) || !did_ok(holder, n) ||
        !lit(&c, "\xa6" "issuer", 7) || !ascii_str(&c, &issuer, &n, 64) || !did_ok(issuer, n) ||
        !lit(&c, "\xa6" "record", 7) || !bin_of(&c, 16, &record) ||
        !lit(&c, "\xa5" "rtype", 6) || !ascii_str(&c, &rtype, &rtype_n, 200) || !rtype_ok(rtype, rtype_n))
        Py_RETURN_NONE;
    const unsigned char *chain_at = c.p;
    if (!lit(&c, "\xa5" "chain", 6) || !ascii_str(&c, &chain, &chain_n, 64) || !chain_ok(chain, chain_n))
        Py_RETURN_NONE;
    const unsigned char *nonce_at = c.p;
    if (!lit(&c, "\xa5" "nonce", 6) || !uint_of(&c, &nonce)) Py_RETURN_NONE;
    const unsigned char *sig_at = c.p;
    if (!lit(&c, "\xa3" "sig", 4) || !bin_of(&c, 64, &sig)) Py_RETURN_NONE;
    const unsigned char *signer_at = c.p;
    if (!lit(&c, "\xa6" "signer", 7) || !bin_of(&c, 32, &signer) ||
        !lit(&c, "\xa4" "type" "\xad" "record.anchor", 19) || c.p != c.end)
        Py_RETURN_NONE;

    /* The signed bytes: enc(["ler/1/tx", chain, {body, nonce, signer, type}]), whose entries are those of
     * `data` (a canonical entry does not depend on its neighbours) without chain and sig. */
    Py_ssize_t chain_entry = nonce_at - chain_at - 6;  /* the chain's encoded value */
    Py_ssize_t signed_n = 1 + 9 + chain_entry + 1 + (chain_at - body_at) + (sig_at - nonce_at) + (c.end - signer_at);
    PyObject *signing = PyBytes_FromStringAndSize(NULL, signed_n);
    if (signing == NULL) return NULL;
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(signing);
    memcpy(w, "\x93\xa8" "ler/1/tx", 10);
    w += 10;
    memcpy(w, chain_at + 6, (size_t)chain_entry);
    w += chain_entry;
    *w++ = 0x84;
    memcpy(w, body_at, (size_t)(chain_at - body_at));
    w += chain_at - body_at;
    memcpy(w, nonce_at, (size_t)(sig_at - nonce_at));
    w += sig_at - nonce_at;
    memcpy(w, signer_at, (size_t)(c.end - signer_at));

    PyObject *body = make_anchor(record, issuer, holder, rtype, rtype_n, commitment, has_expires, expires);
    if (body == NULL) {
        Py_DECREF(signing);
        return NULL;
    }
    PyObject *tx = PyBaseObject_Type.tp_new((PyTypeObject *)TX, EMPTY_ARGS, NULL);
    if (tx == NULL) {
        Py_DECREF(signing);
        Py_DECREF(body);
        return NULL;
    }
    if (set(tx, F_body, body) < 0) {  /* each set() takes its value's reference, also when it fails */
        Py_DECREF(signing);
        Py_DECREF(tx);
        return NULL;
    }
    if (set(tx, F_signing, signing) < 0 ||
        set(tx, F_chain, PyUnicode_FromStringAndSize((const char *)chain, chain_n)) < 0 ||
        set(tx, F_type, Py_NewRef(TYPE)) < 0 ||
        set(tx, F_signer, PyBytes_FromStringAndSize((const char *)signer, 32)) < 0 ||
        set(tx, F_nonce, PyLong_FromUnsignedLongLong(nonce)) < 0 ||
        set(tx, F_sig, PyBytes_FromStringAndSize((const char *)sig, 64)) < 0 ||
        set(tx, F_raw, Py_NewRef(data)) < 0 ||
        set(tx, F_tx_id, Py_NewRef(tx_id)) < 0) {
        Py_DECREF(tx);
        return NULL;
    }
    return tx;
}

static PyObject *init(PyObject *self, PyObject *args) {
    PyObject *tx, *anchor_cls, *type;
    if (!PyArg_ParseTuple(args, "O!O!U", &PyType_Type, &tx, &PyType_Type, &anchor_cls, &type)) return NULL;
    Py_XSETREF(TX, Py_NewRef(tx));
    Py_XSETREF(ANCHOR, Py_NewRef(anchor_cls));
    Py_XSETREF(TYPE, Py_NewRef(type));
    Py_RETURN_NONE;
}

/* sha256(data) -> digest: hashlib.sha256(data).digest() in one call (a node hashes every transaction it
 * admits and every one in a block it checks, and the state key of each record twice). Present only when
 * libcrypto was found. The buffer stays exported while it is hashed, so it cannot change meanwhile. */
static PyObject *sha256(PyObject *self, PyObject *data) {
    Py_buffer view;
    unsigned char out[32];
    (void)self;
    if (PyUnicode_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return NULL;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    if (view.len >= 2048) {  /* as hashlib does: other threads run while a long input is hashed */
        Py_BEGIN_ALLOW_THREADS
        sha2((const unsigned char *)view.buf, (size_t)view.len, NULL, 0, out);
        Py_END_ALLOW_THREADS
    } else {
        sha2((const unsigned char *)view.buf, (size_t)view.len, NULL, 0, out);
    }
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyMethodDef methods[] = {
    {"anchor", anchor, METH_VARARGS, "The Tx `data` encodes if it is a record anchor in the usual form, else None."},
    {"sha256", sha256, METH_O, "sha256(data) -> the 32-byte SHA-256 digest of a bytes-like object"},
    {"init", init, METH_VARARGS, "init(Tx, RecordAnchor, type name): the classes to build."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tx_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tx_native(void) {
    static const char digits[] = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    memset(B58, -1, sizeof B58);
    for (int i = 0; i < 58; i++) B58[(unsigned char)digits[i]] = (signed char)i;
    struct { PyObject **slot; const char *name; } names[] = {
        {&F_chain, "chain"}, {&F_type, "type"}, {&F_signer, "signer"}, {&F_nonce, "nonce"}, {&F_body, "body"},
        {&F_sig, "sig"}, {&F_raw, "raw"}, {&F_tx_id, "tx_id"}, {&F_signing, "signing"}, {&F_record, "record"},
        {&F_issuer, "issuer"}, {&F_holder, "holder"}, {&F_rtype, "rtype"}, {&F_commitment, "commitment"},
        {&F_expires, "expires"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL) return NULL;
    }
    EMPTY_ARGS = PyTuple_New(0);
    if (EMPTY_ARGS == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && sha256_load() < 0 && PyObject_DelAttrString(m, "sha256") < 0) Py_CLEAR(m);
    return m;
}
