#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include "fuse/uring_transport.h"

#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "fuse/killpriv.h"
#include "fuse/uring_abi.h"

namespace uext::fuse {

namespace abi = uring_abi;

std::string uring_unavailable_reason() {
  const char* path = "/sys/module/fuse/parameters/enable_uring";
  std::ifstream in(path);
  if (!in) return fmt::format("{} is missing: this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)", path);
  std::string v;
  in >> v;
  if (v == "Y" || v == "y" || v == "1") return {};
  return fmt::format("FUSE over io_uring is switched off: {} is {} (root can write Y to it)", path,
                     v.empty() ? "empty" : v);
}

namespace {

// Room in front of the payload for the in-header and the first argument,
// which the kernel puts in the entry's header buffer: copied there, the
// request is contiguous (as /dev/fuse delivers it) without moving a WRITE's
// data. A page, so that the data itself stays page-aligned.
constexpr size_t kHeadroom = 4096;
static_assert(kHeadroom >= sizeof(fuse_in_header) + abi::kOpInSize);

constexpr uint64_t kWakeTag = 1;  // user_data of the stop eventfd's poll

struct Thread;

struct Entry {
  Thread* owner = nullptr;
  abi::ReqHeader* header = nullptr;  // in `mapping`
  char* payload = nullptr;           // in `mapping`, after the headroom
  void* mapping = nullptr;
  size_t mapping_size = 0;
  iovec iov[2]{};
  uint64_t commit_id = 0;  // the request being served
  bool replied = false;    // its COMMIT_AND_FETCH is prepared
  bool alive = false;      // registered and not torn down
};

enum class Phase { kStarting, kIdle, kRegistering, kServing, kFailed, kDone };

struct Thread {
  UringTransport::Impl* t = nullptr;
  unsigned qid = 0;
  unsigned index = 0;  // among its queue's threads
  std::thread thread;
  io_uring ring{};
  bool ring_ok = false;
  int wake_fd = -1;
  Entry entry;
  Phase phase = Phase::kStarting;  // under Impl::mu
  std::string failure;             // under Impl::mu
};

// The entry the calling thread is serving, if any.
thread_local Entry* t_serving = nullptr;

}  // namespace

bool serving_ring_request() { return t_serving != nullptr; }

struct UringTransport::Impl {
  fuse_session* se = nullptr;
  int dev_fd = -1;
  Config config;
  unsigned queues = 0;
  std::vector<std::unique_ptr<Thread>> threads;

  std::mutex mu;
  std::condition_variable cv;
  bool go = false;  // register now (payload_size known)
  std::atomic<bool> stopping{false};
  size_t payload_size = 0;

  // INIT as it passed by: its unique, whether the kernel offered io_uring.
  std::atomic<uint64_t> init_unique{0};
  std::atomic<bool> init_offered{false};
  std::atomic<bool> init_answered{false};

  void info(const std::string& m) { if (config.info) config.info(m); }
  void error(const std::string& m) { if (config.error) config.error(m); }

  void thread_main(Thread& th);
  bool setup_ring(Thread& th, std::string& why);
  bool register_entry(Thread& th, std::string& why);
  void serve(Thread& th);
  void handle_request(Thread& th);
  void commit_error(Entry& e, int err);
  void prepare_commit(Entry& e);
  ssize_t reply_to_entry(Entry& e, const iovec* iov, int count);
  ssize_t on_read(int fd, void* buf, size_t len);
  ssize_t on_writev(int fd, iovec* iov, int count);
  void start_registration(const fuse_init_out& out);
  void refuse_in_kernel();
  void set_phase(Thread& th, Phase p, std::string why = {}) {
    std::lock_guard lock(mu);
    th.phase = p;
    if (!why.empty()) th.failure = std::move(why);
    cv.notify_all();
  }
};

namespace {

UringTransport::Impl* g_transport = nullptr;  // libfuse's custom I/O has no user data of its own

ssize_t io_read(int fd, void* buf, size_t len, void*) { return g_transport->on_read(fd, buf, len); }
ssize_t io_writev(int fd, iovec* iov, int count, void*) { return g_transport->on_writev(fd, iov, count); }

// The number of possible CPUs, as the kernel counts queues (num_possible_cpus).
unsigned possible_cpus() {
  std::ifstream in("/sys/devices/system/cpu/possible");
  std::string list;
  if (in >> list) {
    unsigned count = 0;
    size_t pos = 0;
    while (pos < list.size()) {
      size_t comma = list.find(',', pos);
      std::string part = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      // strtoul, not stoul: a line that is not "A-B,C" must not throw.
      const size_t dash = part.find('-');
      const unsigned a = static_cast<unsigned>(std::strtoul(part.c_str(), nullptr, 10));
      const unsigned b = dash == std::string::npos ? a : static_cast<unsigned>(std::strtoul(part.c_str() + dash + 1, nullptr, 10));
      if (b >= a) count += b - a + 1;
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
    if (count > 0) return count;
  }
  long n = ::sysconf(_SC_NPROCESSORS_CONF);
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

// A zeroed 128-byte SQE for a FUSE command on `fd`. Each ring has room for
// its entry's command and the stop poll, so the queue is never full; if it
// were, what is queued is submitted first.
io_uring_sqe* fuse_cmd_sqe(io_uring* ring, int fd, uint32_t op, uint16_t qid, uint64_t commit_id) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  while (!sqe) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  std::memset(static_cast<void*>(sqe), 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = op;
  auto* cmd = reinterpret_cast<abi::CmdReq*>(sqe->cmd);
  cmd->qid = qid;
  cmd->commit_id = commit_id;
  return sqe;
}

}  // namespace

bool UringTransport::Impl::setup_ring(Thread& th, std::string& why) {
  io_uring_params p{};
  // One submitter (this thread), whose completions and the kernel's
  // request delivery run when it waits for them.
  p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  int rc = io_uring_queue_init_params(8, &th.ring, &p);
  if (rc == -EINVAL) {  // a kernel without DEFER_TASKRUN
    p = {};
    p.flags = IORING_SETUP_SQE128;
    rc = io_uring_queue_init_params(8, &th.ring, &p);
  }
  if (rc < 0) {
    why = fmt::format("io_uring_queue_init (128-byte SQEs) for queue {}: {}", th.qid, errno_text(rc));
    return false;
  }
  th.ring_ok = true;
  th.wake_fd = ::eventfd(0, EFD_CLOEXEC);
  if (th.wake_fd < 0) {
    why = fmt::format("eventfd for queue {}: {}", th.qid, std::strerror(errno));
    return false;
  }
  io_uring_sqe* sqe = io_uring_get_sqe(&th.ring);  // the ring is new: never null
  if (!sqe) {
    why = fmt::format("io_uring_get_sqe on the new ring of queue {}: none free", th.qid);
    return false;
  }
  io_uring_prep_poll_add(sqe, th.wake_fd, POLLIN);
  io_uring_sqe_set_data64(sqe, kWakeTag);
  rc = io_uring_submit(&th.ring);
  if (rc < 0) {
    why = fmt::format("io_uring_submit (stop poll) for queue {}: {}", th.qid, errno_text(rc));
    return false;
  }
  return true;
}

bool UringTransport::Impl::register_entry(Thread& th, std::string& why) {
  Entry& e = th.entry;
  e.owner = &th;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t header_room = (sizeof(abi::ReqHeader) + page - 1) / page * page;
  e.mapping_size = header_room + kHeadroom + payload_size;
  e.mapping = ::mmap(nullptr, e.mapping_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (e.mapping == MAP_FAILED) {
    e.mapping = nullptr;
    why = fmt::format("mmap of {} bytes for a ring entry of queue {}: {}", e.mapping_size, th.qid, std::strerror(errno));
    return false;
  }
  e.header = static_cast<abi::ReqHeader*>(e.mapping);
  e.payload = static_cast<char*>(e.mapping) + header_room + kHeadroom;
  e.iov[0] = {e.header, sizeof(abi::ReqHeader)};
  e.iov[1] = {e.payload, payload_size};

  io_uring_sqe* sqe = fuse_cmd_sqe(&th.ring, dev_fd, abi::kCmdRegister, static_cast<uint16_t>(th.qid), 0);
  sqe->addr = reinterpret_cast<uint64_t>(e.iov);
  sqe->len = 2;
  // For the tests of the fallback: UEXT_TEST_URING_BAD_REGISTER=all (or a
  // queue number) sends that registration malformed, which the kernel
  // refuses as it would a real failure.
  if (const char* bad = std::getenv("UEXT_TEST_URING_BAD_REGISTER");
      bad && (std::strcmp(bad, "all") == 0 || std::to_string(th.qid) == bad)) {
    sqe->len = 1;
  }
  io_uring_sqe_set_data(sqe, &e);
  int rc = io_uring_submit(&th.ring);
  if (rc < 0) {
    why = fmt::format("io_uring_submit of FUSE_IO_URING_CMD_REGISTER for queue {}: {}", th.qid, errno_text(rc));
    return false;
  }
  // The kernel refuses a registration at once, with an error completion; an
  // accepted one completes only when a request arrives (res 0), which may
  // already have happened.
  io_uring_cqe* cqe = nullptr;
  unsigned head;
  io_uring_for_each_cqe(&th.ring, head, cqe) {
    if (io_uring_cqe_get_data(cqe) == &e && cqe->res < 0) {
      why = fmt::format("FUSE_IO_URING_CMD_REGISTER for queue {} failed: {}", th.qid, errno_text(cqe->res));
      io_uring_cqe_seen(&th.ring, cqe);
      return false;
    }
  }
  e.alive = true;
  return true;
}

void UringTransport::Impl::thread_main(Thread& th) {
  {
    const std::string name = fmt::format("uext-q{}-{}", th.qid, th.index);
    pthread_setname_np(pthread_self(), name.c_str());
  }
  // Pinned to its queue's CPU: the kernel wakes it on the CPU of the
  // program that made the request.
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(th.qid, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) {
    info(fmt::format("io_uring: cannot pin the thread of queue {} to CPU {} ({}); it runs unpinned", th.qid, th.qid,
                     std::strerror(errno)));
  }
  std::string why;
  if (!setup_ring(th, why)) return set_phase(th, Phase::kFailed, why);
  set_phase(th, Phase::kIdle);
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return go || stopping.load(); });
    if (stopping.load()) {
      th.phase = Phase::kDone;
      cv.notify_all();
      return;
    }
    th.phase = Phase::kRegistering;
  }
  if (!register_entry(th, why)) return set_phase(th, Phase::kFailed, why);
  set_phase(th, Phase::kServing);
  serve(th);
  set_phase(th, Phase::kDone);
}

void UringTransport::Impl::prepare_commit(Entry& e) {
  Thread& th = *e.owner;
  io_uring_sqe* sqe =
      fuse_cmd_sqe(&th.ring, dev_fd, abi::kCmdCommitAndFetch, static_cast<uint16_t>(th.qid), e.commit_id);
  io_uring_sqe_set_data(sqe, &e);
  e.replied = true;
}

void UringTransport::Impl::commit_error(Entry& e, int err) {
  fuse_out_header out{};
  out.len = sizeof out;
  out.error = -err;
  out.unique = e.commit_id;
  std::memcpy(e.header->in_out, &out, sizeof out);
  e.header->ent_in_out.payload_sz = 0;
  prepare_commit(e);
}

ssize_t UringTransport::Impl::reply_to_entry(Entry& e, const iovec* iov, int count) {
  size_t total = 0;
  for (int i = 0; i < count; ++i) total += iov[i].iov_len;
  if (total < sizeof(fuse_out_header)) {
    errno = EINVAL;
    return -1;
  }
  if (total - sizeof(fuse_out_header) > payload_size) {
    error(fmt::format("io_uring: a reply of {} bytes exceeds the ring entry's payload buffer ({} bytes); answering EIO",
                      total, payload_size));
    commit_error(e, EIO);
    return static_cast<ssize_t>(total);
  }
  // The out-header goes to the header buffer, the arguments after it to
  // the payload buffer.
  char* header = e.header->in_out;
  size_t header_done = 0, payload_done = 0;
  for (int i = 0; i < count; ++i) {
    const char* src = static_cast<const char*>(iov[i].iov_base);
    size_t len = iov[i].iov_len;
    if (header_done < sizeof(fuse_out_header)) {
      size_t n = std::min(len, sizeof(fuse_out_header) - header_done);
      std::memcpy(header + header_done, src, n);
      header_done += n;
      src += n;
      len -= n;
    }
    if (len > 0) {
      std::memmove(e.payload + payload_done, src, len);
      payload_done += len;
    }
  }
  e.header->ent_in_out.payload_sz = static_cast<uint32_t>(payload_done);
  prepare_commit(e);
  return static_cast<ssize_t>(total);
}

void UringTransport::Impl::handle_request(Thread& th) {
  Entry& e = th.entry;
  fuse_in_header in;
  std::memcpy(&in, e.header->in_out, sizeof in);
  const abi::EntInOut io = e.header->ent_in_out;
  e.commit_id = io.commit_id;
  e.replied = false;
  // The kernel put the first argument in op_in and the rest in the payload;
  // the first argument's size is what in.len leaves.
  const size_t payload = io.payload_sz;
  if (in.len < sizeof in + payload || in.len - sizeof in - payload > abi::kOpInSize || payload > payload_size) {
    error(fmt::format("io_uring: malformed request on queue {} (opcode {}, len {}, payload {}); answering EIO", th.qid,
                      in.opcode, in.len, payload));
    return commit_error(e, EIO);
  }
  const size_t first = in.len - sizeof in - payload;
  char* start = e.payload - sizeof in - first;
  std::memcpy(start, &in, sizeof in);
  std::memcpy(start + sizeof in, e.header->op_in, first);
  fuse_buf buf{};
  buf.mem = start;
  buf.size = in.len;
  t_serving = &e;
  killpriv::note_request(buf.mem, buf.size);
  fuse_session_process_buf(se, &buf);
  t_serving = nullptr;
  if (!e.replied) {
    // Every request that reaches a ring expects an answer, and the entry
    // comes back only with one.
    error(fmt::format("io_uring: request {} (opcode {}) on queue {} got no reply; answering EIO", in.unique, in.opcode,
                      th.qid));
    commit_error(e, EIO);
  }
}

void UringTransport::Impl::serve(Thread& th) {
  Entry& e = th.entry;
  for (;;) {
    int rc = io_uring_submit_and_wait(&th.ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      error(fmt::format("io_uring: io_uring_submit_and_wait on queue {}: {}; the thread stops", th.qid, errno_text(rc)));
      return;
    }
    bool has_request = false, stop = false;
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&th.ring, &cqe) == 0) {
      const uint64_t tag = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      io_uring_cqe_seen(&th.ring, cqe);
      if (tag == kWakeTag) {
        if (stopping.load()) stop = true;
        continue;
      }
      if (res < 0) {
        // ENOTCONN/ECANCELED/ECONNABORTED: the connection ends (unmount,
        // abort) and the kernel gives the entry back.
        e.alive = false;
        if (res != -ENOTCONN && res != -ECANCELED && res != -ECONNABORTED && !stopping.load()) {
          error(fmt::format("io_uring: the ring entry of queue {} failed: {}", th.qid, errno_text(res)));
        }
        continue;
      }
      has_request = true;
    }
    if (has_request && e.alive) handle_request(th);
    if (stop || !e.alive) {
      // A reply prepared for the last request still goes out.
      if (e.alive) io_uring_submit(&th.ring);
      return;
    }
  }
}

ssize_t UringTransport::Impl::on_read(int fd, void* buf, size_t len) {
  ssize_t n = ::read(fd, buf, len);
  if (n > 0) killpriv::note_request(buf, static_cast<size_t>(n));
  if (n >= static_cast<ssize_t>(sizeof(fuse_in_header)) && init_unique.load(std::memory_order_relaxed) == 0) {
    const auto* in = static_cast<const fuse_in_header*>(buf);
    if (in->opcode == FUSE_INIT && n >= static_cast<ssize_t>(sizeof(fuse_in_header) + sizeof(fuse_init_in))) {
      const auto* arg = reinterpret_cast<const fuse_init_in*>(in + 1);
      uint64_t flags = arg->flags;
      if (flags & abi::kInitExt) flags |= static_cast<uint64_t>(arg->flags2) << 32;
      init_offered.store((flags & abi::kOverIoUring) != 0);
      init_unique.store(in->unique);
    }
  }
  return n;
}

void UringTransport::Impl::start_registration(const fuse_init_out& out) {
  // The kernel requires each payload buffer to hold its largest request:
  // max(FUSE_MIN_READ_BUFFER, max_write, max_pages pages).
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  size_t pages = (out.flags & FUSE_MAX_PAGES) ? out.max_pages : 32;
  payload_size = std::max<size_t>({8192, out.max_write, pages * page});
  std::unique_lock lock(mu);
  go = true;
  cv.notify_all();
  // Wait (briefly: registration does not depend on this thread) for every
  // thread's verdict.
  const bool settled = cv.wait_for(lock, std::chrono::seconds(10), [&] {
    for (auto& th : threads) {
      if (th->phase == Phase::kIdle || th->phase == Phase::kRegistering || th->phase == Phase::kStarting) return false;
    }
    return true;
  });
  std::vector<unsigned> serving(queues, 0);
  std::string failure;
  for (auto& th : threads) {
    if (th->phase == Phase::kServing) ++serving[th->qid];
    else if (failure.empty()) failure = th->failure.empty() ? "a ring thread did not register in time" : th->failure;
  }
  lock.unlock();
  if (!settled && failure.empty()) failure = "the ring threads did not register within 10 s";
  const bool all = std::all_of(serving.begin(), serving.end(), [](unsigned n) { return n > 0; });
  if (!all) refuse_in_kernel();
  if (config.ready) {
    if (failure.empty()) config.ready(true, fmt::format("FUSE over io_uring: {} queues, {} threads each, {} KiB payload",
                                                         queues, config.threads_per_queue, payload_size >> 10));
    else config.ready(false, all ? fmt::format("FUSE over io_uring: some ring threads failed ({}); every queue is served",
                                               failure)
                                 : fmt::format("FUSE over io_uring failed: {}", failure));
  }
}

// After INIT's reply promised io_uring, the kernel holds every new request
// until each queue has a registered entry, unless a registration fails: then
// it falls back to /dev/fuse. When some queue got no entry without the
// kernel having refused one (a thread failed before registering), make it
// refuse one: a REGISTER for a queue that does not exist.
void UringTransport::Impl::refuse_in_kernel() {
  io_uring ring{};
  io_uring_params p{};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &p);
  if (rc < 0) {
    error(fmt::format("io_uring: cannot tell the kernel to fall back to /dev/fuse (io_uring_queue_init: {}); "
                      "requests may wait until unmount", errno_text(rc)));
    return;
  }
  static char dummy[8];
  iovec iov[2] = {{dummy, sizeof dummy}, {dummy, sizeof dummy}};
  io_uring_sqe* sqe = fuse_cmd_sqe(&ring, dev_fd, abi::kCmdRegister, 0xffff, 0);
  sqe->addr = reinterpret_cast<uint64_t>(iov);
  sqe->len = 2;
  io_uring_submit_and_wait(&ring, 1);
  io_uring_queue_exit(&ring);
}

ssize_t UringTransport::Impl::on_writev(int fd, iovec* iov, int count) {
  if (count > 0 && iov[0].iov_len >= sizeof(fuse_out_header)) {
    const auto* out = static_cast<const fuse_out_header*>(iov[0].iov_base);
    Entry* e = t_serving;
    if (e && out->unique == e->commit_id && !e->replied) return reply_to_entry(*e, iov, count);

    const uint64_t init = init_unique.load();
    if (init != 0 && out->unique == init && !init_answered.exchange(true)) {
      // INIT's reply: ask for io_uring when the kernel offered it and the
      // reply is a success with the full fuse_init_out.
      if (!init_offered.load() || out->error != 0 || count != 2 || iov[1].iov_len < sizeof(fuse_init_out)) {
        ssize_t n = killpriv::write_init_reply(fd, iov, count);
        if (config.ready) {
          config.ready(false, init_offered.load() ? "FUSE over io_uring not used: INIT failed"
                                                  : "the kernel did not offer FUSE over io_uring in INIT");
        }
        return n;
      }
      fuse_init_out arg;
      std::memcpy(&arg, iov[1].iov_base, sizeof arg);
      arg.flags |= abi::kInitExt;
      arg.flags2 |= static_cast<uint32_t>(abi::kOverIoUring >> 32);
      killpriv::add_to_init_reply(arg);
      iovec patched[2] = {iov[0], {&arg, iov[1].iov_len}};
      std::vector<char> whole;
      if (iov[1].iov_len > sizeof arg) {  // keep what follows fuse_init_out, if anything
        whole.assign(static_cast<const char*>(iov[1].iov_base), static_cast<const char*>(iov[1].iov_base) + iov[1].iov_len);
        std::memcpy(whole.data(), &arg, sizeof arg);
        patched[1] = {whole.data(), whole.size()};
      }
      ssize_t n = ::writev(fd, patched, 2);
      if (n < 0) {
        const int err = errno;
        if (config.ready) config.ready(false, fmt::format("writing INIT's reply failed: {}", std::strerror(err)));
        errno = err;
        return n;
      }
      // The kernel took the reply (and set up the connection) within that
      // writev: registration can start.
      start_registration(arg);
      return n;
    }
  }
  return ::writev(fd, iov, count);
}

UringTransport::UringTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UringTransport::~UringTransport() { stop(); }

std::unique_ptr<UringTransport> UringTransport::install(fuse_session* se, Config config, std::string& why) {
  why = uring_unavailable_reason();
  if (!why.empty()) return nullptr;
  if (g_transport) {
    why = "FUSE over io_uring is already in use in this process";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  impl->se = se;
  impl->dev_fd = fuse_session_fd(se);
  impl->config = std::move(config);
  impl->config.threads_per_queue = std::max(1u, impl->config.threads_per_queue);
  impl->queues = possible_cpus();
  Impl* raw = impl.get();
  std::unique_ptr<UringTransport> t(new UringTransport(std::move(impl)));

  // The ring threads keep every signal blocked: the stop signals belong to
  // the main thread, and the request loop's wake signal to its readers.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (unsigned q = 0; q < raw->queues; ++q) {
    for (unsigned i = 0; i < raw->config.threads_per_queue; ++i) {
      auto th = std::make_unique<Thread>();
      th->t = raw;
      th->qid = q;
      th->index = i;
      Thread* p = th.get();
      raw->threads.push_back(std::move(th));
      p->thread = std::thread([raw, p] { raw->thread_main(*p); });
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);

  // Every ring must exist before INIT's reply promises the kernel a server.
  {
    std::unique_lock lock(raw->mu);
    raw->cv.wait(lock, [&] {
      for (auto& th : raw->threads) {
        if (th->phase == Phase::kStarting) return false;
      }
      return true;
    });
    for (auto& th : raw->threads) {
      if (th->phase == Phase::kFailed) {
        why = th->failure;
        break;
      }
    }
  }
  if (!why.empty()) {
    t->stop();
    return nullptr;
  }

  fuse_custom_io io{};
  io.read = io_read;
  io.writev = io_writev;
  g_transport = raw;
  int rc = fuse_session_custom_io(se, &io, raw->dev_fd);
  if (rc != 0) {
    g_transport = nullptr;
    why = fmt::format("fuse_session_custom_io: {}", errno_text(rc));
    t->stop();
    return nullptr;
  }
  return t;
}

void UringTransport::stop() {
  if (!impl_) return;
  Impl& t = *impl_;
  {
    std::lock_guard lock(t.mu);
    t.stopping.store(true);
    t.cv.notify_all();
  }
  for (auto& th : t.threads) {
    if (th->wake_fd >= 0) {
      uint64_t one = 1;
      ssize_t ignored = ::write(th->wake_fd, &one, sizeof one);
      (void)ignored;
    }
  }
  for (auto& th : t.threads) {
    if (th->thread.joinable()) th->thread.join();
    // Closing the ring cancels its entry in the kernel; only then may the
    // buffers go.
    if (th->ring_ok) io_uring_queue_exit(&th->ring);
    th->ring_ok = false;
    if (th->wake_fd >= 0) ::close(th->wake_fd);
    th->wake_fd = -1;
  }
  // The entries' buffers stay mapped: the kernel finishes a closed ring's
  // commands after io_uring_queue_exit returns, and memory it might still
  // copy a request into must not be reused meanwhile. One entry per thread,
  // once per process.
  // libfuse keeps calling the custom I/O until the session is destroyed:
  // leave g_transport in place (its callbacks then only pass through).
}

}  // namespace uext::fuse
