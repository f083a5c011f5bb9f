/* What every dlf kernel shares: libmvec's vector exp/log, the vector types for REAL and MASK
 * (-DREAL=float -DMASK=int32_t or double/int64_t, set by dlf.kernels) and the naming macro. */
#ifndef DLF_VECTORS_H
#define DLF_VECTORS_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#pragma omp declare simd notinbranch
extern float expf(float);
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern float logf(float);
#pragma omp declare simd notinbranch
extern double log(double);

/* One vector is the machine's widest: 64 bytes with AVX-512, else 32 (AVX2; a 64-byte vector there
 * is expanded piecewise and runs some 20 times slower). */
#ifdef __AVX512F__
#define VECTOR_BYTES 64
#else
#define VECTOR_BYTES 32
#endif
#define LANES (VECTOR_BYTES / (int)sizeof(REAL))
#define EXP(v) (sizeof(REAL) == 4 ? expf(v) : exp(v))
#define LOG(v) (sizeof(REAL) == 4 ? logf(v) : log(v))
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
typedef REAL vec __attribute__((vector_size(VECTOR_BYTES)));
typedef MASK mvec __attribute__((vector_size(VECTOR_BYTES)));
#define IF_POSITIVE(z, v) ((vec)((mvec)(v) & ((z) > 0))) /* v where z > 0, else 0 */

#endif
