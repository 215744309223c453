// Command-line flags for the samples: --name=value or --name value, --help.
//
//   sample::Flags flags("echo", "TCP echo server");
//   std::string host = "127.0.0.1";
//   int port = 7000;
//   flags.add("host", &host, "address to listen on");
//   flags.add("port", &port, "port to listen on (0: any)");
//   flags.parse(argc, argv);  // exits 0 after --help, 2 after a bad flag
#pragma once

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace sample {

class Flags {
 public:
  Flags(std::string program, std::string summary)
      : program_(std::move(program)), summary_(std::move(summary)) {}

  void add(const std::string& name, std::string* target, const std::string& help) {
    flags_.push_back({name, help, *target, [target](const std::string& v) {
                        *target = v;
                        return true;
                      }});
  }

  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  void add(const std::string& name, T* target, const std::string& help) {
    flags_.push_back({name, help, std::to_string(*target), [target](const std::string& v) {
                        T x{};
                        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
                        if (ec != std::errc() || end != v.data() + v.size()) return false;
                        *target = x;
                        return true;
                      }});
  }

  void add(const std::string& name, double* target, const std::string& help) {
    char def[32];
    std::snprintf(def, sizeof def, "%g", *target);
    flags_.push_back({name, help, def, [target](const std::string& v) {
                        double x = 0;
                        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
                        if (ec != std::errc() || end != v.data() + v.size()) return false;
                        *target = x;
                        return true;
                      }});
  }

  void add(const std::string& name, bool* target, const std::string& help) {
    flags_.push_back({name, help, *target ? "true" : "false", [target](const std::string& v) {
                        if (v == "true" || v == "1" || v.empty()) *target = true;
                        else if (v == "false" || v == "0") *target = false;
                        else return false;
                        return true;
                      }, true});
  }

  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        usage(stdout);
        std::exit(0);
      }
      if (a.rfind("--", 0) != 0) fail("unexpected argument '" + a + "'");
      a = a.substr(2);
      std::string value;
      bool has_value = false;
      if (auto eq = a.find('='); eq != std::string::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_value = true;
      }
      Flag* f = find(a);
      if (f == nullptr) fail("unknown flag --" + a);
      if (!has_value && !f->is_bool) {
        if (i + 1 >= argc) fail("--" + a + " needs a value");
        value = argv[++i];
      }
      if (!f->set(value)) fail("bad value '" + value + "' for --" + a);
      f->given = true;
    }
  }

  // Whether the command line named the flag (not left at its default).
  bool given(const std::string& name) {
    const Flag* f = find(name);
    return f != nullptr && f->given;
  }

  // A bad value found after parse(): the message and the usage on stderr,
  // exit status 2.
  [[noreturn]] void fail(const std::string& why) const {
    std::fprintf(stderr, "%s: %s\n\n", program_.c_str(), why.c_str());
    usage(stderr);
    std::exit(2);
  }

 private:
  struct Flag {
    std::string name, help, def;
    std::function<bool(const std::string&)> set;
    bool is_bool = false;
    bool given = false;
  };

  Flag* find(const std::string& n) {
    for (auto& f : flags_)
      if (f.name == n) return &f;
    return nullptr;
  }
  void usage(FILE* out) const {
    std::fprintf(out, "%s: %s\n\nusage: %s [flags]\n\n", program_.c_str(), summary_.c_str(),
                 program_.c_str());
    for (const auto& f : flags_)
      std::fprintf(out, "  --%-14s %s (default: %s)\n", f.name.c_str(), f.help.c_str(), f.def.c_str());
    std::fprintf(out, "  --%-14s %s\n", "help", "print this and exit");
  }
  std::string program_, summary_;
  std::vector<Flag> flags_;
};

}  // namespace sample
