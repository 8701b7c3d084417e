// The MPI job this process is one rank of, when `mpirun -np N oar ...` started it. MPI is the transport of
// multi-process training (Debian's OpenMPI); a process not started by an MPI launcher never initialises MPI, so a
// plain `oar` run stays a single process with no MPI runtime involved.
#pragma once
#include <memory>
#include <string>

#include "core/communicator.h"

namespace oar {

// True when an MPI launcher started this process (OpenMPI's OMPI_COMM_WORLD_SIZE or a PMI launcher's PMI_SIZE is
// in the environment).
bool launched_by_mpi();

class MpiWorld {
 public:
  // Initialises MPI (once per process; finalised at exit). Throws oar::Error when MPI cannot start.
  static MpiWorld& get();
  // Before the first get(): ask MPI for MPI_THREAD_MULTIPLE (tensor parallelism, whose replicas' gradient sums
  // may then run beside its backward). Otherwise oar asks for MPI_THREAD_SERIALIZED: some transports slow down or
  // drop out under MULTIPLE (Open MPI's UCX built without threads), so only jobs that use it ask.
  static void ask_for_concurrent_calls();

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Ranks on this machine, and this one's index among them (for splitting the cores between them).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // The communicator over every rank of the job (MPI_COMM_WORLD).
  Communicator& world() { return *world_; }
  // Ends the whole job with `code` (MPI_Abort): a rank that fails alone must not leave the others waiting in a
  // collective.
  [[noreturn]] void abort(int code);

 private:
  MpiWorld();
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::unique_ptr<Communicator> world_;
};

}  // namespace oar
