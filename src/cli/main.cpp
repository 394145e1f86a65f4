// quantppl: the command-line shell over the library. Parses, calls, prints.
//
// Exit codes (also in README.md): see commands.h.
//   0  success
//   1  `compare --check`: a perplexity drifted beyond its tolerance
//   2  usage error: a malformed flag, variant spec or option combination
//   3  data error: the model, tokenizer or text is unusable (also: out of memory
//        while loading it, std::bad_alloc, naming what was being loaded)
//   4  I/O error: a file could not be read or written
//   5  internal error (a bug: please report it)
//   130 / 143 / 129  interrupted by SIGINT / SIGTERM / SIGHUP (output_file.h:
//        temporary output files are removed, nothing half-written is left)
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <string>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "commands.h"
#include "quantppl/variant_spec.h"
#include "quantppl/error.h"
#include "quantppl/output_file.h"
#include "../openmp_wait_policy.h"

namespace quantppl::cli {

namespace {

int run(int argc, char** argv) {
  CLI::App app{
      "quantppl: how much does this quantization scheme hurt this model?\n"
      "Loads a TorchScript contract model (docs/model-contract.md), fake-quantizes its Linear weights "
      "and reports perplexity for the original and every variant."};
  app.set_version_flag("--version", std::string("quantppl ") + QUANTPPL_VERSION);
  app.footer(variant_help_table());
  app.require_subcommand(1);
  CompareCommand compare;
  QuantizeCommand quantize;
  CLI::App* compare_app = setup_compare(app, compare);
  CLI::App* quantize_app = setup_quantize(app, quantize);
  InspectCommand inspect;
  SensitivityCommand sensitivity;
  CLI::App* inspect_app = setup_inspect(app, inspect);
  CLI::App* sensitivity_app = setup_sensitivity(app, sensitivity);
  CalibrateCommand calibrate;
  CLI::App* calibrate_app = setup_calibrate(app, calibrate);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "quantppl: " << e.what() << " (see quantppl --help)\n";
    return kExitUsage;
  }
  if (compare_app->parsed()) return run_compare_command(compare, compare_app->count("--variants") > 0);
  if (quantize_app->parsed()) return run_quantize_command(quantize);
  if (inspect_app->parsed()) return run_inspect_command(inspect);
  if (sensitivity_app->parsed()) return run_sensitivity_command(sensitivity);
  if (calibrate_app->parsed()) return run_calibrate_command(calibrate);
  return kExitUsage;
}

}  // namespace
}  // namespace quantppl::cli

// Exit 3 like any input that cannot be used: a file that asks for more memory than there is
// (a hostile size field, or a model too large for this machine) is unusable here. Names what was
// being loaded when ActivityScope knows it (error.h).
static std::string out_of_memory_message() {
  const std::string& activity = quantppl::ActivityScope::failed_activity();
  return "quantppl: error: out of memory" + (activity.empty() ? std::string() : " while " + activity) +
         ": the input needs more memory than is available";
}
int main(int argc, char** argv) {
  using namespace quantppl;
  // OMP_WAIT_POLICY=PASSIVE unless the user set it (src/openmp_wait_policy.h). Before the
  // handlers: its fallback re-executes the process, and handlers would not survive execv.
  startup::apply_openmp_wait_policy(argv);
  install_interrupt_handlers();
  try {
    return cli::run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitUsage;
  } catch (const DataError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitData;
  } catch (const IoError& e) {
    std::cerr << "quantppl: error: " << e.what() << "\n";
    return cli::kExitIo;
  } catch (const std::bad_alloc&) {
    std::cerr << out_of_memory_message() << "\n";
    return cli::kExitData;
  } catch (const c10::Error& e) {
    // LibTorch's allocator reports exhaustion as c10::Error ("DefaultCPUAllocator: not enough memory").
    const std::string what = e.what_without_backtrace();
    if (what.find("not enough memory") != std::string::npos) {
      std::cerr << out_of_memory_message() << "\n";
      return cli::kExitData;
    }
    // LibTorch errors that escaped the library's own checks: first line only.
    std::cerr << "quantppl: internal error (LibTorch): " << printable(what.substr(0, what.find('\n'))) << "\n";
    return cli::kExitInternal;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    std::cerr << "quantppl: internal error: " << printable(what.substr(0, what.find('\n'))) << "\n";
    return cli::kExitInternal;
  }
}
