// Makes set-up errors agree across ranks. Checks that depend on each rank's own view of the
// world (a job or data file missing on one node, a relative path from another working
// directory, a per-process mmap limit) may fail on some ranks only; if those ranks simply left,
// the others would wait forever in the next collective. agree_on_errors runs a step on every
// rank and, if it threw a CollectiveError anywhere, throws one on every rank, so the whole job
// ends cleanly with exit code 2 and rank 0 prints which rank failed and why.
// Test: tests/comm_mpitest.cpp (AgreeOnErrors.*), tests/e2e/cli_errors.sh (a file on rank 0 only).
//
// agree_on_text checks that every rank holds the same text (the resolved job spec): ranks started
// with different specs would otherwise train a wrong model silently or die in MPI_ERR_TRUNCATE.
// Test: tests/comm_mpitest.cpp (AgreeOnText.*), tests/e2e/spec_agreement.sh (MPMD with a different lr).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "comm/communicator.h"

namespace moempi {

// Collective over `group`: runs `step` on every rank; a CollectiveError thrown on any rank is
// rethrown on every rank, carrying the lowest failing rank's message ("rank 2 (and 1 more): ..."
// when not every rank failed).
void agree_on_errors(const Communicator& group, const std::function<void()>& step);

// Collective over `group`: compares a 64-bit hash of `text` across ranks (two all-reduces). On a
// mismatch, rank 0's text is broadcast, `describe(text_of_rank_0, my_text)` runs on the lowest rank
// whose text differs, and every rank throws one CollectiveError:
//   "<what> differs between ranks: rank 0 and rank 2 (also ranks 3) ...: <description>".
using DescribeDifference = std::function<std::string(const std::string& root_text, const std::string& mine)>;
void agree_on_text(const Communicator& group, const std::string& text, const std::string& what,
                   const DescribeDifference& describe);
uint64_t fnv1a64(const std::string& text);

}  // namespace moempi
