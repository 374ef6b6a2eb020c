/* dask-lsio decode kernel. See _kernel.h for the model.
 *
 * Codecs are the reference C libraries (c-blosc 1.x, libzstd, zlib), called the way
 * numcodecs calls them (_kernel_codecs.c), so what decodes here decodes there and vice versa
 * (blosc-LZ4 chunks placed through scratch are read by _kernel_lz4.c, which refuses what
 * c-blosc refuses, with its error); every decoded size is checked against the chunk's size,
 * so a corrupt or truncated chunk is an error, never silently wrong values.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <blosc.h>

#include "_kernel.h"
#include "_kernel_codecs.h"
#include "_kernel_copy.h"
#include "_kernel_lz4.h"

uint32_t lsio_kernel_codecs(void) {
    return (1u << LSIO_CODEC_NONE) | (1u << LSIO_CODEC_BLOSC) | (1u << LSIO_CODEC_ZSTD) |
           (1u << LSIO_CODEC_ZLIB) | (1u << LSIO_CODEC_GZIP);
}

static int64_t chunk_nbytes(const lsio_kplan *p) {
    int64_t n = p->itemsize;
    for (int d = 0; d < p->ndim; d++) n *= p->chunk_shape[d];
    return n;
}

/* Decode only the bytes [lo, hi) of a blosc chunk into dst + lo: the blocks holding them
 * (a crop that needs a few rows of a chunk decodes those rows, not the chunk). */
static int decode_blosc_part(const char *src, int64_t n, char *dst, int64_t want, int64_t lo,
                             int64_t hi, int64_t *decoded) {
    size_t ts = 0;
    int flags = 0;
    int e = lsio_blosc_header(src, n, want);
    if (e) return e;
    blosc_cbuffer_metainfo(src, &ts, &flags);
    if (ts < 1) ts = 1;
    int64_t first = lo / (int64_t)ts, last = (hi + (int64_t)ts - 1) / (int64_t)ts;
    int64_t got = blosc_getitem(src, (int)first, (int)(last - first), dst + first * (int64_t)ts);
    if (got < 0) return LSIO_KERR_CORRUPT;
    *decoded += got;
    return got == (last - first) * (int64_t)ts ? 0 : LSIO_KERR_SIZE;
}

static int decode(const lsio_kplan *p, const char *src, int64_t n, char *dst, int64_t want) {
    int e;
    switch (p->codec) {
    case LSIO_CODEC_BLOSC: e = lsio_decode_blosc(src, n, dst, want); break;
    case LSIO_CODEC_ZSTD: e = lsio_decode_zstd(src, n, dst, want); break;
    case LSIO_CODEC_ZLIB: e = lsio_decode_zlib(src, n, dst, want, 0); break;
    case LSIO_CODEC_GZIP: e = lsio_decode_zlib(src, n, dst, want, 1); break;
    default:
        if (n != want) return LSIO_KERR_SIZE;
        memcpy(dst, src, (size_t)want);
        return 0;
    }
    if (!e) *p->decoded += want;
    return e;
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

/* Where a copy reads: the decoded chunk at base, or (view set) a blosc-LZ4 chunk's shuffled
 * blocks at base, unshuffled as they are copied; and how it writes (stream: plan.stream). */
typedef struct copy_src {
    const char *base;
    const lsio_lz4_view *view;
    int stream;
} copy_src;

static void copy_run(const copy_src *s, int64_t off, int64_t run, char *dst) {
    if (s->view) lsio_lz4_copy(s->view, s->base, off, run, dst, s->stream);
    else lsio_copy(dst, s->base + off, run, s->stream);
}

/* Copy the selection whose first byte is at `off` in the chunk to dst. */
static void copy_nd(const copy_shape *c, int k, const copy_src *s, int64_t off, char *dst) {
    if (k == c->nd) { copy_run(s, off, c->run, dst); return; }
    if (k == c->nd - 1) {
        for (int64_t i = 0; i < c->cnt[k]; i++)
            copy_run(s, off + i * c->sst[k], c->run, dst + i * c->dst[k]);
        return;
    }
    for (int64_t i = 0; i < c->cnt[k]; i++)
        copy_nd(c, k + 1, s, off + i * c->sst[k], dst + i * c->dst[k]);
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

/* Decode a chunk job j needs a part of into scratch, where `src` then reads it. `held` is
 * the job whose decoded chunk scratch holds (-1: none); a job of the same bytes reuses it, so
 * a chunk several boxes need is decoded once (its jobs are consecutive in the plan). A blosc
 * chunk only this job needs (`shared`: the next job needs the same chunk) is decoded in
 * part where the plan allows it (`partial`): the stream prefixes its selection needs
 * (blosc-LZ4), else the blocks it spans. Otherwise chunks are decoded whole, so that a chunk
 * zarr-python cannot decode is an error here too, whatever part of it is needed: blosc-LZ4
 * chunks of 1, 2 or 4-byte elements by the kernel itself (_kernel_lz4.h, c-blosc's checks,
 * unshuffled in the copy), others by their library. */
static int decode_part(const lsio_kplan *p, int64_t j, const char *src, int64_t len,
                       int64_t *held, int shared, lsio_lz4_view *view, copy_src *s) {
    int64_t want = chunk_nbytes(p), h = *held;
    s->base = p->scratch;
    s->view = NULL;
    if (h >= 0 && p->src_off[h] == p->src_off[j] && p->src_len[h] == p->src_len[j])
        return 0; /* scratch holds this chunk already */
    *held = -1;
    int fast = 0;
    if (p->codec == LSIO_CODEC_BLOSC && !shared) {
        fast = lsio_lz4_view_of(src, len, want, view);
        if (fast < 0) return -fast;
    }
    if (p->codec != LSIO_CODEC_BLOSC || shared ||
        (!p->partial && !(fast && lsio_lz4_fused(view)))) {
        int e = decode(p, src, len, p->scratch, want);
        if (!e) *held = j;
        return e;
    }
    if (!p->partial) { /* decoded whole as c-blosc would, unshuffled as it is copied */
        s->view = view;
        return lsio_lz4_read_whole(view, p->scratch, p->decoded);
    }
    const int64_t *start = p->sel + 2 * p->ndim * j;
    int64_t lo, hi;
    sel_span(p, start, start + p->ndim, &lo, &hi);
    if (!fast) return decode_blosc_part(src, len, p->scratch, want, lo, hi, p->decoded);
    s->view = view;
    return lsio_lz4_read_part(view, lo, hi, p->scratch, p->decoded);
}

/* Whether a whole chunk landing in a contiguous piece of a streamed output goes through
 * scratch (decode_part) so that it can be streamed: stored bytes, and blosc-LZ4 chunks that
 * c-blosc would unshuffle into place through its own temporary anyway. */
static int whole_streamed(const lsio_kplan *p, const char *src, int64_t len) {
    if (!p->stream) return 0;
    if (p->codec == LSIO_CODEC_NONE) return 1;
    lsio_lz4_view view;
    return p->codec == LSIO_CODEC_BLOSC && lsio_lz4_view_of(src, len, chunk_nbytes(p), &view) > 0
           && lsio_lz4_fused(&view);
}

/* Place job j: decoded straight into the output when it is the whole chunk landing in a
 * contiguous piece of it (unless that is to stream: see whole_streamed), else through
 * scratch (decode_part) and one strided copy. */
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
    if (c.nd == 0 && c.run == want && !whole_streamed(p, data + off, len))
        return decode(p, data + off, len, out, want);
    copy_src s = {data + off, NULL, p->stream};
    lsio_lz4_view view;
    if (p->codec == LSIO_CODEC_NONE) { /* the stored bytes are the values */
        if (len != want) return LSIO_KERR_SIZE;
    } else {
        int e = decode_part(p, j, data + off, len, held, shared, &view, &s);
        if (e) return e;
    }
    int64_t first = 0, st = p->itemsize;
    for (int d = p->ndim - 1; d >= 0; d--) { first += start[d] * st; st *= p->chunk_shape[d]; }
    copy_nd(&c, 0, &s, first, out);
    return 0;
}

#define MAPPED_SAMPLES 16

int lsio_kernel_mapped(const char *p, int64_t n) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || n <= 0) return 0;
    uintptr_t first = (uintptr_t)p / (uintptr_t)page, last = ((uintptr_t)p + n - 1) / page;
    uintptr_t pages = last - first + 1, step = pages / MAPPED_SAMPLES + 1;
    for (uintptr_t k = first; k <= last; k += step) {
        unsigned char in = 0;
        if (mincore((void *)(k * page), (size_t)page, &in) != 0 || !(in & 1)) return 0;
    }
    return 1;
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
    lsio_copy_fence(p->stream);
    return failed;
}
