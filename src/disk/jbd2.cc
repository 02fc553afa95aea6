#include "disk/jbd2.h"

#include <fmt/format.h>

#include "disk/checksum.h"

namespace uext::disk {
namespace {

// Journal superblock field offsets.
constexpr size_t kSbBlocksize = 0x0C;
constexpr size_t kSbMaxlen = 0x10;
constexpr size_t kSbFirst = 0x14;
constexpr size_t kSbSequence = 0x18;
constexpr size_t kSbStart = 0x1C;
constexpr size_t kSbErrno = 0x20;
constexpr size_t kSbCompat = 0x24;
constexpr size_t kSbIncompat = 0x28;
constexpr size_t kSbRoCompat = 0x2C;
constexpr size_t kSbUuid = 0x30;
constexpr size_t kSbNrUsers = 0x40;
constexpr size_t kSbDynsuper = 0x44;
constexpr size_t kSbMaxTransaction = 0x48;
constexpr size_t kSbMaxTransData = 0x4C;
constexpr size_t kSbChecksumType = 0x50;
constexpr size_t kSbNumFcBlks = 0x54;
constexpr size_t kSbHead = 0x58;
constexpr size_t kSbChecksum = 0xFC;
constexpr size_t kSbUsers = 0x100;

// Commit block field offsets.
constexpr size_t kCommitChksumType = 0x0C;
constexpr size_t kCommitChksumSize = 0x0D;
constexpr size_t kCommitChksum = 0x10;
constexpr size_t kCommitSec = 0x30;
constexpr size_t kCommitNsec = 0x38;

// crc32c of `block` as if the 4 bytes at `field` were zero.
uint32_t crc32c_with_zeroed_field(uint32_t seed, Bytes block, size_t field) {
  static constexpr std::byte kZero[4] = {};
  uint32_t crc = crc32c(seed, block.first(field));
  crc = crc32c(crc, Bytes(kZero, 4));
  return crc32c(crc, block.subspan(field + 4));
}

template <size_t N>
std::array<uint8_t, N> read_array(Bytes b, size_t off) {
  std::array<uint8_t, N> out{};
  for (size_t i = 0; i < N; ++i) out[i] = le8(b, off + i);
  return out;
}

template <size_t N>
void write_array(MutableBytes b, size_t off, const std::array<uint8_t, N>& a) {
  for (size_t i = 0; i < N; ++i) put_le8(b, off + i, a[i]);
}

Error corrupt(const std::string& what) { return Error(kErrCorrupted, "journal superblock: " + what); }

}  // namespace

size_t JournalFormat::tag_bytes() const {
  if (csum_v3) return 16;
  size_t n = 8;            // t_blocknr, t_checksum, t_flags
  if (is_64bit) n += 4;    // t_blocknr_high
  if (csum_v2) n += 2;     // the kernel counts two bytes more with v2
  return n;
}

JournalHeader decode_journal_header(Bytes block) {
  return {be32(block, 0), be32(block, 4), be32(block, 8)};
}

void encode_journal_header(const JournalHeader& h, MutableBytes block) {
  put_be32(block, 0, h.h_magic);
  put_be32(block, 4, h.h_blocktype);
  put_be32(block, 8, h.h_sequence);
}

uint32_t JournalSuperblock::fast_commit_blocks() const {
  if (!has_incompat(jbd2_incompat::kFastCommit)) return 0;
  return s_num_fc_blks ? s_num_fc_blks : kJbd2DefaultFastCommitBlocks;
}

JournalFormat JournalSuperblock::format() const {
  JournalFormat f;
  f.block_size = s_blocksize;
  f.csum_v1 = has_compat(jbd2_compat::kChecksum);
  f.csum_v2 = has_incompat(jbd2_incompat::kCsumV2);
  f.csum_v3 = has_incompat(jbd2_incompat::kCsumV3);
  f.is_64bit = has_incompat(jbd2_incompat::k64bit);
  if (f.csum_v2or3()) f.csum_seed = jbd2_csum_seed(s_uuid);
  return f;
}

std::string JournalSuperblock::features_string() const {
  static constexpr const char* kCompat[] = {"journal_checksum"};
  static constexpr const char* kIncompat[] = {"journal_incompat_revoke", "journal_64bit",
                                              "journal_async_commit", "journal_checksum_v2",
                                              "journal_checksum_v3"};
  std::string out;
  auto list = [&](uint32_t mask, char kind, const char* const* names, size_t n) {
    for (unsigned bit = 0; bit < 32; ++bit) {
      if (!(mask & (1u << bit))) continue;
      if (!out.empty()) out += ' ';
      out += bit < n ? std::string(names[bit]) : fmt::format("FEATURE_{}{}", kind, bit);
    }
  };
  list(s_feature_compat, 'C', kCompat, 1);
  list(s_feature_incompat, 'I', kIncompat, 5);
  list(s_feature_ro_compat, 'R', nullptr, 0);
  return out.empty() ? "(none)" : out;
}

Result<JournalSuperblock> decode_journal_superblock(Bytes raw, uint32_t block_size,
                                                    uint64_t journal_blocks) {
  if (raw.size() < kJbd2SuperblockSize) return corrupt(fmt::format("only {} bytes", raw.size()));
  JournalSuperblock sb;
  sb.s_header = decode_journal_header(raw);
  sb.s_blocksize = be32(raw, kSbBlocksize);
  sb.s_maxlen = be32(raw, kSbMaxlen);
  sb.s_first = be32(raw, kSbFirst);
  sb.s_sequence = be32(raw, kSbSequence);
  sb.s_start = be32(raw, kSbStart);
  sb.s_errno = static_cast<int32_t>(be32(raw, kSbErrno));
  sb.s_feature_compat = be32(raw, kSbCompat);
  sb.s_feature_incompat = be32(raw, kSbIncompat);
  sb.s_feature_ro_compat = be32(raw, kSbRoCompat);
  sb.s_uuid = read_array<16>(raw, kSbUuid);
  sb.s_nr_users = be32(raw, kSbNrUsers);
  sb.s_dynsuper = be32(raw, kSbDynsuper);
  sb.s_max_transaction = be32(raw, kSbMaxTransaction);
  sb.s_max_trans_data = be32(raw, kSbMaxTransData);
  sb.s_checksum_type = le8(raw, kSbChecksumType);
  sb.s_num_fc_blks = be32(raw, kSbNumFcBlks);
  sb.s_head = be32(raw, kSbHead);
  sb.s_checksum = be32(raw, kSbChecksum);
  for (size_t i = 0; i < sb.s_users.size(); ++i) sb.s_users[i] = read_array<16>(raw, kSbUsers + 16 * i);

  if (sb.s_header.h_magic != kJbd2Magic) return corrupt(fmt::format("bad magic {:#010x}", sb.s_header.h_magic));
  if (sb.s_header.h_blocktype != kJbd2SuperblockV1 && sb.s_header.h_blocktype != kJbd2SuperblockV2)
    return corrupt(fmt::format("blocktype {} ({}) is not a journal superblock", sb.s_header.h_blocktype,
                               jbd2_block_type_name(sb.s_header.h_blocktype)));
  if (block_size != 0 && sb.s_blocksize != block_size)
    return corrupt(fmt::format("s_blocksize {} differs from the filesystem block size {}", sb.s_blocksize,
                               block_size));
  if (journal_blocks != 0 && sb.s_maxlen > journal_blocks)
    return corrupt(fmt::format("s_maxlen {} is larger than the journal ({} blocks)", sb.s_maxlen, journal_blocks));
  if (sb.s_first == 0 || sb.s_first >= sb.s_maxlen)
    return corrupt(fmt::format("s_first {} is not inside the journal (s_maxlen {})", sb.s_first, sb.s_maxlen));
  if (sb.version() >= 2) {
    if (uint32_t unknown = sb.s_feature_incompat & ~jbd2_incompat::kKnown)
      return Error(ENOTSUP, fmt::format("journal superblock: unknown incompat features {:#x}", unknown));
    if (sb.s_feature_ro_compat)
      return Error(ENOTSUP,
                   fmt::format("journal superblock: unknown ro_compat features {:#x}", sb.s_feature_ro_compat));
    uint32_t fc = sb.fast_commit_blocks();
    if (sb.s_maxlen < kJbd2MinJournalBlocks || sb.s_maxlen - kJbd2MinJournalBlocks < fc)
      return corrupt(fmt::format("s_maxlen {} is too short (minimum {} plus {} fast commit blocks)", sb.s_maxlen,
                                 kJbd2MinJournalBlocks, fc));
    bool v2 = sb.has_incompat(jbd2_incompat::kCsumV2), v3 = sb.has_incompat(jbd2_incompat::kCsumV3);
    if (v2 && v3) return corrupt("both journal_checksum_v2 and journal_checksum_v3 are set");
    if ((v2 || v3) && sb.has_compat(jbd2_compat::kChecksum))
      return corrupt("journal_checksum (v1) is set together with v2/v3");
    if (v2 || v3) {
      if (sb.s_checksum_type != kJbd2ChecksumCrc32c)
        return corrupt(fmt::format("s_checksum_type {} is not crc32c (4)", sb.s_checksum_type));
      uint32_t want = journal_superblock_checksum(raw);
      if (want != sb.s_checksum)
        return Error(kErrBadChecksum, fmt::format("journal superblock: checksum {:#010x} should be {:#010x}",
                                                  sb.s_checksum, want));
    }
  }
  if (sb.s_start != 0 && (sb.s_start < sb.s_first || sb.s_start >= sb.log_end()))
    return corrupt(fmt::format("s_start {} is outside the log (blocks {} to {})", sb.s_start, sb.s_first,
                               sb.log_end() - 1));
  return sb;
}

void encode_journal_superblock(const JournalSuperblock& sb, MutableBytes raw) {
  encode_journal_header(sb.s_header, raw);
  put_be32(raw, kSbBlocksize, sb.s_blocksize);
  put_be32(raw, kSbMaxlen, sb.s_maxlen);
  put_be32(raw, kSbFirst, sb.s_first);
  put_be32(raw, kSbSequence, sb.s_sequence);
  put_be32(raw, kSbStart, sb.s_start);
  put_be32(raw, kSbErrno, static_cast<uint32_t>(sb.s_errno));
  put_be32(raw, kSbCompat, sb.s_feature_compat);
  put_be32(raw, kSbIncompat, sb.s_feature_incompat);
  put_be32(raw, kSbRoCompat, sb.s_feature_ro_compat);
  write_array(raw, kSbUuid, sb.s_uuid);
  put_be32(raw, kSbNrUsers, sb.s_nr_users);
  put_be32(raw, kSbDynsuper, sb.s_dynsuper);
  put_be32(raw, kSbMaxTransaction, sb.s_max_transaction);
  put_be32(raw, kSbMaxTransData, sb.s_max_trans_data);
  put_le8(raw, kSbChecksumType, sb.s_checksum_type);
  put_be32(raw, kSbNumFcBlks, sb.s_num_fc_blks);
  put_be32(raw, kSbHead, sb.s_head);
  for (size_t i = 0; i < sb.s_users.size(); ++i) write_array(raw, kSbUsers + 16 * i, sb.s_users[i]);
  uint32_t csum = sb.s_checksum;
  if (sb.csum_v2or3()) csum = journal_superblock_checksum(raw);
  put_be32(raw, kSbChecksum, csum);
}

uint32_t journal_superblock_checksum(Bytes raw) {
  return crc32c_with_zeroed_field(~0u, raw.first(kJbd2SuperblockSize), kSbChecksum);
}

DescriptorBlock decode_descriptor_block(Bytes block, const JournalFormat& fmt) {
  DescriptorBlock d;
  d.header = decode_journal_header(block);
  const size_t tag_bytes = fmt.tag_bytes();
  const size_t limit = std::min(fmt.usable_bytes(), block.size());
  size_t off = kJbd2HeaderSize;
  // Same walk as the kernel's count_tags(): a tag counts when it fits; the
  // UUID after it may run past the end, which just ends the walk.
  while (off + tag_bytes <= limit) {
    JournalBlockTag tag;
    tag.t_blocknr = be32(block, off);
    if (fmt.csum_v3) {
      tag.t_flags = be32(block, off + 4);
      if (fmt.is_64bit) tag.t_blocknr |= uint64_t{be32(block, off + 8)} << 32;
      tag.t_checksum = be32(block, off + 12);
    } else {
      tag.t_checksum = be16(block, off + 4);
      tag.t_flags = be16(block, off + 6);
      if (fmt.is_64bit) tag.t_blocknr |= uint64_t{be32(block, off + 8)} << 32;
    }
    off += tag_bytes;
    if (!(tag.t_flags & kJbd2FlagSameUuid)) {
      if (off + 16 <= block.size()) tag.uuid = read_array<16>(block, off);
      off += 16;
    }
    d.tags.push_back(tag);
    if (tag.t_flags & kJbd2FlagLastTag) break;
  }
  if (fmt.csum_v2or3()) d.tail_checksum = be32(block, block.size() - kJbd2TailSize);
  return d;
}

Status encode_descriptor_block(const DescriptorBlock& d, const JournalFormat& fmt, MutableBytes block) {
  const size_t tag_bytes = fmt.tag_bytes();
  const size_t limit = fmt.usable_bytes();
  size_t off = kJbd2HeaderSize;
  for (size_t i = 0; i < d.tags.size(); ++i) {
    const JournalBlockTag& tag = d.tags[i];
    bool with_uuid = !(tag.t_flags & kJbd2FlagSameUuid);
    if (off + tag_bytes + (with_uuid ? 16 : 0) > limit)
      return Error(EINVAL, fmt::format("descriptor block: tag {} of {} does not fit", i, d.tags.size()));
    put_be32(block, off, static_cast<uint32_t>(tag.t_blocknr));
    if (fmt.csum_v3) {
      put_be32(block, off + 4, tag.t_flags);
      put_be32(block, off + 8, fmt.is_64bit ? static_cast<uint32_t>(tag.t_blocknr >> 32) : 0);
      put_be32(block, off + 12, tag.t_checksum);
    } else {
      put_be16(block, off + 4, static_cast<uint16_t>(tag.t_checksum));
      put_be16(block, off + 6, static_cast<uint16_t>(tag.t_flags));
      if (fmt.is_64bit) put_be32(block, off + 8, static_cast<uint32_t>(tag.t_blocknr >> 32));
    }
    off += tag_bytes;
    if (with_uuid) {
      write_array(block, off, tag.uuid.value_or(std::array<uint8_t, 16>{}));
      off += 16;
    }
  }
  encode_journal_header(d.header, block);
  if (fmt.csum_v2or3())
    put_be32(block, block.size() - kJbd2TailSize, block_tail_checksum(block, fmt.csum_seed));
  return {};
}

CommitBlock decode_commit_block(Bytes block) {
  CommitBlock c;
  c.header = decode_journal_header(block);
  c.h_chksum_type = le8(block, kCommitChksumType);
  c.h_chksum_size = le8(block, kCommitChksumSize);
  for (size_t i = 0; i < c.h_chksum.size(); ++i) c.h_chksum[i] = be32(block, kCommitChksum + 4 * i);
  c.h_commit_sec = be64(block, kCommitSec);
  c.h_commit_nsec = be32(block, kCommitNsec);
  return c;
}

void encode_commit_block(const CommitBlock& c, const JournalFormat& fmt, MutableBytes block) {
  encode_journal_header(c.header, block);
  put_le8(block, kCommitChksumType, c.h_chksum_type);
  put_le8(block, kCommitChksumSize, c.h_chksum_size);
  for (size_t i = 0; i < c.h_chksum.size(); ++i) put_be32(block, kCommitChksum + 4 * i, c.h_chksum[i]);
  put_be64(block, kCommitSec, c.h_commit_sec);
  put_be32(block, kCommitNsec, c.h_commit_nsec);
  if (fmt.csum_v2or3()) put_be32(block, kCommitChksum, commit_block_checksum(block, fmt.csum_seed));
}

size_t revoke_records_per_block(const JournalFormat& fmt) {
  return (fmt.usable_bytes() - kJbd2RevokeHeaderSize) / (fmt.is_64bit ? 8 : 4);
}

Result<RevokeBlock> decode_revoke_block(Bytes block, const JournalFormat& fmt) {
  RevokeBlock r;
  r.header = decode_journal_header(block);
  r.r_count = be32(block, kJbd2HeaderSize);
  if (r.r_count > fmt.usable_bytes())
    return Error(kErrCorrupted, fmt::format("revoke block: r_count {} is larger than the {} usable bytes", r.r_count,
                                            fmt.usable_bytes()));
  const size_t rec = fmt.is_64bit ? 8 : 4;
  for (size_t off = kJbd2RevokeHeaderSize; off + rec <= r.r_count; off += rec)
    r.blocks.push_back(rec == 8 ? be64(block, off) : be32(block, off));
  if (fmt.csum_v2or3()) r.tail_checksum = be32(block, block.size() - kJbd2TailSize);
  return r;
}

Status encode_revoke_block(const RevokeBlock& r, const JournalFormat& fmt, MutableBytes block) {
  if (r.blocks.size() > revoke_records_per_block(fmt))
    return Error(EINVAL, fmt::format("revoke block: {} records do not fit (at most {})", r.blocks.size(),
                                     revoke_records_per_block(fmt)));
  const size_t rec = fmt.is_64bit ? 8 : 4;
  encode_journal_header(r.header, block);
  size_t off = kJbd2RevokeHeaderSize;
  for (uint64_t b : r.blocks) {
    if (rec == 8) put_be64(block, off, b); else put_be32(block, off, static_cast<uint32_t>(b));
    off += rec;
  }
  put_be32(block, kJbd2HeaderSize, static_cast<uint32_t>(off));
  if (fmt.csum_v2or3())
    put_be32(block, block.size() - kJbd2TailSize, block_tail_checksum(block, fmt.csum_seed));
  return {};
}

uint32_t jbd2_csum_seed(const std::array<uint8_t, 16>& uuid) {
  return crc32c(~0u, as_bytes(uuid.data(), uuid.size()));
}

uint32_t block_tail_checksum(Bytes block, uint32_t seed) {
  return crc32c_with_zeroed_field(seed, block, block.size() - kJbd2TailSize);
}

bool verify_block_tail(Bytes block, const JournalFormat& fmt) {
  if (!fmt.csum_v2or3()) return true;
  return be32(block, block.size() - kJbd2TailSize) == block_tail_checksum(block, fmt.csum_seed);
}

uint32_t commit_block_checksum(Bytes block, uint32_t seed) {
  return crc32c_with_zeroed_field(seed, block, kCommitChksum);
}

bool verify_commit_block(Bytes block, const JournalFormat& fmt) {
  if (!fmt.csum_v2or3()) return true;
  return be32(block, kCommitChksum) == commit_block_checksum(block, fmt.csum_seed);
}

uint32_t data_block_checksum(uint32_t seed, uint32_t sequence, Bytes data) {
  std::byte seq[4];
  put_be32(seq, 0, sequence);
  return crc32c(crc32c(seed, seq), data);
}

uint32_t tag_checksum(const JournalFormat& fmt, uint32_t sequence, Bytes data) {
  uint32_t c = data_block_checksum(fmt.csum_seed, sequence, data);
  return fmt.csum_v3 ? c : (c & 0xFFFF);
}

bool verify_tag_checksum(const JournalFormat& fmt, const JournalBlockTag& tag, uint32_t sequence, Bytes data) {
  if (!fmt.csum_v2or3()) return true;
  return tag.t_checksum == tag_checksum(fmt, sequence, data);
}

const char* jbd2_block_type_name(uint32_t blocktype) {
  switch (blocktype) {
    case kJbd2DescriptorBlock: return "descriptor";
    case kJbd2CommitBlock: return "commit";
    case kJbd2SuperblockV1: return "superblock v1";
    case kJbd2SuperblockV2: return "superblock v2";
    case kJbd2RevokeBlock: return "revoke";
    case kJbd2FastCommitBlock: return "fast commit";
    default: return "unknown";
  }
}

}  // namespace uext::disk
