// The jbd2 journal format: the journal superblock, descriptor blocks and
// their tags, commit blocks, revoke blocks, and the checksums that protect
// them. Every jbd2 field is big-endian. Pure functions, no I/O.
//
// Checksum summary (csum v2/v3 share one seed, crc32c(~0, s_uuid)):
//   journal superblock   crc32c(~0, 1024 bytes with s_checksum zeroed)
//   descriptor / revoke  crc32c(seed, block with the 4-byte tail zeroed), in the tail
//   commit block         crc32c(seed, block with h_chksum[0] zeroed), in h_chksum[0]
//   logged data block    crc32c(crc32c(seed, be32 transaction), block as logged);
//                        v3 keeps 32 bits in the tag, v2 the low 16
//   v1 (COMPAT_CHECKSUM) crc32_be chained from ~0 over every descriptor block and the
//                        blocks it tags, in the commit's h_chksum[0] (type 1, size 4)
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "disk/bytes.h"
#include "uext/status.h"

namespace uext::disk {

inline constexpr uint32_t kJbd2Magic = 0xC03B3998;
inline constexpr size_t kJbd2HeaderSize = 12;
inline constexpr size_t kJbd2SuperblockSize = 1024;
inline constexpr size_t kJbd2TailSize = 4;          // descriptor and revoke checksum tail
inline constexpr size_t kJbd2RevokeHeaderSize = 16; // header + r_count
inline constexpr uint32_t kJbd2MinJournalBlocks = 1024;
inline constexpr uint32_t kJbd2DefaultFastCommitBlocks = 256;

// h_blocktype
inline constexpr uint32_t kJbd2DescriptorBlock = 1;
inline constexpr uint32_t kJbd2CommitBlock = 2;
inline constexpr uint32_t kJbd2SuperblockV1 = 3;
inline constexpr uint32_t kJbd2SuperblockV2 = 4;
inline constexpr uint32_t kJbd2RevokeBlock = 5;
inline constexpr uint32_t kJbd2FastCommitBlock = 6;

namespace jbd2_compat {
inline constexpr uint32_t kChecksum = 0x1;  // v1 transaction checksums
}
namespace jbd2_incompat {
inline constexpr uint32_t kRevoke = 0x01;
inline constexpr uint32_t k64bit = 0x02;
inline constexpr uint32_t kAsyncCommit = 0x04;
inline constexpr uint32_t kCsumV2 = 0x08;
inline constexpr uint32_t kCsumV3 = 0x10;
inline constexpr uint32_t kFastCommit = 0x20;
inline constexpr uint32_t kKnown = kRevoke | k64bit | kAsyncCommit | kCsumV2 | kCsumV3 | kFastCommit;
}  // namespace jbd2_incompat

// Tag flags (t_flags).
inline constexpr uint32_t kJbd2FlagEscape = 0x1;    // logged copy had the magic zeroed
inline constexpr uint32_t kJbd2FlagSameUuid = 0x2;  // no 16-byte UUID follows the tag
inline constexpr uint32_t kJbd2FlagDeleted = 0x4;
inline constexpr uint32_t kJbd2FlagLastTag = 0x8;

// Checksum types (s_checksum_type, h_chksum_type).
inline constexpr uint8_t kJbd2ChecksumCrc32 = 1;
inline constexpr uint8_t kJbd2ChecksumMd5 = 2;
inline constexpr uint8_t kJbd2ChecksumSha1 = 3;
inline constexpr uint8_t kJbd2ChecksumCrc32c = 4;
inline constexpr uint8_t kJbd2Crc32ChecksumSize = 4;

struct JournalHeader {
  uint32_t h_magic = 0;
  uint32_t h_blocktype = 0;
  uint32_t h_sequence = 0;
};

JournalHeader decode_journal_header(Bytes block);
void encode_journal_header(const JournalHeader& h, MutableBytes block);

// What the block codecs need to know about a journal, derived from its
// superblock (or set by hand to build a new journal).
struct JournalFormat {
  uint32_t block_size = 4096;
  bool csum_v1 = false;  // COMPAT_CHECKSUM
  bool csum_v2 = false;
  bool csum_v3 = false;
  bool is_64bit = false;
  uint32_t csum_seed = 0;  // crc32c(~0, s_uuid), with csum v2/v3

  bool csum_v2or3() const { return csum_v2 || csum_v3; }
  // Bytes of one tag, UUID not included: 16 with v3; otherwise 8, +4 with
  // 64bit, +2 with v2 (the kernel's journal_tag_bytes()).
  size_t tag_bytes() const;
  // Bytes of descriptor/revoke block usable before the checksum tail.
  size_t usable_bytes() const { return block_size - (csum_v2or3() ? kJbd2TailSize : 0); }
};

struct JournalSuperblock {
  JournalHeader s_header;  // blocktype kJbd2SuperblockV1 or V2
  uint32_t s_blocksize = 0;
  uint32_t s_maxlen = 0;  // blocks in the journal, superblock included
  uint32_t s_first = 0;   // first log block
  uint32_t s_sequence = 0;  // first transaction expected in the log
  uint32_t s_start = 0;     // log block of that transaction; 0: log empty
  int32_t s_errno = 0;
  // Fields below count only in a v2 superblock (the has_* helpers check).
  uint32_t s_feature_compat = 0;
  uint32_t s_feature_incompat = 0;
  uint32_t s_feature_ro_compat = 0;
  std::array<uint8_t, 16> s_uuid{};
  uint32_t s_nr_users = 0;
  uint32_t s_dynsuper = 0;
  uint32_t s_max_transaction = 0;
  uint32_t s_max_trans_data = 0;
  uint8_t s_checksum_type = 0;
  uint32_t s_num_fc_blks = 0;
  uint32_t s_head = 0;  // first unused block; current only while the journal is empty
  uint32_t s_checksum = 0;
  std::array<std::array<uint8_t, 16>, 48> s_users{};

  uint32_t version() const { return s_header.h_blocktype == kJbd2SuperblockV2 ? 2 : 1; }
  bool has_compat(uint32_t f) const { return version() >= 2 && (s_feature_compat & f); }
  bool has_incompat(uint32_t f) const { return version() >= 2 && (s_feature_incompat & f); }
  bool csum_v2or3() const {
    return has_incompat(jbd2_incompat::kCsumV2) || has_incompat(jbd2_incompat::kCsumV3);
  }
  // Fast commit blocks at the end of the journal (0 without the feature).
  uint32_t fast_commit_blocks() const;
  // One past the last block of the circular log (j_last): s_maxlen minus
  // the fast commit area.
  uint32_t log_end() const { return s_maxlen - fast_commit_blocks(); }
  JournalFormat format() const;
  std::string features_string() const;  // "journal_64bit journal_checksum_v3", as dumpe2fs names them
};

// Decodes and validates a journal superblock as the kernel does before
// recovery: magic and blocktype, s_blocksize equal to `block_size`,
// s_maxlen at most `journal_blocks` (pass 0 to skip), s_first inside the
// journal, s_start inside the log, known incompat features (unknown ones
// are ENOTSUP), at most one checksum version, checksum type crc32c and a
// matching checksum with v2/v3. EUCLEAN / EBADMSG / ENOTSUP with a message
// naming the field.
Result<JournalSuperblock> decode_journal_superblock(Bytes raw, uint32_t block_size,
                                                    uint64_t journal_blocks);
// Writes every field into raw (1024 bytes at least), leaving other bytes
// alone, and recomputes s_checksum with csum v2/v3.
void encode_journal_superblock(const JournalSuperblock& sb, MutableBytes raw);
uint32_t journal_superblock_checksum(Bytes raw);

struct JournalBlockTag {
  uint64_t t_blocknr = 0;  // t_blocknr_high counts only with 64bit
  uint32_t t_flags = 0;
  uint32_t t_checksum = 0;  // 32 bits with v3, 16 with v2
  std::optional<std::array<uint8_t, 16>> uuid;  // present without SAME_UUID
};

struct DescriptorBlock {
  JournalHeader header;
  // Tags in order, up to the one with LAST_TAG or the end of the usable
  // space (the kernel's count_tags()): each one names the next log block.
  std::vector<JournalBlockTag> tags;
  uint32_t tail_checksum = 0;  // with csum v2/v3
};

// Never fails: a descriptor is whatever its bytes say, as in the kernel;
// the tail checksum (verify_block_tail) says whether to trust it.
DescriptorBlock decode_descriptor_block(Bytes block, const JournalFormat& fmt);
// Writes header and tags (a UUID after each tag without SAME_UUID) into
// `block`; callers set LAST_TAG on the last tag. Leaves the other bytes
// alone (start from a zeroed block) and sets the tail checksum with v2/v3.
// EINVAL when the tags do not fit.
Status encode_descriptor_block(const DescriptorBlock& d, const JournalFormat& fmt, MutableBytes block);

struct CommitBlock {
  JournalHeader header;
  uint8_t h_chksum_type = 0;
  uint8_t h_chksum_size = 0;
  std::array<uint32_t, 8> h_chksum{};
  uint64_t h_commit_sec = 0;
  uint32_t h_commit_nsec = 0;
};

CommitBlock decode_commit_block(Bytes block);
// With csum v2/v3 recomputes h_chksum[0] over the encoded block; v1
// callers put their crc32_be sum in h_chksum[0] themselves.
void encode_commit_block(const CommitBlock& c, const JournalFormat& fmt, MutableBytes block);

struct RevokeBlock {
  JournalHeader header;
  uint32_t r_count = 0;  // bytes used, header included
  std::vector<uint64_t> blocks;  // 8-byte records with 64bit, else 4
  uint32_t tail_checksum = 0;
};

// EUCLEAN when r_count exceeds the usable part of the block (the kernel
// refuses such a block with EINVAL).
Result<RevokeBlock> decode_revoke_block(Bytes block, const JournalFormat& fmt);
// Sets r_count from blocks.size(); EINVAL when they do not fit.
Status encode_revoke_block(const RevokeBlock& r, const JournalFormat& fmt, MutableBytes block);
// Revoke records that fit one block.
size_t revoke_records_per_block(const JournalFormat& fmt);

// Checksums (see the table at the top).
uint32_t jbd2_csum_seed(const std::array<uint8_t, 16>& uuid);
uint32_t block_tail_checksum(Bytes block, uint32_t seed);
bool verify_block_tail(Bytes block, const JournalFormat& fmt);  // true without v2/v3
uint32_t commit_block_checksum(Bytes block, uint32_t seed);
bool verify_commit_block(Bytes block, const JournalFormat& fmt);  // true without v2/v3
uint32_t data_block_checksum(uint32_t seed, uint32_t sequence, Bytes data);
// The value a tag stores for `data` (full with v3, low 16 bits with v2).
uint32_t tag_checksum(const JournalFormat& fmt, uint32_t sequence, Bytes data);
bool verify_tag_checksum(const JournalFormat& fmt, const JournalBlockTag& tag, uint32_t sequence,
                         Bytes data);  // true without v2/v3

// Transaction IDs compare modulo 2^32, as the kernel's tid_gt/tid_geq.
inline bool tid_gt(uint32_t x, uint32_t y) { return static_cast<int32_t>(x - y) > 0; }
inline bool tid_geq(uint32_t x, uint32_t y) { return static_cast<int32_t>(x - y) >= 0; }

const char* jbd2_block_type_name(uint32_t blocktype);

}  // namespace uext::disk
