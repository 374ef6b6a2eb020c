/* dask-lsio decode kernel. See _kernel.h for the model.
 *
 * Codecs are the reference C libraries (c-blosc 1.x, libzstd, zlib), called the way
 * numcodecs calls them (_kernel_codecs.c), so what decodes here decodes there and vice versa;
 * every decoded size is checked against the chunk's size, so a corrupt or truncated chunk is
 * an error, never silently wrong values.
 */
#include <string.h>
#include <blosc.h>
#include <lz4.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "_kernel.h"
#include "_kernel_codecs.h"

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

/* ---- blosc-LZ4 chunks a crop needs a part of (plan.partial: lsio.partial-decode) --------
 * A crop needs some rows of a chunk. c-blosc decodes whole blocks (a 64 KiB chunk is one
 * block) and unshuffles them whole, so we read the blocks of c-blosc's format 2 with LZ4 and
 * byte shuffle (or none) ourselves: a stream holding none of the bytes the crop needs is not
 * decoded, one whose needed bytes end before its end is decoded that far
 * (LZ4_decompress_safe_partial), and unshuffling is fused into the copy into the crop, so
 * only the bytes delivered are unshuffled. Any other blosc chunk goes through c-blosc. The
 * layout, as c-blosc 1.x writes it: a 16-byte header, an int32 start per block, and per
 * block `nsplits` streams of consecutive bytes of its buffer (int32 compressed size, then
 * the bytes; stored raw when that size is the stream's). A shuffled block of `nq` elements
 * of `ts` bytes holds byte b of element i at b * nq + i (split in `ts` streams, each is a
 * byte plane). Bytes after the last one needed are not decoded, so corruption there goes
 * unnoticed (where zarr-python, decoding whole chunks, raises): hence a setting,
 * lsio.partial-decode. */
#define BLOSC_NOSPLIT 0x10   /* header flag: blocks are one stream each */
#define BLOSC_MAX_SPLITS 16  /* c-blosc splits blocks of at most this typesize ... */
#define BLOSC_MIN_SPLIT 128  /* ... and at least this many elements */
#define LZ4_PARTIAL_RATIO 3  /* a stream prefix up to 1/3 of it decodes partially, ... */
#define LZ4_RUNS_RATIO 16    /* ... a longer one unless the stream is mostly long runs */

typedef struct blosc_view {
    const uint8_t *src;
    int64_t n, nbytes, blocksize, ts;
    int shuffled, nosplit;
} blosc_view;

static int64_t le32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

/* 1: a chunk read_lz4_part handles (v filled), 0: not (c-blosc decodes it), or -err. */
static int blosc_lz4_view(const char *src, int64_t n, int64_t want, blosc_view *v) {
    int e = lsio_blosc_header(src, n, want);
    if (e) return -e;
    const uint8_t *h = (const uint8_t *)src;
    int flags = h[2];
    v->src = h;
    v->n = n;
    v->nbytes = want;
    v->ts = h[3];
    v->blocksize = le32(h + 8);
    v->shuffled = (flags & BLOSC_DOSHUFFLE) && v->ts > 1;
    v->nosplit = (flags & BLOSC_NOSPLIT) != 0;
    if (h[0] != BLOSC_VERSION_FORMAT || (flags >> 5) != BLOSC_LZ4_FORMAT ||
        (flags & (BLOSC_MEMCPYED | BLOSC_DOBITSHUFFLE)) || v->ts < 1 || v->blocksize < 1 ||
        v->blocksize % v->ts || want % v->ts || want == 0)
        return 0;
    int64_t nblocks = (want + v->blocksize - 1) / v->blocksize;
    return BLOSC_MIN_HEADER_LENGTH + 4 * nblocks <= n ? 1 : -LSIO_KERR_CORRUPT;
}

static int64_t block_size(const blosc_view *v, int64_t k) {
    int64_t rest = v->nbytes - k * v->blocksize;
    return rest < v->blocksize ? rest : v->blocksize;
}

/* Where the bytes of elements [e0, e1) of a block of nq elements end within [lo, hi) of its
 * (shuffled) buffer, relative to lo; 0 when none of them lie there. Shuffled, byte b of
 * element i is at b * nq + i; else element i's bytes are at i * ts. */
static int64_t needed_end(const blosc_view *v, int64_t nq, int64_t e0, int64_t e1, int64_t lo,
                          int64_t hi) {
    int64_t planes = v->shuffled ? v->ts : 1, width = v->shuffled ? 1 : v->ts;
    for (int64_t b = planes - 1; b >= 0; b--) { /* the last plane that meets [lo, hi) */
        int64_t first = b * nq + e0 * width, end = b * nq + e1 * width;
        if (first < hi && end > lo) return (end < hi ? end : hi) - lo;
    }
    return 0;
}

/* Decode what elements [e0, e1) of block k need into out (the block's buffer, shuffled or
 * not): the buffer is `nsplits` streams of consecutive bytes, each decoded up to its last
 * needed byte, and streams holding none of them not at all. */
static int read_block_part(const blosc_view *v, int64_t k, int64_t e0, int64_t e1, char *out,
                           int64_t *decoded) {
    int64_t bsize = block_size(v, k), nq = bsize / v->ts;
    int split = !v->nosplit && v->ts <= BLOSC_MAX_SPLITS && nq >= BLOSC_MIN_SPLIT &&
                bsize == v->blocksize; /* c-blosc never splits the last, shorter block */
    int64_t nsplits = split ? v->ts : 1, neblock = bsize / nsplits;
    int64_t at = le32(v->src + BLOSC_MIN_HEADER_LENGTH + 4 * k);
    for (int64_t j = 0; j < nsplits; j++) {
        if (at < 0 || at > v->n - 4) return LSIO_KERR_CORRUPT;
        int64_t cb = le32(v->src + at);
        at += 4;
        if (cb < 0 || cb > v->n - at) return LSIO_KERR_CORRUPT;
        int64_t target = needed_end(v, nq, e0, e1, j * neblock, (j + 1) * neblock);
        char *dst = out + j * neblock;
        if (target > 0 && cb == neblock) { /* stored raw */
            memcpy(dst, v->src + at, (size_t)target);
            *decoded += target;
        } else if (target > 0) {
            /* liblz4's partial decoder keeps its fast loop (a 70% prefix of a 16 KiB plane
             * compressed 2x: ~63% of the whole plane's time), but copies a match that
             * crosses the target byte by byte: a plane of long runs (compressed more than
             * LZ4_RUNS_RATIO times, e.g. the exponent bytes of smooth floats) decodes
             * faster whole, unless the prefix is short. bench_crops (dataset A): this rule
             * 1.09x the crops/s of "prefixes up to 1/3 only", every prefix in part 0.78x */
            const char *in = (const char *)v->src + at;
            int got = (target * LZ4_PARTIAL_RATIO <= neblock ||
                       (target < neblock && cb * LZ4_RUNS_RATIO >= neblock))
                          ? LZ4_decompress_safe_partial(in, dst, (int)cb, (int)target,
                                                        (int)neblock)
                          : LZ4_decompress_safe(in, dst, (int)cb, (int)neblock);
            if (got < 0) return LSIO_KERR_CORRUPT;
            if (got < target) return LSIO_KERR_SIZE;
            *decoded += got;
        }
        at += cb;
    }
    return 0;
}

/* Decode what the bytes [lo, hi) of the chunk need into scratch, block k at k * blocksize. */
static int read_lz4_part(const blosc_view *v, int64_t lo, int64_t hi, char *scratch,
                         int64_t *decoded) {
    for (int64_t k = lo / v->blocksize; k * v->blocksize < hi; k++) {
        int64_t start = k * v->blocksize, bsize = block_size(v, k);
        int64_t first = lo > start ? lo - start : 0, end = hi < start + bsize ? hi - start : bsize;
        int e = read_block_part(v, k, first / v->ts, (end + v->ts - 1) / v->ts, scratch + start,
                                decoded);
        if (e) return e;
    }
    return 0;
}

/* cnt elements from i0 of a shuffled block of nq elements of ts bytes, unshuffled to dst. */
static void unshuffle(const uint8_t *blk, int64_t nq, int64_t ts, int64_t i0, int64_t cnt,
                      uint8_t *dst) {
    int64_t i = 0;
#ifdef __SSE2__
    if (ts == 4) {
        const uint8_t *p0 = blk + i0, *p1 = p0 + nq, *p2 = p1 + nq, *p3 = p2 + nq;
        for (; i + 16 <= cnt; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(p0 + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(p1 + i));
            __m128i c = _mm_loadu_si128((const __m128i *)(p2 + i));
            __m128i d = _mm_loadu_si128((const __m128i *)(p3 + i));
            __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
            __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
            __m128i *o = (__m128i *)(dst + 4 * i);
            _mm_storeu_si128(o, _mm_unpacklo_epi16(ab0, cd0));
            _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(ab0, cd0));
            _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(ab1, cd1));
            _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(ab1, cd1));
        }
    } else if (ts == 2) {
        const uint8_t *p0 = blk + i0, *p1 = p0 + nq;
        for (; i + 16 <= cnt; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(p0 + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(p1 + i));
            __m128i *o = (__m128i *)(dst + 2 * i);
            _mm_storeu_si128(o, _mm_unpacklo_epi8(a, b));
            _mm_storeu_si128(o + 1, _mm_unpackhi_epi8(a, b));
        }
    }
#endif
    for (; i < cnt; i++)
        for (int64_t b = 0; b < ts; b++) dst[i * ts + b] = blk[b * nq + i0 + i];
}

/* Copy bytes [x, x + len) of the decoded chunk to dst from scratch's shuffled blocks. */
static void copy_unshuffled(const blosc_view *v, const char *scratch, int64_t x, int64_t len,
                            char *dst) {
    while (len > 0) {
        int64_t k = x / v->blocksize, y = x - k * v->blocksize, bsize = block_size(v, k);
        int64_t take = len < bsize - y ? len : bsize - y;
        const uint8_t *blk = (const uint8_t *)scratch + k * v->blocksize;
        if (!v->shuffled) {
            memcpy(dst, blk + y, (size_t)take);
        } else if (y % v->ts == 0 && take % v->ts == 0) {
            unshuffle(blk, bsize / v->ts, v->ts, y / v->ts, take / v->ts, (uint8_t *)dst);
        } else { /* bytes of partial elements (typesize not the item size) */
            int64_t nq = bsize / v->ts;
            for (int64_t t = 0; t < take; t++)
                dst[t] = (char)blk[((y + t) % v->ts) * nq + (y + t) / v->ts];
        }
        x += take;
        dst += take;
        len -= take;
    }
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
 * blocks at base, unshuffled as they are copied. */
typedef struct copy_src {
    const char *base;
    const blosc_view *view;
} copy_src;

static void copy_run(const copy_src *s, int64_t off, int64_t run, char *dst) {
    if (s->view) copy_unshuffled(s->view, s->base, off, run, dst);
    else memcpy(dst, s->base + off, (size_t)run);
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
 * zarr-python cannot decode is an error here too, whatever part of it is needed. */
static int decode_part(const lsio_kplan *p, int64_t j, const char *src, int64_t len,
                       int64_t *held, int shared, blosc_view *view, copy_src *s) {
    int64_t want = chunk_nbytes(p), h = *held;
    s->base = p->scratch;
    s->view = NULL;
    if (h >= 0 && p->src_off[h] == p->src_off[j] && p->src_len[h] == p->src_len[j])
        return 0; /* scratch holds this chunk already */
    *held = -1;
    if (p->codec != LSIO_CODEC_BLOSC || shared || !p->partial) {
        int e = decode(p, src, len, p->scratch, want);
        if (!e) *held = j;
        return e;
    }
    const int64_t *start = p->sel + 2 * p->ndim * j;
    int64_t lo, hi;
    sel_span(p, start, start + p->ndim, &lo, &hi);
    int fast = blosc_lz4_view(src, len, want, view);
    if (fast < 0) return -fast;
    if (!fast) return decode_blosc_part(src, len, p->scratch, want, lo, hi, p->decoded);
    s->view = view;
    return read_lz4_part(view, lo, hi, p->scratch, p->decoded);
}

/* Place job j: decoded straight into the output when it is the whole chunk landing in a
 * contiguous piece of it, else through scratch (decode_part) and one strided copy. */
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
    copy_src s = {data + off, NULL};
    blosc_view view;
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
