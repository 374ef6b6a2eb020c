/* dask-lsio decode kernel. See _kernel.h for the model.
 *
 * Codecs are the reference C libraries (c-blosc 1.x, libzstd, zlib), called the way
 * numcodecs calls them, so what decodes here decodes there and vice versa; every decoded size
 * is checked against the chunk's size, so a corrupt or truncated chunk is an error, never
 * silently wrong values.
 */
#include <string.h>
#include <blosc.h>
#include <zlib.h>
#include <zstd.h>

#include "_kernel.h"

uint32_t lsio_kernel_codecs(void) {
    return (1u << LSIO_CODEC_NONE) | (1u << LSIO_CODEC_BLOSC) | (1u << LSIO_CODEC_ZSTD) |
           (1u << LSIO_CODEC_ZLIB);
}

static int64_t chunk_nbytes(const lsio_kplan *p) {
    int64_t n = p->itemsize;
    for (int d = 0; d < p->ndim; d++) n *= p->chunk_shape[d];
    return n;
}

/* One context per thread: each ring runs on one thread, and contexts are not shareable. */
static __thread ZSTD_DCtx *zstd_ctx;

static int decode_zstd(const char *src, int64_t n, char *dst, int64_t want) {
    if (!zstd_ctx && !(zstd_ctx = ZSTD_createDCtx())) return LSIO_KERR_NOMEM;
    size_t got = ZSTD_decompressDCtx(zstd_ctx, dst, (size_t)want, src, (size_t)n);
    if (ZSTD_isError(got)) return LSIO_KERR_CORRUPT;
    return (int64_t)got == want ? 0 : LSIO_KERR_SIZE;
}

static int decode_blosc(const char *src, int64_t n, char *dst, int64_t want) {
    size_t nbytes = 0;
    /* checks the header's compressed size against what we have before reading past it */
    if (n < BLOSC_MIN_HEADER_LENGTH || blosc_cbuffer_validate(src, (size_t)n, &nbytes) < 0)
        return LSIO_KERR_CORRUPT;
    if ((int64_t)nbytes != want) return LSIO_KERR_SIZE;
    int got = blosc_decompress_ctx(src, dst, (size_t)want, 1);
    if (got < 0) return LSIO_KERR_CORRUPT;
    return got == want ? 0 : LSIO_KERR_SIZE;
}

/* Decode only the bytes [lo, hi) of a blosc chunk into dst + lo: the blocks holding them
 * (a crop that needs a few rows of a chunk decodes those rows, not the chunk). */
static int decode_blosc_part(const char *src, int64_t n, char *dst, int64_t want, int64_t lo,
                             int64_t hi) {
    size_t nbytes = 0, ts = 0;
    int flags = 0;
    if (n < BLOSC_MIN_HEADER_LENGTH || blosc_cbuffer_validate(src, (size_t)n, &nbytes) < 0)
        return LSIO_KERR_CORRUPT;
    if ((int64_t)nbytes != want) return LSIO_KERR_SIZE;
    blosc_cbuffer_metainfo(src, &ts, &flags);
    if (ts < 1) ts = 1;
    int64_t first = lo / (int64_t)ts, last = (hi + (int64_t)ts - 1) / (int64_t)ts;
    int64_t got = blosc_getitem(src, (int)first, (int)(last - first), dst + first * (int64_t)ts);
    if (got < 0) return LSIO_KERR_CORRUPT;
    return got == (last - first) * (int64_t)ts ? 0 : LSIO_KERR_SIZE;
}

static int decode_zlib(const char *src, int64_t n, char *dst, int64_t want) {
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 15 + 32) != Z_OK) return LSIO_KERR_NOMEM; /* zlib or gzip header */
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)dst;
    z.avail_out = (uInt)want;
    int ret = inflate(&z, Z_FINISH);
    int64_t got = (int64_t)z.total_out;
    inflateEnd(&z);
    if (ret == Z_BUF_ERROR && got == want) return LSIO_KERR_SIZE; /* more data than fits */
    if (ret != Z_STREAM_END) return LSIO_KERR_CORRUPT;
    return got == want ? 0 : LSIO_KERR_SIZE;
}

static int decode(const lsio_kplan *p, const char *src, int64_t n, char *dst, int64_t want) {
    switch (p->codec) {
    case LSIO_CODEC_BLOSC: return decode_blosc(src, n, dst, want);
    case LSIO_CODEC_ZSTD: return decode_zstd(src, n, dst, want);
    case LSIO_CODEC_ZLIB: return decode_zlib(src, n, dst, want);
    default:
        if (n != want) return LSIO_KERR_SIZE;
        memcpy(dst, src, (size_t)want);
        return 0;
    }
}

/* The copy of a job's selection, merged into as few dimensions as possible: runs of `run`
 * bytes, over dims 0..nd-1 of counts cnt with source and destination strides. */
typedef struct copy_shape {
    int nd;
    int64_t run;
    int64_t cnt[LSIO_KMAXDIM], sst[LSIO_KMAXDIM], dst[LSIO_KMAXDIM];
} copy_shape;

static void plan_copy(const lsio_kplan *p, const int64_t *count, copy_shape *c) {
    int64_t sstride[LSIO_KMAXDIM];
    int64_t s = p->itemsize;
    for (int d = p->ndim - 1; d >= 0; d--) { sstride[d] = s; s *= p->chunk_shape[d]; }
    /* innermost dimensions contiguous on both sides fold into the run */
    int d = p->ndim - 1;
    c->run = p->itemsize;
    while (d >= 0 && sstride[d] == c->run && p->dest_strides[d] == c->run) {
        c->run *= count[d];
        if (count[d] != p->chunk_shape[d]) { d--; break; } /* a partial dim ends the run */
        d--;
    }
    c->nd = 0;
    for (int k = 0; k <= d; k++) {
        if (count[k] == 1) continue;
        c->cnt[c->nd] = count[k];
        c->sst[c->nd] = sstride[k];
        c->dst[c->nd] = p->dest_strides[k];
        c->nd++;
    }
}

static void copy_nd(const copy_shape *c, int k, const char *src, char *dst) {
    if (k == c->nd) { memcpy(dst, src, (size_t)c->run); return; }
    if (k == c->nd - 1) {
        for (int64_t i = 0; i < c->cnt[k]; i++)
            memcpy(dst + i * c->dst[k], src + i * c->sst[k], (size_t)c->run);
        return;
    }
    for (int64_t i = 0; i < c->cnt[k]; i++)
        copy_nd(c, k + 1, src + i * c->sst[k], dst + i * c->dst[k]);
}

/* Byte range [lo, hi) of the decoded chunk that a selection (start, count) spans. */
static void sel_span(const lsio_kplan *p, const int64_t *start, const int64_t *count, int64_t *lo,
                     int64_t *hi) {
    int64_t a = 0, b = 0, s = p->itemsize;
    for (int d = p->ndim - 1; d >= 0; d--) {
        a += start[d] * s;
        b += (start[d] + count[d] - 1) * s;
        s *= p->chunk_shape[d];
    }
    *lo = a;
    *hi = b + p->itemsize;
}

/* Place job j. `held` is the job whose decoded chunk the scratch buffer holds (-1: none);
 * a job of the same bytes reuses it, so a chunk several boxes need is decoded once (its
 * jobs are consecutive in the plan). A blosc chunk only this job needs is decoded in part:
 * the blocks its selection spans (`shared`: the next job needs the same chunk). */
static int run_job(const lsio_kplan *p, int64_t j, const char *data, int64_t n, int64_t *held,
                   int shared) {
    int64_t off = p->src_off[j];
    int64_t len = p->src_len[j] < 0 ? n - off : p->src_len[j];
    if (off < 0 || off + len > n) return LSIO_KERR_TRUNCATED;
    const int64_t *start = p->sel + 2 * p->ndim * j;
    const int64_t *count = start + p->ndim;
    int64_t want = chunk_nbytes(p);
    char *out = p->dest + p->dst_off[j];
    copy_shape c;
    plan_copy(p, count, &c);
    if (c.nd == 0 && c.run == want) return decode(p, data + off, len, out, want); /* whole */
    const char *src;
    if (p->codec == LSIO_CODEC_NONE) { /* the stored bytes are the values */
        if (len != want) return LSIO_KERR_SIZE;
        src = data + off;
    } else {
        int64_t h = *held;
        if (h >= 0 && p->src_off[h] == p->src_off[j] && p->src_len[h] == p->src_len[j]) {
            /* the scratch buffer holds this chunk already */
        } else if (p->codec == LSIO_CODEC_BLOSC && !shared) {
            int64_t lo, hi;
            sel_span(p, start, count, &lo, &hi);
            *held = -1; /* a part only: not for other jobs */
            int e = decode_blosc_part(data + off, len, p->scratch, want, lo, hi);
            if (e) return e;
        } else {
            *held = -1;
            int e = decode(p, data + off, len, p->scratch, want);
            if (e) return e;
            *held = j;
        }
        src = p->scratch;
    }
    int64_t first = 0, s = p->itemsize;
    for (int d = p->ndim - 1; d >= 0; d--) { first += start[d] * s; s *= p->chunk_shape[d]; }
    copy_nd(&c, 0, src + first, out);
    return 0;
}

int lsio_kernel_hook(void *ctx, int64_t idx, const char *data, int64_t n) {
    lsio_kplan *p = ctx;
    int failed = 0;
    int64_t held = -1; /* scratch is only reused within one read's data */
    int64_t end = p->job_at[idx + 1];
    for (int64_t j = p->job_at[idx]; j < end; j++) {
        int shared = j + 1 < end && p->src_off[j + 1] == p->src_off[j] &&
                     p->src_len[j + 1] == p->src_len[j];
        p->job_err[j] = run_job(p, j, data, n, &held, shared);
        failed |= p->job_err[j] != 0;
    }
    return failed;
}
