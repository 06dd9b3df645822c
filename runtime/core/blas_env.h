// Makes sure OpenBLAS runs its fast kernel and one thread per rank without the user knowing
// about OPENBLAS_CORETYPE (PLATFORM.md items 1-2). OpenBLAS 0.3.21 can misdetect AVX-512 CPUs
// ("Prescott", ~5x slower sgemm), and environments often pin a generic kernel ("Haswell",
// ~1.8x slower here); it reads OPENBLAS_CORETYPE only when it loads. So with
// MOEMPI_BLAS_CORETYPE=auto (the default), if the loaded kernel is weaker than the CPU allows,
// the process sets OPENBLAS_CORETYPE and re-executes itself once, before MPI_Init.
// MOEMPI_BLAS_CORETYPE=keep leaves OpenBLAS alone; any other value is used as the core type.
// OPENBLAS_NUM_THREADS defaults to 1. Test: tests/core_test.cpp (BlasEnv).
#pragma once
#include <string>

namespace moempi::blas {

// Call first thing in main(). May not return (re-exec).
void ensure_fast_kernel(int argc, char** argv);
// The kernel this CPU should use ("SkylakeX", "Haswell") or "" if no better choice is known.
const char* preferred_coretype();
// True if `core` (an openblas_get_corename() value) is as fast a kernel family as the CPU allows.
bool is_fast_enough(const std::string& core);
// Whether OpenBLAS (x86-64, DYNAMIC_ARCH) knows `name` as an OPENBLAS_CORETYPE (case-insensitive).
bool is_known_coretype(const std::string& name);
// One line for the start-up log: what was loaded and, if moempi changed it, from what.
std::string kernel_note();

}  // namespace moempi::blas
