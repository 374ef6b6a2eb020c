/* dask-lsio decode kernel: the codecs, called as numcodecs calls them (see _kernel_codecs.h).
 *
 * setup.py builds this file against the library sources numcodecs is built from
 * (third_party/): on data that a codec's checks let through, the output is whatever that
 * version's decoder makes of it (zstd 1.5.4 and 1.5.6 decode some corrupt frames to different
 * bytes, without an error), and c-blosc's checks grew between 1.21.3 and 1.21.7. Decoding
 * straight into the output is safe: none of these decoders reads what the output held before
 * or writes outside it (tests/test_kernel_decode.py checks both on damaged chunks).
 */
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <blosc.h>
#include <zlib.h>
#include <zstd.h>

#include "_kernel.h"
#include "_kernel_codecs.h"

/* ---- zstd -----------------------------------------------------------------------------
 * One context per thread: each ring runs on one thread, and contexts are not shareable. A
 * thread-specific key's destructor frees it when the thread exits (engines come and go). */
static __thread ZSTD_DCtx *zstd_ctx;
static pthread_key_t zstd_key;
static pthread_once_t zstd_once = PTHREAD_ONCE_INIT;
static int zstd_key_made;
static int64_t zstd_live; /* contexts not yet freed (tests) */

static void free_zstd_ctx(void *ctx) { /* runs in the exiting thread */
    zstd_ctx = NULL;
    ZSTD_freeDCtx(ctx);
    __atomic_sub_fetch(&zstd_live, 1, __ATOMIC_RELAXED);
}

static void make_zstd_key(void) {
    zstd_key_made = pthread_key_create(&zstd_key, free_zstd_ctx) == 0;
}

static ZSTD_DCtx *thread_zstd_ctx(void) {
    if (zstd_ctx) return zstd_ctx;
    pthread_once(&zstd_once, make_zstd_key);
    ZSTD_DCtx *c = zstd_key_made ? ZSTD_createDCtx() : NULL;
    if (!c) return NULL;
    if (pthread_setspecific(zstd_key, c) != 0) { /* nothing would free it */
        ZSTD_freeDCtx(c);
        return NULL;
    }
    __atomic_add_fetch(&zstd_live, 1, __ATOMIC_RELAXED);
    return zstd_ctx = c;
}

int64_t lsio_kernel_zstd_contexts(void) { return __atomic_load_n(&zstd_live, __ATOMIC_RELAXED); }

/* A frame of unknown content size, as numcodecs' stream_decompress decodes it: a streaming
 * context (its window limits), every frame of the input, output past `want` an error. */
static int decode_zstd_stream(const char *src, int64_t n, char *dst, int64_t want) {
    ZSTD_DStream *zds = ZSTD_createDStream(); /* (rare: not worth keeping per thread) */
    if (!zds || ZSTD_isError(ZSTD_initDStream(zds))) {
        ZSTD_freeDStream(zds);
        return LSIO_KERR_NOMEM;
    }
    char spill[64]; /* output beyond want lands here: the chunk is then too long */
    ZSTD_inBuffer in = {src, (size_t)n, 0};
    ZSTD_outBuffer out = {dst, (size_t)want, 0};
    int e = 0, spilled = 0;
    size_t status = 1;
    /* numcodecs' loop; zstd ends a call sequence making no progress with an error */
    while (status > 0 || in.pos < in.size) {
        if (out.pos == out.size && !spilled) { /* full: anything more is too much */
            out = (ZSTD_outBuffer){spill, sizeof spill, 0};
            spilled = 1;
        }
        status = ZSTD_decompressStream(zds, &out, &in);
        if (ZSTD_isError(status)) { e = LSIO_KERR_CORRUPT; break; }
        if (spilled && out.pos > 0) { e = LSIO_KERR_SIZE; break; }
    }
    int64_t got = spilled ? want : (int64_t)out.pos;
    ZSTD_freeDStream(zds);
    return e ? e : (got == want ? 0 : LSIO_KERR_SIZE);
}

/* numcodecs' rules (zstd.pyx decompress): every frame's compressed size must be found, and
 * the sum of the content sizes their headers state is what is decoded (a frame that states
 * none makes it a stream); then one ZSTD_decompress of the input. */
int lsio_decode_zstd(const char *src, int64_t n, char *dst, int64_t want) {
    unsigned long long total = 0;
    for (int64_t at = 0; at < n;) {
        size_t size = ZSTD_findFrameCompressedSize(src + at, (size_t)(n - at));
        if (ZSTD_isError(size)) return LSIO_KERR_CORRUPT;
        unsigned long long c = ZSTD_getFrameContentSize(src + at, size);
        if (c == ZSTD_CONTENTSIZE_ERROR) return LSIO_KERR_CORRUPT;
        if (c == ZSTD_CONTENTSIZE_UNKNOWN) return decode_zstd_stream(src, n, dst, want);
        if (c > (unsigned long long)want - total) return LSIO_KERR_SIZE; /* (no overflow) */
        total += c;
        at += (int64_t)size;
    }
    if (total != (unsigned long long)want) return LSIO_KERR_SIZE;
    ZSTD_DCtx *ctx = thread_zstd_ctx();
    if (!ctx) return LSIO_KERR_NOMEM;
    size_t got = ZSTD_decompressDCtx(ctx, dst, (size_t)want, src, (size_t)n);
    if (ZSTD_isError(got)) return LSIO_KERR_CORRUPT;
    return (int64_t)got == want ? 0 : LSIO_KERR_SIZE;
}

/* ---- blosc ------------------------------------------------------------------------------
 * c-blosc 1.x counts sizes in 32 bits: no chunk larger than BLOSC_MAX_BUFFERSIZE is a blosc
 * frame, so every int that c-blosc and LZ4 are called with below fits. */
int lsio_blosc_header(const char *src, int64_t n, int64_t want) {
    size_t nbytes = 0;
    if (want > BLOSC_MAX_BUFFERSIZE) return LSIO_KERR_SIZE;
    /* checks the header's compressed size against what we have before reading past it */
    if (n < BLOSC_MIN_HEADER_LENGTH || blosc_cbuffer_validate(src, (size_t)n, &nbytes) < 0)
        return LSIO_KERR_CORRUPT;
    return (int64_t)nbytes == want ? 0 : LSIO_KERR_SIZE;
}

int64_t lsio_kernel_encode_blosc(const char *src, int64_t n, char *dst, int64_t cap,
                                 int32_t clevel, int32_t shuffle, int64_t typesize,
                                 const char *cname, int64_t blocksize) {
    if (n < 0 || n > BLOSC_MAX_BUFFERSIZE || cap < n + BLOSC_MAX_OVERHEAD || cap > INT_MAX ||
        clevel < 0 || clevel > 9 || shuffle < 0 || shuffle > 2 || typesize < 1 ||
        blocksize < 0 || blocksize > INT_MAX || blosc_compname_to_compcode(cname) < 0)
        return -1;
    int got = blosc_compress_ctx(clevel, shuffle, (size_t)typesize, (size_t)n, src, dst,
                                 (size_t)cap, cname, (size_t)blocksize, 1);
    return got > 0 ? got : -1;
}

/* Whether the n bytes at buf are all the item `fill` (itemsize bytes), bit for bit: the
 * first item is fill and every item equals the one before it. */
static int all_fill(const char *buf, int64_t n, const char *fill, int64_t itemsize) {
    if (n < itemsize || memcmp(buf, fill, (size_t)itemsize) != 0) return 0;
    return memcmp(buf, buf + itemsize, (size_t)(n - itemsize)) == 0;
}

int64_t lsio_kernel_encode_blosc_units(const char *src, int32_t ndim, const int64_t *shape,
                                       const int64_t *strides, int64_t itemsize,
                                       int64_t nunits, const int64_t *origins,
                                       const char *fill, char *scratch, int64_t scratch_cap,
                                       char *dst, int64_t cap, int64_t *sizes,
                                       int32_t clevel, int32_t shuffle, const char *cname,
                                       int64_t blocksize) {
    if (ndim < 0 || ndim > LSIO_KMAXDIM || itemsize <= 0 || nunits < 0 || cap < 0) return -1;
    int64_t n = itemsize;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0 || shape[d] > BLOSC_MAX_BUFFERSIZE / n) return -1;
        n *= shape[d];
    }
    if (scratch_cap < n) return -1;
    int64_t used = 0;
    for (int64_t i = 0; i < nunits; i++) {
        if (lsio_kernel_gather(src + origins[i], ndim, shape, strides, itemsize, scratch))
            return -1;
        if (fill != NULL && all_fill(scratch, n, fill, itemsize)) {
            sizes[i] = 0;
            continue;
        }
        /* exactly the room numcodecs gives c-blosc: given more, c-blosc may keep a
         * compressed stream longer than the input instead of storing the input as is */
        int64_t room = n + BLOSC_MAX_OVERHEAD;
        if (cap - used < room) return -1;
        int64_t got = lsio_kernel_encode_blosc(scratch, n, dst + used, room, clevel, shuffle,
                                               itemsize, cname, blocksize);
        if (got <= 0) return -1;
        sizes[i] = got;
        used += got;
    }
    return used;
}

int lsio_decode_blosc(const char *src, int64_t n, char *dst, int64_t want) {
    int e = lsio_blosc_header(src, n, want);
    if (e) return e;
    int got = blosc_decompress_ctx(src, dst, (size_t)want, 1);
    if (got < 0) return LSIO_KERR_CORRUPT;
    return got == want ? 0 : LSIO_KERR_SIZE;
}

/* ---- zlib and gzip ----------------------------------------------------------------------
 * zlib counts the bytes of a call in 32 bits (uInt): chunks are fed to it in steps. */
static int64_t zlib_step = (int64_t)1 << 30;

void lsio_kernel_set_zlib_step(int64_t step) {
    zlib_step = step > 0 && step <= UINT_MAX ? step : (int64_t)1 << 30;
}

/* Inflate src[*in..n) into dst[*out..want) until the stream ends, fails, or can go no further
 * (input ended, or output full: Z_BUF_ERROR); returns inflate's last code. */
static int inflate_steps(z_stream *z, const char *src, int64_t n, int64_t *in, char *dst,
                         int64_t want, int64_t *out) {
    for (;;) {
        uInt ai = (uInt)(n - *in < zlib_step ? n - *in : zlib_step);
        uInt ao = (uInt)(want - *out < zlib_step ? want - *out : zlib_step);
        z->next_in = (Bytef *)src + *in;
        z->avail_in = ai;
        z->next_out = (Bytef *)dst + *out;
        z->avail_out = ao;
        int ret = inflate(z, Z_NO_FLUSH);
        int64_t used = ai - z->avail_in, made = ao - z->avail_out;
        *in += used;
        *out += made;
        if (ret != Z_OK && ret != Z_BUF_ERROR) return ret; /* the end, or an error */
        if (used == 0 && made == 0) return Z_BUF_ERROR;
    }
}

/* numcodecs' zlib is Python's zlib.decompress: one zlib stream, whatever follows it ignored.
 * numcodecs' gzip is Python's gzip module: members one after the other, each checked (crc32
 * and length), NUL bytes after a member skipped, anything else after one must be another.
 * (zlib refuses two things Python lets through: reserved header flags, a wrong header
 * crc16; a stricter answer, never another one.) */
int lsio_decode_zlib(const char *src, int64_t n, char *dst, int64_t want, int gzip) {
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, gzip ? 15 + 16 : 15) != Z_OK) return LSIO_KERR_NOMEM;
    int64_t in = 0, out = 0;
    int ret;
    for (;;) {
        ret = inflate_steps(&z, src, n, &in, dst, want, &out);
        if (ret != Z_STREAM_END || !gzip) break;
        while (in < n && src[in] == 0) in++;
        if (in == n || inflateReset(&z) != Z_OK) break;
    }
    inflateEnd(&z);
    if (ret == Z_BUF_ERROR && out == want && in < n) return LSIO_KERR_SIZE; /* won't fit */
    if (ret != Z_STREAM_END) return LSIO_KERR_CORRUPT;
    return out == want ? 0 : LSIO_KERR_SIZE;
}
