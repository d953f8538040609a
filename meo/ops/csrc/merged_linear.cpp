// The merged product of MEO on the CPU: y[t] = W_hat[u] x[t] + b_hat[u] for every token t of a span of row u,
// W_hat[u] = sum_j gate[u,j] * W[index[u,j]], and its backward. Explained in nbs/02d_ops_cpp.ipynb.
// Layout of a call: x (N, I); spans s = tokens span_start[s] .. span_start[s] + span_len[s] - 1; row u serves
// the spans row_ptr[u] .. row_ptr[u+1] - 1. Only float32. Internal torch API: at::native::cpublas::brgemm.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>
#include <algorithm>
#include <vector>

// [part: setup]
namespace {
using at::Tensor;
using at::native::cpublas::brgemm;
using at::native::cpublas::brgemm_release;

constexpr int64_t NB = 32;    // forward: output columns of a packed panel (meo.ops.cpp.NB)
constexpr int64_t KB = 128;   // backward dx: output rows merged at a time
constexpr int64_t IB = 256;   // backward dx: input columns of a block
constexpr int64_t UC = 8;     // backward dW, dgate: gate rows of a chunk
constexpr int64_t KC = 256;   // backward dW, dgate: tokens of dy transposed at a time

// [part: rows]
struct Rows {                 // the routing of one call, as raw pointers
  const int64_t *index, *row_ptr, *start, *len;
  const float* gate;
  int64_t U, k;
  Rows(const Tensor& index_, const Tensor& gate_, const Tensor& row_ptr_, const Tensor& start_, const Tensor& len_)
      : index(index_.data_ptr<int64_t>()), row_ptr(row_ptr_.data_ptr<int64_t>()), start(start_.data_ptr<int64_t>()),
        len(len_.data_ptr<int64_t>()), gate(gate_.data_ptr<float>()), U(index_.size(0)), k(index_.size(1)) {}
  bool empty(int64_t u) const {          // no token in any span of row u
    for (int64_t s = row_ptr[u]; s < row_ptr[u + 1]; ++s) if (len[s] > 0) return false;
    return true;
  }
};

// [part: merge]
// out[r * ld_out + c] = sum_j g_j * src_j[r * ld_src + c] for r < rows, c < cols: the merge of row u's experts.
void merge_block(const Rows& R, int64_t u, const float* base, int64_t expert_stride, int64_t ld_src, int64_t rows,
                 int64_t cols, float* out, int64_t ld_out) {
  const int64_t* e = R.index + u * R.k;
  const float* g = R.gate + u * R.k;
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * ld_out;
    const float* s0 = base + e[0] * expert_stride + r * ld_src;
    const float g0 = g[0];
    for (int64_t c = 0; c < cols; ++c) o[c] = g0 * s0[c];
    int64_t j = 1;
    for (; j + 1 < R.k; j += 2) {        // two experts a pass: fewer passes over the buffer
      const float* s1 = base + e[j] * expert_stride + r * ld_src;
      const float* s2 = base + e[j + 1] * expert_stride + r * ld_src;
      const float g1 = g[j], g2 = g[j + 1];
      for (int64_t c = 0; c < cols; ++c) o[c] += g1 * s1[c] + g2 * s2[c];
    }
    if (j < R.k) {
      const float* s1 = base + e[j] * expert_stride + r * ld_src;
      const float g1 = g[j];
      for (int64_t c = 0; c < cols; ++c) o[c] += g1 * s1[c];
    }
  }
}

// [part: checks]
void check_call(const Tensor& x, const Tensor& index, const Tensor& gate, const Tensor& row_ptr,
                const Tensor& start, const Tensor& len) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2, "x: expected a contiguous float32 (N, I)");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.is_contiguous() && index.dim() == 2, "index: expected contiguous long (U, k)");
  TORCH_CHECK(gate.scalar_type() == at::kFloat && gate.is_contiguous() && gate.sizes() == index.sizes(), "gate: expected contiguous float32 like index");
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && row_ptr.is_contiguous() && row_ptr.numel() == index.size(0) + 1, "row_ptr: expected long (U+1,)");
  TORCH_CHECK(start.scalar_type() == at::kLong && len.scalar_type() == at::kLong && start.is_contiguous() && len.is_contiguous() && start.numel() == len.numel(), "span_start, span_len: expected contiguous long (S,)");
}

// Every index an expert, every span inside x, row_ptr non-decreasing from 0 to S: no read or write out of bounds.
void check_bounds(const Rows& R, int64_t N, int64_t n, int64_t S) {
  for (int64_t q = 0; q < R.U * R.k; ++q)
    TORCH_CHECK(R.index[q] >= 0 && R.index[q] < n, "index holds ", R.index[q], ": expected experts in [0, ", n, ")");
  TORCH_CHECK(R.row_ptr[0] == 0 && R.row_ptr[R.U] == S, "row_ptr must run from 0 to the number of spans ", S);
  for (int64_t u = 0; u < R.U; ++u) TORCH_CHECK(R.row_ptr[u] <= R.row_ptr[u + 1], "row_ptr must not decrease");
  for (int64_t s = 0; s < S; ++s)
    TORCH_CHECK(R.len[s] >= 0 && R.start[s] >= 0 && R.start[s] + R.len[s] <= N, "span ", s, " (start ", R.start[s],
                ", length ", R.len[s], ") is not inside the ", N, " tokens");
}

// [part: forward]
// Forward, from the checkpoint layout weight (n, O, I), no packed copy. For each (row u, block p of NB output rows):
// merge the k experts' row blocks, A = sum_j g_j W_e[o0 : o0+NB, :] (NB x I, contiguous rows), transpose it in
// cache into the panel buf (I, NB), merged bias into bb, then per span
// y[span, o0 : o0+NB] = bb + x[span] buf (brgemm, M = span length, N = NB, K = I).
void merged_fwd(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, const Tensor& index,
                const Tensor& gate, const Tensor& row_ptr, const Tensor& start, const Tensor& len, const Tensor& y,
                int64_t panels_per_block) {
  check_call(x, index, gate, row_ptr, start, len);
  const int64_t I = x.size(1), O = y.size(1), P = (O + NB - 1) / NB;
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == at::kFloat && weight.dim() == 3 && weight.size(1) == O && weight.size(2) == I, "weight: expected contiguous float32 (n, O, I)");
  TORCH_CHECK(y.is_contiguous() && y.size(0) == x.size(0), "y: expected contiguous (N, O)");
  TORCH_CHECK(!bias.has_value() || (bias->is_contiguous() && bias->scalar_type() == at::kFloat && bias->size(0) == weight.size(0) && bias->size(1) == O), "bias: expected contiguous float32 (n, O)");
  const Rows R(index, gate, row_ptr, start, len);
  check_bounds(R, x.size(0), weight.size(0), start.numel());
  const float* xp = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t PB = std::max<int64_t>(1, std::min(panels_per_block, P));
  at::parallel_for(0, R.U * P, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> A(NB * I), buf(I * NB, 0.f);
    float bb[NB];
    for (int64_t it = begin; it < end; ++it) {
      // items in blocks of PB panels: all rows of a block, a row's panels one after the other
      const int64_t blk = it / (R.U * PB), p_first = blk * PB, pb = std::min(PB, P - p_first);
      const int64_t rem = it - p_first * R.U, u = rem / pb, p = p_first + rem % pb;
      const int64_t o0 = p * NB, np = std::min(NB, O - o0);
      if (R.empty(u)) continue;
      merge_block(R, u, w + o0 * I, O * I, I, np, I, A.data(), I);      // A[c, i] merged (NB x I), rows contiguous
      for (int64_t i0 = 0; i0 < I; i0 += 64)                           // buf[i, c] = A[c, i], in tiles
        for (int64_t c = 0; c < np; ++c)
          for (int64_t i = i0; i < std::min(I, i0 + 64); ++i) buf[i * NB + c] = A[c * I + i];
      for (int64_t c = 0; c < np; ++c) {
        float b = 0.f;
        if (bp) for (int64_t j = 0; j < R.k; ++j) b += R.gate[u * R.k + j] * bp[R.index[u * R.k + j] * O + o0 + c];
        bb[c] = b;
      }
      for (int64_t s = R.row_ptr[u]; s < R.row_ptr[u + 1]; ++s) {
        const int64_t t0 = R.start[s], M = R.len[s];
        if (M <= 0) continue;
        for (int64_t m = 0; m < M; ++m) std::copy(bb, bb + np, yp + (t0 + m) * O + o0);
        brgemm(M, np, I, I, NB, O, true, xp + t0 * I, buf.data(), yp + t0 * O + o0, false);
      }
    }
    brgemm_release(false);
  });
}

// [part: backward_x]
// Backward, input gradient: dx[t] = dy[t] W_hat[u]. Items (input block i0, group of rows): for each chunk of output
// rows o0 .. o0+KB, for each row u of the group, merge W_hat[u][o0:o0+KB, i0:i0+IB] from the checkpoint layout
// (contiguous rows), then per span dx[span, i0:] += dy[span, o0:o0+KB] @ that block (brgemm, K = KB). The rows of a
// group read the same chunk of the experts one after the other, while it is in cache.
void merged_bwd_x(const Tensor& dy, const Tensor& weight, const Tensor& index, const Tensor& gate,
                  const Tensor& row_ptr, const Tensor& start, const Tensor& len, const Tensor& dx,
                  int64_t rows_per_group) {
  check_call(dx, index, gate, row_ptr, start, len);
  const int64_t I = dx.size(1), O = dy.size(1), nI = (I + IB - 1) / IB;
  TORCH_CHECK(weight.is_contiguous() && weight.size(1) == O && weight.size(2) == I, "weight: expected contiguous (n, O, I)");
  TORCH_CHECK(dy.is_contiguous() && dy.scalar_type() == at::kFloat && dy.size(0) == dx.size(0), "dy: expected contiguous float32 (N, O)");
  const Rows R(index, gate, row_ptr, start, len);
  check_bounds(R, dx.size(0), weight.size(0), start.numel());
  const int64_t UG = std::max<int64_t>(1, std::min(rows_per_group, R.U)), nG = (R.U + UG - 1) / UG;
  const float* w = weight.data_ptr<float>();
  const float* g = dy.data_ptr<float>();
  float* d = dx.data_ptr<float>();
  at::parallel_for(0, nI * nG, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(KB * IB);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t i0 = (it / nG) * IB, ni = std::min(IB, I - i0), u0 = (it % nG) * UG, u1 = std::min(R.U, u0 + UG);
      for (int64_t o0 = 0; o0 < O; o0 += KB) {
        const int64_t ko = std::min(KB, O - o0);
        for (int64_t u = u0; u < u1; ++u) {
          if (R.empty(u)) continue;
          merge_block(R, u, w + o0 * I + i0, O * I, I, ko, ni, buf.data(), ni);
          for (int64_t s = R.row_ptr[u]; s < R.row_ptr[u + 1]; ++s) {
            const int64_t t0 = R.start[s], M = R.len[s];
            if (M > 0) brgemm(M, ni, ko, O, ni, I, true, g + t0 * O + o0, buf.data(), d + t0 * I + i0, false);
          }
        }
      }
    }
    brgemm_release(false);
  });
}

// [part: backward_w]
// Backward, expert and gate gradients, a block of OB output rows by IW input columns at a time (block_rows,
// block_cols), no (U, O, I) tensor:
//   D_u = sum over row u's spans of dy[span, o-block]^T x[span, i-block]  (brgemm on dy transposed, K = tokens)
//   dW[:, block] (+)= G^T D over a chunk of UC rows, G (UC, n) the dense gates  (brgemm per output row, K = UC; the
//   first chunk writes, so that dW needs no zero fill: a block no row reaches is filled with zeros)
//   H = W[:, block] D^T,   dgate[u, j] += H[index[u, j], u]   (D transposed; brgemm per output row, K = IW)
// Each block's share of dgate is kept apart and summed at the end in double. The bias terms,
// db_e += gate[u,j] * sum_t dy[t] and dgate[u,j] += <b_e, sum_t dy[t]>, are one pass over dy.
void merged_bwd_w(const Tensor& dy, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                  const Tensor& index, const Tensor& gate, const Tensor& row_ptr, const Tensor& start,
                  const Tensor& len, const Tensor& dweight, const Tensor& dbias, const Tensor& dgate,
                  bool need_weight, bool need_gate, int64_t block_rows, int64_t block_cols) {
  check_call(x, index, gate, row_ptr, start, len);
  const int64_t I = x.size(1), O = dy.size(1), n = weight.size(0);
  const int64_t OB = std::max<int64_t>(1, std::min(block_rows, O)), IW = std::max<int64_t>(1, std::min(block_cols, I));
  const int64_t nO = (O + OB - 1) / OB, nW = (I + IW - 1) / IW;
  TORCH_CHECK(weight.is_contiguous() && weight.size(1) == O && weight.size(2) == I, "weight: expected contiguous (n, O, I)");
  TORCH_CHECK(dy.is_contiguous() && dy.scalar_type() == at::kFloat && dy.size(0) == x.size(0), "dy: expected contiguous float32 (N, O)");
  TORCH_CHECK(!need_weight || (dweight.is_contiguous() && dweight.sizes() == weight.sizes()), "dweight: expected contiguous like weight");
  TORCH_CHECK(!need_gate || (dgate.is_contiguous() && dgate.sizes() == gate.sizes() && dgate.scalar_type() == at::kFloat), "dgate: expected contiguous float32 like gate");
  TORCH_CHECK(!bias.has_value() || (bias->is_contiguous() && bias->size(0) == n && bias->size(1) == O), "bias: expected contiguous (n, O)");
  TORCH_CHECK(dbias.numel() == 0 || (bias.has_value() && dbias.is_contiguous() && dbias.sizes() == bias->sizes()), "dbias: expected empty or contiguous like bias");
  const Rows R(index, gate, row_ptr, start, len);
  check_bounds(R, x.size(0), n, start.numel());
  const int64_t Uk = R.U * R.k;
  const float* w = weight.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* g = dy.data_ptr<float>();
  float* dw = need_weight ? dweight.data_ptr<float>() : nullptr;
  std::vector<double> part(need_gate ? nO * nW * Uk : 0, 0.0);  // each block's share of dgate
  if (need_weight || need_gate) at::parallel_for(0, nO * nW, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> D(UC * OB * IW), DT(need_gate ? UC * OB * IW : 0), dyT(OB * KC), GT(n * UC), H(n * UC);
    std::vector<double> Hd(n * UC);
    std::vector<int64_t> rows(UC);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t o0 = (it / nW) * OB, i0 = (it % nW) * IW, no = std::min(OB, O - o0), ni = std::min(IW, I - i0);
      const int64_t T = no * ni;                                 // D_u of the block: (no, ni), contiguous
      bool first_chunk = true;                                   // dW is written, not added to, by the first chunk
      for (int64_t u0 = 0; u0 < R.U;) {
        int64_t c = 0;                                           // the next (up to) UC rows that serve tokens
        for (; u0 < R.U && c < UC; ++u0) {
          if (R.empty(u0)) continue;
          float* Du = D.data() + c * T;
          bool first = true;
          for (int64_t s = R.row_ptr[u0]; s < R.row_ptr[u0 + 1]; ++s)
            for (int64_t m0 = 0; m0 < R.len[s]; m0 += KC) {
              const int64_t t0 = R.start[s] + m0, M = std::min(KC, R.len[s] - m0);
              for (int64_t m = 0; m < M; ++m)
                for (int64_t r = 0; r < no; ++r) dyT[r * M + m] = g[(t0 + m) * O + o0 + r];
              brgemm(no, ni, M, M, I, ni, !first, dyT.data(), xp + t0 * I + i0, Du, false);
              first = false;
            }
          rows[c++] = u0;
        }
        if (c == 0) continue;
        if (dw) {                                                // dW[e] (+)= sum_q G[q, e] D_q, a row at a time
          std::fill(GT.begin(), GT.end(), 0.f);
          for (int64_t q = 0; q < c; ++q)
            for (int64_t j = 0; j < R.k; ++j) GT[R.index[rows[q] * R.k + j] * c + q] += R.gate[rows[q] * R.k + j];
          for (int64_t r = 0; r < no; ++r)
            brgemm(n, ni, c, c, T, O * I, !first_chunk, GT.data(), D.data() + r * ni, dw + (o0 + r) * I + i0, false);
          first_chunk = false;
        }
        if (need_gate) {                                         // H^T (n, c) = W[:, block] D^T, a row at a time
          for (int64_t q = 0; q < c; ++q)
            for (int64_t t = 0; t < T; ++t) DT[t * c + q] = D[q * T + t];
          std::fill(Hd.begin(), Hd.end(), 0.0);
          for (int64_t r = 0; r < no; ++r) {                     // summed in double over the rows
            brgemm(n, c, ni, O * I, c, c, false, w + (o0 + r) * I + i0, DT.data() + r * ni * c, H.data(), false);
            for (int64_t q = 0; q < n * c; ++q) Hd[q] += H[q];
          }
          for (int64_t q = 0; q < c; ++q)
            for (int64_t j = 0; j < R.k; ++j)
              part[it * Uk + rows[q] * R.k + j] += Hd[R.index[rows[q] * R.k + j] * c + q];
        }
      }
      if (dw && first_chunk)                                     // no row serves a token: dW is 0 here
        for (int64_t e = 0; e < n; ++e)
          for (int64_t r = 0; r < no; ++r) std::fill_n(dw + e * O * I + (o0 + r) * I + i0, ni, 0.f);
    }
    brgemm_release(false);
  });
  std::vector<double> gsum(Uk, 0.0);
  for (int64_t b = 0; b < nO * nW && need_gate; ++b)
    for (int64_t q = 0; q < Uk; ++q) gsum[q] += part[b * Uk + q];
  if (bias.has_value()) {                                        // the bias terms: one pass over dy
    const float* bp = bias->data_ptr<float>();
    float* db = dbias.numel() ? dbias.data_ptr<float>() : nullptr;
    std::vector<float> dyu(O);
    for (int64_t u = 0; u < R.U; ++u) {
      std::fill(dyu.begin(), dyu.end(), 0.f);
      for (int64_t s = R.row_ptr[u]; s < R.row_ptr[u + 1]; ++s)
        for (int64_t t = R.start[s]; t < R.start[s] + R.len[s]; ++t)
          for (int64_t o = 0; o < O; ++o) dyu[o] += g[t * O + o];
      for (int64_t j = 0; j < R.k; ++j) {
        const int64_t e = R.index[u * R.k + j];
        const float gj = R.gate[u * R.k + j];
        double acc = 0.0;
        for (int64_t o = 0; o < O; ++o) {
          if (db) db[e * O + o] += gj * dyu[o];
          acc += double(bp[e * O + o]) * dyu[o];
        }
        gsum[u * R.k + j] += acc;
      }
    }
  }
  if (need_gate) {
    float* dg = dgate.data_ptr<float>();
    for (int64_t q = 0; q < Uk; ++q) dg[q] = float(gsum[q]);
  }
}
}  // namespace

// [part: registration]

TORCH_LIBRARY(meo, m) {
  m.def("merged_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor index, Tensor gate, Tensor row_ptr, "
        "Tensor span_start, Tensor span_len, Tensor(a!) y, int panels_per_block) -> ()");
  m.def("merged_bwd_x(Tensor dy, Tensor weight, Tensor index, Tensor gate, Tensor row_ptr, Tensor span_start, "
        "Tensor span_len, Tensor(a!) dx, int rows_per_group) -> ()");
  m.def("merged_bwd_w(Tensor dy, Tensor x, Tensor weight, Tensor? bias, Tensor index, Tensor gate, Tensor row_ptr, "
        "Tensor span_start, Tensor span_len, Tensor(a!) dweight, Tensor(b!) dbias, Tensor(c!) dgate, "
        "bool need_weight, bool need_gate, int block_rows, int block_cols) -> ()");
}

TORCH_LIBRARY_IMPL(meo, CPU, m) {
  m.impl("merged_fwd", &merged_fwd);
  m.impl("merged_bwd_x", &merged_bwd_x);
  m.impl("merged_bwd_w", &merged_bwd_w);
}
