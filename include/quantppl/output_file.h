// Writing result files so that a failure or an interrupt never leaves a
// partial file behind, and never replaces anything but a regular file.
//
// The content goes to a temporary file in the destination's directory
// ("<name>.tmp.XXXXXXXX", or ".<name cut to fit>.tmp.XXXXXXXX" when the name
// is so long that the suffix would pass NAME_MAX), is flushed (fsync), then
// rename()d over the destination (atomic on POSIX within one file system).
//
// What may be replaced: only a regular file, and only with `force`. A
// symbolic link (dangling or not), a character or block device, a FIFO, a
// socket or a directory at the destination is an IoError even with `force`:
// rename() would replace the link or the device node itself (as root,
// `-o /dev/null --force` would have replaced /dev/null). A destination that
// is the same file as one of the command's inputs (same device and inode, or
// the same resolved path) is a UsageError: the run would destroy what it reads.
//
// Write failures — ENOSPC, EIO, EDQUOT from write(), fsync() or close(), or
// from a writer such as LibTorch's save — are IoErrors naming the file and
// the errno text; the temporary file is removed before the error propagates.
//
// Interrupts: once install_interrupt_handlers() has run, SIGINT, SIGTERM and
// SIGHUP remove every temporary file registered with RemoveOnInterrupt (the
// ones write_file_atomically and create_temp_file create are), print one line
// "quantppl: interrupted (SIGINT)" on stderr and end the process at once with
// exit code 128 + the signal number (130, 143, 129). The destination is then
// either untouched or, if the signal came after the rename, complete.
#pragma once

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace quantppl {

// Throws IoError naming the path: missing directory, not writable, exists
// without `force`, not a regular file, or a write failure (the temporary file
// is removed). UsageError if `path` is one of `inputs` (see above).
void write_file_atomically(const std::string& path, const std::string& content, bool force,
                           const std::vector<std::string>& inputs = {});

// The same for content produced by a writer that needs a stream (LibTorch's
// Module::save): `write` fills `out`, which writes to the temporary file. A
// failed write does not throw inside the writer (LibTorch's zip writer would
// throw again from its destructor and abort the process): the stream
// swallows the rest and the failure is reported once `write` returns.
void write_stream_atomically(const std::string& path, bool force, const std::vector<std::string>& inputs,
                             const std::function<void(std::ostream& out)>& write);

// Checks up front, before hours of work, that `path` could be written: its
// directory exists, is a directory and accepts a new file (tried by creating
// and removing a temporary file there, which catches read-only and virtual
// file systems such as /proc), the file does not exist unless `force`, and
// it is not a non-regular file nor one of `inputs` ("-" and "" are skipped).
void check_output_path(const std::string& path, bool force, const std::vector<std::string>& inputs = {});

// The directory for temporary files: $TMPDIR if set and non-empty, else /tmp.
// IoError naming TMPDIR when it is not an existing directory.
std::string temp_directory();

// Installs the SIGINT / SIGTERM / SIGHUP handler described above. A signal the
// process inherited as ignored (e.g. SIGINT of a background job) stays ignored.
// Call once, early in main().
void install_interrupt_handlers();

// While alive, the interrupt handler unlink()s `path` (a temporary file that
// exists or is about to be created). Register before creating the file, so
// that no instant exists where the file is there but unknown to the handler.
// Destruction only unregisters: removing the file otherwise is the owner's job.
// Holds up to 8 paths of up to 4095 bytes at once; beyond that a registration
// is silently inactive (the file may then survive an interrupt).
class RemoveOnInterrupt {
 public:
  explicit RemoveOnInterrupt(const std::string& path);
  ~RemoveOnInterrupt();
  RemoveOnInterrupt(const RemoveOnInterrupt&) = delete;
  RemoveOnInterrupt& operator=(const RemoveOnInterrupt&) = delete;

 private:
  int slot_;  // -1: not registered
};

// A temporary file for writers other than write_file_atomically (a model saved
// by LibTorch, a file handed to a loader that takes a path): created
// exclusively (O_EXCL, O_NOFOLLOW, `mode` before the umask) as `prefix` +
// 8 random hex digits + `suffix`, and registered with RemoveOnInterrupt
// before it exists — mkstemp() picks the name only as it creates the file,
// too late to register it first. The registration lasts as long as the
// object; removing the file on success or error stays the owner's job.
struct TempFile {
  std::string path;
  int fd = -1;    // -1: not created; `error` says why
  int error = 0;  // errno of the last attempt (EEXIST: 100 names were all taken)
  std::unique_ptr<RemoveOnInterrupt> registration;
};
TempFile create_temp_file(const std::string& prefix, const std::string& suffix, int mode);

}  // namespace quantppl
