// uext mkfs: plans a new filesystem the way mke2fs 1.47 and libext2fs do
// (ext2fs_initialize, ext2fs_allocate_tables, ext2fs_mkdir,
// ext2fs_create_resize_inode, ext2fs_add_journal_inode3), in memory, then
// writes it with large sequential writes.
//
// Everything that decides where a block goes mirrors libext2fs's allocator
// (first free block at or after a goal, flexbg_offset's packing, the
// journal's midpoint goal), because an image is only "like mke2fs's" if the
// same blocks are used.
#include "uext/mkfs.h"

#include <sys/random.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <type_traits>

#include "disk/bytes.h"
#include "disk/checksum.h"
#include "disk/dirent.h"
#include "disk/extent.h"
#include "disk/features.h"
#include "disk/group_desc.h"
#include "disk/inode.h"
#include "disk/jbd2.h"
#include "disk/quota.h"
#include "disk/superblock.h"

namespace uext {
namespace {

using disk::Bytes;
using disk::MutableBytes;
namespace compat = disk::compat;
namespace ro_compat = disk::ro_compat;
namespace incompat = disk::incompat;

Error invalid(std::string message) { return Error(EINVAL, std::move(message)); }

// ---------------------------------------------------------------------------
// Feature names, as mke2fs -O accepts them.

struct FeatureName {
  const char* name;
  int word;  // 0 compat, 1 ro_compat, 2 incompat
  uint32_t bit;
  bool supported;  // uext mkfs can create it
};

constexpr FeatureName kFeatureNames[] = {
    {"dir_prealloc", 0, compat::kDirPrealloc, false},
    {"imagic_inodes", 0, compat::kImagicInodes, false},
    {"has_journal", 0, compat::kHasJournal, true},
    {"ext_attr", 0, compat::kExtAttr, true},
    {"resize_inode", 0, compat::kResizeInode, true},
    {"dir_index", 0, compat::kDirIndex, true},
    {"sparse_super2", 0, compat::kSparseSuper2, false},
    {"fast_commit", 0, compat::kFastCommit, false},
    {"stable_inodes", 0, compat::kStableInodes, false},
    {"orphan_file", 0, compat::kOrphanFile, false},
    {"sparse_super", 1, ro_compat::kSparseSuper, true},
    {"large_file", 1, ro_compat::kLargeFile, true},
    {"huge_file", 1, ro_compat::kHugeFile, true},
    {"uninit_bg", 1, ro_compat::kGdtCsum, true},
    {"uninit_groups", 1, ro_compat::kGdtCsum, true},
    {"gdt_csum", 1, ro_compat::kGdtCsum, true},
    {"dir_nlink", 1, ro_compat::kDirNlink, true},
    {"extra_isize", 1, ro_compat::kExtraIsize, true},
    {"quota", 1, ro_compat::kQuota, true},
    {"bigalloc", 1, ro_compat::kBigalloc, false},
    {"metadata_csum", 1, ro_compat::kMetadataCsum, true},
    {"read-only", 1, ro_compat::kReadonly, false},
    {"project", 1, ro_compat::kProject, true},
    {"verity", 1, ro_compat::kVerity, false},
    {"filetype", 2, incompat::kFiletype, true},
    {"journal_dev", 2, incompat::kJournalDev, false},
    {"meta_bg", 2, incompat::kMetaBg, true},
    {"extent", 2, incompat::kExtents, true},
    {"extents", 2, incompat::kExtents, true},
    {"64bit", 2, incompat::k64bit, true},
    {"mmp", 2, incompat::kMmp, false},
    {"flex_bg", 2, incompat::kFlexBg, true},
    {"ea_inode", 2, incompat::kEaInode, false},
    {"metadata_csum_seed", 2, incompat::kCsumSeed, true},
    {"large_dir", 2, incompat::kLargedir, true},
    {"inline_data", 2, incompat::kInlineData, false},
    {"encrypt", 2, incompat::kEncrypt, false},
    {"casefold", 2, incompat::kCasefold, false},
};

// Applies "a,^b,c" (commas or spaces) to the three feature words.
Status edit_features(const std::string& edits, uint32_t words[3]) {
  size_t pos = 0;
  while (pos <= edits.size()) {
    size_t end = edits.find_first_of(", \t", pos);
    if (end == std::string::npos) end = edits.size();
    std::string item = edits.substr(pos, end - pos);
    pos = end + 1;
    if (item.empty()) continue;
    bool clear = false;
    if (item[0] == '^' || item[0] == '-') {
      clear = true;
      item.erase(0, 1);
    } else if (item[0] == '+') {
      item.erase(0, 1);
    }
    std::string lower = item;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "none" || lower == "clear") {
      words[0] = words[1] = words[2] = 0;
      continue;
    }
    const FeatureName* found = nullptr;
    for (const auto& f : kFeatureNames) {
      if (lower == f.name) found = &f;
    }
    if (!found) return invalid("invalid filesystem option set: unknown feature '" + item + "'");
    if (!clear && !found->supported) {
      return invalid("feature '" + item + "' is not supported by uext mkfs");
    }
    if (clear) {
      words[found->word] &= ~found->bit;
    } else {
      words[found->word] |= found->bit;
    }
  }
  return {};
}

// ---------------------------------------------------------------------------
// A bitmap over the whole filesystem (blocks or inodes), with the searches
// libext2fs's allocator uses.

class Bitmap {
 public:
  explicit Bitmap(uint64_t bits = 0) : bits_(bits), words_((bits + 63) / 64, 0) {}
  uint64_t size() const { return bits_; }
  bool test(uint64_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
  void set(uint64_t i) { words_[i >> 6] |= uint64_t{1} << (i & 63); }
  void set_range(uint64_t start, uint64_t n) {
    for (uint64_t i = start; i < start + n; i++) set(i);
  }
  // First clear bit in [start, end], if any.
  std::optional<uint64_t> first_zero(uint64_t start, uint64_t end) const {
    if (start > end || start >= bits_) return std::nullopt;
    end = std::min(end, bits_ - 1);
    uint64_t i = start;
    while (i <= end) {
      uint64_t w = ~words_[i >> 6] >> (i & 63);
      if (w) {
        uint64_t hit = i + static_cast<uint64_t>(std::countr_zero(w));
        return hit <= end ? std::optional<uint64_t>(hit) : std::nullopt;
      }
      i = (i | 63) + 1;
    }
    return std::nullopt;
  }
  std::optional<uint64_t> first_set(uint64_t start, uint64_t end) const {
    if (start > end || start >= bits_) return std::nullopt;
    end = std::min(end, bits_ - 1);
    uint64_t i = start;
    while (i <= end) {
      uint64_t w = words_[i >> 6] >> (i & 63);
      if (w) {
        uint64_t hit = i + static_cast<uint64_t>(std::countr_zero(w));
        return hit <= end ? std::optional<uint64_t>(hit) : std::nullopt;
      }
      i = (i | 63) + 1;
    }
    return std::nullopt;
  }
  bool range_clear(uint64_t start, uint64_t n) const {
    return n == 0 || !first_set(start, start + n - 1).has_value();
  }
  uint64_t count_set(uint64_t start, uint64_t end) const {
    uint64_t n = 0;
    for (uint64_t i = start; i <= end;) {
      if ((i & 63) == 0 && i + 63 <= end) {
        n += static_cast<uint64_t>(std::popcount(words_[i >> 6]));
        i += 64;
      } else {
        n += test(i);
        i++;
      }
    }
    return n;
  }

 private:
  uint64_t bits_;
  std::vector<uint64_t> words_;
};

uint32_t ceil_div(uint64_t a, uint64_t b) { return static_cast<uint32_t>((a + b - 1) / b); }

bool test_root(uint32_t a, uint32_t b) {
  while (true) {
    if (a < b) return false;
    if (a == b) return true;
    if (a % b) return false;
    a /= b;
  }
}

struct GroupState {
  uint64_t block_bitmap = 0, inode_bitmap = 0, inode_table = 0;
  uint32_t used_dirs = 0;
  uint16_t flags = 0;
  uint32_t itable_unused = 0;
  uint32_t block_bitmap_csum = 0, inode_bitmap_csum = 0;
};

// Everything mkfs decides, and the bytes it writes.
struct Plan {
  MkfsOptions opt;
  uint64_t device_bytes = 0;
  int64_t now = 0;

  disk::Superblock sb;
  uint32_t bs = 0;
  uint64_t blocks = 0;
  uint32_t groups = 0;
  uint32_t desc_blocks = 0;
  uint32_t desc_per_block = 0;
  uint32_t itb_per_group = 0;  // inode table blocks per group
  bool csum = false;           // gdt_csum or metadata_csum
  std::vector<GroupState> g;
  Bitmap bmap;
  Bitmap imap;  // bit i = inode i+1
  uint32_t journal_blocks = 0;
  uint64_t journal_first = 0;
  uint64_t overhead = 0;
  uint64_t root_block = 0;
  std::vector<uint64_t> lpf_blocks;

  // Inode slots written (inode number -> s_inode_size bytes).
  std::map<uint32_t, std::vector<std::byte>> inodes;
  // Metadata blocks written (block -> block_size bytes).
  std::map<uint64_t, std::vector<std::byte>> blocks_out;
  // Block ranges zeroed before the metadata is written.
  std::vector<std::pair<uint64_t, uint64_t>> zero_ranges;  // start, count

  uint64_t first_block_of(uint32_t grp) const {
    return sb.s_first_data_block + static_cast<uint64_t>(grp) * sb.s_blocks_per_group;
  }
  uint64_t last_block_of(uint32_t grp) const {
    return grp == groups - 1 ? blocks - 1 : first_block_of(grp) + sb.s_blocks_per_group - 1;
  }
  uint32_t group_of(uint64_t blk) const {
    return static_cast<uint32_t>((blk - sb.s_first_data_block) / sb.s_blocks_per_group);
  }
  bool has_feature(int word, uint32_t bit) const {
    return ((word == 0 ? sb.s_feature_compat : word == 1 ? sb.s_feature_ro_compat : sb.s_feature_incompat) &
            bit) != 0;
  }

  bool group_has_super(uint32_t grp) const {
    if (grp == 0) return true;
    if (grp <= 1 || !sb.has_ro_compat(ro_compat::kSparseSuper)) return true;
    if (!(grp & 1)) return false;
    return test_root(grp, 3) || test_root(grp, 5) || test_root(grp, 7);
  }

  // ext2fs_super_and_bgd_loc2.
  struct SuperLoc {
    uint64_t super_blk = 0, old_desc_blk = 0, new_desc_blk = 0;
    uint32_t used = 0;
  };
  SuperLoc super_loc(uint32_t grp) const {
    SuperLoc r;
    uint64_t group_block = first_block_of(grp);
    if (group_block == 0 && bs == 1024) group_block = 1;
    const bool meta_bg = sb.has_incompat(incompat::kMetaBg);
    uint64_t old_desc_blocks = meta_bg ? sb.s_first_meta_bg : desc_blocks + sb.s_reserved_gdt_blocks;
    bool has_super = group_has_super(grp);
    if (has_super) {
      r.super_blk = group_block;
      r.used++;
    }
    uint32_t meta_group = grp / desc_per_block;
    if (!meta_bg || meta_group < sb.s_first_meta_bg) {
      if (has_super) {
        r.old_desc_blk = group_block + 1;
        r.used += static_cast<uint32_t>(old_desc_blocks);
      }
    } else {
      uint32_t r_in = grp % desc_per_block;
      if (r_in == 0 || r_in == 1 || r_in == desc_per_block - 1) {
        r.new_desc_blk = group_block + (has_super ? 1 : 0);
        r.used++;
      }
    }
    return r;
  }

  void clear_block_uninit(uint32_t grp) {
    if (grp < groups) g[grp].flags &= static_cast<uint16_t>(~disk::kBgBlockUninit);
  }
  void mark_block(uint64_t blk) {
    bmap.set(blk);
    clear_block_uninit(group_of(blk));
  }
  void mark_range(uint64_t blk, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) mark_block(blk + i);
  }

  // ext2fs_get_free_blocks2: `num` free blocks in a row from `start`,
  // searching up to (not including) `finish`, wrapping once.
  std::optional<uint64_t> get_free_blocks(uint64_t start, uint64_t finish, uint64_t num) const {
    uint64_t b = start;
    if (!b) b = sb.s_first_data_block;
    if (!finish) finish = start;
    if (!num) num = 1;
    do {
      if (b + num - 1 >= blocks) {
        if (finish > start) return std::nullopt;
        b = sb.s_first_data_block;
      }
      if (bmap.range_clear(b, num)) return b;
      b++;
    } while (b != finish);
    return std::nullopt;
  }

  // ext2fs_new_block2: the first free block at or after goal, wrapping.
  std::optional<uint64_t> new_block(uint64_t goal) {
    if (!goal || goal >= blocks) goal = sb.s_first_data_block;
    auto b = bmap.first_zero(goal, blocks - 1);
    if (!b && goal != sb.s_first_data_block) b = bmap.first_zero(sb.s_first_data_block, goal - 1);
    if (b) clear_block_uninit(group_of(*b));
    return b;
  }
  // ext2fs_alloc_block: new_block and mark it used.
  Result<uint64_t> alloc_block(uint64_t goal) {
    auto b = new_block(goal);
    if (!b) return Error(ENOSPC, "could not allocate a block: the filesystem is full");
    mark_block(*b);
    return *b;
  }

  uint32_t group_free_blocks(uint32_t grp) const {
    uint64_t first = first_block_of(grp), last = last_block_of(grp);
    return static_cast<uint32_t>((last - first + 1) - bmap.count_set(first, last));
  }

  // ext2fs_inode_alloc_stats2(+1).
  void use_inode(uint32_t ino, bool dir) {
    uint32_t grp = (ino - 1) / sb.s_inodes_per_group;
    imap.set(ino - 1);
    if (dir) g[grp].used_dirs++;
    g[grp].flags &= static_cast<uint16_t>(~disk::kBgInodeUninit);
    if (csum) {
      uint32_t ipg = sb.s_inodes_per_group;
      uint32_t first_unused = ipg - g[grp].itable_unused + grp * ipg + 1;
      if (ino >= first_unused) g[grp].itable_unused = grp * ipg + ipg - ino;
    }
  }

  std::vector<std::byte>& block_buffer(uint64_t blk) {
    auto& b = blocks_out[blk];
    if (b.empty()) b.assign(bs, std::byte{0});
    return b;
  }
  void put_inode(uint32_t ino, const disk::Inode& inode) {
    auto& slot = inodes[ino];
    slot.assign(sb.s_inode_size, std::byte{0});
    disk::encode_inode(sb, ino, inode, slot);
  }
  disk::Timestamp ts() const { return {now, 0}; }
};

// ---------------------------------------------------------------------------
// Parameters (mke2fs's PRS) and geometry (ext2fs_initialize).

struct Params {
  uint32_t block_size = 0;
  uint64_t blocks_count = 0;  // in block_size units
  uint32_t inode_ratio = 0;
  uint32_t inode_size = 0;
  uint64_t inodes_count = 0;
  uint64_t r_blocks = 0;
  double reserved_ratio = 5.0;
  uint32_t features[3] = {0, 0, 0};
};

Result<Params> resolve_params(uint64_t device_bytes, const MkfsOptions& opt) {
  Params p;
  const uint64_t size = opt.size_bytes ? opt.size_bytes : device_bytes;
  if (opt.size_bytes && opt.size_bytes > device_bytes) {
    return invalid("filesystem size " + std::to_string(opt.size_bytes) + " bytes is larger than the device (" +
                   std::to_string(device_bytes) + " bytes)");
  }
  if (opt.block_size) {
    if (opt.block_size < 1024 || opt.block_size > 65536 || !std::has_single_bit(opt.block_size)) {
      return invalid("invalid block size " + std::to_string(opt.block_size) +
                     ": must be a power of two from 1024 to 65536");
    }
  }
  if (!(opt.reserved_percent >= 0.0 && opt.reserved_percent <= 50.0)) {
    return invalid("invalid reserved blocks percent " + std::to_string(opt.reserved_percent) +
                   ": must be between 0 and 50");
  }
  if (opt.label.size() > 16) return invalid("label '" + opt.label + "' is longer than 16 bytes");

  // Size class from the size in 1 KiB units (or the requested block size).
  const uint32_t unit = opt.block_size ? opt.block_size : 1024;
  uint64_t count = size / unit;
  if (!opt.size_bytes && 4096 > unit) count &= ~static_cast<uint64_t>(4096 / unit - 1);  // page multiple
  const uint64_t meg = (1024 * 1024) / unit;
  std::string size_type;
  uint32_t ratio = 16384, class_bs = 4096;
  if (count < 3 * meg) {
    size_type = "floppy", class_bs = 1024, ratio = 8192;
  } else if (count < 512 * meg) {
    size_type = "small", class_bs = 1024, ratio = 4096;
  } else if (count < 4ull * 1024 * 1024 * meg) {
    size_type = "default";
  } else if (count < 16ull * 1024 * 1024 * meg) {
    size_type = "big", ratio = 32768;
  } else {
    size_type = "huge", ratio = 65536;
  }
  // -T names the type in place of the size class (Debian's mke2fs.conf;
  // "-1", largefile's block size, is the page size).
  if (!opt.usage_type.empty()) {
    struct Usage {
      const char* name;
      uint32_t block_size, ratio;
    };
    static constexpr Usage kUsages[] = {{"small", 1024, 4096},  {"floppy", 1024, 8192},       {"big", 4096, 32768},
                                        {"huge", 4096, 65536},  {"news", 4096, 4096},         {"largefile", 4096, 1048576},
                                        {"largefile4", 4096, 4194304}, {"default", 4096, 16384}};
    const Usage* u = nullptr;
    for (const auto& k : kUsages) {
      if (opt.usage_type == k.name) u = &k;
    }
    if (!u) {
      return invalid("unknown usage type '" + opt.usage_type +
                     "' (small, floppy, big, huge, news, largefile, largefile4 or default)");
    }
    size_type = u->name, class_bs = u->block_size, ratio = u->ratio;
  }
  if (opt.errors_behavior < 1 || opt.errors_behavior > 3) {
    return invalid("invalid errors behaviour " + std::to_string(opt.errors_behavior) + " (1, 2 or 3)");
  }

  // Features: base, then the type's, then the user's edits.
  p.features[0] = compat::kExtAttr | compat::kResizeInode | compat::kDirIndex;
  p.features[1] = ro_compat::kSparseSuper | ro_compat::kLargeFile;
  p.features[2] = incompat::kFiletype;
  if (opt.type == FsType::kExt3 || opt.type == FsType::kExt4) p.features[0] |= compat::kHasJournal;
  if (opt.type == FsType::kExt4) {
    p.features[1] |= ro_compat::kHugeFile | ro_compat::kMetadataCsum | ro_compat::kDirNlink | ro_compat::kExtraIsize;
    p.features[2] |= incompat::kExtents | incompat::kFlexBg | incompat::k64bit;
  }
  UEXT_TRY(edit_features(opt.features, p.features));
  if (opt.journal_size_mib) p.features[0] |= compat::kHasJournal;
  if (opt.quota_types & ~(kQuotaUser | kQuotaGroup | kQuotaProject)) {
    return invalid("invalid quota types " + std::to_string(opt.quota_types));
  }
  if (opt.quota_types & kQuotaProject) p.features[1] |= ro_compat::kProject;

  p.block_size = opt.block_size ? opt.block_size : class_bs;
  if (!opt.block_size) count /= p.block_size / 1024;
  p.blocks_count = count;
  if (count == 0) return invalid("the device is too small for a filesystem");

  const bool is64 = p.features[2] & incompat::k64bit;
  if (count > 0xFFFFFFFFull && is64) p.features[0] &= ~compat::kResizeInode;
  if (count > 0xFFFFFFFFull && !is64) {
    return invalid("size of device (" + std::to_string(count) + " blocks) too big to be expressed in 32 bits using a blocksize of " +
                   std::to_string(p.block_size) + " (enable 64bit)");
  }
  if (is64 && !(p.features[2] & incompat::kExtents)) {
    return invalid("extents must be enabled for a 64-bit filesystem: pass -O extents or -O ^64bit");
  }
  if ((p.features[1] & ro_compat::kMetadataCsum) && (p.features[1] & ro_compat::kGdtCsum)) {
    p.features[1] &= ~ro_compat::kGdtCsum;
  }
  if ((p.features[2] & incompat::kMetaBg) && (p.features[0] & compat::kResizeInode)) {
    return invalid("the resize_inode and meta_bg features are not compatible: add ^resize_inode");
  }
  if ((p.features[0] & compat::kResizeInode) && !(p.features[1] & ro_compat::kSparseSuper)) {
    return invalid("reserved online resize blocks (resize_inode) need sparse_super");
  }
  if ((p.features[2] & incompat::kCsumSeed) && !(p.features[1] & ro_compat::kMetadataCsum)) {
    return invalid("the metadata_csum_seed feature requires the metadata_csum feature");
  }

  p.inode_ratio = opt.bytes_per_inode;
  if (p.inode_ratio) {
    if (p.inode_ratio < 1024 || p.inode_ratio > 65536u * 1024) {
      return invalid("invalid inode ratio " + std::to_string(p.inode_ratio) + " (min 1024/max 67108864)");
    }
  } else {
    p.inode_ratio = std::max(ratio, p.block_size);
  }
  p.inode_size = opt.inode_size ? opt.inode_size : 256;
  if (p.inode_size < 128 || p.inode_size > p.block_size || !std::has_single_bit(p.inode_size)) {
    return invalid("invalid inode size " + std::to_string(p.inode_size) + " (min 128/max " +
                   std::to_string(p.block_size) + ", a power of two)");
  }
  // The project id lives in the inode's extra fields.
  if ((p.features[1] & ro_compat::kProject) && p.inode_size == 128) {
    return invalid("128-byte inodes are too small for project quota: use -I 256 or leave out the project feature");
  }
  if (opt.inode_count) {
    p.inodes_count = opt.inode_count;
  } else {
    uint64_t n = p.blocks_count * p.block_size / p.inode_ratio;
    if (n > 0xFFFFFFFFull) {
      if (!is64) return invalid("too many inodes (" + std::to_string(n) + "), raise the inode ratio");
      n = 0xFFFFFFFFull;
    }
    p.inodes_count = n;
  }
  if (p.inodes_count * p.inode_size >= p.blocks_count * p.block_size) {
    return invalid("inode_size (" + std::to_string(p.inode_size) + ") * inodes_count (" +
                   std::to_string(p.inodes_count) + ") too big for a filesystem with " +
                   std::to_string(p.blocks_count) + " blocks; raise the inode ratio or lower the inode count");
  }
  p.reserved_ratio = opt.reserved_percent;
  p.r_blocks = static_cast<uint64_t>(p.reserved_ratio * static_cast<double>(p.blocks_count) / 100.0);
  return p;
}

uint32_t calc_reserved_gdt_blocks(const Plan& pl) {
  uint64_t max_blocks = 0xFFFFFFFFull;
  if (pl.blocks < max_blocks / 1024) max_blocks = pl.blocks * 1024;
  uint64_t rsv_groups = ceil_div(max_blocks - pl.sb.s_first_data_block, pl.sb.s_blocks_per_group);
  int64_t rsv_gdb = static_cast<int64_t>(ceil_div(rsv_groups, pl.desc_per_block)) - pl.desc_blocks;
  uint32_t apb = pl.bs / 4;
  if (rsv_gdb > static_cast<int64_t>(apb)) rsv_gdb = apb;
  return static_cast<uint32_t>(std::max<int64_t>(rsv_gdb, 0));
}

Status initialize(Plan& pl, const Params& p) {
  auto& sb = pl.sb;
  sb.s_magic = disk::kSuperblockMagic;
  sb.s_state = disk::kStateValid;
  sb.s_log_block_size = static_cast<uint32_t>(std::countr_zero(p.block_size) - 10);
  sb.s_log_cluster_size = sb.s_log_block_size;
  sb.s_first_data_block = p.block_size == 1024 ? 1 : 0;
  sb.s_max_mnt_count = -1;
  sb.s_errors = pl.opt.errors_behavior;
  sb.s_feature_compat = p.features[0];
  sb.s_feature_ro_compat = p.features[1];
  sb.s_feature_incompat = p.features[2];
  sb.s_default_mount_opts = 0x0004 | 0x0008;  // user_xattr, acl
  sb.s_log_groups_per_flex = (p.features[2] & incompat::kFlexBg) ? 4 : 0;
  sb.s_rev_level = 1;
  sb.s_first_ino = 11;
  sb.s_inode_size = static_cast<uint16_t>(p.inode_size);
  if (p.inode_size >= 160) sb.s_min_extra_isize = sb.s_want_extra_isize = 32;
  sb.s_mkfs_time = sb.s_lastcheck = sb.s_wtime = pl.now;
  sb.s_creator_os = 0;
  pl.bs = p.block_size;
  sb.s_blocks_per_group = std::min<uint32_t>(pl.bs * 8, 65528);
  sb.s_clusters_per_group = sb.s_blocks_per_group;
  pl.blocks = p.blocks_count;
  uint64_t r_blocks = p.r_blocks;
  if (r_blocks >= p.blocks_count) return invalid("reserved blocks exceed the filesystem size");

  const bool is64 = sb.has_incompat(incompat::k64bit);
  uint32_t ipg = 0;
  while (true) {  // retry:
    pl.groups = ceil_div(pl.blocks - sb.s_first_data_block, sb.s_blocks_per_group);
    if (pl.groups == 0) return invalid("the device is too small for a filesystem");
    sb.s_desc_size = is64 ? 64 : 0;
    pl.desc_per_block = pl.bs / (is64 ? 64 : 32);
    pl.desc_blocks = ceil_div(pl.groups, pl.desc_per_block);
    uint64_t inodes = p.inodes_count;
    if (inodes < sb.s_first_ino + 1) inodes = sb.s_first_ino + 1;
    uint64_t want_ipg = ceil_div(inodes, pl.groups);
    if (want_ipg > pl.bs * 8) {
      if (sb.s_blocks_per_group >= 256) {
        sb.s_blocks_per_group -= 8;
        sb.s_clusters_per_group = sb.s_blocks_per_group;
        pl.blocks = p.blocks_count;
        continue;
      }
      return invalid("too many inodes for the filesystem's size: raise the inode ratio or lower the inode count");
    }
    ipg = static_cast<uint32_t>(want_ipg);
    const uint32_t inodes_per_block = pl.bs / p.inode_size;
    if (ipg > 65536 - inodes_per_block) ipg = 65536 - inodes_per_block;
    while (true) {  // ipg_retry:
      sb.s_inodes_per_group = ipg;
      pl.itb_per_group = ceil_div(static_cast<uint64_t>(ipg) * p.inode_size, pl.bs);
      sb.s_inodes_per_group = pl.itb_per_group * pl.bs / p.inode_size;
      if (sb.s_inodes_per_group < 8) sb.s_inodes_per_group = 8;
      sb.s_inodes_per_group &= ~7u;
      pl.itb_per_group = ceil_div(static_cast<uint64_t>(sb.s_inodes_per_group) * p.inode_size, pl.bs);
      if (static_cast<uint64_t>(sb.s_inodes_per_group) * pl.groups > 0xFFFFFFFFull) {
        ipg--;
        continue;
      }
      break;
    }
    sb.s_inodes_count = sb.s_inodes_per_group * pl.groups;
    sb.s_free_inodes_count = sb.s_inodes_count;

    sb.s_reserved_gdt_blocks = sb.has_compat(compat::kResizeInode)
                                   ? static_cast<uint16_t>(calc_reserved_gdt_blocks(pl))
                                   : 0;
    if (sb.s_reserved_gdt_blocks > pl.bs / 4) return invalid("too many reserved GDT blocks");
    if (sb.s_reserved_gdt_blocks + pl.desc_blocks > sb.s_blocks_per_group * 3 / 4) {
      sb.s_feature_incompat |= incompat::kMetaBg;
      sb.s_feature_compat &= ~compat::kResizeInode;
      sb.s_reserved_gdt_blocks = 0;
    }
    uint64_t overhead = 3 + pl.itb_per_group + sb.s_reserved_gdt_blocks;
    overhead += sb.has_incompat(incompat::kMetaBg) ? 1 : pl.desc_blocks;
    if (overhead > sb.s_blocks_per_group) {
      return invalid("too many inodes: the inode tables do not fit in a block group");
    }
    overhead = 2 + pl.itb_per_group;
    if (pl.group_has_super(pl.groups - 1)) overhead += 1 + pl.desc_blocks + sb.s_reserved_gdt_blocks;
    uint64_t rem = (pl.blocks - sb.s_first_data_block) % sb.s_blocks_per_group;
    if (pl.groups == 1 && rem && rem < overhead) {
      return invalid("the device is too small: " + std::to_string(pl.blocks) + " blocks of " +
                     std::to_string(pl.bs) + " bytes cannot hold the group's " + std::to_string(overhead) +
                     " metadata blocks");
    }
    if (rem && rem < overhead + 50) {
      pl.blocks -= rem;
      double ratio = 100.0 * static_cast<double>(p.r_blocks) / static_cast<double>(p.blocks_count);
      r_blocks = static_cast<uint64_t>(ratio * static_cast<double>(pl.blocks) / 100.0);
      continue;
    }
    break;
  }
  sb.s_blocks_count = pl.blocks;
  sb.s_r_blocks_count = r_blocks;

  pl.csum = sb.has_ro_compat(ro_compat::kGdtCsum) || sb.has_metadata_csum();
  pl.bmap = Bitmap(pl.blocks);
  pl.imap = Bitmap(sb.s_inodes_count);
  pl.g.assign(pl.groups, {});
  uint32_t reserved_inos = sb.s_first_ino;
  for (uint32_t i = 0; i < pl.groups; i++) {
    if (pl.csum) {
      if (i != pl.groups - 1) pl.g[i].flags |= disk::kBgBlockUninit;
      pl.g[i].flags |= disk::kBgInodeUninit;
      uint32_t n = sb.s_inodes_per_group;
      if (reserved_inos) {
        if (n > reserved_inos) {
          n -= reserved_inos;
          reserved_inos = 0;
        } else {
          reserved_inos -= n;
          n = 0;
        }
      }
      pl.g[i].itable_unused = n;
    }
    // ext2fs_reserve_super_and_bgd
    auto loc = pl.super_loc(i);
    uint64_t old_desc_blocks =
        sb.has_incompat(incompat::kMetaBg) ? sb.s_first_meta_bg : pl.desc_blocks + sb.s_reserved_gdt_blocks;
    if (loc.super_blk || i == 0) pl.bmap.set(loc.super_blk);
    if (loc.old_desc_blk) {
      uint64_t n = old_desc_blocks;
      if (loc.old_desc_blk + n >= pl.blocks) n = pl.blocks - loc.old_desc_blk;
      pl.bmap.set_range(loc.old_desc_blk, n);
    }
    if (loc.new_desc_blk) pl.bmap.set(loc.new_desc_blk);
  }
  sb.s_flags = std::is_signed_v<char> ? disk::kFlagSignedHash : disk::kFlagUnsignedHash;
  return {};
}

// ---------------------------------------------------------------------------
// ext2fs_allocate_tables.

uint64_t flexbg_offset(const Plan& pl, uint32_t group, uint64_t start_blk, uint32_t rem_grp, uint32_t elem_size) {
  const uint32_t flexbg_size = 1u << pl.sb.s_log_groups_per_flex;
  const uint32_t flexbg = group / flexbg_size;
  uint64_t size = static_cast<uint64_t>(rem_grp) * elem_size;
  if (size > pl.sb.s_blocks_per_group / 4) size = pl.sb.s_blocks_per_group / 4;
  if (start_blk && start_blk < pl.blocks) {
    if (auto b = pl.get_free_blocks(start_blk, start_blk + size, elem_size)) return *b;
  }
  start_blk = pl.first_block_of(flexbg_size * flexbg);
  uint32_t last_grp = group | (flexbg_size - 1);
  if (last_grp > pl.groups - 1) last_grp = pl.groups - 1;
  uint64_t last_blk = pl.last_block_of(last_grp);
  if (auto b = pl.get_free_blocks(start_blk, last_blk, size)) return *b;
  if (auto b = pl.get_free_blocks(start_blk, last_blk, elem_size)) return *b;
  if (auto b = pl.get_free_blocks(0, last_blk, elem_size)) return *b;
  return 0;
}

Status allocate_group_table(Plan& pl, uint32_t group) {
  auto& sb = pl.sb;
  uint64_t group_blk = pl.first_block_of(group);
  uint64_t last_blk = pl.last_block_of(group);
  uint32_t last_grp = 0, rem_grps = 0, flexbg_size = 0, table_offset = 0;
  const bool flex = sb.has_incompat(incompat::kFlexBg) && sb.s_log_groups_per_flex;
  if (flex) {
    flexbg_size = 1u << sb.s_log_groups_per_flex;
    last_grp = group | (flexbg_size - 1);
    if (last_grp > pl.groups - 1) last_grp = pl.groups - 1;
    rem_grps = last_grp - group + 1;
  }
  uint64_t start_blk = group_blk;
  const auto fail = [&](const char* what) {
    return Error(ENOSPC, std::string("could not allocate the ") + what + " of group " + std::to_string(group) +
                             ": the filesystem is too small for its metadata");
  };

  if (flex) {
    uint64_t prev_block = 0;
    table_offset = flexbg_size;
    if (group % flexbg_size) {
      prev_block = pl.g[group - 1].block_bitmap + 1;
    } else if (last_grp == pl.groups - 1) {
      // The last flex group keeps its metadata contiguous.
      table_offset = last_grp & (flexbg_size - 1);
      table_offset = table_offset == 0 ? flexbg_size : table_offset + 1;
    }
    start_blk = flexbg_offset(pl, group, prev_block, rem_grps, 1);
    last_blk = pl.last_block_of(last_grp);
  }
  {
    auto b = pl.get_free_blocks(start_blk, last_blk, 1);
    if (!b) b = pl.get_free_blocks(group_blk, last_blk, 1);
    if (!b) return fail("block bitmap");
    pl.bmap.set(*b);
    pl.g[group].block_bitmap = *b;
    if (flex) pl.clear_block_uninit(pl.group_of(*b));
  }
  if (flex) {
    uint64_t prev_block = (group % flexbg_size) ? pl.g[group - 1].inode_bitmap + 1
                                                : pl.g[group].block_bitmap + table_offset;
    start_blk = flexbg_offset(pl, group, prev_block, rem_grps, 1);
    last_blk = pl.last_block_of(last_grp);
  }
  {
    auto b = pl.get_free_blocks(start_blk, last_blk, 1);
    if (!b) b = pl.get_free_blocks(group_blk, last_blk, 1);
    if (!b) return fail("inode bitmap");
    pl.bmap.set(*b);
    pl.g[group].inode_bitmap = *b;
    if (flex) pl.clear_block_uninit(pl.group_of(*b));
  }
  if (flex) {
    uint64_t prev_block = (group % flexbg_size) ? pl.g[group - 1].inode_table + pl.itb_per_group
                                                : pl.g[group].inode_bitmap + table_offset;
    group_blk = flexbg_offset(pl, group, prev_block, rem_grps, pl.itb_per_group);
    last_blk = pl.last_block_of(last_grp);
  }
  {
    auto b = pl.get_free_blocks(group_blk, last_blk, pl.itb_per_group);
    if (!b) return fail("inode table");
    pl.bmap.set_range(*b, pl.itb_per_group);
    if (flex) {
      for (uint64_t x = *b; x < *b + pl.itb_per_group; x += 1) pl.clear_block_uninit(pl.group_of(x));
    }
    pl.g[group].inode_table = *b;
  }
  return {};
}

// ---------------------------------------------------------------------------
// Inodes and directories.

// The i_block of an inode whose logical blocks 0.. are `blks`, as the
// extents of its runs in the root; none when there are more runs than the
// root's four.
std::optional<std::array<uint32_t, 15>> extent_root(const std::vector<uint64_t>& blks) {
  disk::ExtentNode node;
  node.header.eh_max = 4;
  node.header.eh_depth = 0;
  for (uint32_t i = 0; i < blks.size(); i++) {
    auto& ex = node.extents;
    if (!ex.empty() && ex.back().physical + ex.back().length == blks[i]) {
      ex.back().length++;
    } else {
      if (ex.size() == node.header.eh_max) return std::nullopt;
      ex.push_back({i, 1, blks[i], false});
    }
  }
  node.header.eh_entries = static_cast<uint16_t>(node.extents.size());
  std::array<std::byte, 60> raw{};
  disk::encode_extent_node(node, raw);
  std::array<uint32_t, 15> words{};
  for (int i = 0; i < 15; i++) words[i] = disk::le32(raw, i * 4);
  return words;
}

void put_dirent(MutableBytes block, size_t off, uint32_t ino, uint32_t rec_len, std::string_view name,
                uint8_t type, bool filetype, uint32_t bs) {
  disk::put_le32(block, off, ino);
  disk::put_le16(block, off + 4, disk::encode_rec_len(rec_len, bs));
  if (filetype) {
    disk::put_le8(block, off + 6, static_cast<uint8_t>(name.size()));
    disk::put_le8(block, off + 7, type);
  } else {
    disk::put_le16(block, off + 6, static_cast<uint16_t>(name.size()));
  }
  std::memcpy(block.data() + off + 8, name.data(), name.size());
}

disk::Inode new_dir_inode(const Plan& pl, uint16_t mode, const std::vector<uint64_t>& blks) {
  disk::Inode in;
  in.i_mode = mode;
  in.i_size = static_cast<uint64_t>(blks.size()) * pl.bs;
  in.i_links_count = 2;
  in.i_blocks = static_cast<uint64_t>(blks.size()) * (pl.bs / 512);
  in.i_atime = in.i_ctime = in.i_mtime = pl.ts();
  if (pl.sb.s_inode_size > 128) {
    in.i_extra_isize = 32;
    in.i_crtime = pl.ts();
  }
  if (pl.sb.has_incompat(incompat::kExtents)) {
    in.i_flags |= disk::inode_flag::kExtents;
    in.i_block = *extent_root(blks);  // one run: create_directories checked
  } else {
    for (size_t i = 0; i < blks.size(); i++) in.i_block[i] = static_cast<uint32_t>(blks[i]);
  }
  return in;
}

Status create_directories(Plan& pl) {
  const bool filetype = pl.sb.has_incompat(incompat::kFiletype);
  const bool tail = pl.sb.has_metadata_csum();
  const uint32_t usable = pl.bs - (tail ? 12 : 0);
  const uint8_t dt = filetype ? disk::ftype::kDirectory : 0;
  const uint32_t lpf = pl.sb.s_first_ino;  // 11
  // ext2fs_find_inode_goal for an empty inode: its (flex) group's first block.
  auto inode_goal = [&](uint32_t ino) {
    uint32_t grp = (ino - 1) / pl.sb.s_inodes_per_group;
    if (pl.sb.s_log_groups_per_flex) grp &= ~((1u << pl.sb.s_log_groups_per_flex) - 1);
    return pl.first_block_of(grp);
  };

  // Root directory.
  UEXT_ASSIGN_OR_RETURN(pl.root_block, pl.alloc_block(inode_goal(disk::kRootIno)));
  pl.use_inode(disk::kRootIno, true);
  // lost+found: one block, then grown to 16 KiB (at least two blocks, at
  // most the 12 direct blocks), each block the first free after the last.
  UEXT_ASSIGN_OR_RETURN(uint64_t first, pl.alloc_block(inode_goal(lpf)));
  pl.lpf_blocks.push_back(first);
  uint32_t lpf_size = 0;
  for (int i = 1; i < 12; i++) {
    lpf_size += pl.bs;
    if (lpf_size >= 16 * 1024 && lpf_size >= 2 * pl.bs) break;
    UEXT_ASSIGN_OR_RETURN(uint64_t b, pl.alloc_block(pl.lpf_blocks.back()));
    pl.lpf_blocks.push_back(b);
  }
  pl.use_inode(lpf, true);
  if (pl.sb.has_incompat(incompat::kExtents)) {
    // One extent in the root: the blocks must be one run.
    for (size_t i = 1; i < pl.lpf_blocks.size(); i++) {
      if (pl.lpf_blocks[i] != pl.lpf_blocks[i - 1] + 1) {
        return Error(ENOSPC, "lost+found: no room for its blocks in one run");
      }
    }
  }

  // Root's block: ".", "..", "lost+found".
  {
    auto& blk = pl.block_buffer(pl.root_block);
    put_dirent(blk, 0, disk::kRootIno, 12, ".", dt, filetype, pl.bs);
    put_dirent(blk, 12, disk::kRootIno, 12, "..", dt, filetype, pl.bs);
    put_dirent(blk, 24, lpf, usable - 24, "lost+found", dt, filetype, pl.bs);
    if (tail) {
      disk::init_dir_block_tail(blk);
      disk::set_dir_block_checksum(disk::inode_csum_seed(pl.sb, disk::kRootIno, 0), blk);
    }
  }
  for (size_t i = 0; i < pl.lpf_blocks.size(); i++) {
    auto& blk = pl.block_buffer(pl.lpf_blocks[i]);
    if (i == 0) {
      put_dirent(blk, 0, lpf, 12, ".", dt, filetype, pl.bs);
      put_dirent(blk, 12, disk::kRootIno, usable - 12, "..", dt, filetype, pl.bs);
    } else {
      disk::put_le16(blk, 4, disk::encode_rec_len(usable, pl.bs));
    }
    if (tail) {
      disk::init_dir_block_tail(blk);
      disk::set_dir_block_checksum(disk::inode_csum_seed(pl.sb, lpf, 0), blk);
    }
  }

  disk::Inode root = new_dir_inode(pl, 040755, {pl.root_block});
  root.i_links_count = 3;
  root.i_uid = pl.opt.root_uid;
  root.i_gid = pl.opt.root_gid;
  pl.put_inode(disk::kRootIno, root);
  pl.put_inode(lpf, new_dir_inode(pl, 040700, pl.lpf_blocks));
  return {};
}

// ext2fs_create_resize_inode: a double-indirect block listing the primary
// reserved GDT blocks, each of which lists its backups.
Status create_resize_inode(Plan& pl) {
  const auto& sb = pl.sb;
  const uint32_t apb = pl.bs / 4;
  uint64_t sb_blk = sb.s_first_data_block;
  uint64_t goal = sb_blk + pl.desc_blocks + sb.s_reserved_gdt_blocks + 2 + pl.itb_per_group;
  UEXT_ASSIGN_OR_RETURN(uint64_t dind, pl.alloc_block(goal));
  auto& dind_buf = pl.block_buffer(dind);
  uint64_t nblocks = 1;
  uint64_t gdt_off = pl.desc_blocks;
  uint64_t gdt_blk = sb_blk + 1 + pl.desc_blocks;
  for (uint32_t rsv = 0; rsv < sb.s_reserved_gdt_blocks; rsv++, gdt_off++, gdt_blk++) {
    gdt_off %= apb;
    disk::put_le32(dind_buf, gdt_off * 4, static_cast<uint32_t>(gdt_blk));
    nblocks++;
    auto& list = pl.block_buffer(gdt_blk);
    uint32_t last = 0;
    for (uint32_t grp = 1; grp < pl.groups; grp++) {
      if (!pl.group_has_super(grp)) continue;
      disk::put_le32(list, last * 4, static_cast<uint32_t>(gdt_blk + static_cast<uint64_t>(grp) * sb.s_blocks_per_group));
      last++;
      nblocks++;
    }
  }
  disk::Inode in;
  in.i_mode = 0100600;
  in.i_links_count = 1;
  in.i_block[13] = static_cast<uint32_t>(dind);
  in.i_blocks = nblocks * (pl.bs / 512);
  in.i_size = (static_cast<uint64_t>(apb) * apb + apb + 12) * pl.bs;
  in.i_atime = in.i_ctime = in.i_mtime = pl.ts();
  if (sb.s_inode_size > 128) {
    in.i_extra_isize = 32;
    in.i_crtime = pl.ts();
  }
  pl.put_inode(disk::kResizeIno, in);
  return {};
}

// The quota files of the quota feature (create_quota_inodes): user and
// group in their reserved inodes 3 and 4, project in the first free inode,
// each holding the usage of what mkfs made (the root directory and
// lost+found; the quota files themselves are not charged).
Status create_quota_files(Plan& pl) {
  auto& sb = pl.sb;
  uint32_t types = pl.opt.quota_types ? pl.opt.quota_types : kQuotaUser | kQuotaGroup;
  if (sb.has_ro_compat(ro_compat::kProject)) types |= kQuotaProject;
  // Usage by id of each kind, from the inodes charged.
  struct Charged {
    uint32_t ino;
    uint32_t id[disk::quota::kTypes];
  };
  const uint32_t lpf = sb.s_first_ino;
  const Charged charged[] = {{disk::kRootIno, {pl.opt.root_uid, pl.opt.root_gid, 0}}, {lpf, {0, 0, 0}}};
  auto inode_blocks = [&](uint32_t ino) {
    return ino == disk::kRootIno ? uint64_t{1} : static_cast<uint64_t>(pl.lpf_blocks.size());
  };
  for (int t = 0; t < disk::quota::kTypes; t++) {
    if (!(types & (1u << t))) continue;
    std::map<uint32_t, disk::quota::Usage> by_id;
    for (const auto& c : charged) {
      auto& u = by_id[c.id[t]];
      u.space += inode_blocks(c.ino) * pl.bs;
      u.inodes += 1;
    }
    std::vector<disk::quota::IdUsage> ids;
    for (const auto& [id, usage] : by_id) ids.push_back({id, usage});
    const auto file = disk::quota::build_file(static_cast<disk::quota::Type>(t), ids);

    uint32_t ino = t == 0 ? disk::kUserQuotaIno : t == 1 ? disk::kGroupQuotaIno : 0;
    if (ino == 0) {  // ext2fs_new_inode: the first free one past the reserved
      auto free = pl.imap.first_zero(sb.s_first_ino - 1, sb.s_inodes_count - 1);
      if (!free) return Error(ENOSPC, "project quota file: no free inode");
      ino = static_cast<uint32_t>(*free + 1);
    }
    pl.use_inode(ino, false);
    const uint32_t nblocks = ceil_div(file.size(), pl.bs);
    // Blocks in the order e2fsprogs first writes the quota blocks: the
    // header, the tree's lower blocks and the data as they are made, the
    // root last; each the first free at or after the block before it in
    // the file, or after the (flex) group's start when that one is not
    // placed yet. Then the image is mke2fs's, byte for byte.
    std::vector<uint64_t> blks(nblocks, 0);
    uint32_t grp = (ino - 1) / sb.s_inodes_per_group;
    if (sb.s_log_groups_per_flex) grp &= ~((1u << sb.s_log_groups_per_flex) - 1);
    const uint64_t group_goal = pl.first_block_of(grp);
    const uint32_t qblocks = static_cast<uint32_t>(file.size() / disk::quota::kBlockSize);
    std::vector<uint32_t> order{0};
    for (uint32_t q = 2; q < qblocks; q++) order.push_back(q);
    order.push_back(1);
    for (uint32_t q : order) {
      const uint32_t lblk = static_cast<uint32_t>(uint64_t{q} * disk::quota::kBlockSize / pl.bs);
      if (blks[lblk]) continue;
      const uint64_t goal = lblk > 0 && blks[lblk - 1] ? blks[lblk - 1] : group_goal;
      UEXT_ASSIGN_OR_RETURN(blks[lblk], pl.alloc_block(goal));
      auto& buf = pl.block_buffer(blks[lblk]);
      const size_t off = size_t{lblk} * pl.bs;
      std::memcpy(buf.data(), file.data() + off, std::min<size_t>(pl.bs, file.size() - off));
    }
    disk::Inode in;
    in.i_mode = 0100600;
    in.i_links_count = 1;
    in.i_size = file.size();
    in.i_blocks = uint64_t{nblocks} * (pl.bs / 512);
    in.i_flags = disk::inode_flag::kImmutable;
    in.i_atime = in.i_ctime = in.i_mtime = pl.ts();
    if (sb.s_inode_size > 128) {
      in.i_extra_isize = 32;
      in.i_crtime = pl.ts();
    }
    if (sb.has_incompat(incompat::kExtents)) {
      auto root = extent_root(blks);
      if (!root) return Error(ENOSPC, "quota file: its blocks lie in more than four runs");
      in.i_flags |= disk::inode_flag::kExtents;
      in.i_block = *root;
    } else {
      for (size_t i = 0; i < blks.size(); i++) in.i_block[i] = static_cast<uint32_t>(blks[i]);
    }
    pl.put_inode(ino, in);
    if (t == 0) sb.s_usr_quota_inum = ino;
    if (t == 1) sb.s_grp_quota_inum = ino;
    if (t == 2) sb.s_prj_quota_inum = ino;
  }
  return {};
}

// get_midpoint_journal_block.
uint64_t journal_goal(const Plan& pl) {
  uint32_t group = pl.group_of((pl.blocks - pl.sb.s_first_data_block) / 2);
  uint32_t log_flex = 1u << pl.sb.s_log_groups_per_flex;
  uint32_t start;
  if (pl.sb.s_log_groups_per_flex && group > log_flex) {
    group &= ~(log_flex - 1);
    while (group < pl.groups && pl.group_free_blocks(group) == 0) group++;
    if (group == pl.groups) group = 0;
    start = group;
  } else {
    start = group > 0 ? group - 1 : group;
  }
  uint32_t end = group + 1 < pl.groups ? group + 1 : group;
  group = start;
  for (uint32_t i = start + 1; i <= end; i++) {
    if (pl.group_free_blocks(i) > pl.group_free_blocks(group)) group = i;
  }
  return pl.first_block_of(group);
}

// The journal of an extent filesystem: runs of free blocks from the
// midpoint goal, at most 32768 blocks an extent, as ext2fs_fallocate.
Status create_extent_journal(Plan& pl, disk::Inode& in) {
  uint64_t goal = journal_goal(pl);
  if (auto z = pl.bmap.first_zero(goal, pl.blocks - 1)) goal = *z;
  std::vector<disk::Extent> extents;
  uint64_t pblk = goal;
  uint64_t remaining = pl.journal_blocks;
  uint32_t lblk = 0;
  uint64_t index_block = 0;
  while (remaining) {
    uint64_t want = std::min<uint64_t>(remaining, disk::kExtentInitMaxLen);
    // ext2fs_new_range without flags: the first free block from pblk and
    // the free run that follows it, however short.
    if (!pblk || pblk >= pl.blocks) pblk = pl.sb.s_first_data_block;
    auto start = pl.bmap.first_zero(pblk, pl.blocks - 1);
    if (!start) start = pl.bmap.first_zero(pl.sb.s_first_data_block, pl.blocks - 1);
    if (!start) return Error(ENOSPC, "no room for the journal");
    uint64_t b = std::min(*start + want - 1, pl.blocks - 1);
    auto used = pl.bmap.first_set(*start, b);
    uint64_t end = used ? *used : b + 1;
    uint64_t len = end - *start;
    pl.mark_range(*start, len);
    extents.push_back({lblk, static_cast<uint16_t>(len == 32768 ? 32768 : len), *start, false});
    if (extents.size() == 5) {
      // The root is full: its extents move to a leaf block placed as near
      // before the first extent as there is room.
      UEXT_ASSIGN_OR_RETURN(index_block, pl.alloc_block(extents.front().physical - 1));
    }
    if (extents.size() > 4 && extents.size() > (pl.bs - 12) / 12) {
      return Error(ENOSPC, "the journal would be too fragmented (more extents than one leaf block holds)");
    }
    lblk += static_cast<uint32_t>(len);
    remaining -= len;
    pblk = *start + len;
    if (pblk >= pl.blocks) pblk = pl.sb.s_first_data_block;
  }
  in.i_flags |= disk::inode_flag::kExtents;
  disk::ExtentNode root;
  if (extents.size() <= 4) {
    root.header.eh_entries = static_cast<uint16_t>(extents.size());
    root.header.eh_max = 4;
    root.extents = extents;
  } else {
    disk::ExtentNode leaf;
    leaf.header.eh_entries = static_cast<uint16_t>(extents.size());
    leaf.header.eh_max = static_cast<uint16_t>((pl.bs - 12) / 12);
    leaf.extents = extents;
    auto& buf = pl.block_buffer(index_block);
    disk::encode_extent_node(leaf, buf);
    if (pl.sb.has_metadata_csum()) {
      disk::set_extent_block_checksum(disk::inode_csum_seed(pl.sb, disk::kJournalIno, 0), buf);
    }
    root.header.eh_entries = 1;
    root.header.eh_max = 4;
    root.header.eh_depth = 1;
    root.indexes.push_back({0, index_block});
    in.i_blocks += pl.bs / 512;
  }
  std::array<std::byte, 60> raw{};
  if (extents.size() > 4) {
    // libext2fs moves the root's extents out without clearing them: the
    // index overwrites only the first entry, the other three stay behind.
    disk::ExtentNode full;
    full.header.eh_entries = 4;
    full.header.eh_max = 4;
    full.extents.assign(extents.begin(), extents.begin() + 4);
    disk::encode_extent_node(full, raw);
  }
  disk::encode_extent_node(root, raw);
  for (int i = 0; i < 15; i++) in.i_block[i] = disk::le32(raw, i * 4);
  in.i_blocks += static_cast<uint64_t>(pl.journal_blocks) * (pl.bs / 512);
  pl.journal_first = extents.front().physical;
  for (const auto& e : extents) pl.zero_ranges.push_back({e.physical, e.length});
  return {};
}

// The journal of a block-mapped filesystem: ext2fs_bmap2 with BMAP_ALLOC
// one block at a time, each goal the block mapped before it, indirect
// blocks allocated as the map reaches them.
Status create_indirect_journal(Plan& pl, disk::Inode& in) {
  const uint32_t apb = pl.bs / 4;
  uint64_t count = 0;  // blocks allocated, indirect ones included
  std::map<uint64_t, std::vector<uint32_t>> ind;  // indirect block -> entries
  auto alloc = [&](uint64_t goal) -> Result<uint64_t> {
    UEXT_ASSIGN_OR_RETURN(uint64_t b, pl.alloc_block(goal));
    count++;
    return b;
  };
  // The entry `nr` of indirect block `blk` (allocating it with the
  // previous entry, or the indirect block itself, as goal).
  auto entry = [&](uint64_t blk, uint32_t nr) -> Result<uint64_t> {
    auto& v = ind[blk];
    if (v.empty()) v.assign(apb, 0);
    if (!v[nr]) {
      UEXT_ASSIGN_OR_RETURN(uint64_t b, alloc(nr ? v[nr - 1] : blk));
      v[nr] = static_cast<uint32_t>(b);
    }
    return uint64_t{v[nr]};
  };
  uint32_t grp0 = (disk::kJournalIno - 1) / pl.sb.s_inodes_per_group;
  if (pl.sb.s_log_groups_per_flex) grp0 &= ~((1u << pl.sb.s_log_groups_per_flex) - 1);
  const uint64_t inode_goal = pl.first_block_of(grp0);
  for (uint64_t l = 0; l < pl.journal_blocks; l++) {
    uint64_t blk;
    if (l < 12) {
      UEXT_ASSIGN_OR_RETURN(blk, alloc(l ? in.i_block[l - 1] : inode_goal));
      in.i_block[l] = static_cast<uint32_t>(blk);
    } else if (l - 12 < apb) {
      if (!in.i_block[12]) {
        UEXT_ASSIGN_OR_RETURN(uint64_t b, alloc(in.i_block[11]));
        in.i_block[12] = static_cast<uint32_t>(b);
      }
      UEXT_ASSIGN_OR_RETURN(blk, entry(in.i_block[12], static_cast<uint32_t>(l - 12)));
    } else if (l - 12 - apb < static_cast<uint64_t>(apb) * apb) {
      uint64_t n = l - 12 - apb;
      if (!in.i_block[13]) {
        UEXT_ASSIGN_OR_RETURN(uint64_t b, alloc(in.i_block[12]));
        in.i_block[13] = static_cast<uint32_t>(b);
      }
      UEXT_ASSIGN_OR_RETURN(uint64_t i1, entry(in.i_block[13], static_cast<uint32_t>(n / apb)));
      UEXT_ASSIGN_OR_RETURN(blk, entry(i1, static_cast<uint32_t>(n % apb)));
    } else {
      uint64_t n = l - 12 - apb - static_cast<uint64_t>(apb) * apb;
      if (!in.i_block[14]) {
        UEXT_ASSIGN_OR_RETURN(uint64_t b, alloc(in.i_block[13]));
        in.i_block[14] = static_cast<uint32_t>(b);
      }
      UEXT_ASSIGN_OR_RETURN(uint64_t i1, entry(in.i_block[14], static_cast<uint32_t>(n / apb / apb)));
      UEXT_ASSIGN_OR_RETURN(uint64_t i2, entry(i1, static_cast<uint32_t>((n / apb) % apb)));
      UEXT_ASSIGN_OR_RETURN(blk, entry(i2, static_cast<uint32_t>(n % apb)));
    }
    if (l == 0) pl.journal_first = blk;
    // Data blocks are zeroed; coalesce runs.
    if (!pl.zero_ranges.empty() && pl.zero_ranges.back().first + pl.zero_ranges.back().second == blk) {
      pl.zero_ranges.back().second++;
    } else {
      pl.zero_ranges.push_back({blk, 1});
    }
  }
  for (auto& [blk, entries] : ind) {
    auto& buf = pl.block_buffer(blk);
    for (uint32_t i = 0; i < apb; i++) disk::put_le32(buf, i * 4, entries[i]);
  }
  in.i_blocks = count * (pl.bs / 512);
  return {};
}

Status create_journal(Plan& pl, bool zero_journal) {
  size_t zero_mark = pl.zero_ranges.size();
  disk::Inode in;
  in.i_mode = 0100600;
  in.i_links_count = 1;
  in.i_size = static_cast<uint64_t>(pl.journal_blocks) * pl.bs;
  in.i_atime = in.i_ctime = in.i_mtime = pl.ts();
  if (pl.sb.s_inode_size > 128) {
    in.i_extra_isize = 32;
    in.i_crtime = pl.ts();
  }
  if (pl.sb.has_incompat(incompat::kExtents)) {
    UEXT_TRY(create_extent_journal(pl, in));
  } else {
    UEXT_TRY(create_indirect_journal(pl, in));
  }
  if (!zero_journal) pl.zero_ranges.resize(zero_mark);
  pl.put_inode(disk::kJournalIno, in);

  disk::JournalSuperblock jsb;
  jsb.s_header.h_magic = disk::kJbd2Magic;
  jsb.s_header.h_blocktype = disk::kJbd2SuperblockV2;
  jsb.s_blocksize = pl.bs;
  jsb.s_maxlen = pl.journal_blocks;
  jsb.s_nr_users = 1;
  jsb.s_first = 1;
  jsb.s_sequence = 1;
  jsb.s_uuid = pl.sb.s_uuid;
  disk::encode_journal_superblock(jsb, pl.block_buffer(pl.journal_first));

  auto& sb = pl.sb;
  for (int i = 0; i < 15; i++) sb.s_jnl_blocks[i] = in.i_block[i];
  sb.s_jnl_blocks[15] = static_cast<uint32_t>(in.i_size >> 32);
  sb.s_jnl_blocks[16] = static_cast<uint32_t>(in.i_size);
  sb.s_jnl_backup_type = 1;  // EXT3_JNL_BACKUP_BLOCKS
  sb.s_journal_inum = disk::kJournalIno;
  return {};
}

std::array<uint8_t, 16> random_uuid() {
  std::array<uint8_t, 16> u{};
  size_t got = 0;
  while (got < u.size()) {
    ssize_t n = getrandom(u.data() + got, u.size() - got, 0);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      // No entropy source: fall back to time and address bits (never used
      // for security, only to tell filesystems apart).
      uint64_t x = static_cast<uint64_t>(std::time(nullptr)) ^ reinterpret_cast<uintptr_t>(&u);
      for (auto& b : u) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        b = static_cast<uint8_t>(x >> 56);
      }
      break;
    }
    got += static_cast<size_t>(n);
  }
  u[6] = static_cast<uint8_t>((u[6] & 0x0F) | 0x40);  // version 4
  u[8] = static_cast<uint8_t>((u[8] & 0x3F) | 0x80);  // variant 1
  return u;
}

Result<Plan> make_plan(uint64_t device_bytes, const MkfsOptions& opt) {
  Plan pl;
  pl.opt = opt;
  pl.device_bytes = device_bytes;
  pl.now = opt.creation_time ? *opt.creation_time : static_cast<int64_t>(std::time(nullptr));
  UEXT_ASSIGN_OR_RETURN(Params p, resolve_params(device_bytes, opt));
  UEXT_TRY(initialize(pl, p));
  auto& sb = pl.sb;

  // figure_journal_size, with initialize's free count (superblocks and
  // descriptors only, plus the tables without flex_bg).
  if (sb.has_compat(compat::kHasJournal)) {
    uint64_t free_estimate = 0;
    for (uint32_t i = 0; i < pl.groups; i++) {
      auto loc = pl.super_loc(i);
      int64_t n = static_cast<int64_t>(pl.last_block_of(i) - pl.first_block_of(i) + 1) -
                  (2 + pl.itb_per_group + loc.used);
      if (sb.s_log_groups_per_flex) n += 2 + pl.itb_per_group;
      free_estimate += static_cast<uint64_t>(std::max<int64_t>(n, 0));
    }
    uint64_t def;
    const uint64_t nb = pl.blocks;
    if (nb < 2048) def = 0;
    else if (nb < 32768) def = 1024;
    else if (nb < 256 * 1024) def = 4096;
    else if (nb < 512 * 1024) def = 8192;
    else if (nb < 4096 * 1024) def = 16384;
    else if (nb < 8192 * 1024) def = 32768;
    else if (nb < 16384 * 1024) def = 65536;
    else if (nb < 32768 * 1024) def = 131072;
    else def = 262144;
    if (def == 0) {
      if (opt.journal_size_mib) return invalid("the filesystem is too small for a journal");
      // mke2fs: "Filesystem too small for a journal", made without one.
      sb.s_feature_compat &= ~compat::kHasJournal;
    } else if (opt.journal_size_mib) {
      uint64_t want = static_cast<uint64_t>(opt.journal_size_mib) * 1024 / (pl.bs / 1024);
      if (want < 1024 || want > 10240000) {
        return invalid("the requested journal size is " + std::to_string(want) +
                       " blocks; it must be between 1024 and 10240000 blocks");
      }
      if (want > free_estimate / 2) return invalid("journal size too big for the filesystem");
      pl.journal_blocks = static_cast<uint32_t>(want);
    } else {
      pl.journal_blocks = static_cast<uint32_t>(def);
    }
  }

  sb.s_uuid = opt.uuid ? *opt.uuid : random_uuid();
  if (sb.has_incompat(incompat::kCsumSeed)) sb.s_checksum_seed = disk::crc32c(~0u, disk::as_bytes(sb.s_uuid.data(), 16));
  sb.s_def_hash_version = 1;  // half_md4
  {
    std::array<uint8_t, 16> seed = opt.hash_seed ? *opt.hash_seed : random_uuid();
    for (int i = 0; i < 4; i++) sb.s_hash_seed[i] = disk::le32(disk::as_bytes(seed.data(), 16), i * 4);
  }
  std::memcpy(sb.s_volume_name.data(), opt.label.data(), std::min<size_t>(opt.label.size(), 16));
  if (sb.has_metadata_csum()) sb.s_checksum_type = disk::kChecksumTypeCrc32c;
  if (sb.has_incompat(incompat::kFlexBg) || sb.has_ro_compat(ro_compat::kHugeFile) ||
      sb.has_ro_compat(ro_compat::kGdtCsum) || sb.has_ro_compat(ro_compat::kDirNlink) ||
      sb.has_metadata_csum() || sb.has_ro_compat(ro_compat::kExtraIsize)) {
    sb.s_kbytes_written = 1;
  }

  for (uint32_t i = 0; i < pl.groups; i++) UEXT_TRY(allocate_group_table(pl, i));
  pl.overhead = pl.bmap.count_set(sb.s_first_data_block, pl.blocks - 1);

  const bool zero = !opt.assume_zeroed;
  // The end of the device (old RAID metadata), as mke2fs.
  {
    uint64_t rsv = 65536 / pl.bs;
    uint64_t start = pl.blocks & ~(rsv - 1);
    if (start > rsv) start -= rsv;
    if (start > 0 && zero) pl.zero_ranges.push_back({start, pl.blocks - start});
  }
  // Inode tables (flagged zeroed: they are, once written).
  for (uint32_t i = 0; i < pl.groups; i++) {
    pl.g[i].flags |= disk::kBgInodeZeroed;
    if (zero) {
      auto& zr = pl.zero_ranges;
      if (!zr.empty() && zr.back().first + zr.back().second == pl.g[i].inode_table) {
        zr.back().second += pl.itb_per_group;
      } else {
        zr.push_back({pl.g[i].inode_table, pl.itb_per_group});
      }
    }
  }
  // Reserved inodes carry valid checksums with metadata_csum.
  if (sb.has_metadata_csum()) {
    for (uint32_t ino = 1; ino < sb.s_first_ino; ino++) pl.put_inode(ino, disk::Inode{});
  }
  UEXT_TRY(create_directories(pl));
  for (uint32_t ino = disk::kRootIno + 1; ino < sb.s_first_ino; ino++) pl.use_inode(ino, false);
  // Bad blocks inode: empty, with its times.
  pl.use_inode(1, false);
  {
    disk::Inode bad;
    bad.i_atime = bad.i_mtime = bad.i_ctime = pl.ts();
    pl.put_inode(1, bad);
  }
  if (sb.has_compat(compat::kResizeInode)) UEXT_TRY(create_resize_inode(pl));
  if (sb.has_compat(compat::kHasJournal) && pl.journal_blocks) UEXT_TRY(create_journal(pl, zero));
  pl.overhead += pl.journal_blocks + sb.s_first_data_block;
  sb.s_overhead_clusters = static_cast<uint32_t>(pl.overhead);
  if (sb.has_ro_compat(ro_compat::kQuota)) UEXT_TRY(create_quota_files(pl));
  return pl;
}

// Bitmaps, descriptors and counts from the plan's state.
void finish_accounting(Plan& pl) {
  auto& sb = pl.sb;
  uint64_t free_blocks = 0;
  uint32_t free_inodes = 0;
  for (uint32_t i = 0; i < pl.groups; i++) {
    free_blocks += pl.group_free_blocks(i);
    uint32_t ipg = sb.s_inodes_per_group;
    free_inodes += ipg - static_cast<uint32_t>(pl.imap.count_set(uint64_t{i} * ipg, uint64_t{i} * ipg + ipg - 1));
  }
  sb.s_free_blocks_count = free_blocks;
  sb.s_free_inodes_count = free_inodes;
}

MkfsLayout layout_of(const Plan& pl) {
  const auto& sb = pl.sb;
  MkfsLayout l;
  l.block_size = pl.bs;
  l.blocks_count = pl.blocks;
  l.reserved_blocks = sb.s_r_blocks_count;
  l.free_blocks = sb.s_free_blocks_count;
  l.first_data_block = sb.s_first_data_block;
  l.blocks_per_group = sb.s_blocks_per_group;
  l.group_count = pl.groups;
  l.inodes_count = sb.s_inodes_count;
  l.free_inodes = sb.s_free_inodes_count;
  l.inodes_per_group = sb.s_inodes_per_group;
  l.inode_size = sb.s_inode_size;
  l.inode_blocks_per_group = pl.itb_per_group;
  l.desc_size = sb.desc_size();
  l.desc_blocks = pl.desc_blocks;
  l.reserved_gdt_blocks = sb.s_reserved_gdt_blocks;
  l.feature_compat = sb.s_feature_compat;
  l.feature_ro_compat = sb.s_feature_ro_compat;
  l.feature_incompat = sb.s_feature_incompat;
  l.features = disk::feature_names(sb.s_feature_compat, sb.s_feature_ro_compat, sb.s_feature_incompat);
  l.log_groups_per_flex = sb.s_log_groups_per_flex;
  l.journal_blocks = sb.has_compat(compat::kHasJournal) ? pl.journal_blocks : 0;
  l.journal_first_block = pl.journal_first;
  l.overhead_clusters = pl.overhead;
  l.root_dir_block = pl.root_block;
  l.lost_found_blocks = pl.lpf_blocks;
  for (uint32_t i = 0; i < pl.groups; i++) {
    MkfsGroup mg;
    mg.first_block = pl.first_block_of(i);
    mg.last_block = pl.last_block_of(i);
    auto loc = pl.super_loc(i);
    mg.has_super = loc.super_blk != 0 || i == 0;
    if (loc.old_desc_blk) {
      mg.gdt_block = loc.old_desc_blk;
      mg.gdt_blocks = pl.desc_blocks;
      mg.reserved_gdt_blocks = sb.s_reserved_gdt_blocks;
    } else if (loc.new_desc_blk) {
      mg.gdt_block = loc.new_desc_blk;
      mg.gdt_blocks = 1;
    }
    mg.block_bitmap = pl.g[i].block_bitmap;
    mg.inode_bitmap = pl.g[i].inode_bitmap;
    mg.inode_table = pl.g[i].inode_table;
    mg.free_blocks = pl.group_free_blocks(i);
    uint32_t ipg = sb.s_inodes_per_group;
    mg.free_inodes = ipg - static_cast<uint32_t>(pl.imap.count_set(uint64_t{i} * ipg, uint64_t{i} * ipg + ipg - 1));
    mg.used_dirs = pl.g[i].used_dirs;
    mg.flags = pl.g[i].flags;
    mg.itable_unused = pl.g[i].itable_unused;
    l.groups.push_back(mg);
  }
  return l;
}

// ---------------------------------------------------------------------------
// Writing.

class Writer {
 public:
  explicit Writer(BlockDevice& dev, uint32_t bs) : dev_(dev), bs_(bs) {}
  uint64_t bytes_written = 0;

  Status write(uint64_t blk, Bytes data) {
    bytes_written += data.size();
    Status st = dev_.write(blk * bs_, data);
    if (!st) return std::move(st).error().with_context("writing block " + std::to_string(blk));
    return {};
  }
  // Makes blocks read as zeros. BlockDevice has no discard or zero-range
  // call, so each chunk is read first and written only where it is not
  // already zero: a sparse image stays sparse (as mke2fs keeps it, with
  // fallocate), and rewriting a used image costs reads, not writes.
  Status zero(uint64_t blk, uint64_t count) {
    static const std::vector<std::byte> zeros(4u << 20, std::byte{0});
    std::vector<std::byte> buf(zeros.size());
    const uint64_t per = zeros.size() / bs_;
    while (count) {
      uint64_t n = std::min(count, per);
      const size_t len = static_cast<size_t>(n * bs_);
      Status st = dev_.read(blk * bs_, std::span<std::byte>(buf.data(), len));
      if (!st) return std::move(st).error().with_context("reading block " + std::to_string(blk));
      // Write back only the 64 KiB pieces that hold data.
      constexpr size_t kPiece = 64 * 1024;
      for (size_t off = 0; off < len; off += kPiece) {
        size_t plen = std::min(kPiece, len - off);
        if (std::memcmp(buf.data() + off, zeros.data(), plen) == 0) continue;
        bytes_written += plen;
        Status ws = dev_.write(blk * bs_ + off, Bytes(zeros.data(), plen));
        if (!ws) return std::move(ws).error().with_context("zeroing block " + std::to_string(blk + off / bs_));
      }
      blk += n;
      count -= n;
    }
    return {};
  }
  // Writes a map of blocks, coalescing neighbours into one request each.
  Status write_blocks(const std::map<uint64_t, std::vector<std::byte>>& blocks) {
    std::vector<std::byte> run;
    uint64_t run_start = 0;
    for (const auto& [blk, data] : blocks) {
      if (!run.empty() && (run_start + run.size() / bs_ != blk || run.size() >= (8u << 20))) {
        UEXT_TRY(write(run_start, run));
        run.clear();
      }
      if (run.empty()) run_start = blk;
      run.insert(run.end(), data.begin(), data.end());
    }
    if (!run.empty()) UEXT_TRY(write(run_start, run));
    return {};
  }

 private:
  BlockDevice& dev_;
  uint32_t bs_;
};

// Fills in bitmaps, inode table blocks, descriptors and the superblock
// copies; `kbytes` is what s_kbytes_written says.
void build_metadata(Plan& pl, bool zero) {
  auto& sb = pl.sb;
  const uint32_t bs = pl.bs;

  // Inode table blocks holding live (or checksummed reserved) inodes.
  for (const auto& [ino, slot] : pl.inodes) {
    auto loc = disk::inode_location(sb, ino);
    uint64_t blk = pl.g[loc.group].inode_table + loc.table_offset / bs;
    auto& buf = pl.block_buffer(blk);
    std::memcpy(buf.data() + loc.table_offset % bs, slot.data(), slot.size());
  }

  // Bitmaps: written for initialised groups; uninitialised ones are only
  // zeroed (unless the device is known to be zero) and keep checksum 0.
  const uint32_t ipg = sb.s_inodes_per_group;
  for (uint32_t i = 0; i < pl.groups; i++) {
    auto& gs = pl.g[i];
    if (pl.csum && (gs.flags & disk::kBgBlockUninit)) {
      if (zero) pl.block_buffer(gs.block_bitmap);
    } else {
      auto& buf = pl.block_buffer(gs.block_bitmap);
      std::fill(buf.begin(), buf.end(), std::byte{0xFF});
      uint64_t first = pl.first_block_of(i), last = pl.last_block_of(i);
      for (uint64_t bit = 0; bit < sb.s_blocks_per_group; bit++) {
        uint64_t b = first + bit;
        if (b <= last && !pl.bmap.test(b)) buf[bit / 8] &= static_cast<std::byte>(~(1u << (bit % 8)));
      }
      if (sb.has_metadata_csum()) gs.block_bitmap_csum = disk::block_bitmap_checksum(sb, buf);
    }
    if (pl.csum && (gs.flags & disk::kBgInodeUninit)) {
      if (zero) pl.block_buffer(gs.inode_bitmap);
    } else {
      auto& buf = pl.block_buffer(gs.inode_bitmap);
      std::fill(buf.begin(), buf.end(), std::byte{0xFF});
      for (uint32_t k = 0; k < ipg; k++) {
        if (!pl.imap.test(uint64_t{i} * ipg + k)) buf[k / 8] &= static_cast<std::byte>(~(1u << (k % 8)));
      }
      if (sb.has_metadata_csum()) gs.inode_bitmap_csum = disk::inode_bitmap_checksum(sb, buf);
    }
  }
  finish_accounting(pl);
}

std::vector<std::byte> descriptor_table(const Plan& pl) {
  const auto& sb = pl.sb;
  const uint32_t ds = sb.desc_size();
  std::vector<std::byte> gdt(static_cast<size_t>(pl.desc_blocks) * pl.bs, std::byte{0});
  const uint32_t ipg = sb.s_inodes_per_group;
  for (uint32_t i = 0; i < pl.groups; i++) {
    const auto& gs = pl.g[i];
    disk::GroupDesc gd;
    gd.bg_block_bitmap = gs.block_bitmap;
    gd.bg_inode_bitmap = gs.inode_bitmap;
    gd.bg_inode_table = gs.inode_table;
    gd.bg_free_blocks_count = pl.group_free_blocks(i);
    gd.bg_free_inodes_count =
        ipg - static_cast<uint32_t>(pl.imap.count_set(uint64_t{i} * ipg, uint64_t{i} * ipg + ipg - 1));
    gd.bg_used_dirs_count = gs.used_dirs;
    gd.bg_flags = gs.flags;
    gd.bg_block_bitmap_csum = gs.block_bitmap_csum;
    gd.bg_inode_bitmap_csum = gs.inode_bitmap_csum;
    gd.bg_itable_unused = gs.itable_unused;
    disk::encode_group_desc(sb, i, gd, MutableBytes(gdt.data() + static_cast<size_t>(i) * ds, ds));
  }
  return gdt;
}

// Backup superblocks, descriptor tables and reserved GDT blocks, into the
// block map (the primary superblock is written last, separately).
void place_descriptors(Plan& pl, bool zero) {
  auto& sb = pl.sb;
  const auto gdt = descriptor_table(pl);
  const bool meta_bg = sb.has_incompat(incompat::kMetaBg);
  uint64_t old_desc_blocks = pl.desc_blocks;
  if (meta_bg) old_desc_blocks = std::min<uint64_t>(sb.s_first_meta_bg, pl.desc_blocks);
  for (uint32_t i = 0; i < pl.groups; i++) {
    auto loc = pl.super_loc(i);
    if (i && loc.super_blk) {
      // Backups: s_block_group_nr set and the valid bit clear, as mke2fs
      // (ext2fs_flush) writes them.
      disk::Superblock copy = sb;
      copy.s_block_group_nr = static_cast<uint16_t>(std::min<uint32_t>(i, 65535));
      copy.s_state = static_cast<uint16_t>(sb.s_state & ~disk::kStateValid);
      auto& buf = pl.block_buffer(loc.super_blk);
      std::fill(buf.begin(), buf.end(), std::byte{0});
      disk::encode_superblock(copy, MutableBytes(buf.data(), disk::kSuperblockSize));
    }
    if (loc.old_desc_blk) {
      for (uint64_t k = 0; k < old_desc_blocks; k++) {
        auto& buf = pl.block_buffer(loc.old_desc_blk + k);
        std::memcpy(buf.data(), gdt.data() + k * pl.bs, pl.bs);
      }
      if (!meta_bg && i != 0 && zero) {
        for (uint64_t k = 0; k < sb.s_reserved_gdt_blocks; k++) {
          uint64_t blk = loc.old_desc_blk + pl.desc_blocks + k;
          if (blk < pl.blocks) pl.block_buffer(blk);
        }
      }
    }
    if (loc.new_desc_blk) {
      uint32_t meta_group = i / pl.desc_per_block;
      auto& buf = pl.block_buffer(loc.new_desc_blk);
      std::memcpy(buf.data(), gdt.data() + static_cast<size_t>(meta_group) * pl.bs, pl.bs);
    }
  }
}

}  // namespace

Result<FsType> parse_fs_type(const std::string& name) {
  if (name == "ext2") return FsType::kExt2;
  if (name == "ext3") return FsType::kExt3;
  if (name == "ext4") return FsType::kExt4;
  return invalid("unknown filesystem type '" + name + "' (ext2, ext3 or ext4)");
}

Result<std::array<uint8_t, 16>> parse_uuid(const std::string& text) {
  std::array<uint8_t, 16> u{};
  if (text.size() != 36) return invalid("could not parse UUID '" + text + "'");
  size_t k = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return invalid("could not parse UUID '" + text + "'");
      i++;
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) return invalid("could not parse UUID '" + text + "'");
    u[k++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return u;
}

Status validate_mkfs_options(const MkfsOptions& options) {
  // resolve_params checks everything; give it a size where nothing but
  // the options themselves can fail (1 GiB, or the requested size).
  MkfsOptions o = options;
  uint64_t size = o.size_bytes ? o.size_bytes : (1ull << 30);
  if (o.size_bytes == 0) o.inode_count = 0;
  auto p = resolve_params(size, o);
  if (!p) {
    const std::string& m = p.error().message();
    // Only option errors, not size-dependent ones.
    if (m.find("too small") != std::string::npos || m.find("too big") != std::string::npos ||
        m.find("too many inodes") != std::string::npos || m.find("larger than the device") != std::string::npos) {
      return {};
    }
    return std::move(p).error();
  }
  return {};
}

Result<MkfsLayout> compute_mkfs_layout(uint64_t device_bytes, const MkfsOptions& options) {
  UEXT_ASSIGN_OR_RETURN(Plan pl, make_plan(device_bytes, options));
  finish_accounting(pl);
  return layout_of(pl);
}

Status make_filesystem(BlockDevice& device, const MkfsOptions& options) {
  if (device.read_only()) return Error(EROFS, "the device is open read-only");
  UEXT_ASSIGN_OR_RETURN(Plan pl, make_plan(device.size(), options));
  const bool zero = !options.assume_zeroed;
  build_metadata(pl, zero);
  place_descriptors(pl, false);
  Writer w(device, pl.bs);

  // Zeroed regions first (inode tables, journal, end of device), then every
  // metadata block but the primary superblock, in block order.
  std::sort(pl.zero_ranges.begin(), pl.zero_ranges.end());
  for (const auto& [start, count] : pl.zero_ranges) UEXT_TRY(w.zero(start, count));
  if (zero) {
    // Backup reserved GDT blocks hold nothing; clear stale contents.
    const auto& sb = pl.sb;
    if (!sb.has_incompat(incompat::kMetaBg)) {
      for (uint32_t i = 1; i < pl.groups; i++) {
        auto loc = pl.super_loc(i);
        if (!loc.old_desc_blk || !sb.s_reserved_gdt_blocks) continue;
        uint64_t start = loc.old_desc_blk + pl.desc_blocks;
        uint64_t n = std::min<uint64_t>(sb.s_reserved_gdt_blocks, pl.blocks - std::min(pl.blocks, start));
        if (n) UEXT_TRY(w.zero(start, n));
      }
    }
  }
  // The block holding the primary superblock is assembled last: with 4 KiB
  // blocks it is block 0, whose first 1024 bytes (boot sector) stay.
  const uint64_t sb_block = pl.sb.s_first_data_block;  // 0 or 1
  pl.blocks_out.erase(sb_block);
  UEXT_TRY(w.write_blocks(pl.blocks_out));

  // s_kbytes_written as libext2fs counts it: what was written before the
  // final flush, plus the descriptor blocks and superblock in KiB-ish.
  if (pl.sb.s_kbytes_written) {
    pl.sb.s_kbytes_written += w.bytes_written >> 10;
    pl.sb.s_kbytes_written += (pl.desc_blocks + 1) / (pl.bs / 1024);
    // Backups carry the same count: rewrite them (cheap, one block each).
    std::map<uint64_t, std::vector<std::byte>> again;
    for (uint32_t i = 1; i < pl.groups; i++) {
      auto loc = pl.super_loc(i);
      if (!loc.super_blk) continue;
      disk::Superblock copy = pl.sb;
      copy.s_block_group_nr = static_cast<uint16_t>(std::min<uint32_t>(i, 65535));
      copy.s_state = static_cast<uint16_t>(pl.sb.s_state & ~disk::kStateValid);
      auto& buf = again[loc.super_blk];
      buf.assign(pl.bs, std::byte{0});
      disk::encode_superblock(copy, MutableBytes(buf.data(), disk::kSuperblockSize));
    }
    UEXT_TRY(w.write_blocks(again));
  }
  UEXT_TRY(device.flush());

  // The primary superblock, last: bytes 1024..2047, and with blocks larger
  // than 1 KiB the rest of block 0 after it.
  pl.sb.s_block_group_nr = 0;
  std::vector<std::byte> head(pl.bs == 1024 ? 1024 : pl.bs - 1024, std::byte{0});
  disk::encode_superblock(pl.sb, MutableBytes(head.data(), disk::kSuperblockSize));
  Status st = device.write(disk::kSuperblockOffset, head);
  if (!st) return std::move(st).error().with_context("writing the superblock");
  return device.flush();
}

}  // namespace uext
