// Where experts live. Experts are split contiguously over the EP group: ep rank r holds global
// experts [r*E/ep, (r+1)*E/ep). Expert ids are global everywhere outside a dispatcher's inner loop.
#pragma once

namespace moempi {

struct ExpertPlacement {
  int num_experts = 1;  // E, global
  int ep_size = 1;
  int ep_rank = 0;

  int num_local() const { return num_experts / ep_size; }
  int local_begin() const { return ep_rank * num_local(); }
  int owner(int expert) const { return expert / num_local(); }
  bool is_local(int expert) const { return owner(expert) == ep_rank; }
};

}  // namespace moempi
