"""The CUDA C source of `logits_draw_f32` (engine/device/draw_kernel.py compiles, packs and
launches it; its docstring says what the kernel computes). Kept apart so that file stays short.

Arguments: logits f32 [R, vocab] (drawn rows edited in place), rows i64 [S] (each drawn row's
logits row), params f64 [S, PARAMS], history i32 [S, H] (prompt + output of penalised rows),
bans i64 [S, B] (-1 padding), out i64 [R] (token ids), logprob f64 [R], vocab, H, B. Grid: S
blocks of DRAW_THREADS threads. The penalties dedupe the history on the device (each id is
edited at its first occurrence; presence/frequency count its output occurrences), so the host
only copies the token list.
"""

from __future__ import annotations

from scheduler.step_rows import MAX_DEVICE_HISTORY, MAX_DRAW_BANS

DRAW_THREADS = 512  # threads per row (a power of two)
DRAW_KERNEL = "logits_draw_f32"
PARAMS = 11  # doubles per row: 1/temperature (0: greedy), top_k, top_p, min_p, u, logprob,
# repetition penalty, presence penalty, frequency penalty, prompt length, history length
LOGPROB_PARAM = 5  # the params column that asks for the chosen token's log-prob

_HEADER = (f"#define THREADS {DRAW_THREADS}\n#define MAX_HISTORY {MAX_DEVICE_HISTORY}\n"
           f"#define MAX_BANS {MAX_DRAW_BANS}\n#define PARAMS {PARAMS}\n")
DRAW_SOURCE = _HEADER + r"""
#define INF_F __int_as_float(0x7f800000)

__device__ __forceinline__ float weight(float x, float m, float inv_t) {
    return expf(__fmul_rn(__fsub_rn(x, m), inv_t));
}

__device__ double block_sum(double v, double* red) {
    const int tid = threadIdx.x;
    red[tid] = v; __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    const double r = red[0]; __syncthreads();
    return r;
}

// max of x[0:vocab] (NaN when any element is NaN)
__device__ float row_max(const float* x, int vocab, double* red) {
    const int tid = threadIdx.x;
    float v = -INF_F;
    for (int i = tid; i < vocab; i += THREADS) {
        const float a = x[i];
        v = (a != a || v != v) ? __int_as_float(0x7fffffff) : fmaxf(v, a);
    }
    float* r = (float*)red;
    r[tid] = v; __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float a = r[tid], b = r[tid + s];
            r[tid] = (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
        }
        __syncthreads();
    }
    const float m = r[0]; __syncthreads();
    return m;
}

// argmax with NaN as +inf, ties to the lowest id; every id banned -> 0
__device__ int block_argmax(const float* x, int vocab, double* red) {
    const int tid = threadIdx.x;
    float* bv_s = (float*)red;
    int* bi_s = (int*)(bv_s + THREADS);
    float bv = -INF_F; int bi = 0x7fffffff;
    for (int i = tid; i < vocab; i += THREADS) {
        float v = x[i];
        if (v != v) v = INF_F;
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    bv_s[tid] = bv; bi_s[tid] = bi; __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float v = bv_s[tid + s]; const int i = bi_s[tid + s];
            if (v > bv_s[tid] || (v == bv_s[tid] && i < bi_s[tid])) {
                bv_s[tid] = v; bi_s[tid] = i;
            }
        }
        __syncthreads();
    }
    const int r = bi_s[0]; __syncthreads();
    return r == 0x7fffffff ? 0 : r;
}

// The largest weight t (weights of ids with weight >= floor_w) such that the count (by_mass 0)
// or the mass (by_mass 1) of the weights >= t reaches target; -1 when none does.
__device__ float radix_select(const float* x, int vocab, float m, float inv_t, float floor_w,
                              double target, int by_mass, double* hist, int* sh_found,
                              double* sh_above) {
    const int tid = threadIdx.x;
    unsigned prefix = 0u, mask = 0u;
    double above = 0.0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += THREADS) hist[b] = 0.0;
        __syncthreads();
        for (int i = tid; i < vocab; i += THREADS) {
            const float w = weight(x[i], m, inv_t);
            if (!(w >= floor_w)) continue;
            const unsigned bits = __float_as_uint(w);
            if ((bits & mask) != prefix) continue;
            atomicAdd(&hist[(bits >> shift) & 255u], by_mass ? (double)w : 1.0);
        }
        __syncthreads();
        if (tid == 0) {
            int found = -1;
            double run = above;
            for (int b = 255; b >= 0; --b) {
                if (hist[b] > 0.0 && run + hist[b] >= target) { found = b; break; }
                run += hist[b];
            }
            *sh_found = found;
            *sh_above = run;
        }
        __syncthreads();
        const int found = *sh_found;
        above = *sh_above;
        __syncthreads();
        if (found < 0) return -1.0f;
        prefix |= ((unsigned)found) << shift;
        mask |= 255u << shift;
    }
    return __uint_as_float(prefix);
}

// mass of the weights >= cut
__device__ double kept_mass(const float* x, int vocab, float m, float inv_t, float cut,
                            double* red) {
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += THREADS) {
        const float w = weight(x[i], m, inv_t);
        if (w >= cut) s += (double)w;
    }
    return block_sum(s, red);
}

// first id whose running sum of kept weights (w >= cut, w > 0) exceeds u * their mass
__device__ int inverse_cdf(const float* x, int vocab, float m, float inv_t, float cut, double u,
                           double* scan, int* sh_token) {
    const int tid = threadIdx.x;
    const int chunk = (vocab + THREADS - 1) / THREADS;
    const int lo = min(tid * chunk, vocab), hi = min(lo + chunk, vocab);
    double s = 0.0; int last = -1;
    for (int i = lo; i < hi; ++i) {
        const float w = weight(x[i], m, inv_t);
        if (w >= cut && w > 0.0f) { s += (double)w; last = i; }
    }
    if (tid == 0) *sh_token = -1;
    scan[tid] = s; __syncthreads();
    if (tid == 0)  // serial: exactly monotone, each chunk's inclusive sum = exclusive + its own
        for (int t = 1; t < THREADS; ++t) scan[t] += scan[t - 1];
    __syncthreads();
    const double total = scan[THREADS - 1];
    const double target = u * total;
    const double excl = tid ? scan[tid - 1] : 0.0;
    if (s > 0.0 && excl <= target && target < scan[tid]) {
        double run = excl; int tok = last;
        for (int i = lo; i < hi; ++i) {
            const float w = weight(x[i], m, inv_t);
            if (!(w >= cut && w > 0.0f)) continue;
            run += (double)w;
            if (run > target) { tok = i; break; }
        }
        *sh_token = tok;
    }
    __syncthreads();
    const bool none = *sh_token < 0;  // u * mass rounded up to the mass: the last kept id
    __syncthreads();
    if (none) atomicMax(sh_token, last);
    __syncthreads();
    const int tok = *sh_token; __syncthreads();
    return tok < 0 ? 0 : tok;
}

// the penalties (`process_row`'s order): each distinct id of the history once (its first
// occurrence), raw values kept in saved[k]; then the bans, their prior values in saved_b
__device__ void edit_row(float* x, int vocab, const int* toks, int n, int num_prompt, float rp,
                         double pres, double freq, const long long* bans, int nb,
                         float* saved, float* saved_b) {
    const int tid = threadIdx.x;
    const bool counts = pres != 0.0 || freq != 0.0;
    for (int k = tid; k < n; k += THREADS) {
        const int id = toks[k];
        if (id < 0 || id >= vocab) continue;
        bool first = true;
        for (int j = 0; j < k && first; ++j) first = toks[j] != id;
        if (!first) continue;
        float v = x[id];
        saved[k] = v;
        if (rp != 1.0f) v = v > 0.0f ? __fdiv_rn(v, rp) : __fmul_rn(v, rp);
        if (counts) {
            int c = 0;
            for (int j = num_prompt; j < n; ++j) c += toks[j] == id;
            if (c) v = __fsub_rn(v, (float)(freq * (double)c + pres));
        }
        x[id] = v;
    }
    __syncthreads();
    for (int k = tid; k < nb; k += THREADS) {
        const long long id = bans[k];
        if (id < 0 || id >= vocab) continue;
        saved_b[k] = x[id];
        x[id] = -INF_F;
    }
    __syncthreads();
}

extern "C" __global__ void logits_draw_f32(
    float* __restrict__ logits, const long long* __restrict__ rows,
    const double* __restrict__ params, const int* __restrict__ history,
    const long long* __restrict__ ban_ids, long long* __restrict__ out,
    double* __restrict__ logprob, int vocab, int hist_width, int num_bans)
{
    __shared__ double red[THREADS];
    __shared__ double hist[256];
    __shared__ int toks[MAX_HISTORY];
    __shared__ float saved[MAX_HISTORY];
    __shared__ float saved_b[MAX_BANS];
    __shared__ double sh_above;
    __shared__ int sh_found, sh_token, sh_hit, sh_ban;
    const int d = blockIdx.x, tid = threadIdx.x;
    const long long row = rows[d];
    float* x = logits + row * (long long)vocab;
    const double* p = params + (long long)d * PARAMS;
    const float inv_t = (float)p[0];
    const double top_k = p[1], top_p = p[2], min_p = p[3], u = p[4];
    const bool want_lp = p[5] != 0.0;
    const int num_prompt = (int)p[9], n = (int)p[10];
    double raw_lse = 0.0;
    if (want_lp) {
        const double raw_max = (double)row_max(x, vocab, red);
        double s = 0.0;
        for (int i = tid; i < vocab; i += THREADS) s += exp((double)x[i] - raw_max);
        raw_lse = raw_max + log(block_sum(s, red));
    }
    for (int k = tid; k < n; k += THREADS) toks[k] = history[(long long)d * hist_width + k];
    __syncthreads();
    const long long* bans = ban_ids + (long long)d * num_bans;
    edit_row(x, vocab, toks, n, num_prompt, (float)p[6], p[7], p[8], bans, num_bans, saved,
             saved_b);
    const float m = row_max(x, vocab, red);
    int tok;
    const bool finite = m > -INF_F && m < INF_F;  // false for NaN too
    if (inv_t == 0.0f || !finite) {
        tok = block_argmax(x, vocab, red);
    } else {
        float cut = 0.0f;
        if (top_k > 0.0 && top_k < (double)vocab) {
            cut = radix_select(x, vocab, m, inv_t, 0.0f, top_k, 0, hist, &sh_found, &sh_above);
            if (cut < 0.0f) cut = 0.0f;
        }
        if (top_p < 1.0) {
            const double mass = kept_mass(x, vocab, m, inv_t, cut, red);
            const float edge = radix_select(x, vocab, m, inv_t, cut, top_p * mass, 1, hist,
                                            &sh_found, &sh_above);
            if (edge > cut) cut = edge;
        }
        if (min_p > 0.0 && (float)min_p > cut) cut = (float)min_p;
        tok = inverse_cdf(x, vocab, m, inv_t, cut, u, red, &sh_token);
    }
    if (tid == 0) out[row] = tok;
    if (want_lp) {  // the raw logit of tok: before its first edit
        if (tid == 0) { sh_hit = 0x7fffffff; sh_ban = -1; }
        __syncthreads();
        for (int k = tid; k < n; k += THREADS)
            if (toks[k] == tok) atomicMin(&sh_hit, k);
        for (int k = tid; k < num_bans; k += THREADS)
            if (bans[k] == tok) sh_ban = k;  // distinct ids: at most one thread writes
        __syncthreads();
        if (tid == 0) {
            const float raw = sh_hit < n ? saved[sh_hit] : sh_ban >= 0 ? saved_b[sh_ban] : x[tok];
            logprob[row] = (double)raw - raw_lse;
        }
    }
}
"""
