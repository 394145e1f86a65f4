// Writing result files so that a failure or an interrupt never leaves a
// partial file behind.
//
// The content goes to a temporary file in the destination's directory
// ("<name>.tmp.XXXXXXXX"), is flushed, then rename()d over the destination
// (atomic on POSIX within one file system). An existing destination is
// replaced only with `force`.
//
// Interrupts: once install_interrupt_handlers() has run, SIGINT, SIGTERM and
// SIGHUP remove every temporary file registered with RemoveOnInterrupt (the
// ones write_file_atomically and create_temp_file create are), print one line
// "quantppl: interrupted (SIGINT)" on stderr and end the process at once with
// exit code 128 + the signal number (130, 143, 129). The destination is then
// either untouched or, if the signal came after the rename, complete.
#pragma once

#include <memory>
#include <string>

namespace quantppl {

// Throws IoError naming the path: missing directory, not writable, exists
// without `force`, or a write failure (the temporary file is removed).
void write_file_atomically(const std::string& path, const std::string& content, bool force);

// Checks up front, before hours of work, that `path` could be written: its
// directory exists, is a directory and accepts a new file (tried by creating
// and removing a temporary file there, which catches read-only and virtual
// file systems such as /proc), and the file does not exist unless `force`.
void check_output_path(const std::string& path, bool force);

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
