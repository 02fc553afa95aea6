// uext demo mmap-enospc IMG: the seed scenario of shared mappings. The
// filesystem is filled until about 1 MiB is left, a sparse file much larger
// than that is mapped shared and written page after page through plain
// stores; the first page whose block cannot be had must raise SIGBUS at
// that very store, and every page stored before it must be on the image
// after msync, close and a fresh read-only open.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "common.h"

namespace uext::cli {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1ull << 20;
// What the filler leaves available, and how far above it counts as close enough.
constexpr uint64_t kTargetFree = kMiB;
constexpr uint64_t kFreeSlack = 256 * 1024;
constexpr char kFillerName[] = "mmap-enospc-filler";
constexpr char kFileName[] = "mmap-enospc";

struct DemoArgs {
  std::string image;
  bool nodelalloc = false;
  std::string fault_handling = "auto";
};

unsigned char pattern_byte(uint64_t page) { return static_cast<unsigned char>(page % 251 + 1); }

std::string mib(uint64_t bytes) { return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / kMiB); }

const char* handling_name(FaultHandling h) {
  switch (h) {
    case FaultHandling::kAuto: return "auto";
    case FaultHandling::kUserfaultfd: return "userfaultfd";
    case FaultHandling::kSignal: return "signal (mprotect + SIGSEGV)";
  }
  return "?";
}

// ---------------------------------------------------------------- SIGBUS

// The handler's only job is to note where the fault was and jump back to
// the store loop; everything it touches is lock-free or volatile.
sigjmp_buf g_jump;
std::atomic<uintptr_t> g_fault_addr{0};
std::atomic<int> g_fault_code{0};
// Read after the jump: volatile so the values are not cached in registers
// that siglongjmp restores.
volatile uint64_t g_page = 0;
volatile uint64_t g_stored = 0;

void on_sigbus(int, siginfo_t* info, void*) {
  g_fault_addr.store(reinterpret_cast<uintptr_t>(info->si_addr), std::memory_order_relaxed);
  g_fault_code.store(info->si_code, std::memory_order_relaxed);
  siglongjmp(g_jump, 1);
}

struct StoreOutcome {
  bool faulted = false;
  uint64_t stored = 0;  // pages fully stored
  uint64_t page = 0;    // the page whose store faulted
  uintptr_t addr = 0;
  int code = 0;
};

// Stores pattern_byte(i) into every byte of page i, in order, until a
// SIGBUS or the end. Kept out of line so that nothing the jump could
// clobber lives across sigsetjmp but the volatile globals.
[[gnu::noinline]] StoreOutcome store_pages(std::byte* base, uint64_t pages) {
  struct sigaction sa {}, old {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, &old);
  g_page = 0;
  g_stored = 0;
  StoreOutcome out;
  // savemask 1: the jump leaves the handler with SIGBUS blocked otherwise.
  if (sigsetjmp(g_jump, 1) == 0) {
    for (uint64_t i = 0; i < pages; ++i) {
      g_page = i;
      auto* p = reinterpret_cast<unsigned char*>(base) + i * kPage;
      const unsigned char v = pattern_byte(i);
      // The first store to the page is the one page_mkwrite may refuse;
      // make it a single byte at the page's start so the fault is exact.
      *reinterpret_cast<volatile unsigned char*>(p) = v;
      std::memset(p + 1, v, kPage - 1);
      g_stored = i + 1;
    }
  } else {
    out.faulted = true;
  }
  ::sigaction(SIGBUS, &old, nullptr);
  out.stored = g_stored;
  out.page = out.faulted ? g_page : g_stored;
  out.addr = g_fault_addr.load(std::memory_order_relaxed);
  out.code = g_fault_code.load(std::memory_order_relaxed);
  return out;
}

// ---------------------------------------------------------------- filling

// Available bytes as statfs reports them after a sync, so that blocks the
// last changes freed or reserved are settled.
Result<uint64_t> settled_available(Filesystem& fs) {
  UEXT_TRY(fs.sync());
  UEXT_ASSIGN_OR_RETURN(FsStats st, fs.statfs());
  return st.available_blocks * st.block_size;
}

// Grows or trims the filler until statfs says kTargetFree (plus at most
// kFreeSlack) is available. Returns the available bytes reached.
Result<uint64_t> fill_to_target(Filesystem& fs, Ino filler, uint32_t block_size) {
  std::vector<std::byte> chunk(4 * kMiB, std::byte{0x5a});
  uint64_t size = 0;
  UEXT_ASSIGN_OR_RETURN(uint64_t avail, settled_available(fs));
  // A few rounds: tree blocks (indirect blocks on ext2/3, extent leaves)
  // come and go with the data, so one step rarely lands exactly.
  for (int round = 0; round < 12; ++round) {
    if (avail >= kTargetFree && avail <= kTargetFree + kFreeSlack) return avail;
    if (avail > kTargetFree) {
      uint64_t want = avail - kTargetFree;
      bool full = false;
      while (want > 0) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(want, chunk.size()));
        auto w = fs.write(filler, size, std::span<const std::byte>(chunk.data(), n));
        if (!w.ok()) {
          if (w.error().code() == ENOSPC) {
            full = true;
            break;
          }
          return std::move(w).error();
        }
        size += *w;
        want -= *w;
        if (*w < n) {
          full = true;
          break;
        }
      }
      if (full && size == 0) return Error(ENOSPC, "the filesystem is already full: nothing to trim");
    } else {
      // Too little: give back the shortfall (whole blocks) from the end.
      uint64_t give = (kTargetFree - avail + block_size - 1) / block_size * block_size;
      if (size == 0) return avail;  // too little space to begin with
      size = give >= size ? 0 : size - give;
      UEXT_TRY(fs.truncate(filler, size));
    }
    UEXT_ASSIGN_OR_RETURN(avail, settled_available(fs));
  }
  return avail;
}

// Removes what an earlier run left, so the demo can be run again.
Status remove_leftover(Filesystem& fs, const char* name) {
  auto ino = fs.lookup(kRootIno, name);
  if (!ino.ok()) return ino.error().code() == ENOENT ? Status{} : Status(ino.error());
  return fs.unlink(kRootIno, name);
}

// ---------------------------------------------------------------- checking

struct Verification {
  uint64_t lost = 0;
  std::vector<uint64_t> lost_sample;  // the first few lost pages
  bool page_k_untouched = true;
  uint64_t size = 0;
};

Result<Verification> verify(const std::string& image, uint64_t pages_before, bool check_page_k) {
  Options o;  // read-only: a fresh look at what reached the image
  UEXT_ASSIGN_OR_RETURN(auto fs, Filesystem::open(image, o));
  UEXT_ASSIGN_OR_RETURN(Ino ino, fs->resolve(std::string("/") + kFileName));
  UEXT_ASSIGN_OR_RETURN(Stat st, fs->stat(ino));
  Verification v;
  v.size = st.size;
  std::vector<std::byte> buf(kPage);
  for (uint64_t i = 0; i < pages_before + (check_page_k ? 1 : 0); ++i) {
    UEXT_ASSIGN_OR_RETURN(size_t n, fs->read(ino, i * kPage, buf));
    const bool faulted_page = i == pages_before;
    const unsigned char want = faulted_page ? 0 : pattern_byte(i);
    bool ok = n == kPage;
    for (size_t b = 0; ok && b < n; ++b) ok = static_cast<unsigned char>(buf[b]) == want;
    if (faulted_page) {
      v.page_k_untouched = ok;
    } else if (!ok) {
      ++v.lost;
      if (v.lost_sample.size() < 8) v.lost_sample.push_back(i);
    }
  }
  UEXT_TRY(fs->close());
  return v;
}

// ---------------------------------------------------------------- the demo

int run_mmap_enospc(const DemoArgs& args) {
  Options o;
  if (args.fault_handling == "userfaultfd") {
    o.fault_handling = FaultHandling::kUserfaultfd;
  } else if (args.fault_handling == "signal") {
    o.fault_handling = FaultHandling::kSignal;
  } else {
    o.fault_handling = FaultHandling::kAuto;
  }

  // A read-only look first: whether the image exists and what it is decides
  // how to open it (block-mapped files allocate in page_mkwrite).
  std::string fs_type;
  {
    ImageOptions ro;
    ro.image = args.image;
    auto probe = open_image(ro);
    if (!probe) return kExitFailure;
    VolumeInfo info = probe->info();
    auto has = [&](const char* f) { return std::find(info.features.begin(), info.features.end(), f) != info.features.end(); };
    fs_type = has("extent") ? "ext4" : has("has_journal") ? "ext3" : "ext2";
    o.delayed_allocation = !args.nodelalloc && has("extent");
  }
  std::unique_ptr<Filesystem> fs = open_image_rw(args.image, o);
  if (!fs) return kExitFailure;
  const uint32_t block_size = fs->info().block_size;
  fmt::print("image: {} ({}, {}-byte blocks); {}\n", args.image, fs_type, block_size,
             o.delayed_allocation ? "delayed allocation: page_mkwrite reserves blocks"
                                  : "no delayed allocation: page_mkwrite allocates blocks");

  for (const char* name : {kFileName, kFillerName}) {
    if (Status st = remove_leftover(*fs, name); !st) return fail_with(args.image, fmt::format("/{}", name), st.error());
  }
  const Owner me{static_cast<uint32_t>(::geteuid()), static_cast<uint32_t>(::getegid())};
  auto start = settled_available(*fs);
  if (!start) return fail_with(args.image, "statfs", start.error());
  fmt::print("available at start: {}\n", mib(*start));

  auto filler = fs->create(kRootIno, kFillerName, S_IFREG | 0644, me);
  if (!filler) return fail_with(args.image, fmt::format("/{}", kFillerName), filler.error());
  auto avail = fill_to_target(*fs, filler->ino, block_size);
  if (!avail) return fail_with(args.image, fmt::format("filling /{}", kFillerName), avail.error());
  auto filler_st = fs->stat(filler->ino);
  fmt::print("filler /{}: {}; available now: {} ({} blocks)\n", kFillerName,
             mib(filler_st ? filler_st->size : 0), mib(*avail), *avail / block_size);
  if (*avail == 0) {
    report({args.image, "no space is available at all: the demo needs about 1 MiB free"});
    return close_image(std::move(fs), args.image, kExitFailure);
  }

  // Far more than fits, so the stores must run out of space part-way.
  const uint64_t size = (4 * *avail + kMiB + kPage - 1) / kPage * kPage;
  const uint64_t pages = size / kPage;
  auto file = fs->create(kRootIno, kFileName, S_IFREG | 0644, me);
  if (!file) return fail_with(args.image, fmt::format("/{}", kFileName), file.error());
  const Ino ino = file->ino;
  if (Status st = fs->truncate(ino, size); !st) return fail_with(args.image, "truncate", st.error());
  fmt::print("file /{}: {} sparse ({} pages)\n", kFileName, mib(size), pages);

  auto mapped = fs->mmap(ino, 0, size, kProtRead | kProtWrite, kMapShared);
  if (!mapped) return fail_with(args.image, "mmap", mapped.error());
  std::unique_ptr<Mapping> map = std::move(mapped).value();
  fmt::print("mapped shared read-write at {}; fault handling: {}\n", static_cast<void*>(map->data()),
             handling_name(map->fault_handling()));
  std::fflush(stdout);

  const StoreOutcome out = store_pages(map->data(), pages);
  std::vector<std::string> problems;
  if (out.faulted) {
    const uintptr_t want = reinterpret_cast<uintptr_t>(map->data()) + out.page * kPage;
    fmt::print("SIGBUS at {:#x} (si_code {}) storing to page {}\n", out.addr, out.code, out.page);
    if (out.addr != want) {
      problems.push_back(fmt::format("si_addr {:#x} is not the start of page {} ({:#x})", out.addr, out.page, want));
    }
  } else {
    problems.push_back(fmt::format("no SIGBUS: all {} pages ({}) were stored with about {} available", pages,
                                   mib(size), mib(*avail)));
  }
  if (out.faulted && out.stored != out.page) {
    problems.push_back(fmt::format("the fault came in page {} after page {} was stored whole", out.page, out.stored));
  }

  if (Status st = map->sync(kSyncNow); !st) problems.push_back("msync: " + describe(st.error()));
  else fmt::print("msync: done\n");
  map.reset();
  if (auto after = fs->statfs(); after) {
    fmt::print("available after msync: {}\n", mib(after->available_blocks * after->block_size));
  }
  if (Status st = fs->close(); !st) return fail_with(args.image, "close", st.error());
  fs.reset();

  auto v = verify(args.image, out.faulted ? out.page : out.stored, out.faulted);
  if (!v) return fail_with(args.image, "reopened read-only", v.error());
  fmt::print("reopened read-only: checked pages 0-{} of /{}\n", out.stored == 0 ? 0 : out.stored - 1, kFileName);
  if (v->size != size) problems.push_back(fmt::format("the file's size is {}, not {}", v->size, size));
  if (v->lost > 0) {
    std::string sample;
    for (uint64_t p : v->lost_sample) sample += fmt::format(" {}", p);
    problems.push_back(fmt::format("{} stored pages do not hold their pattern (first:{})", v->lost, sample));
  }
  if (!v->page_k_untouched) problems.push_back(fmt::format("page {}, whose store was refused, is not zeros", out.page));

  if (out.faulted) {
    fmt::print("stored {} pages; SIGBUS at page {}; lost {} pages\n", out.stored, out.page, v->lost);
  } else {
    fmt::print("stored {} pages; no SIGBUS; lost {} pages\n", out.stored, v->lost);
  }
  std::fflush(stdout);
  for (const auto& p : problems) report({args.image, "mmap-enospc", p});
  return problems.empty() ? kExitOk : kExitFailure;
}

}  // namespace

Command add_demo_command(CLI::App& parent) {
  auto args = std::make_shared<DemoArgs>();
  auto* demo = parent.add_subcommand("demo", "Scenarios that show a capability end to end on an image");
  demo->require_subcommand(1);
  auto* sub = demo->add_subcommand(
      "mmap-enospc",
      "Fill IMG until about 1 MiB is available, map a much larger sparse file shared and store into it page "
      "after page: the first page that cannot get a block must raise SIGBUS, and every page before it must "
      "be on the image after msync and a fresh open");
  sub->add_option("IMG", args->image, "An ext2, ext3 or ext4 image (it is changed: the filler and the file stay)")
      ->required();
  sub->add_flag("--nodelalloc", args->nodelalloc,
                "Open without delayed allocation, so page_mkwrite allocates blocks (always so on ext2/ext3)");
  sub->add_option("--fault-handling", args->fault_handling, "How uext catches the mapping's faults")
      ->check(CLI::IsMember({"auto", "userfaultfd", "signal"}))
      ->default_str("auto");
  sub->footer(
      "The last line reads 'stored N pages; SIGBUS at page K; lost L pages'. Exit status 0 when the SIGBUS came\n"
      "at page K == N with si_addr at that page, no stored page was lost (L == 0) and page K stayed zeros;\n"
      "1 otherwise, with a message saying what went wrong.");
  return {demo, [args, sub] {
            if (sub->parsed()) return run_mmap_enospc(*args);
            return kExitUsage;
          }};
}

}  // namespace uext::cli
