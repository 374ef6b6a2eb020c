/* dask-lsio decode kernel: blosc-LZ4 chunks read by the kernel itself (see _kernel_lz4.h).
 *
 * Crops decode in part: a stream holding none of the bytes a crop needs is not decoded, one
 * whose needed bytes end before its end is decoded that far (LZ4_decompress_safe_partial).
 * Bytes after the last one needed are not decoded, so corruption there goes unnoticed (where
 * zarr-python, decoding whole chunks, raises): hence a setting, lsio.partial-decode. Whole
 * decodes refuse exactly what c-blosc 1.21 refuses: lsio_lz4_view_of leaves to c-blosc every
 * header it would refuse, and lsio_lz4_read_whole checks every stream as blosc_d does.
 */
#include <string.h>
#include <blosc.h>
#include <lz4.h>

#include "_kernel.h"
#include "_kernel_codecs.h"
#include "_kernel_copy.h"
#include "_kernel_lz4.h"

#define BLOSC_NOSPLIT 0x10   /* header flag: blocks are one stream each */
#define BLOSC_FUTURE_FLAG 0x08 /* header flag c-blosc 1.x refuses */
#define BLOSC_MAX_SPLITS 16  /* c-blosc splits blocks of at most this typesize ... */
#define BLOSC_MIN_SPLIT 128  /* ... and at least this many elements */
#define LZ4_PARTIAL_RATIO 3  /* a stream prefix up to 1/3 of it decodes partially, ... */
#define LZ4_RUNS_RATIO 16    /* ... a longer one unless the stream is mostly long runs */

static int64_t le32(const uint8_t *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                     (uint32_t)p[3] << 24);
}

int lsio_lz4_view_of(const char *src, int64_t n, int64_t want, lsio_lz4_view *v) {
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
    /* anything c-blosc refuses (a future version or flag, a block larger than the chunk)
     * is left to it, so that its error is the one raised */
    if (h[0] != BLOSC_VERSION_FORMAT || h[1] != BLOSC_LZ4_VERSION_FORMAT ||
        (flags >> 5) != BLOSC_LZ4_FORMAT || (flags & (BLOSC_MEMCPYED | BLOSC_DOBITSHUFFLE |
        BLOSC_FUTURE_FLAG)) || v->ts < 1 || v->blocksize < 1 || v->blocksize > want ||
        v->blocksize > (int64_t)BLOSC_MAX_BLOCKSIZE || v->blocksize % v->ts || want % v->ts ||
        want == 0)
        return 0;
    int64_t nblocks = (want + v->blocksize - 1) / v->blocksize;
    v->nq0 = v->blocksize / v->ts; /* (the block is no larger than the chunk) */
    return BLOSC_MIN_HEADER_LENGTH + 4 * nblocks <= n ? 1 : -LSIO_KERR_CORRUPT;
}

static int64_t block_size(const lsio_lz4_view *v, int64_t k) {
    int64_t rest = v->nbytes - k * v->blocksize;
    return rest < v->blocksize ? rest : v->blocksize;
}

/* The streams block k is stored in: c-blosc splits a block into `ts` byte streams when its
 * elements are few bytes and many, never the last, shorter block. */
static int64_t block_splits(const lsio_lz4_view *v, int64_t k) {
    int64_t bsize = block_size(v, k);
    return !v->nosplit && v->ts <= BLOSC_MAX_SPLITS && bsize / v->ts >= BLOSC_MIN_SPLIT &&
           bsize == v->blocksize ? v->ts : 1;
}

/* Where the bytes of elements [e0, e1) of a block of nq elements end within [lo, hi) of its
 * (shuffled) buffer, relative to lo; 0 when none of them lie there. Shuffled, byte b of
 * element i is at b * nq + i; else element i's bytes are at i * ts. */
static int64_t needed_end(const lsio_lz4_view *v, int64_t nq, int64_t e0, int64_t e1,
                          int64_t lo, int64_t hi) {
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
static int read_block_part(const lsio_lz4_view *v, int64_t k, int64_t e0, int64_t e1,
                           char *out, int64_t *decoded) {
    int64_t bsize = block_size(v, k), nq = bsize / v->ts;
    int64_t nsplits = block_splits(v, k), neblock = bsize / nsplits;
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

int lsio_lz4_read_part(const lsio_lz4_view *v, int64_t lo, int64_t hi, char *scratch,
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

/* c-blosc's blosc_d for LZ4 streams, with no allocation: every byte of the chunk is needed,
 * so read_block_part decodes every stream with liblz4's whole decoder, which must fill the
 * stream's size exactly; any failure is c-blosc's one answer. */
int lsio_lz4_read_whole(const lsio_lz4_view *v, char *scratch, int64_t *decoded) {
    return lsio_lz4_read_part(v, 0, v->nbytes, scratch, decoded) ? LSIO_KERR_CORRUPT : 0;
}

/* cnt elements from i0 of a shuffled block of nq elements of ts bytes, unshuffled to dst
 * (streamed: see _kernel_copy.h). */
static inline void unshuffle(const uint8_t *blk, int64_t nq, int64_t ts, int64_t i0,
                             int64_t cnt, uint8_t *dst, int stream) {
    int64_t i = 0;
#ifdef __SSE2__
    /* (every 16-byte store below is at dst plus a multiple of 16: aligned if dst is) */
    int nt = lsio_can_stream(dst, stream);
#define STORE16(o, x) (nt ? _mm_stream_si128((o), (x)) : _mm_storeu_si128((o), (x)))
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
            STORE16(o, _mm_unpacklo_epi16(ab0, cd0));
            STORE16(o + 1, _mm_unpackhi_epi16(ab0, cd0));
            STORE16(o + 2, _mm_unpacklo_epi16(ab1, cd1));
            STORE16(o + 3, _mm_unpackhi_epi16(ab1, cd1));
        }
    } else if (ts == 2) {
        const uint8_t *p0 = blk + i0, *p1 = p0 + nq;
        for (; i + 16 <= cnt; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(p0 + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(p1 + i));
            __m128i *o = (__m128i *)(dst + 2 * i);
            STORE16(o, _mm_unpacklo_epi8(a, b));
            STORE16(o + 1, _mm_unpackhi_epi8(a, b));
        }
    }
#undef STORE16
#else
    (void)stream;
#endif
    for (; i < cnt; i++)
        for (int64_t b = 0; b < ts; b++) dst[i * ts + b] = blk[b * nq + i0 + i];
}

int lsio_lz4_fused(const lsio_lz4_view *v) {
    return !v->shuffled || v->ts == 2 || v->ts == 4;
}

void lsio_lz4_copy(const lsio_lz4_view *v, const char *scratch, int64_t x, int64_t len,
                   char *dst, int stream) {
    if (!v->shuffled) { /* the blocks lie one after the other: the chunk's bytes in order */
        lsio_copy(dst, scratch + x, len, stream);
        return;
    }
    if (x + len <= v->blocksize && v->ts == 4 && ((x | len) & 3) == 0) { /* float32 and
        * friends within the first block (a small chunk's only one): no division */
        unshuffle((const uint8_t *)scratch, v->nq0, 4, x >> 2, len >> 2, (uint8_t *)dst, stream);
        return;
    }
    while (len > 0) {
        int64_t k = x / v->blocksize, y = x - k * v->blocksize, bsize = block_size(v, k);
        int64_t take = len < bsize - y ? len : bsize - y;
        const uint8_t *blk = (const uint8_t *)scratch + k * v->blocksize;
        if (y % v->ts == 0 && take % v->ts == 0) {
            unshuffle(blk, bsize / v->ts, v->ts, y / v->ts, take / v->ts, (uint8_t *)dst,
                      stream);
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

