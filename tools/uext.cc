// uext: command-line access to ext2/ext3/ext4 images without mounting them.
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <vector>

#include <CLI/CLI.hpp>

#include "common.h"

namespace uext::cli {
Command add_mkfs_command(CLI::App& parent);  // cmd_mkfs.cc
Command add_mount_command(CLI::App& parent);  // cmd_mount.cc
Command add_umount_command(CLI::App& parent);  // cmd_mount.cc
Command add_demo_command(CLI::App& parent);   // cmd_demo.cc
Command add_tune_command(CLI::App& parent);   // cmd_tune.cc
}  // namespace uext::cli

namespace {

constexpr const char* kVersion = "0.1.0";

constexpr const char* kFooter =
    "Exit status: 0 on success, 1 when an operation failed, 2 for usage errors.\n"
    "Run 'uext SUBCOMMAND --help' for a subcommand's options.";

int usage_error(const std::string& message) {
  std::fflush(stdout);
  std::cerr << "uext: " << message << "\nTry 'uext --help' for more information.\n";
  return uext::cli::kExitUsage;
}

int run(int argc, char** argv) {
  CLI::App app{"uext: read, create and change ext2/ext3/ext4 filesystem images without mounting them", "uext"};
  app.set_version_flag("--version", std::string("uext ") + kVersion);
  app.require_subcommand(1);
  app.footer(kFooter);

  std::vector<uext::cli::Command> commands = {
      uext::cli::add_info_command(app), uext::cli::add_ls_command(app),
      uext::cli::add_cat_command(app),  uext::cli::add_stat_command(app),
      uext::cli::add_get_command(app),  uext::cli::add_mkfs_command(app),
      uext::cli::add_put_command(app),  uext::cli::add_mount_command(app),
      uext::cli::add_umount_command(app),
      uext::cli::add_demo_command(app),  uext::cli::add_tune_command(app),
  };
  for (auto& c : uext::cli::add_edit_commands(app)) commands.push_back(std::move(c));

  if (argc <= 1) {
    std::cerr << app.help();
    return uext::cli::kExitUsage;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return usage_error(e.what());
  }

  for (auto& cmd : commands) {
    if (cmd.app->parsed()) return cmd.run();
  }
  return usage_error("a subcommand is required");
}

}  // namespace

int main(int argc, char** argv) {
  // Promise: never crash on any input. Library errors come back as Results;
  // this catches what is left (allocation failure on absurd sizes, bugs).
  try {
    int rc = run(argc, argv);
    if (std::fflush(stdout) != 0 && rc == uext::cli::kExitOk) {
      uext::cli::report({"write error", uext::cli::describe_errno(errno)});
      rc = uext::cli::kExitFailure;
    }
    return rc;
  } catch (const std::bad_alloc&) {
    uext::cli::report({"out of memory"});
  } catch (const std::exception& e) {
    uext::cli::report({e.what()});
  }
  return uext::cli::kExitFailure;
}
