// POSIX ACLs on `uext mount` against the real oracle: one script of
// operations (setfacl on files and directories, default ACLs, files and
// directories created under them with several umasks, chmod of files with
// ACLs, setfacl -b/-k/--set, cp -p, access as another user) runs on a uext
// mount and on the kernel's ext4 loop mount of an identical fresh image;
// the script's output (which accesses were allowed), `stat` and `getfacl`
// of every path must be the same. Afterwards the uext-written image is
// e2fsck -fn clean and the kernel's mount of it shows the same ACLs.
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "support/images.h"
#include "support/process.h"

namespace uext::testing {
namespace {

bool can_run() { return ::geteuid() == 0 && ::access("/dev/fuse", R_OK | W_OK) == 0 && can_loop_mount(); }

std::string q(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

CommandResult sh(const std::string& line) { return run_shell(line); }

std::string sh_ok(const std::string& line) {
  CommandResult r = sh(line);
  EXPECT_EQ(r.exit_code, 0) << line << "\nstdout:\n" << r.out.substr(0, 4000) << "\nstderr:\n" << r.err.substr(0, 4000);
  return r.out;
}

// `try LABEL CMD`: runs CMD as nobody (no supplementary groups) and prints
// whether it was allowed; everything else runs as root.
constexpr const char* kPrelude = R"(
cd "$1" || exit 1
try() {
  l=$1; shift
  if setpriv --reuid=65534 --regid=65534 --clear-groups sh -c "$*" >/dev/null 2>&1
  then echo "$l: allowed"; else echo "$l: denied"; fi
}
)";

// The main script: every step's result goes to stdout.
constexpr const char* kAclScript = R"(
set -e
umask 022
echo data > plain
try plain-644 'cat plain'
chmod 640 plain
try plain-640 'cat plain'
setfacl -m u:nobody:rw plain
try plain-acl-read 'cat plain'
try plain-acl-write 'echo x >> plain'
chmod 600 plain
try plain-masked-by-chmod 'cat plain'
chmod 660 plain
try plain-unmasked 'echo y >> plain'
chmod 640 plain
try plain-mask-r-read 'cat plain'
try plain-mask-r-write 'echo w >> plain'

mkdir shared
setfacl -m u:nobody:rwx shared
setfacl -d -m u:nobody:rwx,g::rx,o::- shared
(umask 077; touch shared/f077)
(umask 022; echo hi > shared/f022)
(umask 000; touch shared/f000)
(umask 077; mkdir shared/d077)
(umask 022; mkdir shared/d022)
(umask 027; mkdir -p shared/d027/deeper; echo deep > shared/d027/deeper/file)
(umask 077; mkfifo shared/fifo)
(umask 077; mknod shared/null c 1 3)
(umask 077; ln -s f077 shared/link)
try shared-create 'echo n > shared/by-nobody && mkdir shared/dir-by-nobody'
try shared-read-f077 'cat shared/f077'
try shared-write-f022 'echo z >> shared/f022'
chmod 604 shared/f022
try chmod-604-no-group-bits-other-r 'cat shared/f022'
chmod 664 shared/f022
try chmod-664-named-entry 'cat shared/f022'
try d077-list 'ls shared/d077'
try d077-create 'touch shared/d077/x'
chmod 700 shared/d022
try d022-after-chmod 'ls shared/d022'
setfacl -m g:nogroup:r shared/f000
setfacl -x u:nobody shared/f000
try f000-after-x 'cat shared/f000'
setfacl -b shared/f077
try f077-after-b 'cat shared/f077'
setfacl -k shared/d077
(umask 077; touch shared/d077/after-k)
setfacl --set u::rw,g::r,o::- shared/f022
try f022-after-set 'cat shared/f022'
setfacl -m m::r shared/d027
try d027-mask-r 'ls shared/d027 && touch shared/d027/y'
cp -p shared/f000 shared/cp-p-acl
echo x > noacl
chmod 604 noacl
cp -p noacl shared/cp-p-noacl
cp noacl shared/cp-noacl
mkdir plaindir
cp -rp plaindir shared/cp-rp-plaindir
cp -rp shared/d027 shared/cp-rp-d027
chmod g+s shared/d022
(umask 022; mkdir shared/d022/sgid; touch shared/d022/sgid/f)
setfacl -m u:nobody:x,u:daemon:r shared/d022/sgid/f
chmod 2750 shared/d022/sgid/f
setfacl -m o::r shared/d022/sgid/f
touch shared/sg shared/sg2
chown nobody:root shared/sg
chown nobody:nogroup shared/sg2
chmod 2640 shared/sg shared/sg2
try sgid-owner-outside-group 'setfacl -m u:daemon:r shared/sg'
try sgid-owner-in-group 'setfacl -m u:daemon:r shared/sg2'
echo done
)";

// Every path but lost+found, sorted: stat, then getfacl of each.
std::string describe(const std::string& dir) {
  return sh_ok("cd " + q(dir) +
               " && find . -path ./lost+found -prune -o -print | LC_ALL=C sort > /tmp/.acl-paths.$$"
               " && while read -r p; do stat -c '%n %F %a %U %G' \"$p\"; done < /tmp/.acl-paths.$$"
               " && tr '\\n' '\\0' < /tmp/.acl-paths.$$ | xargs -0 getfacl -P -p -n"
               "; rc=$?; rm -f /tmp/.acl-paths.$$; exit $rc");
}

class FuseAcl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!can_run()) GTEST_SKIP() << "needs root, /dev/fuse and loop mounts";
    base_ = t_ / "fresh.img";
    run_ok({"mke2fs", "-F", "-q", "-t", "ext4", base_, "64M"});
    write_file(t_ / "script.sh", std::string(kPrelude) + kAclScript);
  }
  // Runs `script` on a kernel loop mount of a copy of the fresh image
  // (mount options `kopts`); its output, and describe() of the result.
  // With `may_refuse`, a kernel that refuses the options returns nothing.
  std::pair<std::string, std::string> on_kernel(const std::string& script, const std::string& kopts,
                                                bool may_refuse = false) {
    const std::string img = t_ / "kernel.img", mnt = t_ / "kmnt";
    copy_file(base_, img);
    ::mkdir(mnt.c_str(), 0755);
    CommandResult m = run({"mount", "-o", "loop," + kopts, img, mnt});
    if (!may_refuse) {
      EXPECT_EQ(m.exit_code, 0) << m.err;
    }
    if (m.exit_code != 0) return {};
    CommandResult r = sh("sh " + q(script) + " " + q(mnt) + " 2>&1");
    std::string tree = describe(mnt);
    EXPECT_EQ(run({"umount", mnt}).exit_code, 0);
    return {r.out, tree};
  }
  // The same on `uext mount -o uopts` of another copy; then unmounts with
  // uext umount (which returns once the image is closed) and checks it.
  std::pair<std::string, std::string> on_uext(const std::string& script, const std::string& uopts) {
    uimg_ = t_ / "uext.img";
    const std::string mnt = t_ / "umnt";
    copy_file(base_, uimg_);
    ::mkdir(mnt.c_str(), 0755);
    std::vector<std::string> args = {uext_cli(), "mount", uimg_, mnt};
    if (!uopts.empty()) args.insert(args.end(), {"-o", uopts});
    CommandResult m = run(args);
    EXPECT_EQ(m.exit_code, 0) << m.err;
    if (m.exit_code != 0) return {};
    CommandResult r = sh("sh " + q(script) + " " + q(mnt) + " 2>&1");
    std::string tree = describe(mnt);
    CommandResult u = run({uext_cli(), "umount", mnt});
    EXPECT_EQ(u.exit_code, 0) << u.err;
    EXPECT_TRUE(image_is_clean(uimg_));
    return {r.out, tree};
  }

  TempDir t_;
  std::string base_, uimg_;
};

TEST_F(FuseAcl, SameAclsModesAndAccessAsTheKernel) {
  auto kernel = on_kernel(t_ / "script.sh", "rw");
  ASSERT_NE(kernel.first.find("done"), std::string::npos) << "the script failed on the kernel:\n" << kernel.first;
  auto uext = on_uext(t_ / "script.sh", "");
  EXPECT_EQ(uext.first, kernel.first) << "the script ran differently (accesses allowed or denied)";
  EXPECT_EQ(uext.second, kernel.second) << "modes, owners or ACLs differ";
  // Sanity: the script really exercised ACLs.
  EXPECT_NE(kernel.second.find("user:65534:rwx"), std::string::npos);
  EXPECT_NE(kernel.second.find("default:user:65534:rwx"), std::string::npos);
  EXPECT_NE(kernel.first.find("plain-masked-by-chmod: denied"), std::string::npos) << kernel.first;
  // chmod 640 after rw was allowed through the ACL: the kernel must not
  // keep the ACL it cached before (mask rw-), or the write would pass.
  EXPECT_NE(kernel.first.find("plain-mask-r-read: allowed\nplain-mask-r-write: denied"), std::string::npos)
      << kernel.first;

  // The kernel reads what uext wrote: the same tree, the same ACLs.
  const std::string mnt = t_ / "check";
  ::mkdir(mnt.c_str(), 0755);
  LoopMount m(uimg_, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  EXPECT_EQ(describe(mnt), uext.second) << "the kernel reads different ACLs from the uext-written image";
  m.unmount();
}

// noacl, as ext4's: setfacl fails, getfacl shows the mode, and the umask
// applies even under a default ACL written before (by the kernel, mounted
// with acl). Kernels whose ext4 refuses noacl (6.18 here: "Unknown
// parameter") leave uext to be held to ext4's documented behaviour.
TEST_F(FuseAcl, NoaclAsTheKernel) {
  {
    const std::string mnt = t_ / "prep";
    ::mkdir(mnt.c_str(), 0755);
    LoopMount m(base_, mnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    sh_ok("umask 022; cd " + q(mnt) + " && mkdir d && setfacl -d -m u:nobody:rwx d && touch d/f");
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  const std::string script = t_ / "noacl.sh";
  write_file(script, std::string(kPrelude) + R"(
umask 022
setfacl -m u:nobody:rw d/f; echo "setfacl: $?"
setfacl -d -m u:nobody:rwx d; echo "setfacl -d: $?"
(umask 027; touch d/g; mkdir d/s)
getfacl -p -n d d/g
try read-g 'cat d/g'
echo done
)");
  auto uext = on_uext(script, "noacl");
  auto kernel = on_kernel(script, "noacl", true);
  if (!kernel.first.empty()) {
    EXPECT_EQ(uext.first, kernel.first);
    EXPECT_EQ(uext.second, kernel.second);
    return;
  }
  EXPECT_EQ(uext.first,
            "setfacl: d/f: Operation not supported\nsetfacl: 1\n"
            "setfacl: d: Operation not supported\nsetfacl -d: 1\n"
            "# file: d\n# owner: 0\n# group: 0\nuser::rwx\ngroup::r-x\nother::r-x\n\n"
            "# file: d/g\n# owner: 0\n# group: 0\nuser::rw-\ngroup::r--\nother::---\n\n"
            "read-g: denied\ndone\n");
  EXPECT_NE(uext.second.find("./d/s directory 750 root root"), std::string::npos) << uext.second;
  // The default ACL is still there for an acl mount: the kernel shows it.
  const std::string mnt = t_ / "check";
  ::mkdir(mnt.c_str(), 0755);
  LoopMount m(uimg_, mnt, true);
  ASSERT_TRUE(m.ok()) << m.error();
  EXPECT_NE(sh_ok("getfacl -p -n -d " + q(mnt + "/d")).find("user:65534:rwx"), std::string::npos);
  m.unmount();
}

// The CLI creates as the kernel does too: `uext mkdir` and `uext truncate`
// pass the process umask, which a default ACL overrides; `uext put` leaves
// only the source's ACLs, as cp -a.
TEST_F(FuseAcl, CliInheritsAsTheKernel) {
  {
    const std::string mnt = t_ / "prep";
    ::mkdir(mnt.c_str(), 0755);
    LoopMount m(base_, mnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    sh_ok("umask 022; cd " + q(mnt) + " && mkdir shared && setfacl -d -m u:nobody:rwx,g::rx,o::- shared");
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  const std::string kimg = t_ / "k.img", kmnt = t_ / "kmnt", src = t_ / "src";
  copy_file(base_, kimg);
  ::mkdir(kmnt.c_str(), 0755);
  sh_ok("mkdir -p " + q(src + "/dir") + " && echo hi > " + q(src + "/file") + " && chmod 640 " + q(src + "/file"));
  {
    LoopMount m(kimg, kmnt, false);
    ASSERT_TRUE(m.ok()) << m.error();
    sh_ok("cd " + q(kmnt) + " && (umask 077; mkdir shared/x; truncate -s 0 shared/t; mkdir plain) && cp -a " +
          q(src + "/file") + " " + q(src + "/dir") + " shared/");
    ASSERT_TRUE(m.unmount()) << m.error();
  }
  sh_ok("umask 077; " + q(uext_cli()) + " mkdir " + q(base_) + " /shared/x /plain && " + q(uext_cli()) +
        " truncate " + q(base_) + " 0 /shared/t && " + q(uext_cli()) + " put " + q(base_) + " " + q(src + "/file") +
        " /shared/file && " + q(uext_cli()) + " put " + q(base_) + " " + q(src + "/dir") + " /shared/dir");
  EXPECT_TRUE(image_is_clean(base_));
  std::string seen[2];
  const std::string imgs[2] = {kimg, base_};
  for (int i = 0; i < 2; ++i) {
    LoopMount m(imgs[i], kmnt, true);
    ASSERT_TRUE(m.ok()) << m.error();
    seen[i] = describe(kmnt);
    m.unmount();
  }
  EXPECT_EQ(seen[1], seen[0]);
  EXPECT_NE(seen[0].find("./shared/x directory 770"), std::string::npos) << seen[0];
}

TEST(FuseAclCommand, HelpListsAclOptions) {
  auto r = run({uext_cli(), "mount", "--help"});
  EXPECT_NE(r.out.find("  acl "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  noacl "), std::string::npos) << r.out;
}

}  // namespace
}  // namespace uext::testing
