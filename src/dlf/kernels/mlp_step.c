/* F and dF/dθ of a one-hidden-layer ReLU MLP, full batch, for every row of θ (dlf.engine).
 * Compiled once per dtype: -DREAL=float -DMASK=int32_t -DSUFFIX=f32, or double/int64_t/f64.
 * Per row: the forward pass vectorised over samples, the loss and its gradient d vectorised over
 * samples (libmvec exp/log), the backward pass vectorised over hidden units with the
 * pre-activations recomputed, so nothing of size samples × width is ever stored. */
#include "vectors.h"

enum { CE = 0, SE = 1, ST = 2 }; /* Γ_y·CE, Γ_y·Σ(f−onehot)², Σ(f−Γ·onehot)² */

/* Shapes: P samples (padded to pp), ni1 = inputs + 1, nc classes, h hidden units (padded to hp).
 * xt: columns of [x, 1] (ni1 × pp). Scratch: w1, g1 (ni1 × hp), w2t, g2t (nc × hp), f (nc × pp),
 * s (see the loss below).
 * out: F, static loss, accuracy. */
static inline __attribute__((always_inline)) void row(
    int P, int pp, int ni1, int nc, int h, int hp, int kind, int static_kind, int active,
    const vec *xt, const REAL *x, const int64_t *y, const REAL *theta, const REAL *gamma,
    REAL *grad, REAL *out, vec *w1, vec *w2t, vec *g1, vec *g2t, REAL *f, REAL *s) {
    const REAL *w2 = theta + ni1 * h, *b2 = w2 + h * nc;
    int nq = pp / LANES, nv = hp / LANES;
    /* forward, vectorised over samples, two vectors at a time (independent sums):
     * f[c] = b2[c] + Σ_k relu(Σ_i x_i W1[i,k]) W2[k,c] */
    for (int q = 0; q < nq; q += 2) {
        vec acc[2][nc];
        for (int c = 0; c < nc; c++) acc[0][c] = acc[1][c] = (vec){0} + b2[c];
        for (int k = 0; k < h; k++) {
            vec z0 = xt[q] * theta[k], z1 = xt[q + 1] * theta[k];
            for (int i = 1; i < ni1; i++) {
                z0 += xt[i * nq + q] * theta[i * h + k];
                z1 += xt[i * nq + q + 1] * theta[i * h + k];
            }
            z0 = IF_POSITIVE(z0, z0), z1 = IF_POSITIVE(z1, z1);
            for (int c = 0; c < nc; c++) {
                acc[0][c] += z0 * w2[k * nc + c];
                acc[1][c] += z1 * w2[k * nc + c];
            }
        }
        for (int c = 0; c < nc; c++) {
            ((vec *)f)[c * nq + q] = acc[0][c];
            ((vec *)f)[c * nq + q + 1] = acc[1][c];
        }
    }
    /* loss, static loss, accuracy, and f becomes d = ∂F/∂f: loops over samples, vectorised.
     * s: scratch: top logit, its class, f_y, Γ_y, Σ(f−onehot)², Σexp, −log p_y (pp each), and
     * exp(f − top) (nc × pp) */
    REAL *top = s, *best = s + pp, *fy = s + 2 * pp, *w = s + 3 * pp, *sq = s + 4 * pp;
    REAL *tot = s + 5 * pp, *nll = s + 6 * pp, *e = s + 7 * pp;
#pragma omp simd
    for (int p = 0; p < P; p++) top[p] = fy[p] = f[p], best[p] = 0, w[p] = gamma[y[p]];
    for (int c = 1; c < nc; c++)
#pragma omp simd
        for (int p = 0; p < P; p++) {
            REAL v = f[c * pp + p];
            best[p] = v > top[p] ? c : best[p];
            top[p] = v > top[p] ? v : top[p];
            fy[p] = y[p] == c ? v : fy[p];
        }
#pragma omp simd
    for (int p = 0; p < P; p++) sq[p] = tot[p] = nll[p] = 0;
    for (int c = 0; c < nc; c++)
#pragma omp simd
        for (int p = 0; p < P; p++) {
            REAL r = f[c * pp + p] - (y[p] == c);
            sq[p] += r * r;
        }
    if (kind == CE || static_kind == CE) {
        for (int c = 0; c < nc; c++)
#pragma omp simd
            for (int p = 0; p < P; p++) tot[p] += e[c * pp + p] = EXP(f[c * pp + p] - top[p]);
#pragma omp simd
        for (int p = 0; p < P; p++) nll[p] = LOG(tot[p]) - (fy[p] - top[p]);
    }
    REAL loss = 0, stat = 0, correct = 0;
#pragma omp simd reduction(+ : loss, stat, correct)
    for (int p = 0; p < P; p++) {
        loss += kind == CE ? w[p] * nll[p] : kind == SE ? w[p] * sq[p] : 0;
        stat += static_kind == CE ? nll[p] : sq[p];
        correct += best[p] == y[p];
    }
    for (int c = 0; c < nc; c++) {
        REAL *fc = f + c * pp, g = gamma[c];
#pragma omp simd reduction(+ : loss)
        for (int p = 0; p < P; p++) {
            REAL t = y[p] == c, r = fc[p] - t * g;
            loss += kind == ST ? r * r : 0;
            fc[p] = (kind == CE   ? w[p] * (e[c * pp + p] / tot[p] - t)
                     : kind == SE ? 2 * w[p] * (fc[p] - t)
                                  : 2 * r) / P;
        }
    }
    out[0] = loss / P, out[1] = stat / P, out[2] = correct / P;
    if (!active) {
        memset(grad, 0, sizeof(REAL) * (ni1 * h + h * nc + nc));
        return;
    }
    /* backward, vectorised over hidden units, z recomputed: ∂F/∂W2[k,c] = Σ_p relu(z_pk) d_pc,
     * ∂F/∂[W1; b1][i,k] = Σ_p x_pi 1[z_pk > 0] Σ_c W2[k,c] d_pc */
    memset(w1, 0, sizeof(REAL) * ni1 * hp);
    memset(w2t, 0, sizeof(REAL) * nc * hp);
    for (int i = 0; i < ni1; i++) memcpy((REAL *)w1 + i * hp, theta + i * h, sizeof(REAL) * h);
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) ((REAL *)w2t)[c * hp + k] = w2[k * nc + c];
    for (int v = 0; v < nv; v++) {
        vec a1[ni1], a2[nc];
        for (int i = 0; i < ni1; i++) a1[i] = (vec){0};
        for (int c = 0; c < nc; c++) a2[c] = (vec){0};
        for (int p = 0; p < P; p++) {
            const REAL *xp = x + p * ni1;
            vec z = xp[0] * w1[v], dh = f[p] * w2t[v];
            for (int i = 1; i < ni1; i++) z += xp[i] * w1[i * nv + v];
            for (int c = 1; c < nc; c++) dh += f[c * pp + p] * w2t[c * nv + v];
            vec hv = IF_POSITIVE(z, z), dz = IF_POSITIVE(z, dh);
            for (int c = 0; c < nc; c++) a2[c] += f[c * pp + p] * hv;
            for (int i = 0; i < ni1; i++) a1[i] += xp[i] * dz;
        }
        for (int i = 0; i < ni1; i++) g1[i * nv + v] = a1[i];
        for (int c = 0; c < nc; c++) g2t[c * nv + v] = a2[c];
    }
    for (int i = 0; i < ni1; i++) memcpy(grad + i * h, (REAL *)g1 + i * hp, sizeof(REAL) * h);
    for (int k = 0; k < h; k++)
        for (int c = 0; c < nc; c++) grad[ni1 * h + k * nc + c] = ((REAL *)g2t)[c * hp + k];
    for (int c = 0; c < nc; c++) {
        REAL s = 0;
        for (int p = 0; p < P; p++) s += f[c * pp + p];
        grad[ni1 * h + h * nc + c] = s;
    }
}

/* All rows, on up to `threads` OpenMP threads (torch's own pool where torch's libgomp is the one
 * loaded). x: [x, 1] (P × ni1); theta, grad: rows × (ni1·h + h·nc + nc); gamma: rows × nc;
 * active: rows; out: rows × 3. Returns 0, or -1 if memory ran out. */
int CAT(mlp_step, SUFFIX)(int rows, int P, int ni1, int nc, int h, int kind, int static_kind,
                          const REAL *x, const int64_t *y, const REAL *theta, const REAL *gamma,
                          const uint8_t *active, REAL *grad, REAL *out, int threads) {
    int n = ni1 * h + h * nc + nc, hp = (h + LANES - 1) / LANES * LANES;
    int pp = (P + 2 * LANES - 1) / (2 * LANES) * 2 * LANES, failed = 0; /* pairs of vectors */
    vec *xt = aligned_alloc(64, sizeof(REAL) * ni1 * pp);
    if (!xt) return -1;
    memset(xt, 0, sizeof(REAL) * ni1 * pp);
    for (int p = 0; p < P; p++)
        for (int i = 0; i < ni1; i++) ((REAL *)xt)[i * pp + p] = x[p * ni1 + i];
#pragma omp parallel num_threads(threads < rows ? threads : rows) reduction(| : failed)
    {
        vec *buf = aligned_alloc(64, sizeof(REAL) * (2 * (ni1 + nc) * hp + (2 * nc + 7) * pp));
        vec *w1 = buf, *g1 = w1 + ni1 * hp / LANES, *w2t = g1 + ni1 * hp / LANES;
        vec *g2t = w2t + nc * hp / LANES;
        REAL *f = (REAL *)(g2t + nc * hp / LANES), *s = f + nc * pp;
        failed = !buf;
#pragma omp for schedule(dynamic, 1)
        for (int m = 0; m < rows; m++) {
            if (!buf) continue;
            const REAL *th = theta + (int64_t)m * n, *gm = gamma + m * nc;
            REAL *g = grad + (int64_t)m * n, *o = out + 3 * m;
            if (ni1 == 3 && nc == 3) /* the spiral: constant sizes, loops unrolled */
                row(P, pp, 3, 3, h, hp, kind, static_kind, active[m], xt, x, y, th, gm, g, o, w1,
                    w2t, g1, g2t, f, s);
            else
                row(P, pp, ni1, nc, h, hp, kind, static_kind, active[m], xt, x, y, th, gm, g, o,
                    w1, w2t, g1, g2t, f, s);
        }
        free(buf);
    }
    free(xt);
    return failed ? -1 : 0;
}
