#include "disk/quota.h"

#include <algorithm>

#include <fmt/format.h>

namespace uext::disk::quota {
namespace {

constexpr uint32_t kMagic[kTypes] = {0xD9C01F11, 0xD9C01927, 0xD9C03F14};
constexpr uint32_t kVersion = 1;

// Header, then info at byte 8.
namespace off {
constexpr size_t kMagic = 0, kVersion = 4, kBlockGrace = 8, kInodeGrace = 12, kFlags = 16, kBlocks = 20,
                 kFreeBlock = 24, kFreeEntry = 28;
}  // namespace off

// Entry fields.
namespace entry_off {
constexpr size_t kId = 0, kCurInodes = 24, kCurSpace = 48, kInodeTime = 64;
}  // namespace entry_off

}  // namespace

const char* type_name(Type t) {
  switch (t) {
    case Type::kUser: return "user";
    case Type::kGroup: return "group";
    case Type::kProject: return "project";
  }
  return "?";
}

Result<Info> decode_info(Bytes block0, Type type) {
  if (block0.size() < kBlockSize) return Error(kErrCorrupted, "quota file shorter than its header block");
  const uint32_t magic = le32(block0, off::kMagic);
  if (magic != kMagic[static_cast<int>(type)]) {
    return Error(kErrCorrupted, fmt::format("{} quota file: magic {:#x}, expected {:#x}", type_name(type), magic,
                                            kMagic[static_cast<int>(type)]));
  }
  const uint32_t version = le32(block0, off::kVersion);
  if (version != kVersion) {
    return Error(kErrCorrupted, fmt::format("{} quota file: format version {}, only 1 (vfsv1) is known",
                                            type_name(type), version));
  }
  Info info;
  info.block_grace = le32(block0, off::kBlockGrace);
  info.inode_grace = le32(block0, off::kInodeGrace);
  info.flags = le32(block0, off::kFlags);
  info.blocks = le32(block0, off::kBlocks);
  info.free_block = le32(block0, off::kFreeBlock);
  info.free_entry = le32(block0, off::kFreeEntry);
  if (info.blocks <= kTreeRoot) {
    return Error(kErrCorrupted, fmt::format("{} quota file: {} blocks, too few to hold its tree", type_name(type),
                                            info.blocks));
  }
  return info;
}

void encode_info(MutableBytes block0, const Info& info) {
  put_le32(block0, off::kBlockGrace, info.block_grace);
  put_le32(block0, off::kInodeGrace, info.inode_grace);
  put_le32(block0, off::kFlags, info.flags);
  put_le32(block0, off::kBlocks, info.blocks);
  put_le32(block0, off::kFreeBlock, info.free_block);
  put_le32(block0, off::kFreeEntry, info.free_entry);
}

DataHeader decode_data_header(Bytes block) {
  return DataHeader{le32(block, 0), le32(block, 4), le16(block, 8)};
}

void encode_data_header(MutableBytes block, const DataHeader& header) {
  put_le32(block, 0, header.next_free);
  put_le32(block, 4, header.prev_free);
  put_le16(block, 8, header.entries);
}

bool entry_unused(Bytes entry) {
  return std::all_of(entry.begin(), entry.begin() + kEntrySize, [](std::byte b) { return b == std::byte{0}; });
}

uint32_t entry_id(Bytes entry) { return le32(entry, entry_off::kId); }

Usage entry_usage(Bytes entry) {
  return Usage{le64(entry, entry_off::kCurSpace), le64(entry, entry_off::kCurInodes)};
}

void set_entry_usage(MutableBytes entry, uint32_t id, const Usage& usage) {
  // The placeholder deadline of an empty id-0 entry is not a deadline.
  if (le64(entry, entry_off::kInodeTime) == 1) {
    put_le64(entry, entry_off::kInodeTime, 0);
    if (!entry_unused(entry)) put_le64(entry, entry_off::kInodeTime, 1);
  }
  put_le32(entry, entry_off::kId, id);
  put_le64(entry, entry_off::kCurSpace, usage.space);
  put_le64(entry, entry_off::kCurInodes, usage.inodes);
  // Id 0 with no usage, limits or deadlines would read as a free slot.
  if (entry_unused(entry)) put_le64(entry, entry_off::kInodeTime, 1);
}

std::vector<std::byte> build_file(Type type, std::vector<IdUsage> ids) {
  std::sort(ids.begin(), ids.end(), [](const IdUsage& a, const IdUsage& b) { return a.id < b.id; });
  std::vector<std::byte> file(2 * kBlockSize, std::byte{0});
  auto block = [&](uint32_t n) { return MutableBytes(file.data() + size_t{n} * kBlockSize, kBlockSize); };
  auto new_block = [&]() {
    file.resize(file.size() + kBlockSize, std::byte{0});
    return static_cast<uint32_t>(file.size() / kBlockSize - 1);
  };
  uint32_t data = 0;  // the data block being filled
  uint16_t in_data = kEntriesPerBlock;
  for (const IdUsage& e : ids) {
    // Down the tree from the root, making the tree blocks this id needs;
    // the last level points at the data block (a new one once the last is
    // full), made after the tree blocks above it, as the kernel and
    // e2fsprogs order them.
    uint32_t node = kTreeRoot;
    for (int depth = 0; depth < kTreeDepth; depth++) {
      const uint32_t slot = tree_index(e.id, depth);
      uint32_t next = tree_ref(block(node), slot);
      if (next == 0) {
        if (depth == kTreeDepth - 1) {
          if (in_data == kEntriesPerBlock) {
            data = new_block();
            in_data = 0;
          }
          next = data;
        } else {
          next = new_block();
        }
        set_tree_ref(block(node), slot, next);
      }
      node = next;
    }
    set_entry_usage(block(data).subspan(entry_offset(in_data), kEntrySize), e.id, e.usage);
    in_data++;
    encode_data_header(block(data), DataHeader{0, 0, in_data});
  }
  put_le32(block(0), off::kMagic, kMagic[static_cast<int>(type)]);
  put_le32(block(0), off::kVersion, kVersion);
  Info info;
  info.block_grace = info.inode_grace = 7 * 24 * 3600;
  info.blocks = static_cast<uint32_t>(file.size() / kBlockSize);
  if (data != 0 && in_data < kEntriesPerBlock) info.free_entry = data;
  encode_info(block(0), info);
  return file;
}

}  // namespace uext::disk::quota
