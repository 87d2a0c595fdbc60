/* Fused elementwise passes of the Hebbian/Oja lifetime on the CPU (see native.py).
 *
 * Tensors are (L, T, R, C) blocks: L stacked layers, T tasks, R x C weights. A task stride of 0
 * means the tensor is shared by all tasks (initial weights, per-synapse coefficients).
 * Each function makes one pass over the weights instead of the 4-6 passes that separate torch
 * calls need; the passes are memory-bound, so this is where the time goes.
 */
#include <stddef.h>

#define DEFINE_KERNELS(T, SUF)                                                                   \
/* M <- W + P * (M - s W)   (Oja; s == NULL: Hebb, M <- W + P * M) */                           \
void hebbian_forward_##SUF(T *m, const T *w, const T *p, const T *s, long L, long NT, long R,     \
                           long C, long w_task_stride, long p_task_stride, int nthreads) {         \
    long rows = L * NT * R;                                                                       \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                           \
    for (long r = 0; r < rows; r++) {                                                             \
        long l = r / (NT * R), t = (r / R) % NT, i = r % R;                                       \
        T *mr = m + r * C;                                                                        \
        const T *wr = w + l * (w_task_stride ? NT * R * C : R * C) + t * w_task_stride + i * C;   \
        const T *pr = p + l * (p_task_stride ? NT * R * C : R * C) + t * p_task_stride + i * C;   \
        if (s) {                                                                                  \
            T si = s[r];                                                                          \
            _Pragma("omp simd")                                                                   \
            for (long j = 0; j < C; j++) mr[j] = wr[j] + pr[j] * (mr[j] - si * wr[j]);             \
        } else {                                                                                  \
            _Pragma("omp simd")                                                                   \
            for (long j = 0; j < C; j++) mr[j] = wr[j] + pr[j] * mr[j];                           \
        }                                                                                         \
    }                                                                                             \
}                                                                                                 \
/* One reverse step of the weight adjoint G (dL/dW' on entry, update path's dL/dW on exit):     \
 *   D = G * P;  ds = rowsum(D * W) (Oja);  gp += sum_t G * (M - s W) (if gp);  G -= s D (Oja)  \
 * M = T^T H of the step (only read when gp != NULL). P and gp are shared by the T tasks; rows   \
 * are split over threads by (layer, row), tasks loop inside, so gp has no write races. */       \
void hebbian_adjoint_##SUF(T *g, T *d, T *ds, T *gp, const T *p, const T *w, const T *m,         \
                           const T *s, long L, long NT, long R, long C, long w_task_stride,        \
                           int nthreads) {                                                        \
    long rows = L * R;                                                                            \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                           \
    for (long r = 0; r < rows; r++) {                                                             \
        long l = r / R, i = r % R;                                                                \
        const T *pr = p + r * C;                                                                  \
        T *gpr = gp ? gp + r * C : NULL;                                                          \
        for (long t = 0; t < NT; t++) {                                                           \
            long row = (l * NT + t) * R + i;                                                      \
            T *gr = g + row * C, *dr = d + row * C;                                               \
            const T *wr = w + l * (w_task_stride ? NT * R * C : R * C) + t * w_task_stride + i * C; \
            const T *mr = m ? m + row * C : NULL;                                                 \
            if (s) {                                                                              \
                T si = s[row], acc = 0;                                                           \
                if (gpr) {                                                                        \
                    _Pragma("omp simd reduction(+:acc)")                                          \
                    for (long j = 0; j < C; j++) {                                                \
                        T gj = gr[j], dj = gj * pr[j];                                            \
                        dr[j] = dj;                                                               \
                        acc += dj * wr[j];                                                        \
                        gpr[j] += gj * (mr[j] - si * wr[j]);                                      \
                        gr[j] = gj - si * dj;                                                     \
                    }                                                                             \
                } else {                                                                          \
                    _Pragma("omp simd reduction(+:acc)")                                          \
                    for (long j = 0; j < C; j++) {                                                \
                        T gj = gr[j], dj = gj * pr[j];                                            \
                        dr[j] = dj;                                                               \
                        acc += dj * wr[j];                                                        \
                        gr[j] = gj - si * dj;                                                     \
                    }                                                                             \
                }                                                                                 \
                ds[row] = acc;                                                                    \
            } else {                                                                              \
                if (gpr) {                                                                        \
                    _Pragma("omp simd")                                                           \
                    for (long j = 0; j < C; j++) {                                                \
                        T gj = gr[j];                                                             \
                        dr[j] = gj * pr[j];                                                       \
                        gpr[j] += gj * mr[j];                                                     \
                    }                                                                             \
                } else {                                                                          \
                    _Pragma("omp simd")                                                           \
                    for (long j = 0; j < C; j++) dr[j] = gr[j] * pr[j];                           \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
