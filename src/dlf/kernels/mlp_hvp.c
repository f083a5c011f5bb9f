/* Hessian-vector products H v of F for a one-hidden-layer ReLU MLP, full batch, for every row of
 * θ at once (dlf.curvature.kernel_hvp): Pearlmutter's R-operator written out, no autograd graph.
 * Compiled once per dtype like mlp_step.c (-DREAL, -DMASK, -DSUFFIX).
 *
 * Per row, with z = [x, 1] W1 (W1 holds b1 as its last row), a = relu(z), f = a W2 + b2 and the
 * tangent V = (V1, V2, v2) of (W1, W2, b2), per block of samples:
 *   forward: a, R a = 1[z>0] ⊙ [x, 1] V1, f and R f = R a W2 + a V2 + v2
 *   loss: d = ∂F/∂f and R d = (∂²F/∂f²) R f per sample (see the kinds below)
 *   backward: H v for W2: Σ_p (R a_p)ᵀ d_p + a_pᵀ R d_p;  for b2: Σ_p R d_p;
 *     for W1: Σ_p [x_p, 1]ᵀ (1[z_p>0] ⊙ (R d_p W2ᵀ + d_p V2ᵀ))
 * Both passes are vectorised over hidden units; that is 30 multiply-adds per sample and hidden
 * unit (the training step, mlp_step.c: 18), and a training step's forward pass is not shared.
 * ReLU's second derivative is 0 (as in autograd), so no term in V1 ⊗ V1 appears. */
#include "vectors.h"

/* The loss kinds of mlp_step.c, with s_p the sample's weight Γ_{y_p} (1 for ST):
 *   CE: d = s_p (p − e_y) / P,      R d = s_p (p ⊙ R f − p (p · R f)) / P   (p = softmax f)
 *   SE: d = 2 s_p (f − e_y) / P,    R d = 2 s_p R f / P
 *   ST: d = 2 (f − Γ ⊙ e_y) / P,    R d = 2 R f / P */
enum { CE = 0, SE = 1, ST = 2 };

/* Samples are processed in blocks of BLOCK, so that a block's activations stay in cache between
 * the forward and the backward pass (computed once, not recomputed as in mlp_step.c). */
enum { BLOCK = 32 };

/* Shapes: P samples, ni1 = inputs + 1, nc classes, h hidden units (padded to hp); x: rows of
 * [x, 1] (P × ni1). Scratch: w1, v1, g1 (ni1 × hp), w2t, v2t, g2t (nc × hp) as vectors over hidden
 * units; a, ra: relu(z) and R relu(z) of a block (BLOCK × hp); f, rf (nc × BLOCK, become d and
 * R d); e (nc × BLOCK). */
static inline __attribute__((always_inline)) void row(
    int P, int ni1, int nc, int h, int hp, int kind, const REAL *x, const int64_t *y,
    const REAL *theta, const REAL *gamma, const REAL *v, REAL *hv, vec *w1, vec *v1, vec *g1,
    vec *w2t, vec *v2t, vec *g2t, vec *a, vec *ra, REAL *f, REAL *rf, REAL *e) {
    const REAL *w2 = theta + ni1 * h, *b2 = w2 + h * nc, *dw2 = v + ni1 * h, *db2 = dw2 + h * nc;
    const REAL inv = (REAL)1 / P;
    int nv = hp / LANES;
    /* W1, V1 (with the bias rows) and W2ᵀ, V2ᵀ as vectors over hidden units; padding is zero */
    memset(w1, 0, sizeof(REAL) * 3 * (ni1 + nc) * hp);
    for (int i = 0; i < ni1; i++) {
        memcpy((REAL *)w1 + i * hp, theta + i * h, sizeof(REAL) * h);
        memcpy((REAL *)v1 + i * hp, v + i * h, sizeof(REAL) * h);
    }
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) {
            ((REAL *)w2t)[c * hp + k] = w2[k * nc + c];
            ((REAL *)v2t)[c * hp + k] = dw2[k * nc + c];
        }
    REAL db[nc];
    for (int c = 0; c < nc; c++) db[c] = 0;
    for (int p0 = 0; p0 < P; p0 += BLOCK) {
        int nb = P - p0 < BLOCK ? P - p0 : BLOCK;
        /* forward, vectorised over hidden units: f = b2 + a W2, R f = v2 + R a W2 + a V2 */
        for (int b = 0; b < nb; b++) {
            const REAL *xp = x + (p0 + b) * ni1;
            vec fs[nc], rs[nc];
            for (int c = 0; c < nc; c++) fs[c] = rs[c] = (vec){0};
            for (int j = 0; j < nv; j++) {
                vec z = xp[0] * w1[j], rz = xp[0] * v1[j];
                for (int i = 1; i < ni1; i++) {
                    z += xp[i] * w1[i * nv + j];
                    rz += xp[i] * v1[i * nv + j];
                }
                vec az = IF_POSITIVE(z, z), raz = IF_POSITIVE(z, rz);
                a[b * nv + j] = az, ra[b * nv + j] = raz;
                for (int c = 0; c < nc; c++) {
                    fs[c] += az * w2t[c * nv + j];
                    rs[c] += raz * w2t[c * nv + j] + az * v2t[c * nv + j];
                }
            }
            for (int c = 0; c < nc; c++) {
                REAL sf = b2[c], sr = db2[c];
                for (int l = 0; l < LANES; l++) sf += fs[c][l], sr += rs[c][l];
                f[c * BLOCK + b] = sf, rf[c * BLOCK + b] = sr;
            }
        }
        /* the loss: f becomes d = ∂F/∂f and rf becomes R d, per sample of the block */
        const int64_t *yb = y + p0;
        if (kind == CE) {
            REAL top[BLOCK], tot[BLOCK], pu[BLOCK];
#pragma omp simd
            for (int b = 0; b < nb; b++) top[b] = f[b], tot[b] = pu[b] = 0;
            for (int c = 1; c < nc; c++)
#pragma omp simd
                for (int b = 0; b < nb; b++) top[b] = f[c * BLOCK + b] > top[b] ? f[c * BLOCK + b] : top[b];
            for (int c = 0; c < nc; c++)
#pragma omp simd
                for (int b = 0; b < nb; b++) tot[b] += e[c * BLOCK + b] = EXP(f[c * BLOCK + b] - top[b]);
            for (int c = 0; c < nc; c++)
#pragma omp simd
                for (int b = 0; b < nb; b++) pu[b] += e[c * BLOCK + b] / tot[b] * rf[c * BLOCK + b];
            for (int c = 0; c < nc; c++)
#pragma omp simd
                for (int b = 0; b < nb; b++) {
                    REAL w = gamma[yb[b]] * inv, prob = e[c * BLOCK + b] / tot[b];
                    f[c * BLOCK + b] = w * (prob - (yb[b] == c));
                    rf[c * BLOCK + b] = w * prob * (rf[c * BLOCK + b] - pu[b]);
                }
        } else {
            for (int c = 0; c < nc; c++)
#pragma omp simd
                for (int b = 0; b < nb; b++) {
                    REAL w = 2 * (kind == ST ? 1 : gamma[yb[b]]) * inv;
                    REAL target = (yb[b] == c) * (kind == ST ? gamma[c] : 1);
                    f[c * BLOCK + b] = w * (f[c * BLOCK + b] - target);
                    rf[c * BLOCK + b] *= w;
                }
        }
        for (int c = 0; c < nc; c++)
            for (int b = 0; b < nb; b++) db[c] += rf[c * BLOCK + b];
        /* backward, vectorised over hidden units, from the block's stored activations */
        for (int j = 0; j < nv; j++) {
            vec a1[ni1], a2[nc];
            for (int i = 0; i < ni1; i++) a1[i] = (vec){0};
            for (int c = 0; c < nc; c++) a2[c] = (vec){0};
            for (int b = 0; b < nb; b++) {
                const REAL *xp = x + (p0 + b) * ni1;
                vec az = a[b * nv + j], raz = ra[b * nv + j];
                vec rdh = rf[b] * w2t[j] + f[b] * v2t[j];
                for (int c = 1; c < nc; c++)
                    rdh += rf[c * BLOCK + b] * w2t[c * nv + j] + f[c * BLOCK + b] * v2t[c * nv + j];
                vec rdz = IF_POSITIVE(az, rdh);
                for (int c = 0; c < nc; c++) a2[c] += raz * f[c * BLOCK + b] + az * rf[c * BLOCK + b];
                for (int i = 0; i < ni1; i++) a1[i] += xp[i] * rdz;
            }
            for (int i = 0; i < ni1; i++) g1[i * nv + j] += a1[i];
            for (int c = 0; c < nc; c++) g2t[c * nv + j] += a2[c];
        }
    }
    for (int i = 0; i < ni1; i++) memcpy(hv + i * h, (REAL *)g1 + i * hp, sizeof(REAL) * h);
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) hv[ni1 * h + k * nc + c] = ((REAL *)g2t)[c * hp + k];
    for (int c = 0; c < nc; c++) hv[ni1 * h + h * nc + c] = db[c];
}

/* Scratch of one thread's products (see row()): vectors over hidden units, then scalars. */
static size_t scratch_bytes(int ni1, int nc, int hp) {
    size_t vectors = 3 * (ni1 + nc) * hp + 2 * BLOCK * hp, scalars = 3 * nc * BLOCK;
    return (sizeof(REAL) * (vectors + scalars) + 63) / 64 * 64;
}

/* hv = H v of one row, with one thread's scratch `buf` (scratch_bytes). */
static void product(int P, int ni1, int nc, int h, int kind, const REAL *x, const int64_t *y,
                    const REAL *theta, const REAL *gamma, const REAL *v, REAL *hv, vec *buf) {
    int hp = (h + LANES - 1) / LANES * LANES, nv = hp / LANES;
    vec *w1 = buf, *v1 = w1 + ni1 * nv, *g1 = v1 + ni1 * nv, *w2t = g1 + ni1 * nv;
    vec *v2t = w2t + nc * nv, *g2t = v2t + nc * nv, *a = g2t + nc * nv, *ra = a + BLOCK * nv;
    REAL *f = (REAL *)(ra + BLOCK * nv), *rf = f + nc * BLOCK, *e = rf + nc * BLOCK;
    if (ni1 == 3 && nc == 3) /* the spiral: constant sizes, loops unrolled */
        row(P, 3, 3, h, hp, kind, x, y, theta, gamma, v, hv, w1, v1, g1, w2t, v2t, g2t, a, ra, f,
            rf, e);
    else
        row(P, ni1, nc, h, hp, kind, x, y, theta, gamma, v, hv, w1, v1, g1, w2t, v2t, g2t, a, ra,
            f, rf, e);
}

/* H_m v_m for all rows m, on up to `threads` OpenMP threads. x: [x, 1] (P × ni1); theta, v, hv:
 * rows × (ni1·h + h·nc + nc); gamma: rows × nc (ones for the static loss). Returns 0, or -1 if
 * memory ran out. */
int CAT(mlp_hvp, SUFFIX)(int rows, int P, int ni1, int nc, int h, int kind, const REAL *x,
                         const int64_t *y, const REAL *theta, const REAL *gamma, const REAL *v,
                         REAL *hv, int threads) {
    int n = ni1 * h + h * nc + nc, hp = (h + LANES - 1) / LANES * LANES, failed = 0;
#pragma omp parallel num_threads(threads < rows ? threads : rows) reduction(| : failed)
    {
        vec *buf = aligned_alloc(64, scratch_bytes(ni1, nc, hp));
        failed = !buf;
#pragma omp for schedule(dynamic, 1)
        for (int m = 0; m < rows; m++) {
            if (!buf) continue;
            int64_t o = (int64_t)m * n;
            product(P, ni1, nc, h, kind, x, y, theta + o, gamma + m * nc, v + o, hv + o, buf);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* ---- λmax alone (k = 1) by Lanczos, products and bookkeeping in C: dlf.curvature.top_pair's
 * loop, for the papers' network on a CPU, where a Python step of it cost more than a product. */

static double dot(int n, const REAL *a, const REAL *b) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* The top eigenpair of the symmetric tridiagonal T (diagonal alpha, off-diagonal beta, k × k) by
 * cyclic Jacobi rotations on a dense copy a (k × k), eigenvectors in the columns of v (k × k).
 * Returns the column of the largest eigenvalue; *norm = the largest |eigenvalue|. */
static int top_of_tridiagonal(int k, const double *alpha, const double *beta, double *a,
                              double *v, double *norm) {
    for (int i = 0; i < k * k; i++) a[i] = v[i] = 0;
    for (int i = 0; i < k; i++) {
        a[i * k + i] = alpha[i], v[i * k + i] = 1;
        if (i + 1 < k) a[i * k + i + 1] = a[(i + 1) * k + i] = beta[i];
    }
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0, diag = 0;
        for (int p = 0; p < k; p++) {
            diag += a[p * k + p] * a[p * k + p];
            for (int q = p + 1; q < k; q++) off += a[p * k + q] * a[p * k + q];
        }
        if (off <= 1e-32 * diag || off == 0) break;
        for (int p = 0; p < k; p++)
            for (int q = p + 1; q < k; q++) {
                double apq = a[p * k + q];
                if (apq == 0) continue;
                double theta = (a[q * k + q] - a[p * k + p]) / (2 * apq);
                double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int r = 0; r < k; r++) { /* columns p, q */
                    double arp = a[r * k + p], arq = a[r * k + q];
                    a[r * k + p] = c * arp - s * arq, a[r * k + q] = s * arp + c * arq;
                }
                for (int r = 0; r < k; r++) { /* rows p, q */
                    double apr = a[p * k + r], aqr = a[q * k + r];
                    a[p * k + r] = c * apr - s * aqr, a[q * k + r] = s * apr + c * aqr;
                }
                a[p * k + q] = a[q * k + p] = 0;
                for (int r = 0; r < k; r++) {
                    double vrp = v[r * k + p], vrq = v[r * k + q];
                    v[r * k + p] = c * vrp - s * vrq, v[r * k + q] = s * vrp + c * vrq;
                }
            }
    }
    int top = 0;
    *norm = 0;
    for (int i = 0; i < k; i++) {
        if (a[i * k + i] > a[top * k + top]) top = i;
        if (fabs(a[i * k + i]) > *norm) *norm = fabs(a[i * k + i]);
    }
    return top;
}

/* One row's Lanczos (see mlp_top_pair); q: (last + 1) × n basis, w: n, work: 2 last² + 2 last. */
static void lanczos_row(int n, int last, double tol, double breakdown, int64_t least, int have,
                        const REAL *start, REAL *hv0, REAL *value, REAL *residual,
                        int64_t *matvecs, REAL *vector, REAL *q, REAL *w, double *work,
                        int P, int ni1, int nc, int h, int kind, const REAL *x, const int64_t *y,
                        const REAL *theta, const REAL *gamma, vec *buf) {
    double *alpha = work, *beta = alpha + last, *a = beta + last, *v = a + last * last;
    double scale = sqrt(dot(n, start, start));
    for (int i = 0; i < n; i++) q[i] = start[i] / scale, vector[i] = NAN;
    *value = *residual = NAN, *matvecs = 0;
    for (int j = 0; j < last; j++) {
        REAL *qj = q + (int64_t)j * n;
        if (j == 0 && have)
            memcpy(w, hv0, sizeof(REAL) * n);
        else
            product(P, ni1, nc, h, kind, x, y, theta, gamma, qj, w, buf);
        if (j == 0 && !have) memcpy(hv0, w, sizeof(REAL) * n);
        double sum = 0;
        for (int i = 0; i < n; i++) sum += w[i];
        if (!isfinite(sum)) { /* not finite: this row fails, NaN */
            *matvecs = j + 1;
            return;
        }
        alpha[j] = dot(n, qj, w);
        for (int pass = 0; pass < 2; pass++) /* full re-orthogonalisation, twice */
            for (int i = 0; i <= j; i++) {
                const REAL *qi = q + (int64_t)i * n;
                REAL c = (REAL)dot(n, qi, w);
                for (int l = 0; l < n; l++) w[l] -= c * qi[l];
            }
        double b = sqrt(dot(n, w, w)), norm;
        int k = j + 1, top = top_of_tridiagonal(k, alpha, beta, a, v, &norm);
        double res = b * fabs(v[j * k + top]);
        int small = res <= tol * norm && (k >= least || b <= breakdown * norm);
        if (small || k == last) {
            for (int l = 0; l < n; l++) vector[l] = 0;
            for (int i = 0; i < k; i++) {
                const REAL *qi = q + (int64_t)i * n;
                REAL c = (REAL)v[i * k + top];
                for (int l = 0; l < n; l++) vector[l] += c * qi[l];
            }
            REAL norm_y = (REAL)sqrt(dot(n, vector, vector));
            for (int l = 0; l < n; l++) vector[l] /= norm_y;
            *value = (REAL)a[top * k + top], *residual = (REAL)res, *matvecs = k;
            return;
        }
        beta[j] = b;
        REAL *next = qj + n, inv = (REAL)(1 / (b > 0 ? b : 1));
        for (int l = 0; l < n; l++) next[l] = w[l] * inv;
    }
}

/* λmax of H_m for every row m: Lanczos with full re-orthogonalisation from start_m, stopping once
 * the top Ritz pair's residual β_j|s_j| ≤ tol · max|Ritz value| and at least least[m] products
 * were used (or at breakdown β_j ≤ breakdown · max|Ritz value|, or after max_iter). hv0 is
 * H start_m/|start_m| on entry if have_first, else it is written there. Per row out: value,
 * residual, matvecs (a row whose product is not finite: NaN, with the products it used) and the
 * unit Ritz vector (rows × n). Returns 0, or -1 if memory ran out. */
int CAT(mlp_top_pair, SUFFIX)(int rows, int P, int ni1, int nc, int h, int kind, const REAL *x,
                              const int64_t *y, const REAL *theta, const REAL *gamma,
                              const REAL *start, REAL *hv0, int have_first, double tol,
                              double breakdown, int max_iter, const int64_t *least, REAL *value,
                              REAL *residual, int64_t *matvecs, REAL *vector, int threads) {
    int n = ni1 * h + h * nc + nc, hp = (h + LANES - 1) / LANES * LANES, failed = 0;
    int last = max_iter < n ? max_iter : n;
    if (last < 1) last = 1;
#pragma omp parallel num_threads(threads < rows ? threads : rows) reduction(| : failed)
    {
        vec *buf = aligned_alloc(64, scratch_bytes(ni1, nc, hp));
        REAL *q = malloc(sizeof(REAL) * ((size_t)(last + 1) * n + n));
        double *work = malloc(sizeof(double) * (2 * (size_t)last * last + 2 * last));
        int ok = buf && q && work;
        failed = !ok;
#pragma omp for schedule(dynamic, 1)
        for (int m = 0; m < rows; m++) {
            if (!ok) continue;
            int64_t o = (int64_t)m * n;
            lanczos_row(n, last, tol, breakdown, least[m], have_first, start + o, hv0 + o,
                        value + m, residual + m, matvecs + m, vector + o, q,
                        q + (size_t)(last + 1) * n, work, P, ni1, nc, h, kind, x, y, theta + o,
                        gamma + m * nc, buf);
        }
        free(buf), free(q), free(work);
    }
    return failed ? -1 : 0;
}
