// Makes set-up errors agree across ranks. Checks that depend on each rank's own view of the
// world (a job or data file missing on one node, a relative path from another working
// directory, a per-process mmap limit) may fail on some ranks only; if those ranks simply left,
// the others would wait forever in the next collective. agree_on_errors runs a step on every
// rank and, if it threw a CollectiveError anywhere, throws one on every rank, so the whole job
// ends cleanly with exit code 2 and rank 0 prints which rank failed and why.
// Test: tests/comm_mpitest.cpp (AgreeOnErrors.*), tests/e2e/cli_errors.sh (a file on rank 0 only).
#pragma once
#include <functional>

#include "comm/communicator.h"

namespace moempi {

// Collective over `group`: runs `step` on every rank; a CollectiveError thrown on any rank is
// rethrown on every rank, carrying the lowest failing rank's message ("rank 2 (and 1 more): ..."
// when not every rank failed).
void agree_on_errors(const Communicator& group, const std::function<void()>& step);

}  // namespace moempi
