// Top-k affinity candidates for the SSTN (Eq. 6-8): normalised inner products fused with a
// per-row top-c selection, one launch per (row modality, column modality) block.
//
// d(a, b) = 1 - 0.5 |a/|a| - b/|b|| (Eq. 7) is monotone in the cosine, so the best c columns by
// cosine are the best c by d. Each block of 256 threads owns TILE_Q query rows, walks all base
// columns in tiles of TILE_B (a tiled matmul through shared memory, 2 x 4 outputs per thread),
// scales the dot products by the inverse norms, and merges each tile into a per-row list kept
// sorted by (descending score, ascending column), so the result is deterministic. The host
// re-ranks these candidates in float64 (ssft_deploy/affinity/common.py: refine).

#define TILE_Q 32
#define TILE_B 64
#define TK 16
#define C_MAX 32
#define THREADS 256

extern "C" __global__ void inv_row_norms(const float* __restrict__ x, int n, int dim,
                                         float* __restrict__ inv_norm)
{
    // one warp per row; 1 / max(|x|, 1e-12) like torch.nn.functional.normalize
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= n) return;
    const float* row = x + (size_t)warp * dim;
    float acc = 0.f;
    for (int j = lane; j < dim; j += 32) acc += row[j] * row[j];
    for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) inv_norm[warp] = 1.f / fmaxf(sqrtf(acc), 1e-12f);
}

__device__ __forceinline__ bool better(float s, long long i, float t, long long j)
{
    return s > t || (s == t && i < j);
}

extern "C" __global__ void __launch_bounds__(THREADS)
topk_ip(const float* __restrict__ q, const float* __restrict__ q_inv, int nq,
        const float* __restrict__ base, const float* __restrict__ b_inv, int nb,
        int dim, int c, long long* __restrict__ out_idx, float* __restrict__ out_score)
{
    __shared__ float qs[TK][TILE_Q];
    __shared__ float bs[TK][TILE_B + 1];
    __shared__ float tile[TILE_Q][TILE_B + 1];
    __shared__ float top_s[TILE_Q][C_MAX];
    __shared__ long long top_i[TILE_Q][C_MAX];
    __shared__ int top_n[TILE_Q];

    const int tid = threadIdx.x;
    const int tx = tid % 16;   // base columns tx + 16 * j, j < 4
    const int ty = tid / 16;   // query rows ty + 16 * i, i < 2
    const int q0 = blockIdx.x * TILE_Q;
    if (tid < TILE_Q) top_n[tid] = 0;

    for (int b0 = 0; b0 < nb; b0 += TILE_B) {
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        for (int k0 = 0; k0 < dim; k0 += TK) {
            for (int e = tid; e < TILE_Q * TK; e += THREADS) {
                int r = e / TK, kk = e % TK;
                int row = q0 + r, col = k0 + kk;
                qs[kk][r] = (row < nq && col < dim) ? q[(size_t)row * dim + col] : 0.f;
            }
            for (int e = tid; e < TILE_B * TK; e += THREADS) {
                int r = e / TK, kk = e % TK;
                int row = b0 + r, col = k0 + kk;
                bs[kk][r] = (row < nb && col < dim) ? base[(size_t)row * dim + col] : 0.f;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < TK; ++kk) {
                float a0 = qs[kk][ty], a1 = qs[kk][ty + 16];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float b = bs[kk][tx + 16 * j];
                    acc[0][j] += a0 * b;
                    acc[1][j] += a1 * b;
                }
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int r = ty + 16 * i, row = q0 + r;
            float qi = row < nq ? q_inv[row] : 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int col = b0 + tx + 16 * j;
                tile[r][tx + 16 * j] = col < nb ? acc[i][j] * qi * b_inv[col] : 0.f;
            }
        }
        __syncthreads();
        // one thread per query row merges the tile into its sorted list
        if (tid < TILE_Q && q0 + tid < nq) {
            int r = tid, n = top_n[r];
            int width = min(TILE_B, nb - b0);
            for (int j = 0; j < width; ++j) {
                float s = tile[r][j];
                long long col = b0 + j;
                if (n == c && !better(s, col, top_s[r][n - 1], top_i[r][n - 1])) continue;
                int p = n < c ? n : c - 1;   // insertion point, shifting worse entries down
                while (p > 0 && better(s, col, top_s[r][p - 1], top_i[r][p - 1])) {
                    top_s[r][p] = top_s[r][p - 1];
                    top_i[r][p] = top_i[r][p - 1];
                    --p;
                }
                top_s[r][p] = s;
                top_i[r][p] = col;
                if (n < c) ++n;
            }
            top_n[r] = n;
        }
        __syncthreads();
    }
    if (tid < TILE_Q && q0 + tid < nq) {
        int r = tid, row = q0 + tid;
        for (int t = 0; t < c; ++t) {
            bool ok = t < top_n[r];
            out_idx[(size_t)row * c + t] = ok ? top_i[r][t] : (long long)0;
            out_score[(size_t)row * c + t] = ok ? top_s[r][t] : -2.f;
        }
    }
}
