// psp_infer: run a psp-deploy bundle from C++ with ONNX Runtime's C++ API.
//
// Everything it needs comes from the bundle's manifest.json (docs/bundle.md): model files,
// input/output names and shapes, the fixed batch of grouped synthesis graphs, and the
// pre-/post-processing formulas. Before trusting a graph it checks, as docs/bundle.md asks of
// every runtime, the file's sha256 and that the manifest states what the graph itself declares
// (its inputs and outputs, and the sections export wrote into its ONNX metadata).
//
//   psp_infer BUNDLE --face FACE.png   --out-image OUT.png [--out-codes CODES.npy] [--resize] [--edit NAME:S]
//   psp_infer BUNDLE --codes CODES.npy --out-image OUT.png [--resize] [--edit NAME:S]
//
// --edit moves the codes along one of the bundle's directions (manifest "directions", docs/bundle.md)
// by strength S before the synthesis; --out-codes writes the codes as encoded, before the edit.
//
// Faces are read as psp-deploy writes them (PNG: the crops of `psp-deploy align`), or as JPEG or
// binary PPM/PGM, with stb_image; images with transparency are put on white, as psp-deploy's
// runtime does. OUT is written as PNG (stb_image_write), or as binary PPM when it ends in .ppm.
//
// Exit codes: 0 ok, 2 usage, 3 manifest, 4 missing file, 5 bad input, 6 ONNX Runtime error,
// 7 the bundle does not match its manifest (a file's sha256, or what a graph declares).

#include <onnxruntime_cxx_api.h>

#include <nlohmann/json.hpp>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNM
#define STBI_FAILURE_USERMSG
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int kSchemaVersion = 1;

// An error with the exit code that reports it.
struct Failure : std::runtime_error {
  int code;
  Failure(int exit_code, const std::string& message) : std::runtime_error(message), code(exit_code) {}
};

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // interleaved, row-major
};

struct Args {
  fs::path bundle, face, codes, out_image, out_codes;
  bool resize = false;
  std::string edit;  // a direction's name, or empty
  float strength = 0.0f;
};

std::string lower_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw Failure(2, "usage: psp_infer BUNDLE (--face FACE.png | --codes CODES.npy) --out-image OUT.png "
                                 "[--out-codes CODES.npy] [--resize] [--edit NAME:S]");
  Args args;
  args.bundle = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Failure(2, flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--face") args.face = value();
    else if (flag == "--codes") args.codes = value();
    else if (flag == "--out-image") args.out_image = value();
    else if (flag == "--out-codes") args.out_codes = value();
    else if (flag == "--resize") args.resize = true;
    else if (flag == "--edit") {
      std::string spec = value();
      size_t colon = spec.find(':');
      size_t used = 0;
      try {
        if (colon == std::string::npos || colon == 0) throw std::invalid_argument(spec);
        args.strength = std::stof(spec.substr(colon + 1), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || colon + 1 + used != spec.size() || !std::isfinite(args.strength))
        throw Failure(2, "--edit " + spec + ": write NAME:STRENGTH, e.g. age:-3");
      args.edit = spec.substr(0, colon);
    }
    else throw Failure(2, "unknown argument " + flag);
  }
  if (args.face.empty() == args.codes.empty()) throw Failure(2, "give exactly one of --face and --codes");
  if (args.out_image.empty()) throw Failure(2, "--out-image is required");
  std::string ext = lower_extension(args.out_image);
  if (ext != ".png" && ext != ".ppm")
    throw Failure(2, "--out-image " + args.out_image.string() + ": name a .png or a .ppm file");
  return args;
}

json read_manifest(const fs::path& bundle) {
  fs::path path = bundle / "manifest.json";
  std::ifstream in(path);
  if (!in) throw Failure(4, path.string() + ": no manifest (is this a psp-deploy bundle?)");
  json manifest;
  try {
    in >> manifest;
  } catch (const json::exception& e) {
    throw Failure(3, path.string() + ": unreadable manifest: " + e.what());
  }
  int version = manifest.value("schema_version", -1);
  if (version != kSchemaVersion)
    throw Failure(3, path.string() + ": schema_version " + std::to_string(version) + " is not supported (this program "
                     "reads " + std::to_string(kSchemaVersion) + ")");
  return manifest;
}

// SHA-256 (FIPS 180-4), to check bundle files against the manifest's hashes without a crypto library.
class Sha256 {
 public:
  void update(const uint8_t* data, size_t size) {
    bits_ += static_cast<uint64_t>(size) * 8;
    while (size > 0) {
      if (fill_ == 0 && size >= 64) {  // whole blocks straight from the caller's buffer
        compress(data);
        data += 64, size -= 64;
        continue;
      }
      size_t n = std::min(size, 64 - fill_);
      std::copy(data, data + n, block_.begin() + static_cast<std::ptrdiff_t>(fill_));
      fill_ += n, data += n, size -= n;
      if (fill_ == 64) compress(block_.data()), fill_ = 0;
    }
  }

  std::string hex() {  // finishes the digest: a 1 bit, zeros, then the message length in bits
    uint8_t tail[72] = {0x80};
    uint64_t bits = bits_;
    size_t pad = (fill_ < 56 ? 56 : 120) - fill_;
    for (int i = 0; i < 8; ++i) tail[pad + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(tail, pad + 8);
    std::string out;
    char byte[3];
    for (uint32_t word : state_)
      for (int i = 3; i >= 0; --i) std::snprintf(byte, sizeof byte, "%02x", (word >> (i * 8)) & 0xff), out += byte;
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const uint8_t* block) {
    static constexpr std::array<uint32_t, 64> k = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(block[i * 4]) << 24 | uint32_t(block[i * 4 + 1]) << 16 | uint32_t(block[i * 4 + 2]) << 8 |
             block[i * 4 + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    state_[0] += a, state_[1] += b, state_[2] += c, state_[3] += d;
    state_[4] += e, state_[5] += f, state_[6] += g, state_[7] += h;
  }

  std::array<uint32_t, 8> state_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<uint8_t, 64> block_{};
  size_t fill_ = 0;
  uint64_t bits_ = 0;
};

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(4, path.string() + ": cannot open");
  Sha256 digest;
  std::vector<char> buffer(1 << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
    digest.update(reinterpret_cast<const uint8_t*>(buffer.data()), static_cast<size_t>(in.gcount()));
  return digest.hex();
}

// A file the manifest lists: present, and with the recorded sha256.
fs::path verified_file(const fs::path& bundle, const std::string& file, const std::string& sha256) {
  fs::path path = bundle / file;
  if (!fs::is_regular_file(path)) throw Failure(4, path.string() + ": listed in the manifest but missing");
  if (sha256_file(path) != sha256)
    throw Failure(7, path.string() + ": contents do not match the manifest's sha256 (edited or corrupt file)");
  return path;
}

fs::path model_file(const fs::path& bundle, const json& record) {
  if (record.contains("external_data") && !record.at("external_data").is_null())
    verified_file(bundle, record.at("external_data"), record.at("external_data_sha256"));
  return verified_file(bundle, record.at("file"), record.at("sha256"));
}

// A face image as psp-deploy's runtime reads it (runtime/io.py): 8-bit RGB; grey is spread to the
// three channels, and transparency is put on white with Pillow's alpha_composite arithmetic.
Image read_image(const fs::path& path) {
  if (!fs::is_regular_file(path)) throw Failure(4, path.string() + ": cannot open (no such file)");
  int width = 0, height = 0, channels = 0;
  if (!stbi_info(path.string().c_str(), &width, &height, &channels))
    throw Failure(5, path.string() + ": not an image this program reads (PNG, JPEG, binary PPM/PGM): " +
                         stbi_failure_reason());
  bool alpha = channels == 2 || channels == 4;
  stbi_uc* pixels = stbi_load(path.string().c_str(), &width, &height, &channels, alpha ? 4 : 3);
  if (pixels == nullptr) throw Failure(5, path.string() + ": unreadable image: " + stbi_failure_reason());
  Image image{width, height, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
  for (size_t i = 0, n = static_cast<size_t>(width) * height; i < n; ++i)
    for (int c = 0; c < 3; ++c) {
      if (!alpha) {
        image.rgb[i * 3 + c] = pixels[i * 3 + c];
        continue;
      }
      // Pillow's alpha_composite over opaque white, to the same integer rounding (PRECISION_BITS 7).
      uint32_t a = pixels[i * 4 + 3], coef1 = a << 7, coef2 = (255u << 7) - coef1;
      uint32_t blend = pixels[i * 4 + c] * coef1 + 255u * coef2 + (0x80u << 7);
      image.rgb[i * 3 + c] = static_cast<uint8_t>((((blend >> 8) + blend) >> 8) >> 7);
    }
  stbi_image_free(pixels);
  return image;
}

void write_image(const fs::path& path, const Image& image) {
  bool ok;
  if (lower_extension(path) == ".ppm") {
    std::ofstream out(path, std::ios::binary);
    out << "P6\n" << image.width << " " << image.height << "\n255\n";
    out.write(reinterpret_cast<const char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
    ok = static_cast<bool>(out);
  } else {
    ok = stbi_write_png(path.string().c_str(), image.width, image.height, 3, image.rgb.data(), image.width * 3) != 0;
  }
  if (!ok) throw Failure(4, path.string() + ": cannot write");
}

// .npy (version 1.0) float32 little-endian, C order.
std::vector<float> read_npy(const fs::path& path, std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(4, path.string() + ": cannot open");
  char magic[8];
  if (!in.read(magic, 8) || std::string(magic, 6) != "\x93NUMPY") throw Failure(5, path.string() + ": not a .npy file");
  uint16_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 2);
  std::string header(header_len, ' ');
  in.read(header.data(), header_len);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw Failure(5, path.string() + ": expected float32 ('<f4') in C order");
  std::string dims = header.substr(header.find('(') + 1, header.find(')') - header.find('(') - 1);
  std::stringstream ss(dims);
  std::string part;
  int64_t count = 1;
  while (std::getline(ss, part, ','))
    if (part.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(part)), count *= shape.back();
  std::vector<float> data(static_cast<size_t>(count));
  if (!in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float))))
    throw Failure(5, path.string() + ": truncated data");
  return data;
}

void write_npy(const fs::path& path, const std::vector<float>& data, const std::vector<int64_t>& shape) {
  std::string dims;
  for (auto d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";  // pad so the data starts 64-aligned
  uint16_t len = static_cast<uint16_t>(header.size());
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) throw Failure(4, path.string() + ": cannot write");
}

// Preprocessing as the manifest states it: x = (pixel / 255 - mean[c]) / std[c], NCHW.
std::vector<float> preprocess(const Image& image, const json& spec) {
  if (spec.at("kind") != "rgb") throw Failure(5, "this example feeds RGB faces; the bundle's input is a " +
                                                 spec.at("kind").get<std::string>());
  int size = spec.at("size");
  if (image.width != size || image.height != size)
    throw Failure(5, "the face must be " + std::to_string(size) + "x" + std::to_string(size) + " (aligned), got " +
                     std::to_string(image.width) + "x" + std::to_string(image.height));
  auto mean = spec.at("mean").get<std::vector<float>>(), stdev = spec.at("std").get<std::vector<float>>();
  std::vector<float> x(static_cast<size_t>(3) * size * size);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < size * size; ++i)
      x[static_cast<size_t>(c) * size * size + i] = (image.rgb[static_cast<size_t>(i) * 3 + c] / 255.0f - mean[c]) / stdev[c];
  return x;
}

// Postprocessing: pixel = uint8(trunc(clip((x + 1) / 2, 0, 1) * 255)), CHW → interleaved RGB.
Image postprocess(const float* chw, int size) {
  Image image{size, size, std::vector<uint8_t>(static_cast<size_t>(size) * size * 3)};
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < size * size; ++i) {
      float v = std::clamp((chw[static_cast<size_t>(c) * size * size + i] + 1.0f) / 2.0f, 0.0f, 1.0f) * 255.0f;
      image.rgb[static_cast<size_t>(i) * 3 + c] = static_cast<uint8_t>(v);
    }
  return image;
}

// Move W+ codes [n_styles, 512] along the bundle's direction `name` by `strength`, as docs/bundle.md
// ("Directions") states it: codes[l] += strength * step for every l in the direction's layers, in float32.
void apply_edit(const fs::path& bundle, const json& manifest, const std::string& name, float strength,
                std::vector<float>& codes, int n_styles) {
  json directions = manifest.value("directions", json::object());
  if (!directions.contains(name)) {
    std::string have;
    for (const auto& item : directions.items()) have += (have.empty() ? "" : ", ") + item.key();
    throw Failure(2, "--edit: the bundle has no direction " + name + " (it has: " + (have.empty() ? "none" : have) + ")");
  }
  const json& record = directions.at(name);
  std::vector<int64_t> shape;
  std::vector<float> values = read_npy(verified_file(bundle, record.at("file"), record.at("sha256")), shape);
  if (shape != record.at("shape").get<std::vector<int64_t>>())
    throw Failure(7, record.at("file").get<std::string>() + ": its shape is not the manifest's");
  std::string kind = record.at("kind");
  auto row = [&](int index) { return values.data() + static_cast<size_t>(index) * 512; };
  std::vector<float> step(values.begin(), values.begin() + 512);  // interfacegan, sefa: d
  if (kind == "ganspace") {  // (target - c) * std * u, c = ((codes[0] - mean) . u) / std
    float std_dev = record.at("params").at("std"), target = record.at("params").at("target"), c = 0.0f;
    for (int i = 0; i < 512; ++i) c += (codes[static_cast<size_t>(i)] - row(1)[i]) * row(0)[i];
    c /= std_dev;
    for (int i = 0; i < 512; ++i) step[static_cast<size_t>(i)] = (target - c) * std_dev * row(0)[i];
  } else if (kind != "interfacegan" && kind != "sefa" && kind != "offset") {
    throw Failure(3, "direction " + name + ": unknown kind " + kind);
  }
  for (int layer : record.at("layers").get<std::vector<int>>()) {
    if (layer < 0 || layer >= n_styles) throw Failure(3, "direction " + name + ": layer out of range");
    const float* add = kind == "offset" ? row(layer) : step.data();  // offset: D[l]
    for (int i = 0; i < 512; ++i) codes[static_cast<size_t>(layer) * 512 + i] += strength * add[i];
  }
}

// Refuse the first place where what the manifest states differs from what the graph declares.
void compare(const std::string& field, const json& stated, const json& declared, const std::string& file) {
  json patch = json::diff(stated, declared);
  if (patch.empty()) return;
  json::json_pointer at(patch[0].at("path").get<std::string>());
  while (!at.empty() && stated.contains(at.parent_pointer()) && stated.at(at.parent_pointer()).is_array())
    at = at.parent_pointer();  // a list is one field: report all of it
  auto show = [&](const json& doc) { return doc.contains(at) ? doc.at(at).dump() : std::string("absent"); };
  std::string where = field + (at.empty() ? "" : at.to_string());
  std::replace(where.begin(), where.end(), '/', '.');
  throw Failure(7, "manifest.json: " + where + " is " + show(stated) + " but " + file + " declares " + show(declared));
}

// What the graph declares about its inputs or outputs: {name: shape}, a dynamic dimension as "batch".
json declared_io(Ort::Session& session, bool inputs) {
  Ort::AllocatorWithDefaultOptions allocator;
  json io = json::object();
  size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
  for (size_t i = 0; i < count; ++i) {
    auto name = inputs ? session.GetInputNameAllocated(i, allocator) : session.GetOutputNameAllocated(i, allocator);
    auto info = inputs ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
    json shape = json::array();
    for (int64_t d : info.GetTensorTypeAndShapeInfo().GetShape()) shape.push_back(d < 0 ? json("batch") : json(d));
    io[name.get()] = shape;
  }
  return io;
}

json stated_io(const json& tensors) {
  json io = json::object();
  for (const auto& t : tensors) io[t.at("name").get<std::string>()] = t.at("shape");
  return io;
}

// The manifest sections export writes into every graph's metadata ("psp_deploy.<section>", JSON).
void check_declared(Ort::Session& session, const json& manifest, const std::string& graph, const std::string& file) {
  Ort::AllocatorWithDefaultOptions allocator;
  Ort::ModelMetadata metadata = session.GetModelMetadata();
  for (const char* section : {"config", "preprocess", "postprocess", "modconv"}) {
    auto text = metadata.LookupCustomMetadataMapAllocated((std::string("psp_deploy.") + section).c_str(), allocator);
    if (!text) throw Failure(7, file + " declares no psp_deploy." + section + " metadata; export the bundle again");
    compare(section, manifest.value(section, json()), json::parse(text.get()), file);
  }
  const json& record = manifest.at("models").at(graph).at("fp32");
  compare("models." + graph + ".fp32.inputs", stated_io(record.at("inputs")), declared_io(session, true), file);
  compare("models." + graph + ".fp32.outputs", stated_io(record.at("outputs")), declared_io(session, false), file);
}

class Graph {
 public:
  // The bundle's fp32 graph: its file checked against the manifest's sha256 before loading, and what it
  // declares against what the manifest states after.
  Graph(Ort::Env& env, const fs::path& bundle, const json& manifest, const std::string& graph)
      : record_(manifest.at("models").at(graph).at("fp32")),
        session_(env, model_file(bundle, record_).c_str(), Ort::SessionOptions{}) {
    check_declared(session_, manifest, graph, record_.at("file"));
  }

  // Run on a batch; a graph with a fixed batch gets the rows padded with copies of the last one.
  std::vector<Ort::Value> run(std::vector<float> data, std::vector<int64_t> shape) {
    const json& batch = record_.at("inputs")[0].at("shape")[0];
    if (batch.is_number() && batch.get<int64_t>() != shape[0]) {
      size_t row = data.size() / static_cast<size_t>(shape[0]);
      std::vector<float> last(data.end() - static_cast<std::ptrdiff_t>(row), data.end());
      for (int64_t b = shape[0]; b < batch.get<int64_t>(); ++b) data.insert(data.end(), last.begin(), last.end());
      shape[0] = batch.get<int64_t>();
    }
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value input = Ort::Value::CreateTensor<float>(memory, data.data(), data.size(), shape.data(), shape.size());
    std::string in_name = record_.at("inputs")[0].at("name");
    std::vector<std::string> names;
    for (const auto& output : record_.at("outputs")) names.push_back(output.at("name"));
    std::vector<const char*> out_names;
    for (const auto& n : names) out_names.push_back(n.c_str());
    const char* in_names[] = {in_name.c_str()};
    return session_.Run(Ort::RunOptions{nullptr}, in_names, &input, 1, out_names.data(), out_names.size());
  }

 private:
  json record_;  // before session_: the session is made from it
  Ort::Session session_;
};

int run(const Args& args) {
  json manifest = read_manifest(args.bundle);
  int n_styles = manifest.at("config").at("n_styles");
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "psp_infer");
  Graph synthesis(env, args.bundle, manifest, "synthesis");

  std::vector<float> codes;
  if (!args.face.empty()) {
    Graph encoder(env, args.bundle, manifest, "encoder");
    int size = manifest.at("preprocess").at("size");
    auto outputs = encoder.run(preprocess(read_image(args.face), manifest.at("preprocess")), {1, 3, size, size});
    const float* out = outputs[0].GetTensorData<float>();
    codes.assign(out, out + static_cast<size_t>(n_styles) * 512);
  } else {
    std::vector<int64_t> shape;
    codes = read_npy(args.codes, shape);
    if (codes.size() != static_cast<size_t>(n_styles) * 512)
      throw Failure(5, args.codes.string() + ": expected " + std::to_string(n_styles) + "x512 W+ codes");
  }
  if (!args.out_codes.empty()) write_npy(args.out_codes, codes, {n_styles, 512});
  if (!args.edit.empty()) apply_edit(args.bundle, manifest, args.edit, args.strength, codes, n_styles);

  auto outputs = synthesis.run(codes, {1, n_styles, 512});
  Ort::Value& image = outputs[args.resize ? 1 : 0];
  int size = static_cast<int>(image.GetTensorTypeAndShapeInfo().GetShape()[2]);
  write_image(args.out_image, postprocess(image.GetTensorData<float>(), size));
  std::cout << "wrote " << args.out_image.string() << " (" << size << "x" << size << ")\n";
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const Failure& f) {
    std::cerr << "psp_infer: " << f.what() << "\n";
    return f.code;
  } catch (const Ort::Exception& e) {
    std::cerr << "psp_infer: ONNX Runtime error: " << e.what() << "\n";
    return 6;
  } catch (const json::exception& e) {
    std::cerr << "psp_infer: manifest is missing a field: " << e.what() << "\n";
    return 3;
  }
}
