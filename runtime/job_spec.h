// The job spec's YAML face: parse (with --set overrides), validate, and print back the
// resolved spec. Guarantees: every bad value, unknown key and impossible combination is ONE
// CollectiveError naming the YAML path, the value and what is allowed (plus file:line:column or
// the --set that caused it); job_spec_to_yaml(s) loads back to s. Tests: tests/job_spec_test.cpp.
#pragma once
#include <string>
#include <vector>

#include "runtime/core/config.h"

namespace moempi {

// Reads the YAML file at `path`, applies `overrides` in order (each "a.b.c=value", the value
// read as YAML; list entries by index, e.g. "moe.balancing.0.coeff=0.02", index == size appends),
// fills defaults (job.run_dir = "runs/<job.name>") and runs validate_job_spec.
// Errors (all collective): missing/unreadable file, YAML syntax, unknown key, wrong type, value out
// of range, unknown enum value, impossible combination.
JobSpec load_job_spec(const std::string& path, const std::vector<std::string>& overrides = {});

// Same from YAML text; `origin` names it in messages (e.g. "<string>").
JobSpec load_job_spec_from_string(const std::string& yaml, const std::vector<std::string>& overrides = {},
                                  const std::string& origin = "<string>");

// Ranges, enum values and combinations that do not depend on the world size (collective errors).
void validate_job_spec(const JobSpec& spec);

// validate_job_spec plus the checks against the world size: parallel.ep divides it, the
// strategy's constraints, parallel.ranks_per_node divides it (collective errors).
void validate_for_world(const JobSpec& spec, int world_size);

// Fills in what depends on the world size (parallel.ep: 0 = all ranks), then validate_for_world.
// The binary calls this once MPI knows the world size; the resolved spec is what is printed.
void resolve_for_world(JobSpec& spec, int world_size);

// The fully resolved spec, every field including defaults, as YAML that load_job_spec reads back
// to an equal spec.
std::string job_spec_to_yaml(const JobSpec& spec);

// The first key whose value differs between two printed specs (job_spec_to_yaml), for the
// start-up check that every rank runs the same spec: "optim.lr: 0.001 against 0.3" (also names
// how many keys differ). `a_name` and `b_name` label the two sides ("rank 0", "rank 1").
std::string describe_spec_difference(const std::string& a_yaml, const std::string& b_yaml,
                                     const std::string& a_name, const std::string& b_name);

// YAML spellings of the enum fields.
const char* name_of(NormType v);
const char* name_of(Activation v);
const char* name_of(ScoreFn v);

}  // namespace moempi
