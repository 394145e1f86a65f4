// quantppl_format_probe: a test driver for the number formats (issue 14).
//
//   quantppl_format_probe FORMAT OUT IN INPUT.f32 PREFIX
//
// reads OUT * IN little-endian float32 values (a weight [OUT, IN], row-major)
// from INPUT.f32, and writes
//   PREFIX.xhat.f32       the format's fused fake_quantize_into
//   PREFIX.prepared.f32   prepare() then PreparedWeight::fake_quantize_into
//   PREFIX.unpacked.f32   unpack(pack(W))
//   PREFIX.SECTION.bin    each packed section's bytes
//   PREFIX.txt            "spec S", "bits_per_weight B", "packed_bytes N" and
//                         one "section NAME DTYPE COUNT BYTES" line per section
// so that Python tests can check the C++ formats against ml_dtypes and
// gguf-py. Exit 2 on usage errors, 3 on data errors (e.g. NaN in the input).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <torch/torch.h>

#include "quantppl/error.h"
#include "quantppl/formats/gguf_blocks.h"
#include "quantppl/formats/mx_format.h"
#include "quantppl/formats/nvfp4_format.h"
#include "quantppl/formats/scaled_element_format.h"

namespace {

std::unique_ptr<quantppl::WeightFormat> parse(const std::string& spec) {
  using namespace quantppl::formats;
  if (auto f = parse_scaled_element_format(spec)) return f;
  if (auto f = parse_mx_format(spec)) return f;
  if (auto f = parse_nvfp4_format(spec)) return f;
  if (auto f = parse_gguf_format(spec)) return f;
  throw quantppl::UsageError("unknown format '" + spec + "'");
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw quantppl::IoError("cannot write '" + path + "'");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc != 6) throw quantppl::UsageError("usage: quantppl_format_probe FORMAT OUT IN INPUT.f32 PREFIX");
    const auto format = parse(argv[1]);
    const int64_t out = std::stoll(argv[2]), in = std::stoll(argv[3]);
    const std::string prefix = argv[5];
    torch::Tensor w = torch::empty({out, in}, torch::kFloat32);
    {
      std::ifstream f(argv[4], std::ios::binary);
      f.read(reinterpret_cast<char*>(w.data_ptr<float>()), static_cast<std::streamsize>(w.numel() * 4));
      if (!f) throw quantppl::IoError(std::string("cannot read ") + std::to_string(w.numel()) + " floats from '" + argv[4] + "'");
    }
    const std::string name = "probe";
    torch::Tensor fused = torch::empty_like(w);
    format->fake_quantize_into(w, fused, name);
    write_file(prefix + ".xhat.f32", fused.data_ptr<float>(), fused.numel() * 4);
    const auto prepared = format->prepare(w, name);
    torch::Tensor again = torch::empty_like(w);
    prepared->fake_quantize_into(w, again);
    write_file(prefix + ".prepared.f32", again.data_ptr<float>(), again.numel() * 4);
    const quantppl::PackedWeight packed = prepared->pack(w);
    const torch::Tensor unpacked = format->unpack(packed, name).contiguous();
    write_file(prefix + ".unpacked.f32", unpacked.data_ptr<float>(), unpacked.numel() * 4);
    std::ostringstream meta;
    meta.precision(17);
    meta << "spec " << format->spec() << "\n"
         << "bits_per_weight " << format->bits_per_weight(out, in) << "\n"
         << "packed_bytes " << format->packed_bytes(out, in) << "\n";
    for (const auto& s : packed.sections) {
      meta << "section " << s.name << " " << s.dtype << " " << s.count << " " << s.bytes.size() << "\n";
      write_file(prefix + "." + s.name + ".bin", s.bytes.data(), s.bytes.size());
    }
    const std::string text = meta.str();
    write_file(prefix + ".txt", text.data(), text.size());
    return 0;
  } catch (const quantppl::UsageError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const quantppl::DataError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  }
}
