// The Switch-style term shared by aux_loss, seq_aux_loss and global_batch_aux_loss: over a token
// range [t0, t1), E · Σ_i f_i · P_i with P_i = mean_t p_ti, p the softmax-normalised scores (sigmoid
// scores divided by their per-token sum), f a constant load fraction (no gradient). The passes
// differ only in where f comes from and which tokens P averages. Test: tests/moe_test.cpp.
#pragma once
#include "models/moe/balancing_pass.h"

namespace moempi {

// E · Σ_i f_E[i] · P_i over tokens [t0, t1) of s (0 for an empty range).
double aux_term_forward(const RouterState& s, const double* f_E, int t0, int t1);
// ADDS g · ∂(Σ_t Σ_i f_i p_ti)/∂s_t for t in [t0, t1) into dscores_NE (whole (N, E) buffer), so
// g = α·E·loss_scale / (tokens P averages over) gives the gradient of α · aux_term_forward.
void aux_term_backward(float* dscores_NE, const RouterState& s, const double* f_E, int t0, int t1, double g);
// f_i = c_i / Σ_j c_j (= c_i / (K·T) for selections before drops); zeros when Σ c = 0.
void load_fractions(double* f_E, const int64_t* counts_E, int E);

}  // namespace moempi
