// The partition table at the start of an image file: an MBR's primary
// entries, or the GPT its protective entry points at. For opening a
// filesystem by partition number (Options::image_partition) and for naming
// the partitions when a whole-disk image is opened as a filesystem.
#pragma once

#include <string>
#include <vector>

#include "disk/partition_table.h"

namespace uext::io {

struct PartitionTable {
  std::string kind;  // "MBR", "GPT", or empty when the file starts with neither
  std::vector<disk::Partition> partitions;
};

// Reads what it can; a file it cannot read has no table.
PartitionTable read_partition_table(const std::string& path);

// "1 at offset 1048576, 83886080 bytes (80 MiB), type 0x83, 2 at ...".
std::string describe_partitions(const PartitionTable& table);

}  // namespace uext::io
