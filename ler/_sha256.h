/*
 * SHA-256 for the compiled parts (ler/_tx_native.c, storage/_smt_native.c): libcrypto's, the library the
 * interpreter's hashlib uses, found when the module loads. `sha2` hashes a || b.
 *
 * sha256_load() returns 0 once the functions are found and give the known answer for "abc", else -1
 * (then nothing here may be called).
 */
#ifndef LER_SHA256_H
#define LER_SHA256_H

#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

/* libcrypto's SHA-256 context is 112 bytes in OpenSSL 1.1 and 3, given room to spare here. */
typedef struct { _Alignas(16) unsigned char opaque[256]; } sha_ctx;
static int (*sha_init)(sha_ctx *);
static int (*sha_update)(sha_ctx *, const void *, size_t);
static int (*sha_final)(unsigned char *, sha_ctx *);

static void sha2(const unsigned char *a, size_t na, const unsigned char *b, size_t nb, unsigned char *out) {
    sha_ctx c;
    sha_init(&c);
    sha_update(&c, a, na);
    if (nb) sha_update(&c, b, nb);
    sha_final(out, &c);
}

static int sha256_load(void) {
    static const char *libs[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", NULL};
    void *lib = NULL;
    for (int i = 0; libs[i] && lib == NULL; i++) lib = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return -1;
    sha_init = (int (*)(sha_ctx *))dlsym(lib, "SHA256_Init");
    sha_update = (int (*)(sha_ctx *, const void *, size_t))dlsym(lib, "SHA256_Update");
    sha_final = (int (*)(unsigned char *, sha_ctx *))dlsym(lib, "SHA256_Final");
    if (!sha_init || !sha_update || !sha_final) return -1;
    /* A known answer, so that a libcrypto that is not what this expects is never used. */
    static const unsigned char abc_digest[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    unsigned char got[32];
    sha2((const unsigned char *)"ab", 2, (const unsigned char *)"c", 1, got);
    return memcmp(got, abc_digest, 32) == 0 ? 0 : -1;
}

#endif
