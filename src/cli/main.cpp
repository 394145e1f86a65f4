// quantppl: the command-line shell over the library. Parses, calls, prints.
#include <iostream>

#include <CLI/CLI.hpp>

#include "quantppl/error.h"

int main(int argc, char** argv) {
  CLI::App app{"quantppl: how much does this quantization scheme hurt this model?"};
  app.require_subcommand(0, 1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  std::cout << app.help();
  return 0;
}
