#pragma once
// Starting child processes, and the descriptors they must not inherit. Every child Nebula starts
// (engines, nvidia-smi, an engine's --version, test and benchmark processes) goes through
// spawn(): the child gets its stdio as asked and no other descriptor of ours (every descriptor
// above 2 is closed in the child before exec), so a listening socket, a client's connection or
// the data dir's lock never outlives us inside an engine.
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"

namespace nebula {

// Where one of the child's stdin/stdout/stderr comes from or goes to.
struct Stdio {
  enum class Kind { Inherit, Null, File, Descriptor, SameAsStdout };
  Kind kind = Kind::Inherit;
  std::string path;     // Kind::File
  bool append = true;   // Kind::File: append, else truncate
  mode_t mode = 0600;   // Kind::File, when it creates the file
  int descriptor = -1;  // Kind::Descriptor: duplicated onto the child's stdio descriptor

  static Stdio inherit() { return {}; }
  static Stdio null() { return of(Kind::Null); }
  static Stdio file(std::string path, bool append = true, mode_t mode = 0600) {
    Stdio stdio = of(Kind::File);
    stdio.path = std::move(path);
    stdio.append = append;
    stdio.mode = mode;
    return stdio;
  }
  static Stdio from_descriptor(int descriptor) {
    Stdio stdio = of(Kind::Descriptor);
    stdio.descriptor = descriptor;
    return stdio;
  }
  // stderr only: the same file as stdout.
  static Stdio same_as_stdout() { return of(Kind::SameAsStdout); }

 private:
  static Stdio of(Kind kind) {
    Stdio stdio;
    stdio.kind = kind;
    return stdio;
  }
};

struct SpawnOptions {
  // argv[0] is searched on PATH when it holds no '/'.
  std::vector<std::string> argv;
  // Added to (and overriding) this process's environment; with clear_env, the whole environment.
  std::map<std::string, std::string> env;
  bool clear_env = false;
  Stdio in = Stdio::null();
  Stdio out = Stdio::inherit();
  Stdio err = Stdio::inherit();
  // The child leads a process group of its own (so a signal to -pid reaches its children too).
  bool new_process_group = false;
  // The child starts with no blocked signals and default dispositions for SIGINT, SIGTERM,
  // SIGPIPE, SIGHUP and SIGCHLD, whatever this process blocks or ignores.
  bool reset_signals = true;
};

// Starts the child; it holds descriptors 0-2 as asked and nothing else of ours.
Result<pid_t> spawn(const SpawnOptions& options);

// Marks a descriptor close-on-exec (for descriptors a library opened without it).
void set_close_on_exec(int descriptor);

struct DescriptorLimit {
  uint64_t soft = 0;
  uint64_t hard = 0;
};
// RLIMIT_NOFILE as it is now.
DescriptorLimit descriptor_limit();
// Raises the soft RLIMIT_NOFILE to the hard limit, as Go's runtime and nginx do (each proxied
// stream holds two descriptors, and shells default to 1024); logs a warning when the limit stays
// below `wanted`. Returns the limit in force. Children inherit the raised limit.
DescriptorLimit raise_descriptor_limit(uint64_t wanted = 4096);

// How many descriptors this process has open (entries of /proc/self/fd), -1 when unknown.
int open_descriptor_count();

}  // namespace nebula
