// LshDispatcher: buckets and centroids on the sender, the inner dispatcher moves the centroids;
// see lsh_dispatcher.h for the forward and the backward it implements.
#include "parallel/lsh_dispatcher.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {

// Per-micro-batch state of one layer: the inner plan over the centroids, and the buckets.
struct LshDispatcher::Plan final : DispatchPlan {
  std::unique_ptr<DispatchPlan> inner;
  std::vector<uint16_t> codes_TH;        // (T, H) cross-polytope codes
  std::vector<int32_t> bucket_of_slot;   // (T*K) bucket j of each slot; -1 dropped
  std::vector<int32_t> bucket_size;      // (T') N_j
  std::vector<int64_t> member_begin;     // (T'+1) members of bucket j: members[begin[j], begin[j+1])
  std::vector<int64_t> members;          // routed slots, grouped by bucket, ascending within one
  std::vector<int32_t> vt_expert;        // (T') global expert of each centroid
  std::vector<float> vt_probs;           // (T') all 1: the inner combine returns E(c_j) unchanged
  std::vector<int64_t> order;            // scratch
  std::vector<int64_t> slot_begin;       // (E+1) scratch: slots of expert e, ascending
  std::vector<int64_t> by_expert;        // scratch
  struct Bucket {
    int64_t first_slot, begin, end;      // into `order`
    int32_t expert;
  };
  std::vector<Bucket> buckets;           // scratch
  std::vector<double> spread_centroid;   // (D) scratch of keep_near
  bool any_shared = false;               // some bucket holds more than one slot
  FloatBuffer x_TD;                      // (T, D) copy of the input (residuals)
  FloatBuffer centroids;                 // (T', D) what travels
  FloatBuffer vt_out;                    // (T', D) E(c_j) back from the inner combine
  FloatBuffer z;                         // (T*K, D) z_s of slots in shared buckets (residual)
  std::vector<const float*> slot_row;    // (T*K) the row slot s contributes: z_s or E(c_j); null dropped
  FloatBuffer G;                         // (T', D) Σ p_s g_t per bucket
  std::vector<float> vt_dprobs;          // (T') the inner's dprobs (unused: dprobs come from slot_row)
  FloatBuffer dout_TD;                   // (T, D) copy of dout (residual term of dx)
  FloatBuffer vt_dx;                     // (T', D) H_j, then (H_j - ρ G_j) / N_j for shared buckets

  // The base's expert-side view is the inner plan's.
  void expose() {
    rows_ = inner->rows();
    rows_per_local_expert_ = inner->rows_per_local_expert();
    local_experts_ = inner->local_experts();
    x_RD_ = inner->x_RD();
    y_RD_ = inner->y_RD();
    dy_RD_ = inner->dy_RD();
  }
  friend class LshDispatcher;
};

namespace {

LshDispatcher::Plan& as_lsh(DispatchPlan& p) {
  auto* q = dynamic_cast<LshDispatcher::Plan*>(&p);
  MOEMPI_CHECK_ONE(q, "lsh dispatcher: the plan was made by another dispatcher");
  return *q;
}

}  // namespace

LshDispatcher::LshDispatcher(std::unique_ptr<Dispatcher> inner, const CompressionSpec& spec)
    : inner_(std::move(inner)), spec_(spec) {
  MOEMPI_CHECK_ALL(inner_ != nullptr, "lsh dispatcher: no inner dispatcher");
  MOEMPI_CHECK_ALL(spec.num_hashes >= 1, "moe.dispatch.compression.num_hashes ({}) must be >= 1", spec.num_hashes);
  MOEMPI_CHECK_ALL(spec.buckets_per_hash >= 2 && spec.buckets_per_hash % 2 == 0,
                   "moe.dispatch.compression.buckets_per_hash ({}) must be even and >= 2", spec.buckets_per_hash);
  MOEMPI_CHECK_ALL(std::isfinite(spec.max_residual) && spec.max_residual >= 0,
                   "moe.dispatch.compression.max_residual ({}) must be a finite number >= 0", spec.max_residual);
  MOEMPI_CHECK_ALL(spec.rotation_interval >= 0 && spec.min_tokens >= 0,
                   "moe.dispatch.compression: rotation_interval ({}) and min_tokens ({}) must be >= 0",
                   spec.rotation_interval, spec.min_tokens);
}

std::unique_ptr<DispatchPlan> LshDispatcher::new_plan() const {
  auto p = std::make_unique<Plan>();
  p->inner = inner_->new_plan();
  return p;
}

const std::vector<int32_t>& LshDispatcher::bucket_of_slot(const DispatchPlan& plan) {
  return dynamic_cast<const Plan&>(plan).bucket_of_slot;
}
const std::vector<int32_t>& LshDispatcher::bucket_sizes(const DispatchPlan& plan) {
  return dynamic_cast<const Plan&>(plan).bucket_size;
}

void LshDispatcher::begin_step(int64_t step) {
  epoch_ = spec_.rotation_interval > 0 ? step / spec_.rotation_interval : 0;
  inner_->begin_step(step);
}

void LshDispatcher::set_evaluating(bool evaluating) {
  exact_ = evaluating && !spec_.compress_eval;
  inner_->set_evaluating(evaluating);
}

void LshDispatcher::sync_stats(double seconds) {
  own_seconds_ += seconds;
  const int64_t slot_rows = stats_.slot_rows, exchange_rows = stats_.exchange_rows;
  stats_ = inner_->stats();
  stats_.seconds = own_seconds_;  // the wrapper's wall time includes the inner's
  stats_.slot_rows = slot_rows;
  stats_.exchange_rows = exchange_rows;
}

namespace {
// Times one call and refreshes the wrapper's statistics from the inner's afterwards.
struct Timed {
  explicit Timed(std::function<void(double)> done) : done_(std::move(done)), t0_(now_seconds()) {}
  ~Timed() { done_(now_seconds() - t0_); }
  std::function<void(double)> done_;
  double t0_;
};
}  // namespace

// max_residual: reorders the run order[i, j) of one bucket (ascending slots) into the slots whose
// token lies within max_residual·|c| of the run's centroid c, then the others, each part still
// ascending; returns the end of the first part.
int64_t LshDispatcher::keep_near(Plan& p, const float* x_TD, int64_t i, int64_t j, int D) const {
  const int K = p.K_;
  std::vector<double>& c = p.spread_centroid;
  c.assign(D, 0.0);
  for (int64_t m = i; m < j; ++m) {
    const float* x = x_TD + p.order[m] / K * D;
    for (int d = 0; d < D; ++d) c[d] += x[d];
  }
  double c2 = 0;
  for (int d = 0; d < D; ++d) {
    c[d] /= static_cast<double>(j - i);
    c2 += c[d] * c[d];
  }
  const double limit2 = spec_.max_residual * spec_.max_residual * c2;
  auto near = [&](int64_t s) {
    const float* x = x_TD + s / K * D;
    double r2 = 0;
    for (int d = 0; d < D; ++d) r2 += (x[d] - c[d]) * (x[d] - c[d]);
    return r2 <= limit2;
  };
  return std::stable_partition(p.order.begin() + i, p.order.begin() + j, near) - p.order.begin();
}

void LshDispatcher::plan(DispatchPlan& base, const Routing& r, const float* x_TD, int D,
                         const Placement& placement) {
  Timed timed([this](double s) { sync_stats(s); });
  Plan& p = as_lsh(base);
  p.reset(r, D);
  const int T = r.T, K = r.K, E = placement.num_experts(), H = spec_.num_hashes;
  const int64_t S = static_cast<int64_t>(T) * K;
  MOEMPI_CHECK_ALL(spec_.buckets_per_hash <= 2 * D,
                   "moe.dispatch.compression.buckets_per_hash ({}) exceeds 2 x the row width ({}): a "
                   "cross-polytope hash of width {} has at most {} codes",
                   spec_.buckets_per_hash, D, D, 2 * D);
  if (!hash_ || hash_->width() != D)
    hash_ = std::make_unique<CrossPolytopeHash>(D, H, spec_.buckets_per_hash, spec_.rotation_seed);
  hash_->set_epoch(epoch_);

  // Slots by expert, ascending (stable counting sort).
  std::vector<int64_t>& rows_e = p.slot_begin;
  count_slots(r.topk_ids_TK, S, E, rows_e);
  // Fewer slots than this from this rank: the expert's slots go uncompressed (every one alone).
  const int64_t min_shared = exact_ ? std::numeric_limits<int64_t>::max() : std::max<int64_t>(spec_.min_tokens, 2);
  bool need_hash = false;
  for (int e = 0; e < E; ++e) need_hash |= rows_e[e] >= min_shared;
  rows_e.insert(rows_e.begin(), 0);
  for (int e = 0; e < E; ++e) rows_e[e + 1] += rows_e[e];
  const int64_t routed = rows_e[E];
  p.by_expert.resize(routed);
  {
    std::vector<int64_t> next(rows_e.begin(), rows_e.end() - 1);
    for (int64_t s = 0; s < S; ++s)
      if (r.topk_ids_TK[s] >= 0) p.by_expert[next[r.topk_ids_TK[s]]++] = s;
  }
  if (need_hash) {
    p.codes_TH.resize(static_cast<size_t>(T) * H);
    hash_->hash(x_TD, T, p.codes_TH.data());
  }

  // Buckets per expert: slots sorted by (code tuple of their token, slot); runs of equal tuples.
  p.order = p.by_expert;
  p.buckets.clear();
  const uint16_t* codes = p.codes_TH.data();
  auto same_codes = [&](int64_t a, int64_t b) {
    return std::equal(codes + a / K * H, codes + a / K * H + H, codes + b / K * H);
  };
  for (int e = 0; e < E; ++e) {
    const int64_t b0 = rows_e[e], b1 = rows_e[e + 1];
    if (b1 - b0 < min_shared) {  // uncompressed: every slot alone
      for (int64_t i = b0; i < b1; ++i) p.buckets.push_back({p.order[i], i, i + 1, e});
      continue;
    }
    std::sort(p.order.begin() + b0, p.order.begin() + b1, [&](int64_t a, int64_t b) {
      const uint16_t* ca = codes + a / K * H;
      const uint16_t* cb = codes + b / K * H;
      for (int h = 0; h < H; ++h)
        if (ca[h] != cb[h]) return ca[h] < cb[h];
      return a < b;
    });
    for (int64_t i = b0; i < b1;) {
      int64_t j = i + 1;
      while (j < b1 && same_codes(p.order[i], p.order[j])) ++j;
      const int64_t kept = spec_.max_residual > 0 && j - i > 1 ? keep_near(p, x_TD, i, j, D) : j;
      if (kept > i) p.buckets.push_back({p.order[i], i, kept, e});  // order[i]: the smallest kept slot
      for (int64_t m = kept; m < j; ++m) p.buckets.push_back({p.order[m], m, m + 1, e});
      i = j;
    }
  }
  // Centroids in order of their first slot: with all singletons, the inner dispatcher sees the
  // routed slots in slot order, exactly as without compression.
  std::sort(p.buckets.begin(), p.buckets.end(),
            [](const Plan::Bucket& a, const Plan::Bucket& b) { return a.first_slot < b.first_slot; });
  const int64_t Tv = static_cast<int64_t>(p.buckets.size());
  MOEMPI_CHECK_ONE(Tv <= INT32_MAX, "lsh dispatcher: {} centroids exceed INT32_MAX", Tv);
  p.bucket_of_slot.assign(S, -1);
  p.bucket_size.resize(Tv);
  p.member_begin.resize(Tv + 1);
  p.members.resize(routed);
  p.vt_expert.resize(Tv);
  p.vt_probs.assign(Tv, 1.0f);
  p.centroids.resize(static_cast<size_t>(Tv) * D);
  p.any_shared = false;
  int64_t at = 0;
  for (int64_t j = 0; j < Tv; ++j) {
    const Plan::Bucket& b = p.buckets[j];
    const int64_t n = b.end - b.begin;
    p.member_begin[j] = at;
    p.bucket_size[j] = static_cast<int32_t>(n);
    p.vt_expert[j] = b.expert;
    p.any_shared |= n > 1;
    float* c = p.centroids.data() + j * D;
    for (int64_t i = b.begin; i < b.end; ++i) {  // ascending slots within a bucket
      const int64_t s = p.order[i];
      p.members[at++] = s;
      p.bucket_of_slot[s] = static_cast<int32_t>(j);
      const float* x = x_TD + s / K * D;
      if (i == b.begin)
        std::memcpy(c, x, sizeof(float) * D);
      else
        for (int d = 0; d < D; ++d) c[d] += x[d];
    }
    if (n > 1) {
      const float inv = static_cast<float>(n);
      for (int d = 0; d < D; ++d) c[d] /= inv;
    }
  }
  p.member_begin[Tv] = at;
  if (spec_.residual && p.any_shared) {
    p.x_TD.resize(static_cast<size_t>(T) * D);
    std::memcpy(p.x_TD.data(), x_TD, sizeof(float) * T * D);
  }
  stats_.slot_rows += routed;
  stats_.exchange_rows += Tv;

  inner_->plan(*p.inner, Routing{p.vt_expert.data(), p.vt_probs.data(), static_cast<int>(Tv), 1},
               p.centroids.data(), D, placement);
  p.expose();
}

void LshDispatcher::dispatch(DispatchPlan& base, const float*) {
  Timed timed([this](double s) { sync_stats(s); });
  Plan& p = as_lsh(base);
  inner_->dispatch(*p.inner, p.centroids.data());
}

void LshDispatcher::combine(DispatchPlan& base, float* out_TD) {
  Timed timed([this](double s) { sync_stats(s); });
  Plan& p = as_lsh(base);
  const int D = p.D_, K = p.K_;
  const int64_t S = static_cast<int64_t>(p.T_) * K, Tv = static_cast<int64_t>(p.bucket_size.size());
  p.vt_out.resize(static_cast<size_t>(Tv) * D);
  inner_->combine(*p.inner, p.vt_out.data());  // weight 1: E(c_j) exactly
  const bool residual = spec_.residual && p.any_shared;
  if (residual) p.z.resize(static_cast<size_t>(S) * D);
  p.slot_row.assign(S, nullptr);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t j = p.bucket_of_slot[s];
    if (j < 0) continue;
    const float* y = p.vt_out.data() + static_cast<int64_t>(j) * D;
    if (!residual || p.bucket_size[j] == 1) {  // a singleton's residual is exactly 0
      p.slot_row[s] = y;
      continue;
    }
    const float* x = p.x_TD.data() + s / K * D;
    const float* c = p.centroids.data() + static_cast<int64_t>(j) * D;
    float* z = p.z.data() + s * D;
    for (int d = 0; d < D; ++d) z[d] = y[d] + (x[d] - c[d]);
    p.slot_row[s] = z;
  }
  weighted_sum_rows(out_TD, p.slot_row.data(), p.probs_TK_.data(), p.T_, K, D);
}

void LshDispatcher::combine_backward(DispatchPlan& base, const float* dout_TD) {
  Timed timed([this](double s) { sync_stats(s); });
  Plan& p = as_lsh(base);
  float* dprobs_TK = p.pending_dprobs();
  const int D = p.D_, K = p.K_;
  const int64_t S = static_cast<int64_t>(p.T_) * K, Tv = static_cast<int64_t>(p.bucket_size.size());
  for (int64_t s = 0; s < S; ++s)
    dprobs_TK[s] = p.slot_row[s] ? dot_row(dout_TD + s / K * D, p.slot_row[s], D) : 0.0f;
  p.G.resize(static_cast<size_t>(Tv) * D);
  for (int64_t j = 0; j < Tv; ++j) {
    float* G = p.G.data() + j * D;
    for (int64_t m = p.member_begin[j]; m < p.member_begin[j + 1]; ++m) {
      const int64_t s = p.members[m];
      const float* g = dout_TD + s / K * D;
      const float w = p.probs_TK_[s];
      if (m == p.member_begin[j])
        scale_row(G, g, w, D);  // a singleton: dy = p·g, as without compression
      else
        for (int d = 0; d < D; ++d) G[d] += w * g[d];
    }
  }
  if (spec_.residual && p.any_shared) {
    p.dout_TD.resize(static_cast<size_t>(p.T_) * D);
    std::memcpy(p.dout_TD.data(), dout_TD, sizeof(float) * p.T_ * D);
  }
  inner_->combine_backward(*p.inner, p.G.data());  // dy_RD = 1·G_j
}

void LshDispatcher::dispatch_backward(DispatchPlan& base, float* dx_TD, float* dprobs_TK) {
  Timed timed([this](double s) { sync_stats(s); });
  Plan& p = as_lsh(base);
  const int D = p.D_, K = p.K_;
  const int64_t Tv = static_cast<int64_t>(p.bucket_size.size());
  p.vt_dx.resize(static_cast<size_t>(Tv) * D);
  // -0 is the identity of float addition (-0 + a == a bit for bit, also for a = ±0), so the inner
  // dispatch_backward's "adds into" leaves exactly H_j = J_Eᵀ G_j.
  std::fill(p.vt_dx.data(), p.vt_dx.data() + static_cast<size_t>(Tv) * D, -0.0f);
  p.vt_dprobs.resize(Tv);  // the inner dprobs (of centroids with weight 1) are not used
  inner_->dispatch_backward(*p.inner, p.vt_dx.data(), p.vt_dprobs.data());
  p.take_pending_dprobs(dprobs_TK);
  const bool residual = spec_.residual;
  for (int64_t j = 0; j < Tv; ++j) {  // shared buckets: (H_j - ρ G_j) / N_j
    const int32_t n = p.bucket_size[j];
    if (n == 1) continue;
    float* h = p.vt_dx.data() + j * D;
    const float* G = p.G.data() + j * D;
    const float inv = static_cast<float>(n);
    if (residual)
      for (int d = 0; d < D; ++d) h[d] = (h[d] - G[d]) / inv;
    else
      for (int d = 0; d < D; ++d) h[d] /= inv;
  }
  for (int t = 0; t < p.T_; ++t) {
    float* dx = dx_TD + static_cast<int64_t>(t) * D;
    for (int k = 0; k < K; ++k) {
      const int64_t s = static_cast<int64_t>(t) * K + k;
      const int32_t j = p.bucket_of_slot[s];
      if (j < 0) continue;
      const float* h = p.vt_dx.data() + static_cast<int64_t>(j) * D;
      if (p.bucket_size[j] == 1 || !residual) {
        for (int d = 0; d < D; ++d) dx[d] += h[d];
        continue;
      }
      const float* g = p.dout_TD.data() + static_cast<int64_t>(t) * D;
      const float w = p.probs_TK_[s];
      for (int d = 0; d < D; ++d) dx[d] += w * g[d] + h[d];
    }
  }
}

}  // namespace moempi
