// The C ABI finetune's Rust code uses to reach PyTorch's distributed engine (c10d).
//
// Hand-written because tch exposes no c10d (../shared/research/scaling.md §1.1) while the torch
// wheel's libtorch_cpu exports TCPStore and ProcessGroupGloo (libtorch_cuda: ProcessGroupNCCL).
// The shim is kept to what a data-parallel step needs: a group (store + backend), all-reduce,
// broadcast and barrier on tensors tch already owns (`at::Tensor*` is tch's C_tensor). Every
// entry point catches C++ exceptions and returns them as text: an exception must never unwind
// into Rust.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef FT_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

void set_err(char* err, size_t len, const char* msg) {
  if (err == nullptr || len == 0) return;
  std::strncpy(err, msg, len - 1);
  err[len - 1] = '\0';
}

std::vector<at::Tensor> tensors(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

// PyTorch's own choice (torch/distributed/distributed_c10d.py): GLOO_SOCKET_IFNAME names the
// interface; otherwise this host's name, or loopback when the master is on this machine.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (master == "127.0.0.1" || master == "localhost" || master == "::1") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

template <typename F>
int guarded(char* err, size_t len, F f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    set_err(err, len, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
  } catch (...) {
    set_err(err, len, "unknown C++ exception");
  }
  return -1;
}

}  // namespace

extern "C" {

// backend: 0 Gloo, 1 NCCL. is_server: this process hosts the TCPStore (rank 0 outside torchrun).
// prefix keeps this group's keys apart from torchrun's and from an earlier restart's.
void* ft_dist_new(const char* host, int port, int rank, int world, int is_server, int backend,
                  int64_t timeout_ms, const char* prefix, char* err, size_t errlen) {
  Group* out = nullptr;
  guarded(err, errlen, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(gloo_device(host));
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, o);
    } else {
#ifdef FT_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, o);
#else
      throw std::runtime_error(
          "this finetune was built without NCCL (no CUDA libtorch at build time)");
#endif
    }
    out = new Group{store, pg, timeout};
  });
  return out;
}

// op: 0 sum, 1 max, 2 min.
int ft_dist_allreduce(void* g, at::Tensor** ts, int n, int op, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    auto v = tensors(ts, n);
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp::MAX : op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM;
    o.timeout = grp->timeout;
    grp->backend->allreduce(v, o)->wait(grp->timeout);
  });
}

int ft_dist_broadcast(void* g, at::Tensor** ts, int n, int root, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> v{*ts[i]};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = grp->timeout;
      grp->backend->broadcast(v, o)->wait(grp->timeout);
    }
  });
}

int ft_dist_barrier(void* g, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    c10d::BarrierOptions o;
    o.timeout = grp->timeout;
    grp->backend->barrier(o)->wait(grp->timeout);
  });
}

// Key/value through the group's store (start-up checks, the lost-rank report).
int ft_dist_store_set(void* g, const char* key, const uint8_t* val, size_t n, char* err,
                      size_t errlen) {
  return guarded(err, errlen, [&] {
    static_cast<Group*>(g)->store->set(key, std::vector<uint8_t>(val, val + n));
  });
}

// The value of `key` when present (never waits for it): *present 0 or 1, *len its full length
// (at most `cap` bytes copied).
int ft_dist_store_get(void* g, const char* key, uint8_t* buf, size_t cap, size_t* len,
                      int* present, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    *present = 0;
    *len = 0;
    if (!grp->store->check({std::string(key)})) return;
    auto v = grp->store->get(key);
    *present = 1;
    *len = v.size();
    std::memcpy(buf, v.data(), std::min(cap, v.size()));
  });
}

void ft_dist_free(void* g) {
  try {
    delete static_cast<Group*>(g);
  } catch (...) {
  }
}

}  // extern "C"
