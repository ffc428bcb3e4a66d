// Counts the ATen operators a process dispatches, for benchmarks/ops.sh. Loaded with
// LD_PRELOAD into tsimcne-dist (or any libtorch program); it registers a RecordFunction callback
// that counts top-level operators only (one called inside another is part of it; a backward
// node counts as one), on every thread. tsimcne-dist looks up `tsimcne_op_count` and, with
// phase_timing on, logs a step's operators outside and inside the network; at exit the total
// goes to the file named by TSIMCNE_OPS_REPORT, for programs that cannot read it themselves.
//   g++ -O2 -shared -fPIC -std=c++17 -I$LIBTORCH/include opcount.cpp -L$LIBTORCH/lib \
//       -ltorch_cpu -lc10 -o libopcount.so
#include <ATen/record_function.h>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {
std::atomic<uint64_t> top_level{0};
thread_local int depth = 0;

std::unique_ptr<at::ObserverContext> enter(const at::RecordFunction&) {
  if (depth++ == 0) top_level.fetch_add(1, std::memory_order_relaxed);
  return nullptr;
}
void leave(const at::RecordFunction&, at::ObserverContext*) { depth--; }

struct Register {
  Register() {
    at::addGlobalCallback(at::RecordFunctionCallback(enter, leave)
                              .scopes({at::RecordScope::FUNCTION,
                                       at::RecordScope::BACKWARD_FUNCTION}));
  }
  ~Register() {
    // Helper processes the launcher starts (OpenMPI's orted) inherit the preload: only a
    // process that ran operators reports.
    const char* path = std::getenv("TSIMCNE_OPS_REPORT");
    if (path && top_level.load() > 0) {
      if (FILE* f = std::fopen(path, "w")) {
        std::fprintf(f, "%llu\n", static_cast<unsigned long long>(top_level.load()));
        std::fclose(f);
      }
    }
  }
} registered;
}  // namespace

extern "C" uint64_t tsimcne_op_count() { return top_level.load(std::memory_order_relaxed); }
