// A copy_file_range(2) caller for the preload shim's tests: copies LEN
// bytes from SRC to DST (created if absent) with both offsets NULL, so the
// file positions are used, and prints what it copied and where both
// positions then stand: "copied=N src_pos=M dst_pos=K", or "error=E".
// Shell tools call copy_file_range only with explicit offsets (xfs_io)
// or print nothing of the positions (cp).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s SRC DST LEN\n", argv[0]);
    return 2;
  }
  const int src = open(argv[1], O_RDONLY);
  const int dst = open(argv[2], O_WRONLY | O_CREAT, 0644);
  if (src < 0 || dst < 0) {
    std::fprintf(stderr, "open: %s\n", std::strerror(errno));
    return 1;
  }
  const ssize_t copied = copy_file_range(src, nullptr, dst, nullptr, std::strtoull(argv[3], nullptr, 0), 0);
  if (copied < 0) {
    std::printf("error=%d\n", errno);
  } else {
    std::printf("copied=%zd src_pos=%lld dst_pos=%lld\n", copied, static_cast<long long>(lseek(src, 0, SEEK_CUR)),
                static_cast<long long>(lseek(dst, 0, SEEK_CUR)));
  }
  return close(src) == 0 && close(dst) == 0 ? 0 : 1;
}
