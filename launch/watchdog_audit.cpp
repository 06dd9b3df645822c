// The watchdog audit, linked into the test binary (moempi_test_hooks) only: with
// MOEMPI_TEST_WATCHDOG_AUDIT=1, every MPI call that can block on other ranks (collectives, waits,
// probes, blocking point-to-point, communicator and window creation, MPI_Init and MPI_Finalize) checks that it is
// made inside a watchdog::Pending scope, so that the watchdog sees every place a job can hang
// (comm/watchdog.h). A call outside one prints its name and ends the process with exit code 4.
// Works through the MPI profiling interface: these definitions in the executable take the place
// of the library's MPI_* entry points for moempi's code and forward to PMPI_*.
// Test: tests/e2e/faults.sh (training runs over every dispatcher and strategy, with a checkpoint
// save and a resume, audited).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "comm/watchdog.h"

namespace {

bool audit_on() {
  static const bool on = [] {
    const char* v = std::getenv("MOEMPI_TEST_WATCHDOG_AUDIT");
    return v && std::strcmp(v, "1") == 0;
  }();
  return on;
}

void audit(const char* call) {
  if (!audit_on() || moempi::watchdog::in_scope()) return;
  std::fprintf(stderr, "moempi: watchdog audit: blocking %s called outside a watchdog::Pending scope\n", call);
  std::fflush(stderr);
  std::_Exit(4);
}

}  // namespace

extern "C" {

int MPI_Barrier(MPI_Comm comm) {
  audit("MPI_Barrier");
  return PMPI_Barrier(comm);
}
int MPI_Bcast(void* buffer, int count, MPI_Datatype type, int root, MPI_Comm comm) {
  audit("MPI_Bcast");
  return PMPI_Bcast(buffer, count, type, root, comm);
}
int MPI_Reduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op, int root, MPI_Comm comm) {
  audit("MPI_Reduce");
  return PMPI_Reduce(send, recv, count, type, op, root, comm);
}
int MPI_Allreduce(const void* send, void* recv, int count, MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
  audit("MPI_Allreduce");
  return PMPI_Allreduce(send, recv, count, type, op, comm);
}
int MPI_Reduce_scatter(const void* send, void* recv, const int counts[], MPI_Datatype type, MPI_Op op,
                       MPI_Comm comm) {
  audit("MPI_Reduce_scatter");
  return PMPI_Reduce_scatter(send, recv, counts, type, op, comm);
}
int MPI_Gather(const void* send, int scount, MPI_Datatype stype, void* recv, int rcount, MPI_Datatype rtype, int root,
               MPI_Comm comm) {
  audit("MPI_Gather");
  return PMPI_Gather(send, scount, stype, recv, rcount, rtype, root, comm);
}
int MPI_Gatherv(const void* send, int scount, MPI_Datatype stype, void* recv, const int rcounts[], const int displs[],
                MPI_Datatype rtype, int root, MPI_Comm comm) {
  audit("MPI_Gatherv");
  return PMPI_Gatherv(send, scount, stype, recv, rcounts, displs, rtype, root, comm);
}
int MPI_Allgather(const void* send, int scount, MPI_Datatype stype, void* recv, int rcount, MPI_Datatype rtype,
                  MPI_Comm comm) {
  audit("MPI_Allgather");
  return PMPI_Allgather(send, scount, stype, recv, rcount, rtype, comm);
}
int MPI_Allgatherv(const void* send, int scount, MPI_Datatype stype, void* recv, const int rcounts[],
                   const int displs[], MPI_Datatype rtype, MPI_Comm comm) {
  audit("MPI_Allgatherv");
  return PMPI_Allgatherv(send, scount, stype, recv, rcounts, displs, rtype, comm);
}
int MPI_Alltoall(const void* send, int scount, MPI_Datatype stype, void* recv, int rcount, MPI_Datatype rtype,
                 MPI_Comm comm) {
  audit("MPI_Alltoall");
  return PMPI_Alltoall(send, scount, stype, recv, rcount, rtype, comm);
}
int MPI_Alltoallv(const void* send, const int scounts[], const int sdispls[], MPI_Datatype stype, void* recv,
                  const int rcounts[], const int rdispls[], MPI_Datatype rtype, MPI_Comm comm) {
  audit("MPI_Alltoallv");
  return PMPI_Alltoallv(send, scounts, sdispls, stype, recv, rcounts, rdispls, rtype, comm);
}
int MPI_Alltoallw(const void* send, const int scounts[], const int sdispls[], const MPI_Datatype stypes[], void* recv,
                  const int rcounts[], const int rdispls[], const MPI_Datatype rtypes[], MPI_Comm comm) {
  audit("MPI_Alltoallw");
  return PMPI_Alltoallw(send, scounts, sdispls, stypes, recv, rcounts, rdispls, rtypes, comm);
}
int MPI_Send(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
  audit("MPI_Send");
  return PMPI_Send(buf, count, type, dest, tag, comm);
}
int MPI_Ssend(const void* buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
  audit("MPI_Ssend");
  return PMPI_Ssend(buf, count, type, dest, tag, comm);
}
int MPI_Recv(void* buf, int count, MPI_Datatype type, int source, int tag, MPI_Comm comm, MPI_Status* status) {
  audit("MPI_Recv");
  return PMPI_Recv(buf, count, type, source, tag, comm, status);
}
int MPI_Sendrecv(const void* sbuf, int scount, MPI_Datatype stype, int dest, int stag, void* rbuf, int rcount,
                 MPI_Datatype rtype, int source, int rtag, MPI_Comm comm, MPI_Status* status) {
  audit("MPI_Sendrecv");
  return PMPI_Sendrecv(sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, status);
}
int MPI_Probe(int source, int tag, MPI_Comm comm, MPI_Status* status) {
  audit("MPI_Probe");
  return PMPI_Probe(source, tag, comm, status);
}
int MPI_Mprobe(int source, int tag, MPI_Comm comm, MPI_Message* message, MPI_Status* status) {
  audit("MPI_Mprobe");
  return PMPI_Mprobe(source, tag, comm, message, status);
}
int MPI_Mrecv(void* buf, int count, MPI_Datatype type, MPI_Message* message, MPI_Status* status) {
  audit("MPI_Mrecv");
  return PMPI_Mrecv(buf, count, type, message, status);
}
int MPI_Wait(MPI_Request* request, MPI_Status* status) {
  audit("MPI_Wait");
  return PMPI_Wait(request, status);
}
int MPI_Waitall(int count, MPI_Request requests[], MPI_Status statuses[]) {
  audit("MPI_Waitall");
  return PMPI_Waitall(count, requests, statuses);
}
int MPI_Waitany(int count, MPI_Request requests[], int* index, MPI_Status* status) {
  audit("MPI_Waitany");
  return PMPI_Waitany(count, requests, index, status);
}
int MPI_Waitsome(int count, MPI_Request requests[], int* outcount, int indices[], MPI_Status statuses[]) {
  audit("MPI_Waitsome");
  return PMPI_Waitsome(count, requests, outcount, indices, statuses);
}
int MPI_Comm_split(MPI_Comm comm, int color, int key, MPI_Comm* out) {
  audit("MPI_Comm_split");
  return PMPI_Comm_split(comm, color, key, out);
}
int MPI_Comm_split_type(MPI_Comm comm, int type, int key, MPI_Info info, MPI_Comm* out) {
  audit("MPI_Comm_split_type");
  return PMPI_Comm_split_type(comm, type, key, info, out);
}
int MPI_Comm_dup(MPI_Comm comm, MPI_Comm* out) {
  audit("MPI_Comm_dup");
  return PMPI_Comm_dup(comm, out);
}
int MPI_Comm_create(MPI_Comm comm, MPI_Group group, MPI_Comm* out) {
  audit("MPI_Comm_create");
  return PMPI_Comm_create(comm, group, out);
}
int MPI_Win_allocate_shared(MPI_Aint size, int disp_unit, MPI_Info info, MPI_Comm comm, void* base, MPI_Win* win) {
  audit("MPI_Win_allocate_shared");
  return PMPI_Win_allocate_shared(size, disp_unit, info, comm, base, win);
}
int MPI_Win_fence(int assert_flags, MPI_Win win) {
  audit("MPI_Win_fence");
  return PMPI_Win_fence(assert_flags, win);
}
int MPI_Win_free(MPI_Win* win) {
  audit("MPI_Win_free");
  return PMPI_Win_free(win);
}
int MPI_Init(int* argc, char*** argv) {
  audit("MPI_Init");
  return PMPI_Init(argc, argv);
}
int MPI_Finalize() {
  audit("MPI_Finalize");
  return PMPI_Finalize();
}

}  // extern "C"
