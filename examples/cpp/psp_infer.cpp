// psp_infer: run a psp-deploy bundle from C++ with ONNX Runtime's C++ API.
//
// Everything it needs comes from the bundle's manifest.json (docs/bundle.md): model files,
// input/output names and shapes, the fixed batch of grouped synthesis graphs, and the
// pre-/post-processing formulas.
//
//   psp_infer BUNDLE --face FACE.ppm  --out-image OUT.ppm [--out-codes CODES.npy] [--resize]
//   psp_infer BUNDLE --codes CODES.npy --out-image OUT.ppm [--resize]
//
// Exit codes: 0 ok, 2 usage, 3 manifest, 4 missing file, 5 bad input, 6 ONNX Runtime error.

#include <onnxruntime_cxx_api.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
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
};

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw Failure(2, "usage: psp_infer BUNDLE (--face FACE.ppm | --codes CODES.npy) --out-image OUT.ppm "
                                 "[--out-codes CODES.npy] [--resize]");
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
    else throw Failure(2, "unknown argument " + flag);
  }
  if (args.face.empty() == args.codes.empty()) throw Failure(2, "give exactly one of --face and --codes");
  if (args.out_image.empty()) throw Failure(2, "--out-image is required");
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

fs::path model_file(const fs::path& bundle, const json& record) {
  fs::path path = bundle / record.at("file").get<std::string>();
  if (!fs::is_regular_file(path)) throw Failure(4, path.string() + ": listed in the manifest but missing");
  return path;
}

std::string next_token(std::istream& in) {  // PPM header tokens, skipping comments
  std::string token;
  while (in >> token) {
    if (token[0] != '#') return token;
    std::string rest;
    std::getline(in, rest);
  }
  throw Failure(5, "truncated PPM header");
}

Image read_ppm(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(4, path.string() + ": cannot open");
  if (next_token(in) != "P6") throw Failure(5, path.string() + ": not a binary PPM (P6)");
  Image image;
  image.width = std::stoi(next_token(in));
  image.height = std::stoi(next_token(in));
  if (std::stoi(next_token(in)) != 255) throw Failure(5, path.string() + ": only 8-bit PPM (maxval 255) is supported");
  in.get();  // the single whitespace before the pixels
  image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
  if (!in.read(reinterpret_cast<char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size())))
    throw Failure(5, path.string() + ": truncated pixel data");
  return image;
}

void write_ppm(const fs::path& path, const Image& image) {
  std::ofstream out(path, std::ios::binary);
  out << "P6\n" << image.width << " " << image.height << "\n255\n";
  out.write(reinterpret_cast<const char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
  if (!out) throw Failure(4, path.string() + ": cannot write");
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

class Graph {
 public:
  Graph(Ort::Env& env, const fs::path& path, const json& record)
      : session_(env, path.c_str(), Ort::SessionOptions{}), record_(record) {}

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
  Ort::Session session_;
  json record_;
};

int run(const Args& args) {
  json manifest = read_manifest(args.bundle);
  const json& models = manifest.at("models");
  int n_styles = manifest.at("config").at("n_styles");
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "psp_infer");
  Graph synthesis(env, model_file(args.bundle, models.at("synthesis").at("fp32")), models.at("synthesis").at("fp32"));

  std::vector<float> codes;
  if (!args.face.empty()) {
    Graph encoder(env, model_file(args.bundle, models.at("encoder").at("fp32")), models.at("encoder").at("fp32"));
    int size = manifest.at("preprocess").at("size");
    auto outputs = encoder.run(preprocess(read_ppm(args.face), manifest.at("preprocess")), {1, 3, size, size});
    const float* out = outputs[0].GetTensorData<float>();
    codes.assign(out, out + static_cast<size_t>(n_styles) * 512);
  } else {
    std::vector<int64_t> shape;
    codes = read_npy(args.codes, shape);
    if (codes.size() != static_cast<size_t>(n_styles) * 512)
      throw Failure(5, args.codes.string() + ": expected " + std::to_string(n_styles) + "x512 W+ codes");
  }
  if (!args.out_codes.empty()) write_npy(args.out_codes, codes, {n_styles, 512});

  auto outputs = synthesis.run(codes, {1, n_styles, 512});
  Ort::Value& image = outputs[args.resize ? 1 : 0];
  int size = static_cast<int>(image.GetTensorTypeAndShapeInfo().GetShape()[2]);
  write_ppm(args.out_image, postprocess(image.GetTensorData<float>(), size));
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
