/* dask-lsio decode kernel: its codecs, for _kernel.c (not part of the cffi interface).
 *
 * Each decodes one chunk's `n` bytes at `src` into `want` bytes at `dst`, as numcodecs would
 * (what it refuses, they refuse), and returns 0 or an LSIO_KERR_* code: LSIO_KERR_SIZE when
 * the data holds another number of bytes than `want`.
 */
#ifndef LSIO_KERNEL_CODECS_H
#define LSIO_KERNEL_CODECS_H
#include <stdint.h>

/* numcodecs' zstd: every frame found, their stated sizes summed (or decoded as a stream) */
int lsio_decode_zstd(const char *src, int64_t n, char *dst, int64_t want);
/* c-blosc 1.x: the header checked (sizes, and `want` within c-blosc's 32-bit limit) ... */
int lsio_blosc_header(const char *src, int64_t n, int64_t want);
/* ... and the frame decoded */
int lsio_decode_blosc(const char *src, int64_t n, char *dst, int64_t want);
/* numcodecs' zlib (gzip 0: one zlib stream) and gzip (gzip 1: members, NUL padding) */
int lsio_decode_zlib(const char *src, int64_t n, char *dst, int64_t want, int gzip);

#endif
