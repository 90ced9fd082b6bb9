/* decaylab's native Adam step: every decay form in one pass over memory.
 *
 * Built at first use by decaylab/optim/native.py (the system C compiler, OpenMP when it has it) and
 * called through ctypes with raw pointers: no Python headers, no torch headers, a one-second build.
 *
 * One call updates a whole bucket: `n` tensors, tensor i holding `models[i]` models of `per_model[i]`
 * contiguous elements each (stacked along dim 0; 1 model when not stacked). Tensor i reads its step
 * count's constants from row `rows[i]` of `coef` (NCOEF doubles, see the C_* names), model k its lr and
 * decay constant from lr[k] and dec[k]. The arithmetic is the specification's
 * (decaylab/optim/executors/reference.py: tensor_moments, tensor_update) operation by operation, in the tensor's own
 * dtype, built with -ffp-contract=off (no fused multiply-adds the specification does not have).
 *
 * The work is cut into chunks of CHUNK elements, shared among threads; per-chunk partial sums are
 * added in chunk order, so every result is independent of the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Each decay rule's number: its `native` attribute in decaylab/optim/rules.py (a test checks they agree). */
enum { FORM_L2 = 0, FORM_DECOUPLED = 1, FORM_PROX = 2, FORM_PROX_EUCLID = 3, FORM_CAUTIOUS = 4, FORM_STABLE = 5 };

/* Columns of a coefficient row: one row per distinct step count of the bucket. */
enum {
    C_C1 = 0,    /* 1/(1 − β₁^t) */
    C_C2 = 1,    /* 1/sqrt(1 − β₂^t) */
    C_OMB1 = 2,  /* 1 − β₁ */
    C_B2 = 3,    /* β₂ */
    C_OMB2 = 4,  /* 1 − β₂ */
    C_EPS = 5,   /* ε */
    C_SIGN = 6,  /* −1 with maximize, else 1 */
    NCOEF = 7
};
/* Per model k: lr[k] = lr_t, and dec[k] = the decay constant of the form:
 *   l2: λ; decoupled, cautious, prox_euclid: s_t·λ; stable: s_t·λ/(sqrt(mean v̂)+ε); prox: 1 + s_t·λ. */

#define CHUNK 65536

typedef struct {
    int64_t tensor, model, start, stop;
} item_t;

static int threads_for(int64_t total, int nthreads) {
    /* at least 32k elements per thread, as torch's at::parallel_for grain (the OpenMP runtime is
     * torch's own: libgomp.so.1 is loaded once per process, so the two share one thread pool) */
    int64_t most = total / 32768;
    if (most < 1) most = 1;
    return nthreads < most ? nthreads : (int)most;
}

/* Cut the bucket into chunks; returns how many (the caller frees *out), or −1 when out of memory, and
 * in *nt how many threads share them. */
static int64_t make_items(int64_t n, const int64_t *per_model, const int64_t *models, int nthreads, item_t **out,
                          int *nt) {
    int64_t count = 0, total = 0;
    for (int64_t i = 0; i < n; i++) {
        count += models[i] * ((per_model[i] + CHUNK - 1) / CHUNK);
        total += per_model[i] * models[i];
    }
    *nt = threads_for(total, nthreads);
    item_t *items = (item_t *)malloc(sizeof(item_t) * (count > 0 ? count : 1));
    if (!items) return -1;
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < models[i]; k++)
            for (int64_t s = 0; s < per_model[i]; s += CHUNK) {
                items[c].tensor = i;
                items[c].model = k;
                items[c].start = k * per_model[i] + s;
                items[c].stop = k * per_model[i] + (s + CHUNK < per_model[i] ? s + CHUNK : per_model[i]);
                c++;
            }
    *out = items;
    return count;
}

/* Add per-chunk partial sums into one sum per (tensor, model), in chunk order. */
static void reduce_items(int64_t count, const item_t *items, const double *partial, const int64_t *rows_out,
                         double *sums) {
    for (int64_t c = 0; c < count; c++) sums[rows_out[items[c].tensor] + items[c].model] += partial[c];
}


/* Σ x² over x[0:n] in float64: blocks of 512 squares summed in T over 16 lanes (32 terms per lane), the
 * blocks in 8 float64 lanes: a vectorizable sum that needs no reassociation by the compiler. */
#define SQ_BLOCK(T, x, j, acc)                                                                           \
    {                                                                                                    \
        T blk[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};                                    \
        for (int64_t i = (j); i < (j) + 512; i += 16)                                                    \
            for (int l = 0; l < 16; l++) blk[l] += (x)[i + l] * (x)[i + l];                              \
        for (int l = 0; l < 8; l++) (acc)[l] += (double)blk[l] + (double)blk[l + 8];                     \
    }
/* The same over four quarters of x at once: the quarters' loads are interleaved 16 elements at a
 * time, so that one core keeps four read streams in flight (measured on one core: about 1.5x the
 * bandwidth of one stream; with two threads 1.7x that of four streams taken block by block). */
#define LANE_SUM(T)                                                                                      \
    static double sum_squares_##T(const T *restrict x, int64_t n) {                                     \
        double acc[4][8] = {{0}};                                                                        \
        const int64_t q = (n / 4) / 512 * 512;                                                           \
        for (int64_t j = 0; j < q; j += 512) {                                                           \
            T blk[4][16] = {{0}};                                                                        \
            for (int64_t i = j; i < j + 512; i += 16)                                                    \
                for (int s = 0; s < 4; s++)                                                              \
                    for (int l = 0; l < 16; l++) blk[s][l] += x[s * q + i + l] * x[s * q + i + l];       \
            for (int s = 0; s < 4; s++)                                                                  \
                for (int l = 0; l < 8; l++) acc[s][l] += (double)blk[s][l] + (double)blk[s][l + 8];      \
        }                                                                                                \
        for (int s = 1; s < 4; s++)                                                                      \
            for (int l = 0; l < 8; l++) acc[0][l] += acc[s][l];                                          \
        int64_t j = 4 * q;                                                                               \
        for (; j + 512 <= n; j += 512) SQ_BLOCK(T, x, j, acc[0])                                         \
        for (; j < n; j++) acc[0][0] += (double)(x[j] * x[j]);                                           \
        double *a = acc[0];                                                                              \
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));                        \
    }

LANE_SUM(float)
LANE_SUM(double)

/* One chunk of the update, for one form: the loop body is instantiated per (dtype, form, amsgrad) so
 * that the compiler sees a branch-free loop it can vectorize. */
#define ADAM_LOOP(T, SQRT, FORM, AMS)                                                                    \
    static void adam_##T##_##FORM##_##AMS(int64_t a, int64_t b, T *restrict p, const T *restrict g,    \
                                           T *restrict m, T *restrict v, T *restrict vmax,              \
                                           const double *cf, double lr_k, double dec_k) {               \
        const T c1 = (T)cf[C_C1], lr = (T)lr_k, c2 = (T)cf[C_C2], omb1 = (T)cf[C_OMB1];                 \
        const T b2 = (T)cf[C_B2], omb2 = (T)cf[C_OMB2], eps = (T)cf[C_EPS], dec = (T)dec_k;              \
        const T c1lr = (T)(cf[C_C1] * lr_k), sign = (T)cf[C_SIGN]; /* prox_euclid's step size, c1·lr_t */ \
        (void)c1; (void)lr; (void)c1lr; (void)dec; (void)vmax;                                           \
        for (int64_t j = a; j < b; j++) {                                                                \
            ADAM_BODY(T, SQRT, FORM, AMS)                                                                \
        }                                                                                                \
    }

/* moments (directions.adam_moments), then the rule (reference.tensor_update) */
#define ADAM_BODY(T, SQRT, FORM, AMS)                                                                    \
    T gj = g[j] * sign;                                                                                  \
    T wj = p[j];                                                                                         \
    if (FORM == FORM_L2) gj = gj + wj * dec;                                                             \
    T mj = m[j] + (gj - m[j]) * omb1;                                                                    \
    T vj = v[j] * b2 + gj * gj * omb2;                                                                   \
    m[j] = mj;                                                                                           \
    v[j] = vj;                                                                                           \
    T vu = vj;                                                                                           \
    if (AMS) {                                                                                           \
        vu = vmax[j] > vj ? vmax[j] : vj;                                                                \
        vmax[j] = vu;                                                                                    \
    }                                                                                                    \
    T D = SQRT(vu) * c2 + eps;                                                                           \
    if (FORM == FORM_PROX_EUCLID) {                                                                      \
        p[j] = (wj * D - mj * c1lr) / (D + dec);                                                         \
    } else {                                                                                             \
        T u = mj * c1 / D;                                                                               \
        if (FORM == FORM_DECOUPLED || FORM == FORM_STABLE) wj = wj - wj * dec;                           \
        if (FORM == FORM_CAUTIOUS) wj = wj - wj * (T)(u * wj >= 0) * dec;                                \
        wj = wj - u * lr;                                                                                \
        if (FORM == FORM_PROX) wj = wj / dec;                                                            \
        p[j] = wj;                                                                                       \
    }

#define ADAM_FORMS(T, SQRT)                                                                              \
    ADAM_LOOP(T, SQRT, 0, 0) ADAM_LOOP(T, SQRT, 1, 0) ADAM_LOOP(T, SQRT, 2, 0)                           \
    ADAM_LOOP(T, SQRT, 3, 0) ADAM_LOOP(T, SQRT, 4, 0) ADAM_LOOP(T, SQRT, 5, 0)                           \
    ADAM_LOOP(T, SQRT, 0, 1) ADAM_LOOP(T, SQRT, 1, 1) ADAM_LOOP(T, SQRT, 2, 1)                           \
    ADAM_LOOP(T, SQRT, 3, 1) ADAM_LOOP(T, SQRT, 4, 1) ADAM_LOOP(T, SQRT, 5, 1)

ADAM_FORMS(float, sqrtf)
ADAM_FORMS(double, sqrt)

typedef void (*loop_float)(int64_t, int64_t, float *, const float *, float *, float *, float *, const double *, double,
                           double);
typedef void (*loop_double)(int64_t, int64_t, double *, const double *, double *, double *, double *,
                            const double *, double, double);

static const loop_float LOOPS_float[2][6] = {
    {adam_float_0_0, adam_float_1_0, adam_float_2_0, adam_float_3_0, adam_float_4_0, adam_float_5_0},
    {adam_float_0_1, adam_float_1_1, adam_float_2_1, adam_float_3_1, adam_float_4_1, adam_float_5_1}};
static const loop_double LOOPS_double[2][6] = {
    {adam_double_0_0, adam_double_1_0, adam_double_2_0, adam_double_3_0, adam_double_4_0, adam_double_5_0},
    {adam_double_0_1, adam_double_1_1, adam_double_2_1, adam_double_3_1, adam_double_4_1, adam_double_5_1}};

/* The bucket's step. ptrs holds 5 pointers per tensor: p, g, m, v, vmax (vmax NULL without amsgrad);
 * tensor i reads coefficient row rows[i], and its model k reads lr[k] and dec[k].
 * Chunks run from the last to the first: the stable form's pre-pass read the gradients first to last,
 * so the last ones are still in cache. Returns 0, or −1 when out of memory. */
#define ADAM_STEP(T)                                                                                     \
    int decaylab_adam_##T(int64_t n, void **ptrs, const int64_t *per_model, const int64_t *models,       \
                          const int64_t *rows, const double *coef, const double *lr, const double *dec,  \
                          int form, int amsgrad, int nthreads) {                                         \
        item_t *items;                                                                                   \
        int nt;                                                                                          \
        int64_t count = make_items(n, per_model, models, nthreads, &items, &nt);                         \
        if (count < 0) return -1;                                                                        \
        const loop_##T fn = LOOPS_##T[amsgrad ? 1 : 0][form];                                            \
        _Pragma("omp parallel for schedule(static) num_threads(nt) if (nt > 1)")                        \
        for (int64_t r = 0; r < count; r++) {                                                            \
            const item_t it = items[count - 1 - r];                                                      \
            T **t = (T **)(ptrs + 5 * it.tensor);                                                        \
            fn(it.start, it.stop, t[0], t[1], t[2], t[3], t[4], coef + NCOEF * rows[it.tensor], lr[it.model], \
               dec[it.model]);                                                                           \
        }                                                                                                \
        free(items);                                                                                     \
        return 0;                                                                                        \
    }

ADAM_STEP(float)
ADAM_STEP(double)

/* The stable form's pre-pass, per (tensor, model) into sums[sum_rows[i] + k]:
 *   mode 0: Σ g²                                   (v's sum is carried from the last step)
 *   mode 1: Σ (β₂·v + (1 − β₂)·g²)                 (the new v, read afresh)
 *   mode 2: Σ max(v_max, β₂·v + (1 − β₂)·g²)       (amsgrad's new v_max)
 * ptrs: g, v, vmax per tensor (3 each). The squares are formed in the tensor's dtype as the step forms
 * them; the sums run in float64. coef gives β₂ and 1 − β₂ (and the sign, which g² does not need). */
#define SUM_LOOP(T)                                                                                      \
    static double sum_##T(int64_t a, int64_t b, const T *restrict g, const T *restrict v,               \
                          const T *restrict vmax, const double *cf, int mode) {                          \
        const T b2 = (T)cf[C_B2], omb2 = (T)cf[C_OMB2];                                                  \
        if (mode == 0) return sum_squares_##T(g + a, b - a);                                             \
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                        \
        int64_t j = a;                                                                                   \
        for (; j + 8 <= b; j += 8)                                                                       \
            for (int l = 0; l < 8; l++) {                                                                \
                T gj = g[j + l];                                                                         \
                T vj = v[j + l] * b2 + gj * gj * omb2;                                                   \
                acc[l] += (double)(mode == 2 && vmax[j + l] > vj ? vmax[j + l] : vj);                    \
            }                                                                                            \
        for (; j < b; j++) {                                                                             \
            T gj = g[j];                                                                                 \
            T vj = v[j] * b2 + gj * gj * omb2;                                                           \
            acc[0] += (double)(mode == 2 && vmax[j] > vj ? vmax[j] : vj);                                \
        }                                                                                                \
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));        \
    }                                                                                                    \
    int decaylab_sums_##T(int64_t n, void **ptrs, const int64_t *per_model, const int64_t *models,       \
                          const int64_t *rows, const double *coef, const int *modes, double *sums,       \
                          const int64_t *sum_rows, int nthreads) {                                       \
        item_t *items;                                                                                   \
        int nt;                                                                                          \
        int64_t count = make_items(n, per_model, models, nthreads, &items, &nt);                         \
        if (count < 0) return -1;                                                                        \
        double *partial = (double *)calloc(count > 0 ? count : 1, sizeof(double));                       \
        if (!partial) {                                                                                  \
            free(items);                                                                                 \
            return -1;                                                                                   \
        }                                                                                                \
        _Pragma("omp parallel for schedule(static) num_threads(nt) if (nt > 1)")                        \
        for (int64_t c = 0; c < count; c++) {                                                            \
            const item_t it = items[c];                                                                  \
            const T **t = (const T **)(ptrs + 3 * it.tensor);                                            \
            partial[c] = sum_##T(it.start, it.stop, t[0], t[1], t[2], coef + NCOEF * rows[it.tensor],    \
                                 modes[it.tensor]);                                                      \
        }                                                                                                \
        reduce_items(count, items, partial, sum_rows, sums);                                             \
        free(partial);                                                                                   \
        free(items);                                                                                     \
        return 0;                                                                                        \
    }

SUM_LOOP(float)
SUM_LOOP(double)


/* ------------------------------------------------------------------------------------------------ SGD
 * SGD with momentum (directions.sgd_momentum / sgd_direction) and every decay form. A coefficient row
 * (one per distinct first-step state of the bucket's tensors) holds the buffer's keep and gain
 * (0 and 1 on a buffer's first step, μ and 1 − δ after), μ and the sign. Per model: lr[k], dec[k]
 * as for Adam (prox_euclid is prox here: D = 1). ptrs: p, g, buf per tensor (buf NULL without
 * momentum). */
enum { S_KEEP = 0, S_GAIN = 1, S_MU = 2, S_SIGN = 3, NSGD = 4 };

#define SGD_LOOP(T, FORM, MOM, NES)                                                                      \
    static void sgd_##T##_##FORM##_##MOM##_##NES(int64_t a, int64_t b, T *restrict p, const T *restrict g, \
                                                  T *restrict buf, const double *cf, double lr_k,       \
                                                  double dec_k) {                                       \
        const T keep = (T)cf[S_KEEP], gain = (T)cf[S_GAIN], mu = (T)cf[S_MU], sign = (T)cf[S_SIGN];      \
        const T lr = (T)lr_k, dec = (T)dec_k;                                                            \
        (void)keep; (void)gain; (void)mu; (void)buf; (void)dec;                                          \
        for (int64_t j = a; j < b; j++) {                                                                \
            T gj = g[j] * sign;                                                                          \
            T wj = p[j];                                                                                 \
            if (FORM == FORM_L2) gj = gj + wj * dec;                                                     \
            T u = gj;                                                                                    \
            if (MOM) {                                                                                   \
                T bj = buf[j] * keep + gj * gain;                                                        \
                buf[j] = bj;                                                                             \
                u = NES ? gj + bj * mu : bj;                                                             \
            }                                                                                            \
            if (FORM == FORM_DECOUPLED || FORM == FORM_STABLE) wj = wj - wj * dec;                       \
            if (FORM == FORM_CAUTIOUS) wj = wj - wj * (T)(u * wj >= 0) * dec;                            \
            wj = wj - u * lr;                                                                            \
            if (FORM == FORM_PROX || FORM == FORM_PROX_EUCLID) wj = wj / dec;                            \
            p[j] = wj;                                                                                   \
        }                                                                                                \
    }

#define SGD_FORMS(T, MOM, NES)                                                                           \
    SGD_LOOP(T, 0, MOM, NES) SGD_LOOP(T, 1, MOM, NES) SGD_LOOP(T, 2, MOM, NES)                           \
    SGD_LOOP(T, 3, MOM, NES) SGD_LOOP(T, 4, MOM, NES) SGD_LOOP(T, 5, MOM, NES)
#define SGD_ALL(T) SGD_FORMS(T, 0, 0) SGD_FORMS(T, 1, 0) SGD_FORMS(T, 1, 1)

SGD_ALL(float)
SGD_ALL(double)

typedef void (*sgd_float)(int64_t, int64_t, float *, const float *, float *, const double *, double, double);
typedef void (*sgd_double)(int64_t, int64_t, double *, const double *, double *, const double *, double, double);

#define SGD_TABLE(T, MOM, NES)                                                                           \
    {sgd_##T##_0_##MOM##_##NES, sgd_##T##_1_##MOM##_##NES, sgd_##T##_2_##MOM##_##NES,                    \
     sgd_##T##_3_##MOM##_##NES, sgd_##T##_4_##MOM##_##NES, sgd_##T##_5_##MOM##_##NES}
static const sgd_float SGD_LOOPS_float[3][6] = {SGD_TABLE(float, 0, 0), SGD_TABLE(float, 1, 0),
                                                SGD_TABLE(float, 1, 1)};
static const sgd_double SGD_LOOPS_double[3][6] = {SGD_TABLE(double, 0, 0), SGD_TABLE(double, 1, 0),
                                                  SGD_TABLE(double, 1, 1)};

/* variant: 0 no momentum, 1 momentum, 2 Nesterov momentum */
#define SGD_STEP(T)                                                                                      \
    int decaylab_sgd_##T(int64_t n, void **ptrs, const int64_t *per_model, const int64_t *models,        \
                         const int64_t *rows, const double *coef, const double *lr, const double *dec,   \
                         int form, int variant, int nthreads) {                                          \
        item_t *items;                                                                                   \
        int nt;                                                                                          \
        int64_t count = make_items(n, per_model, models, nthreads, &items, &nt);                         \
        if (count < 0) return -1;                                                                        \
        const sgd_##T fn = SGD_LOOPS_##T[variant][form];                                                 \
        _Pragma("omp parallel for schedule(static) num_threads(nt) if (nt > 1)")                        \
        for (int64_t c = 0; c < count; c++) {                                                            \
            const item_t it = items[c];                                                                  \
            T **t = (T **)(ptrs + 3 * it.tensor);                                                        \
            fn(it.start, it.stop, t[0], t[1], t[2], coef + NSGD * rows[it.tensor], lr[it.model],         \
               dec[it.model]);                                                                           \
        }                                                                                                \
        free(items);                                                                                     \
        return 0;                                                                                        \
    }

SGD_STEP(float)
SGD_STEP(double)

int decaylab_native_abi(void) { return 3; }
