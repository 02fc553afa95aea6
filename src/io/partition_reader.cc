#include "io/partition_reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

namespace uext::io {

PartitionTable read_partition_table(const std::string& path) {
  PartitionTable table;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return table;
  auto read_at = [&](uint64_t offset, size_t len) {
    std::vector<std::byte> buf(len);
    ssize_t n = ::pread(fd, buf.data(), len, static_cast<off_t>(offset));
    buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return buf;
  };
  const auto sector0 = read_at(0, disk::kSectorSize);
  uint64_t gpt_lba = 0;
  table.partitions = disk::decode_mbr(sector0, &gpt_lba);
  if (disk::has_mbr_signature(sector0)) table.kind = "MBR";
  if (gpt_lba != 0) {
    disk::GptHeader header;
    if (disk::decode_gpt_header(read_at(gpt_lba * disk::kSectorSize, disk::kSectorSize), header)) {
      // The array is 16 KiB in every GPT written; read at most 1 MiB of it.
      const size_t len =
          static_cast<size_t>(std::min<uint64_t>(uint64_t{header.entry_count} * header.entry_size, 1u << 20));
      table.partitions = disk::decode_gpt_entries(read_at(header.entries_lba * disk::kSectorSize, len), header);
      table.kind = "GPT";
    }
  }
  ::close(fd);
  if (table.partitions.empty()) table.kind.clear();
  return table;
}

std::string describe_partitions(const PartitionTable& table) {
  std::string list;
  for (const auto& p : table.partitions) {
    if (!list.empty()) list += ", ";
    list += fmt::format("{} at offset {}, {} bytes ({} MiB), type {}", p.number, p.offset, p.size, p.size >> 20,
                        p.type);
  }
  return list;
}

}  // namespace uext::io
