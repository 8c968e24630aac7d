// A C bridge to libtorch's distributed engine, c10d: rendezvous through a TCPStore, a Gloo (CPU)
// or NCCL (CUDA) process group, and the collectives data-parallel training needs (all-reduce,
// broadcast, barrier), on the at::Tensor objects tch's tensors point to. Every function catches
// C++ exceptions and reports them through an error buffer, since they cannot cross into Rust.
//
// Why the process-group classes are declared here rather than included: ProcessGroupGloo.hpp
// includes gloo's own headers and ProcessGroupNCCL.hpp NCCL's and CUDA's, none of which the torch
// wheel ships. Both classes are exported by libtorch, so this file declares just the pieces it
// calls (the constructors, the Options types and their factory) with the exact signatures
// libtorch was built with, so the mangled names match, and reserves more storage than the real
// objects occupy. The objects are constructed and destroyed only by libtorch's own code (the
// constructors set the real vtables), and are used only through their public base class
// c10d::Backend, whose header is shipped; nothing here reads their private fields.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <c10/util/Logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace c10d {

class TORCH_API ProcessGroupGloo : public Backend {
 public:
  struct TORCH_API Options : public Backend::Options {
    explicit Options(std::chrono::milliseconds timeout);
    static c10::intrusive_ptr<Options> create_default(std::chrono::milliseconds timeout);

   private:
    // Room for the real members (devices, threads, ...), written only by libtorch.
    char reserved_[4096];
  };

  explicit ProcessGroupGloo(const c10::intrusive_ptr<Store>& store, int rank, int size,
                            c10::intrusive_ptr<Options> options);
  ~ProcessGroupGloo() override;

 private:
  // sizeof(the real ProcessGroupGloo) is a few hundred bytes; 64 KiB leaves a wide margin.
  char reserved_[1 << 16];
};

#ifdef DIFFUSE_HAVE_TORCH_CUDA
class TORCH_API ProcessGroupNCCL : public Backend {
 public:
  struct TORCH_API Options : public Backend::Options {
    explicit Options(bool is_high_priority_stream);

   private:
    char reserved_[4096];
  };

  ProcessGroupNCCL(c10::intrusive_ptr<Store> store, int rank, int size,
                   c10::intrusive_ptr<Options> options);
  ~ProcessGroupNCCL() override;

 private:
  char reserved_[1 << 16];
};
#endif

}  // namespace c10d

namespace {

void report(const char* what, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::string msg(what);
  // c10 errors append a C++ backtrace after the first line; the first line is the message.
  auto nl = msg.find('\n');
  if (nl != std::string::npos) msg = msg.substr(0, nl);
  size_t n = std::min(msg.size(), err_len - 1);
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

template <typename F>
int guarded(char* err, size_t err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    report(e.what_without_backtrace(), err, err_len);
  } catch (const std::exception& e) {
    report(e.what(), err, err_len);
  } catch (...) {
    report("unknown C++ exception", err, err_len);
  }
  return 1;
}

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

struct Work {
  c10::intrusive_ptr<c10d::Work> work;
  std::vector<at::Tensor> tensors;
  std::chrono::milliseconds timeout;
};

void wait(c10d::Work& work, std::chrono::milliseconds timeout) {
  if (!work.wait(timeout)) {
    auto e = work.exception();
    if (e) std::rethrow_exception(e);
    throw std::runtime_error("collective did not complete");
  }
}

}  // namespace

extern "C" {

// A TCPStore: the server on rank 0 (waiting for world_size - 1 clients), a client elsewhere.
void* diffuse_dist_store_new(const char* host, int port, int world_size, int is_server,
                             long long timeout_ms, char* err, size_t err_len) {
  Store* out = nullptr;
  // c10d logs every retry and timeout (with C++ backtraces) to stderr; diffuse reports failures
  // itself in one line, so keep only fatal messages unless the user asked for c10's logging.
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) FLAGS_caffe2_log_level = 3;
  guarded(err, err_len, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    out = new Store{store};
  });
  return out;
}

void diffuse_dist_store_free(void* store) { delete static_cast<Store*>(store); }

// A process group over the store: backend 0 = Gloo, 1 = NCCL.
void* diffuse_dist_group_new(void* store, int backend, int rank, int world_size,
                             long long timeout_ms, char* err, size_t err_len) {
  Group* out = nullptr;
  guarded(err, err_len, [&] {
    auto s = static_cast<Store*>(store)->store;
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Backend> b;
    if (backend == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
      b = c10::intrusive_ptr<c10d::ProcessGroupGloo>::unsafe_steal_from_new(
          new c10d::ProcessGroupGloo(s, rank, world_size, opts));
    } else {
#ifdef DIFFUSE_HAVE_TORCH_CUDA
      auto opts = c10::intrusive_ptr<c10d::ProcessGroupNCCL::Options>::unsafe_steal_from_new(
          new c10d::ProcessGroupNCCL::Options(false));
      opts->timeout = timeout;
      b = c10::intrusive_ptr<c10d::ProcessGroupNCCL>::unsafe_steal_from_new(
          new c10d::ProcessGroupNCCL(s, rank, world_size, opts));
#else
      throw std::runtime_error("this libtorch was built without CUDA, so it has no NCCL");
#endif
    }
    out = new Group{b, timeout};
  });
  return out;
}

void diffuse_dist_group_free(void* group) { delete static_cast<Group*>(group); }

// Start an all-reduce (sum) of one tensor in place; returns a work handle to wait on.
void* diffuse_dist_allreduce_start(void* group, at::Tensor* tensor, char* err, size_t err_len) {
  Work* out = nullptr;
  guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = g->timeout;
    auto work = g->backend->allreduce(tensors, opts);
    out = new Work{work, tensors, g->timeout};
  });
  return out;
}

// Wait for a started collective and free its handle (also on failure).
int diffuse_dist_work_wait(void* work, char* err, size_t err_len) {
  auto w = static_cast<Work*>(work);
  int rc = guarded(err, err_len, [&] { wait(*w->work, w->timeout); });
  delete w;
  return rc;
}

// Broadcast one tensor in place from `root`.
int diffuse_dist_broadcast(void* group, at::Tensor* tensor, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    wait(*g->backend->broadcast(tensors, opts), g->timeout);
  });
}

int diffuse_dist_barrier(void* group, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    wait(*g->backend->barrier(opts), g->timeout);
  });
}

}  // extern "C"
