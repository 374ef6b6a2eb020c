/* dask-lsio decode kernel: blosc-LZ4 chunks read by the kernel itself, for _kernel.c (not
 * part of the cffi interface).
 *
 * c-blosc 1.x decodes a chunk block by block into a temporary buffer it allocates per call,
 * then unshuffles every block whole into the output. Two callers do better reading c-blosc's
 * format 2 (LZ4, byte shuffle or none) themselves:
 * - a crop that needs some rows of a chunk (plan.partial: lsio.partial-decode) decodes only
 *   the stream prefixes holding them, and unshuffles only the bytes it delivers;
 * - a chunk decoded whole but placed in pieces (small inner chunks of a large block) has
 *   every stream decoded as c-blosc decodes it, with its checks and its one error, into the
 *   plan's scratch (no allocation per chunk: for 1 KiB chunks c-blosc's allocations took a
 *   fifth of a scan's samples), and unshuffled as it is copied into place.
 * Any other blosc chunk goes through c-blosc.
 *
 * The layout, as c-blosc 1.x writes it: a 16-byte header, an int32 start per block, and per
 * block `nsplits` streams of consecutive bytes of its buffer (int32 compressed size, then
 * the bytes; stored raw when that size is the stream's). A shuffled block of `nq` elements
 * of `ts` bytes holds byte b of element i at b * nq + i (split in `ts` streams, each is a
 * byte plane). Decoded blocks lie in scratch at k * blocksize, still shuffled.
 */
#ifndef LSIO_KERNEL_LZ4_H
#define LSIO_KERNEL_LZ4_H
#include <stdint.h>

typedef struct lsio_lz4_view {
    const uint8_t *src;
    int64_t n, nbytes, blocksize, ts;
    int64_t nq0; /* elements of the first block */
    int shuffled, nosplit;
} lsio_lz4_view;

/* 1: a chunk this file reads (v filled), 0: not (c-blosc decodes it, and refuses what it
 * refuses), or -LSIO_KERR_*: the header is bad (as lsio_blosc_header says). */
int lsio_lz4_view_of(const char *src, int64_t n, int64_t want, lsio_lz4_view *v);

/* Decode what the bytes [lo, hi) of the chunk need into scratch: streams holding none of them
 * are not decoded, others up to the last byte needed (corruption after it goes unnoticed). */
int lsio_lz4_read_part(const lsio_lz4_view *v, int64_t lo, int64_t hi, char *scratch,
                       int64_t *decoded);

/* Decode every stream of every block into scratch, as c-blosc's blosc_d does (the same
 * bounds on every offset and size; a stream must decode to exactly its size): 0 or
 * LSIO_KERR_CORRUPT, c-blosc's one answer to any of it. */
int lsio_lz4_read_whole(const lsio_lz4_view *v, char *scratch, int64_t *decoded);

/* Whether lsio_lz4_copy moves v's bytes at memcpy-like speed (vector unshuffling for these
 * element sizes; c-blosc's own unshuffle is faster for the others). */
int lsio_lz4_fused(const lsio_lz4_view *v);

/* Copy bytes [x, x + len) of the decoded chunk from scratch to dst, unshuffling them;
 * `stream`: with non-temporal stores where dst allows (see _kernel_copy.h). */
void lsio_lz4_copy(const lsio_lz4_view *v, const char *scratch, int64_t x, int64_t len,
                   char *dst, int stream);

#endif
