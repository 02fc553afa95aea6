// Mappings from the filesystem's side (vm::Pager): bringing pages in on a
// fault, and page_mkwrite -- the first store to a clean page reserves its
// block (delayed allocation) or allocates it in a journal handle taken
// before the page lock (ext2, ext3, nodelalloc), and only then may the
// store go on. A page that cannot get its block is refused: the faulting
// thread gets SIGBUS and the page stays as it was.
//
// Lock order (docs/DESIGN.md): inode lock, journal handle, page lock.
#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "fs/block_map.h"
#include "fs/filesystem_impl.h"
#include "fs/map_writer.h"
#include "vm/mapper.h"
#include "vm/registry.h"

namespace uext::fs {

using cache::CachedFile;
using cache::kPageSize;

namespace {

// Pages a read fault brings in with the faulting one, as the kernel's
// fault-around does (aligned windows, within the mapping and the file).
constexpr uint64_t kFaultAround = 16;
// User buffers that lie in a uext mapping pass through a buffer of this size.
constexpr size_t kBounceBytes = 1 << 20;

uint64_t pages_for(uint64_t bytes) { return (bytes + kPageSize - 1) / kPageSize; }

}  // namespace

Result<std::shared_ptr<vm::Mapper>> FilesystemImpl::mapper() const {
  std::lock_guard lock(mapper_mu_);
  if (!mapper_) {
    UEXT_ASSIGN_OR_RETURN(mapper_, vm::Mapper::create(const_cast<FilesystemImpl&>(*this),
                                                      vol_->options().fault_handling));
  }
  return mapper_;
}

Result<std::unique_ptr<Mapping>> FilesystemImpl::map_file(Ino ino, uint64_t offset, size_t length, int prot,
                                                          int flags) {
  if (length == 0) return Error(EINVAL, "mmap: length 0");
  if (offset % kPageSize != 0) return Error(EINVAL, fmt::format("mmap: offset {} is not a multiple of 4096", offset));
  if (prot & ~(kProtRead | kProtWrite)) return Error(EINVAL, fmt::format("mmap: prot {:#x}", prot));
  if ((flags & (kMapShared | kMapPrivate)) == 0 || (flags & kMapShared && flags & kMapPrivate) ||
      (flags & ~(kMapShared | kMapPrivate))) {
    return Error(EINVAL, fmt::format("mmap: flags {:#x} (one of shared or private)", flags));
  }
  if ((flags & kMapShared) && (prot & kProtWrite) && !vol_->writable()) {
    return Error(EACCES, "mmap: a shared writable mapping of a read-only image");
  }
  if (closed_) return Error(EIO, "mmap: the filesystem is closed");
  {
    auto lock = itable_.lock_shared(ino);
    UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
    if (!S_ISREG(rec.inode.i_mode)) return Error(ENODEV, fmt::format("mmap: inode {} is not a regular file", ino));
    if (offset + length < offset || offset + length > max_file_bytes(*vol_, rec)) {
      return Error(EOVERFLOW, fmt::format("mmap: {} bytes at {} pass the largest file", length, offset));
    }
  }
  UEXT_ASSIGN_OR_RETURN(auto m, mapper());
  retain(ino);
  vm::MapRequest request;
  request.ino = ino;
  request.file = cache_->get(ino, true);
  request.offset = offset;
  request.length = length;
  request.prot = prot;
  request.flags = flags;
  request.sync = [this, ino](bool) { return fsync(ino, true); };
  request.unmapped = [this, ino] { (void)release(ino, 1); };
  auto mapping = m->map(std::move(request));
  if (!mapping.ok()) {
    (void)release(ino, 1);
    return std::move(mapping).error();
  }
  return mapping;
}

// Puts pages [first, end) in the cache as the disk has them (holes and
// the part past the disk's end of file read as zeros), each run of absent
// pages with one read. Page lock held.
Status FilesystemImpl::fill_pages(const InodeRecord& rec, CachedFile& file, uint64_t first, uint64_t end) {
  UEXT_TRY(file.ensure(end));
  uint64_t p = first;
  while (p < end) {
    if (file.present(p)) {
      ++p;
      continue;
    }
    uint64_t q = p;
    while (q < end && !file.present(q)) file.add(q++);
    const uint64_t start = p * kPageSize;
    if (start < rec.inode.i_size) {
      auto n = read_data(rec, start, std::span<std::byte>(file.data(p), (q - p) * kPageSize));
      if (!n.ok()) {
        file.drop(p, q);
        return std::move(n).error();
      }
    }
    p = q;
  }
  return {};
}

void FilesystemImpl::note_store(CachedFile& file) {
  const disk::Timestamp t = now();
  file.times_pending = true;
  file.mtime_sec = t.sec;
  file.mtime_nsec = t.nsec;
  file.last_used_ms = cache::PageCache::now_ms();
}

Status FilesystemImpl::fault(uint32_t ino, uint64_t index, uint64_t lo, uint64_t hi, bool store,
                             const vm::MapPages& map) {
  auto file = cache_->get(ino, true);
  Status s = store ? page_mkwrite(ino, *file, index, map) : fault_in(ino, *file, index, lo, hi, map);
  if (s.ok() || s.error().code() != ENOSPC) return s;
  // As write() does before giving up: writing back turns worst-case tree
  // reservations into exact ones and commits freed blocks; then once more.
  UEXT_TRY(writeback_all());
  UEXT_TRY(vol_->sync());
  return page_mkwrite(ino, *file, index, map);
}

Status FilesystemImpl::fault_in(uint32_t ino, CachedFile& file, uint64_t index, uint64_t lo, uint64_t hi,
                                const vm::MapPages& map) {
  auto lock = itable_.lock_shared(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  std::lock_guard page_lock(file.mu);
  const uint64_t size = file.size_known ? file.size : rec.inode.i_size;
  const uint64_t eof_pages = pages_for(size);
  if (index >= eof_pages) {
    return Error(EFAULT, fmt::format("inode {}: page {} is past the end of the file ({} bytes)", ino, index, size));
  }
  UEXT_TRY(fill_pages(rec, file, index, index + 1));
  uint64_t first = std::max(lo, index / kFaultAround * kFaultAround);
  uint64_t end = std::min({hi, first + kFaultAround, eof_pages});
  // Neighbours that cannot be read are left for their own faults.
  if (!fill_pages(rec, file, first, end).ok()) {
    first = index;
    end = index + 1;
  }
  file.last_used_ms = cache::PageCache::now_ms();
  return map(first, end, false);
}

Status FilesystemImpl::page_mkwrite(uint32_t ino, CachedFile& file, uint64_t index, const vm::MapPages& map) {
  const uint64_t bs = vol_->block_size();
  const uint64_t bpp = kPageSize / bs;
  bool allocate = false;
  {
    auto lock = itable_.lock_shared(ino);
    UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
    std::lock_guard page_lock(file.mu);
    const uint64_t size = file.size_known ? file.size : rec.inode.i_size;
    if (index >= pages_for(size)) {
      return Error(EFAULT, fmt::format("inode {}: page {} is past the end of the file ({} bytes)", ino, index, size));
    }
    UEXT_TRY(fill_pages(rec, file, index, index + 1));
    cache::Page& page = *file.find(index);
    if (!(page.flags & cache::kDirty)) {
      // Blocks already there (written or unwritten) need nothing more.
      // Only blocks inside the file count: a block wholly past the end
      // is never written back, so it must not be allocated either.
      const uint64_t first_block = index * bpp;
      const uint64_t end_block = std::min(max_logical_blocks(*vol_, rec), (size + bs - 1) / bs);
      const uint64_t count = first_block < end_block ? std::min(bpp, end_block - first_block) : 0;
      UEXT_ASSIGN_OR_RETURN(auto runs, map_blocks(*vol_, rec, first_block, count));
      const bool hole = std::any_of(runs.begin(), runs.end(), [](const BlockRun& r) { return r.physical == 0; });
      if (hole && !uses_delalloc(rec)) allocate = true;
      if (hole && !allocate) UEXT_TRY(reserve_delayed(rec, file, 1));
      if (!allocate) file.mark_dirty(index, page, hole);
    }
    if (!allocate) {
      note_store(file);
      return map(index, index + 1, true);
    }
  }
  return allocate_for_store(ino, file, index, map);
}

// page_mkwrite without delayed allocation: the page's blocks are allocated
// now, in a handle taken before the page lock, and written with the page's
// present bytes so that a commit never points the file at stale data.
Status FilesystemImpl::allocate_for_store(uint32_t ino, CachedFile& file, uint64_t index, const vm::MapPages& map) {
  const uint64_t bs = vol_->block_size();
  const uint64_t bpp = kPageSize / bs;
  auto lock = itable_.lock(ino);
  UEXT_ASSIGN_OR_RETURN(InodeRecord rec, load_inode(ino));
  auto file_size = [&] {
    std::lock_guard page_lock(file.mu);
    return file.size_known ? file.size : rec.inode.i_size;
  };
  const uint64_t size = file_size();
  const uint64_t first_block = index * bpp;
  const uint64_t end_block = std::min(max_logical_blocks(*vol_, rec), (size + bs - 1) / bs);
  if (first_block >= end_block) {
    return Error(EFAULT, fmt::format("inode {}: page {} is past the end of the file ({} bytes)", ino, index, size));
  }
  // Blocks wholly past the end of the file stay unallocated (e2fsck
  // would call the size wrong), as writeback leaves them.
  const uint64_t count = std::min(bpp, end_block - first_block);
  UEXT_ASSIGN_OR_RETURN(auto before, map_blocks(*vol_, rec, first_block, count));
  uint64_t holes = 0;
  for (const auto& r : before) {
    if (r.physical == 0) holes += r.length;
  }
  alloc::Reservation space;
  if (holes) {
    UEXT_ASSIGN_OR_RETURN(space, reserve(holes + map_overhead(holes)));
  }
  alloc::ReservationScope scope(&space);
  const uint32_t k = static_cast<uint32_t>(bpp);
  UEXT_ASSIGN_OR_RETURN(journal::Handle h, start(map_credits(*vol_, rec, k) + 2));
  return in_handle(h, "page_mkwrite", ino, [&]() -> Status {
    std::lock_guard page_lock(file.mu);
    // The inode lock keeps the size as it was read above.
    UEXT_TRY(fill_pages(rec, file, index, index + 1));
    MapOptions options;
    options.max_new_extents = k;
    UEXT_ASSIGN_OR_RETURN(auto runs, map_or_allocate(*vol_, h, rec, first_block, count, *blocks_, options));
    for (const auto& r : runs) {
      if (r.physical == 0) return Error(EIO, fmt::format("inode {}: block {} left unmapped", ino, r.logical));
      if (r.unwritten) continue;
      const std::byte* src = file.data(index) + (r.logical - first_block) * bs;
      Status io = vol_->device().write(r.physical * bs, std::span<const std::byte>(src, r.length * bs));
      if (!io.ok()) return data_write_failed(std::move(io));
    }
    file.mark_dirty(index, *file.find(index), false);
    note_store(file);
    return map(index, index + 1, true);
  }, Volume::Changes::kEachStepWhole);
}

Result<size_t> FilesystemImpl::bounce_write(Ino ino, uint64_t offset, std::span<const std::byte> buf) {
  // The copy faults (and the fault is served) before any lock is taken.
  std::vector<std::byte> bounce(std::min(buf.size(), kBounceBytes));
  size_t done = 0;
  while (done < buf.size()) {
    const size_t n = std::min(bounce.size(), buf.size() - done);
    std::memcpy(bounce.data(), buf.data() + done, n);
    auto wrote = write(ino, offset + done, std::span<const std::byte>(bounce.data(), n));
    if (!wrote.ok()) {
      if (done > 0) return done;
      return std::move(wrote).error();
    }
    done += *wrote;
    if (*wrote < n) break;
  }
  return done;
}

Result<size_t> FilesystemImpl::bounce_read(Ino ino, uint64_t offset, std::span<std::byte> buf,
                                           ReadOptions& options) {
  std::vector<std::byte> bounce(std::min(buf.size(), kBounceBytes));
  size_t done = 0;
  bool atime_due = false;
  while (done < buf.size()) {
    const size_t n = std::min(bounce.size(), buf.size() - done);
    auto got = read(ino, offset + done, std::span<std::byte>(bounce.data(), n), options);
    atime_due = atime_due || options.atime_due;
    options.atime_due = atime_due;
    if (!got.ok()) {
      if (done > 0) return done;
      return std::move(got).error();
    }
    std::memcpy(buf.data() + done, bounce.data(), *got);
    done += *got;
    if (*got < n) break;
  }
  return done;
}

}  // namespace uext::fs

namespace uext {

Result<std::unique_ptr<Mapping>> Filesystem::mmap(Ino ino, uint64_t offset, size_t length, int prot, int flags) {
  return static_cast<fs::FilesystemImpl*>(this)->map_file(ino, offset, length, prot, flags);
}

FaultHandling Filesystem::fault_handling() const {
  auto m = static_cast<const fs::FilesystemImpl*>(this)->mapper();
  return m.ok() ? (*m)->mode() : FaultHandling::kSignal;
}

}  // namespace uext
