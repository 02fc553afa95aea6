// Scratch images for tests that change them: made by mke2fs, opened
// read-write by uext, and judged by e2fsck afterwards.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "uext/filesystem.h"

namespace uext::testing {

// mke2fs -F -q `options` `image` `size` (e.g. {"-t", "ext4", "-b", "4096", "-m", "0"}, "64M").
void make_image(const std::string& image, const std::vector<std::string>& options, const std::string& size);
// Opens `image` read-write with `options` (read_only is cleared); fails the
// test and returns null when it cannot.
std::unique_ptr<Filesystem> open_writable(const std::string& image, Options options = {});
// e2fsck -fn clean and dumpe2fs -h without errors, or a test failure naming why.
void expect_fsck_clean(const std::string& image);

}  // namespace uext::testing
