// Running the real oracles (mke2fs, debugfs, e2fsck, mount, the uext CLI)
// from tests, and scratch directories that clean up after themselves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace uext::testing {

struct CommandResult {
  int exit_code = -1;  // 128 + signal number when killed by a signal
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs argv[0] (looked up in PATH) with the given arguments, no shell.
CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data = {});
// Runs a shell command line with /bin/sh -c (for pipelines in tests).
CommandResult run_shell(const std::string& command_line);

// Fails the current test (gtest ADD_FAILURE) with the command's output when
// it exits nonzero; returns stdout.
std::string run_ok(const std::vector<std::string>& argv);

// The uext command built with the tests.
std::string uext_cli();

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// True when the tests run as root with loop devices available, so they can
// let the kernel mount images. Tests that need it GTEST_SKIP() otherwise,
// saying why.
bool can_loop_mount();

// Writes `size` bytes of file content and reads files back.
void write_file(const std::string& path, const std::string& data);
std::string read_file(const std::string& path);

}  // namespace uext::testing
