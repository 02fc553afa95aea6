/*
 * fuse_floor: the least a FUSE filesystem can do for the small-files
 * workload of mount_bench.sh. It answers lookup, getattr, setattr, mkdir,
 * create, open, write, flush, release, opendir, readdir(plus), releasedir,
 * getxattr and statfs from a table in memory and does no storage work at
 * all: a write keeps only the file's new size, reads return zeros. What it
 * takes is what the kernel's FUSE round trips cost on this machine; no
 * filesystem behind FUSE can be faster with the same mount options.
 *
 * It asks the kernel for what `uext mount` asks for by default: no
 * writeback cache (every write() is a request), readdirplus, parallel
 * directory operations, entry and attribute timeouts of 1 s, no negative
 * caching, noflush on open files, and it answers getxattr with ENODATA
 * (the kernel asks security.capability before every write to a file that
 * may have it, as it does of uext). One request thread: the workload is one
 * process doing one system call at a time. Like uext (busy_poll_us=200),
 * that thread polls /dev/fuse for 200 us after each request before it
 * sleeps, so the floor pays the same wakeups as uext, not more
 * (FLOOR_BUSY_POLL_US=0 sleeps at once, as libfuse's loop does). And like
 * uext it asks for FUSE_HANDLE_KILLPRIV_V2 in INIT's reply (libfuse 3.14
 * cannot; a custom I/O hook adds it), so the kernel asks for
 * security.capability once per file, not before every write; it clears no
 * setuid bits, having none to keep.
 *
 *   cc -O2 -Wall -o fuse_floor fuse_floor.c $(pkg-config --cflags --libs fuse3)
 *   fuse_floor MOUNTPOINT [-o allow_other]     # runs in the foreground
 *   fusermount3 -u MOUNTPOINT                  # ends it
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/uio.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the table: inodes in an array, names in one hash table ---- */

struct node {
  mode_t mode;
  nlink_t nlink;
  off_t size;
  uid_t uid;
  gid_t gid;
  struct timespec mtime, ctime;
  /* a directory's entries, in creation order, for readdir */
  fuse_ino_t *children;
  size_t nchildren, cap_children;
  fuse_ino_t parent;
  char *name;
};

static struct node *nodes;     /* index = inode number; 1 is the root */
static size_t nnodes, cap_nodes;

struct entry {                 /* (parent, name) -> ino, open addressing */
  fuse_ino_t parent, ino;
  const char *name;
};
static struct entry *table;
static size_t table_cap, table_used;

static uint64_t hash(fuse_ino_t parent, const char *name) {
  uint64_t h = 1469598103934665603ull ^ parent;
  for (const unsigned char *p = (const unsigned char *)name; *p; ++p) h = (h ^ *p) * 1099511628211ull;
  return h;
}

static void table_put(fuse_ino_t parent, const char *name, fuse_ino_t ino);

static void table_grow(void) {
  struct entry *old = table;
  size_t old_cap = table_cap;
  table_cap = table_cap ? table_cap * 2 : 1 << 16;
  table = calloc(table_cap, sizeof *table);
  if (!table) abort();
  table_used = 0;
  for (size_t i = 0; i < old_cap; ++i)
    if (old[i].ino) table_put(old[i].parent, old[i].name, old[i].ino);
  free(old);
}

static void table_put(fuse_ino_t parent, const char *name, fuse_ino_t ino) {
  if ((table_used + 1) * 2 > table_cap) table_grow();
  size_t i = hash(parent, name) & (table_cap - 1);
  while (table[i].ino) i = (i + 1) & (table_cap - 1);
  table[i] = (struct entry){parent, ino, name};
  table_used++;
}

static fuse_ino_t table_get(fuse_ino_t parent, const char *name) {
  if (!table_cap) return 0;
  size_t i = hash(parent, name) & (table_cap - 1);
  for (; table[i].ino; i = (i + 1) & (table_cap - 1))
    if (table[i].parent == parent && strcmp(table[i].name, name) == 0) return table[i].ino;
  return 0;
}

static fuse_ino_t new_node(fuse_ino_t parent, const char *name, mode_t mode, const struct fuse_ctx *ctx) {
  if (nnodes == cap_nodes) {
    cap_nodes = cap_nodes ? cap_nodes * 2 : 1024;
    nodes = realloc(nodes, cap_nodes * sizeof *nodes);
    if (!nodes) abort();
  }
  fuse_ino_t ino = nnodes++;
  struct node *n = &nodes[ino];
  memset(n, 0, sizeof *n);
  n->mode = mode;
  n->nlink = S_ISDIR(mode) ? 2 : 1;
  n->uid = ctx ? ctx->uid : 0;
  n->gid = ctx ? ctx->gid : 0;
  clock_gettime(CLOCK_REALTIME, &n->mtime);
  n->ctime = n->mtime;
  n->parent = parent ? parent : ino;
  if (parent) {
    n->name = strdup(name);
    struct node *p = &nodes[parent];
    if (p->nchildren == p->cap_children) {
      p->cap_children = p->cap_children ? p->cap_children * 2 : 16;
      p->children = realloc(p->children, p->cap_children * sizeof *p->children);
      if (!p->children) abort();
    }
    p->children[p->nchildren++] = ino;
    if (S_ISDIR(mode)) p->nlink++;
    p->mtime = p->ctime = n->mtime;
    table_put(parent, n->name, ino);
  }
  return ino;
}

static void fill_stat(fuse_ino_t ino, struct stat *st) {
  const struct node *n = &nodes[ino];
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_mode = n->mode;
  st->st_nlink = n->nlink;
  st->st_uid = n->uid;
  st->st_gid = n->gid;
  st->st_size = S_ISDIR(n->mode) ? 4096 : n->size;
  st->st_blksize = 4096;
  st->st_blocks = (st->st_size + 4095) / 4096 * 8;
  st->st_mtim = st->st_ctim = st->st_atim = n->mtime;
  st->st_ctim = n->ctime;
}

static int valid(fuse_ino_t ino) { return ino >= 1 && ino < nnodes; }

static void reply_entry(fuse_req_t req, fuse_ino_t ino) {
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = ino;
  e.generation = 1;
  e.attr_timeout = 1.0;
  e.entry_timeout = 1.0;
  fill_stat(ino, &e.attr);
  fuse_reply_entry(req, &e);
}

/* ---- operations ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
  conn->max_write = 1u << 20;
  conn->time_gran = 1;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  fuse_ino_t ino = valid(parent) ? table_get(parent, name) : 0;
  if (!ino) { fuse_reply_err(req, ENOENT); return; }
  reply_entry(req, ino);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  struct stat st;
  fill_stat(ino, &st);
  fuse_reply_attr(req, &st, 1.0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  (void)fi;
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  struct node *n = &nodes[ino];
  if (to_set & FUSE_SET_ATTR_MODE) n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_UID) n->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) n->gid = attr->st_gid;
  if (to_set & FUSE_SET_ATTR_SIZE) n->size = attr->st_size;
  if (to_set & FUSE_SET_ATTR_MTIME) n->mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) clock_gettime(CLOCK_REALTIME, &n->mtime);
  clock_gettime(CLOCK_REALTIME, &n->ctime);
  struct stat st;
  fill_stat(ino, &st);
  fuse_reply_attr(req, &st, 1.0);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  if (!valid(parent) || !S_ISDIR(nodes[parent].mode)) { fuse_reply_err(req, ENOTDIR); return; }
  if (table_get(parent, name)) { fuse_reply_err(req, EEXIST); return; }
  reply_entry(req, new_node(parent, name, S_IFDIR | (mode & 07777), fuse_req_ctx(req)));
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
  if (!valid(parent) || !S_ISDIR(nodes[parent].mode)) { fuse_reply_err(req, ENOTDIR); return; }
  if (table_get(parent, name)) { fuse_reply_err(req, EEXIST); return; }
  fuse_ino_t ino = new_node(parent, name, S_IFREG | (mode & 07777), fuse_req_ctx(req));
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = ino;
  e.generation = 1;
  e.attr_timeout = 1.0;
  e.entry_timeout = 1.0;
  fill_stat(ino, &e.attr);
  fi->keep_cache = 1;
  fi->noflush = 1;
  fuse_reply_create(req, &e, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  fi->keep_cache = 1;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  static char zeros[1 << 20];
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  off_t end = nodes[ino].size;
  size_t n = off >= end ? 0 : (size_t)(end - off) < size ? (size_t)(end - off) : size;
  if (n > sizeof zeros) n = sizeof zeros;
  fuse_reply_buf(req, zeros, n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  (void)buf; (void)fi;
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  struct node *n = &nodes[ino];
  if (off + (off_t)size > n->size) n->size = off + (off_t)size;
  clock_gettime(CLOCK_REALTIME, &n->mtime);
  n->ctime = n->mtime;
  fuse_reply_write(req, size);
}

static void op_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)ino; (void)fi;
  fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (!valid(ino)) { fuse_reply_err(req, ENOENT); return; }
  if (!S_ISDIR(nodes[ino].mode)) { fuse_reply_err(req, ENOTDIR); return; }
  fuse_reply_open(req, fi);
}

/* Offsets: 1 ".", 2 "..", 2 + i + 1 the i-th child. */
static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
  if (!valid(ino) || !S_ISDIR(nodes[ino].mode)) { fuse_reply_err(req, ENOTDIR); return; }
  char *buf = malloc(size);
  if (!buf) { fuse_reply_err(req, ENOMEM); return; }
  size_t used = 0;
  const struct node *d = &nodes[ino];
  for (off_t i = off; ; ++i) {
    fuse_ino_t child;
    const char *name;
    if (i == 0) { child = ino; name = "."; }
    else if (i == 1) { child = d->parent; name = ".."; }
    else if ((size_t)(i - 2) < d->nchildren) { child = d->children[i - 2]; name = nodes[child].name; }
    else break;
    size_t len;
    if (plus) {
      struct fuse_entry_param e;
      memset(&e, 0, sizeof e);
      if (i >= 2) {  /* "." and ".." are not looked up */
        e.ino = child;
        e.generation = 1;
        e.attr_timeout = 1.0;
        e.entry_timeout = 1.0;
      }
      fill_stat(child, &e.attr);
      len = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, i + 1);
    } else {
      struct stat st;
      memset(&st, 0, sizeof st);
      st.st_ino = child;
      st.st_mode = nodes[child].mode;
      len = fuse_add_direntry(req, buf + used, size - used, name, &st, i + 1);
    }
    if (len > size - used) break;
    used += len;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  readdir_common(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  readdir_common(req, ino, size, off, 1);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  (void)ino; (void)name; (void)size;
  fuse_reply_err(req, ENODATA);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs sv;
  memset(&sv, 0, sizeof sv);
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_blocks = sv.f_bfree = sv.f_bavail = 1u << 20;
  sv.f_files = sv.f_ffree = 1u << 20;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  (void)ino; (void)nlookup;  /* nothing is ever freed */
  fuse_reply_none(req);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .mkdir = op_mkdir,
  .create = op_create,
  .open = op_open,
  .read = op_read,
  .write = op_write,
  .flush = op_ok,
  .release = op_ok,
  .fsync = (void (*)(fuse_req_t, fuse_ino_t, int, struct fuse_file_info *))op_ok,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .releasedir = op_ok,
  .getxattr = op_getxattr,
  .statfs = op_statfs,
};

/* ---- FUSE_HANDLE_KILLPRIV_V2 through libfuse's custom I/O ---- */

static uint64_t init_unique;
static int init_offers_v2;

static ssize_t floor_read(int fd, void *buf, size_t len, void *userdata) {
  (void)userdata;
  ssize_t n = read(fd, buf, len);
  const struct fuse_in_header *in = buf;
  if (n >= (ssize_t)(sizeof *in + sizeof(struct fuse_init_in)) && in->opcode == FUSE_INIT) {
    const struct fuse_init_in *arg = (const void *)(in + 1);
    init_unique = in->unique;
    init_offers_v2 = (arg->flags & FUSE_HANDLE_KILLPRIV_V2) != 0;
  }
  return n;
}

static ssize_t floor_writev(int fd, struct iovec *iov, int count, void *userdata) {
  (void)userdata;
  const struct fuse_out_header *out = iov[0].iov_base;
  if (init_unique != 0 && out->unique == init_unique && out->error == 0 && init_offers_v2 && count == 2 &&
      iov[1].iov_len >= sizeof(struct fuse_init_out) && iov[1].iov_len <= 4096) {
    char arg[4096];
    memcpy(arg, iov[1].iov_base, iov[1].iov_len);
    ((struct fuse_init_out *)(void *)arg)->flags |= FUSE_HANDLE_KILLPRIV_V2;
    struct iovec patched[2] = {iov[0], {arg, iov[1].iov_len}};
    init_unique = 0;
    return writev(fd, patched, 2);
  }
  return writev(fd, iov, count);
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* One thread: read a request, answer it, and poll for the next one for
 * `poll_us` before sleeping in poll(2). */
static int serve(struct fuse_session *se, long poll_us) {
  struct fuse_buf buf = {0};
  int fd = fuse_session_fd(se);
  if (poll_us > 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  int rc = 0;
  while (!fuse_session_exited(se)) {
    long long until = now_ns() + poll_us * 1000;
    int res;
    while ((res = fuse_session_receive_buf(se, &buf)) == -EAGAIN && !fuse_session_exited(se)) {
      if (now_ns() >= until) {
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, -1);
        until = now_ns() + poll_us * 1000;
      }
    }
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {
      rc = res < 0 && res != -ENODEV ? 1 : 0;
      break;
    }
    fuse_session_process_buf(se, &buf);
  }
  free(buf.mem);
  return rc;
}

int main(int argc, char *argv[]) {
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts opts;
  if (fuse_parse_cmdline(&args, &opts) != 0) return 1;
  if (!opts.mountpoint) {
    fprintf(stderr, "usage: %s MOUNTPOINT [-o allow_other]\n", argv[0]);
    return 2;
  }
  new_node(0, NULL, S_IFDIR | 0755, NULL);  /* inode 0: unused */
  new_node(0, NULL, S_IFDIR | 0755, NULL);  /* inode 1: the root */
  fuse_opt_add_arg(&args, "-odefault_permissions");
  fuse_opt_add_arg(&args, "-ofsname=fuse_floor");
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se) return 1;
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, opts.mountpoint) == 0) {
      const struct fuse_custom_io io = {.read = floor_read, .writev = floor_writev};
      if (fuse_session_custom_io(se, &io, fuse_session_fd(se)) != 0) fprintf(stderr, "fuse_floor: no custom I/O\n");
      const char *poll_env = getenv("FLOOR_BUSY_POLL_US");
      rc = serve(se, poll_env ? atol(poll_env) : 200);
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  free(opts.mountpoint);
  fuse_opt_free_args(&args);
  return rc;
}
