// moempi plot: metrics.jsonl -> gnuplot data blocks and script -> PNGs. Test: tests/e2e/plot.sh.
#include "runtime/plot.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace moempi {
namespace {

namespace fs = std::filesystem;

struct Record {
  int step = 0;
  double loss = 0, maxvio = 0;
  std::optional<double> val_loss, maxvio_global;
  std::vector<double> spec_norm;                 // per layer, at evaluations
  std::vector<std::vector<double>> expert_load;  // [layer][expert]
};

struct Run {
  std::string name;
  std::vector<Record> records;
};

std::string run_name(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

Run read_run(const std::string& dir) {
  const std::string path = (fs::path(dir) / "metrics.jsonl").string();
  MOEMPI_CHECK_ALL(fs::is_regular_file(path),
                   "moempi plot: {} has no metrics.jsonl; give run directories of moempi train "
                   "(with metrics.jsonl: true)", dir);
  std::ifstream in(path);
  MOEMPI_CHECK_ALL(in.good(), "moempi plot: cannot read {}", path);
  Run run{run_name(dir), {}};
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail_collective(fmt::format("moempi plot: {}:{}: not JSON ({})", path, line_no, e.what()));
    }
    MOEMPI_CHECK_ALL(j.contains("step") && j["step"].is_number() && j.contains("loss") && j["loss"].is_number(),
                     "moempi plot: {}:{}: no numeric step or loss", path, line_no);
    Record r;
    // A value that is not a number (null: non-finite when written) counts as missing.
    auto number = [&](const char* key) -> std::optional<double> {
      if (!j.contains(key) || !j[key].is_number()) return std::nullopt;
      return j[key].get<double>();
    };
    try {
      r.step = j["step"].get<int>();
      r.loss = j["loss"].get<double>();
      r.maxvio = number("maxvio").value_or(0.0);
      r.val_loss = number("val_loss");
      r.maxvio_global = number("maxvio_global");
      if (j.contains("specialisation_norm")) r.spec_norm = j["specialisation_norm"].get<std::vector<double>>();
      if (j.contains("expert_load")) r.expert_load = j["expert_load"].get<std::vector<std::vector<double>>>();
    } catch (const nlohmann::json::exception& e) {
      fail_collective(fmt::format("moempi plot: {}:{}: unexpected value ({})", path, line_no, e.what()));
    }
    run.records.push_back(std::move(r));
  }
  MOEMPI_CHECK_ALL(!run.records.empty(), "moempi plot: {} is empty", path);
  return run;
}

// A shell word: single quotes, each ' written as '\''.
std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// gnuplot string literal (single quotes: only ' needs doubling; names never hold line breaks).
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string find_gnuplot(const PlotOptions& o) {
  std::string exe = o.gnuplot;
  if (exe.empty() && std::getenv("MOEMPI_GNUPLOT")) exe = std::getenv("MOEMPI_GNUPLOT");
  if (exe.empty()) exe = "gnuplot";
  const bool found = exe.find('/') != std::string::npos
                         ? access(exe.c_str(), X_OK) == 0
                         : std::system(fmt::format("command -v {} > /dev/null 2>&1", shell_quoted(exe)).c_str()) == 0;
  MOEMPI_CHECK_ALL(found,
                   "moempi plot needs gnuplot ('{}' not found): install the Debian package gnuplot-nox "
                   "(apt-get install gnuplot-nox, or launch/setup.sh build)", exe);
  return exe;
}

}  // namespace

std::vector<std::string> plot_runs(const PlotOptions& o) {
  MOEMPI_CHECK_ALL(!o.run_dirs.empty(), "moempi plot: give at least one run directory");
  auto no_line_breaks = [](const std::string& what, const std::string& v) {
    MOEMPI_CHECK_ALL(v.find_first_of("\r\n") == std::string::npos, "moempi plot: {} has a line break: '{}'",
                     what, v);
  };
  std::vector<Run> runs;
  for (const auto& d : o.run_dirs) {
    no_line_breaks("run directory", d);
    runs.push_back(read_run(d));
    // Runs of the same name (expA/run, expB/run) get their position as a suffix: one heatmap each.
    for (size_t i = 0; i + 1 < runs.size(); ++i)
      if (runs[i].name == runs.back().name) runs.back().name += fmt::format("_{}", runs.size());
  }
  no_line_breaks("-o", o.out_dir);
  const std::string gnuplot = find_gnuplot(o);
  const fs::path out = o.out_dir.empty() ? fs::path(o.run_dirs[0]) : fs::path(o.out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  MOEMPI_CHECK_ALL(!ec, "moempi plot: cannot create {}: {}", out.string(), ec.message());

  // One script, data inline as named blocks ($name << EOD).
  std::string s;
  s += fmt::format("set terminal pngcairo size {},{} noenhanced font ',11'\n", o.width, o.height);
  s += "set grid\nset key outside right top\n";
  for (size_t r = 0; r < runs.size(); ++r) {
    std::string train = fmt::format("$train{} << EOD\n", r), eval = fmt::format("$eval{} << EOD\n", r);
    for (const Record& rec : runs[r].records) {
      train += fmt::format("{} {} {}\n", rec.step, rec.loss, rec.maxvio);
      if (rec.val_loss || rec.maxvio_global) {
        double spec = 0;
        for (double v : rec.spec_norm) spec += v / rec.spec_norm.size();
        eval += fmt::format("{} {} {} {}", rec.step, rec.val_loss ? *rec.val_loss : NAN,
                            rec.maxvio_global ? *rec.maxvio_global : NAN, rec.spec_norm.empty() ? NAN : spec);
        for (double v : rec.spec_norm) eval += fmt::format(" {}", v);
        eval += "\n";
      }
    }
    s += train + "EOD\n" + eval + "EOD\n";
  }
  std::vector<std::string> written;
  auto png = [&](const std::string& name) {
    const std::string p = (out / name).string();
    written.push_back(p);
    s += "set output " + quoted(p) + "\n";
  };
  const std::string names = [&] {
    std::string n;
    for (const auto& r : runs) n += (n.empty() ? "" : ", ") + r.name;
    return n;
  }();

  // Every run's training column as lines and its evaluation column as points, one colour per run.
  // A run without evaluations (eval.interval 0) contributes no evaluation term: gnuplot stops on
  // a plot of empty data.
  std::vector<bool> has_eval(runs.size(), false), has_spec(runs.size(), false);
  for (size_t r = 0; r < runs.size(); ++r)
    for (const Record& rec : runs[r].records) {
      has_eval[r] = has_eval[r] || rec.val_loss || rec.maxvio_global;
      has_spec[r] = has_spec[r] || !rec.spec_norm.empty();
    }
  auto overlay = [&](int train_col, const std::string& train_label, int eval_col, const std::string& eval_label) {
    std::vector<std::string> terms;
    for (size_t r = 0; r < runs.size(); ++r) {
      terms.push_back(fmt::format("$train{} using 1:{} with lines lw 2 lc {} title {}", r, train_col, r + 1,
                                  quoted(runs[r].name + " " + train_label)));
      if (has_eval[r])
        terms.push_back(fmt::format("$eval{} using 1:{} with linespoints pt 7 dt 2 lc {} title {}", r, eval_col,
                                    r + 1, quoted(runs[r].name + " " + eval_label)));
    }
    s += "plot ";
    for (size_t i = 0; i < terms.size(); ++i) s += terms[i] + (i + 1 < terms.size() ? ", " : "\n");
  };
  png("loss.png");
  s += fmt::format("set title {}\nset xlabel 'step'\nset ylabel 'loss (nats/token)'\nunset logscale\n",
                   quoted("loss: " + names));
  overlay(2, "train", 2, "val");
  png("maxvio.png");
  s += fmt::format("set title {}\nset ylabel 'MaxVio = (max load - mean) / mean'\n", quoted("MaxVio: " + names));
  overlay(3, "batch", 3, "global (val)");
  // Specialisation: mean over layers (solid) and each layer (thin), normalised; only runs that
  // measured it (at evaluations), and no figure when none did.
  std::vector<std::string> parts;
  for (size_t r = 0; r < runs.size(); ++r) {
    if (!has_spec[r]) continue;
    parts.push_back(fmt::format("$eval{} using 1:4 with linespoints lw 2 pt 7 lc {} title {}", r, r + 1,
                                quoted(runs[r].name + " mean")));
    size_t layers = 0;
    for (const Record& rec : runs[r].records) layers = std::max(layers, rec.spec_norm.size());
    for (size_t l = 0; l < layers; ++l)
      parts.push_back(fmt::format("$eval{} using 1:{} with lines lw 1 dt {} lc {} title {}", r, 5 + l, 2 + l % 4,
                                  r + 1, quoted(fmt::format("{} layer {}", runs[r].name, l))));
  }
  if (!parts.empty()) {
    png("specialisation.png");
    s += fmt::format("set title {}\nset ylabel 'I(domain; expert) / H(domain)'\n",
                     quoted("expert specialisation by domain (validation): " + names));
    s += "plot ";
    for (size_t i = 0; i < parts.size(); ++i) s += parts[i] + (i + 1 < parts.size() ? ", " : "\n");
  }
  // Expert-load heatmaps: x = logged step (by index, labelled with the step), y = layer × expert.
  for (size_t r = 0; r < runs.size(); ++r) {
    const auto& recs = runs[r].records;
    size_t L = 0, E = 0;
    for (const Record& rec : recs) {
      L = std::max(L, rec.expert_load.size());
      for (const auto& l : rec.expert_load) E = std::max(E, l.size());
    }
    if (L == 0 || E == 0) continue;
    std::string block = fmt::format("$load{} << EOD\n", r);
    for (size_t i = 0; i < recs.size(); ++i) {
      for (size_t l = 0; l < L; ++l)
        for (size_t e = 0; e < E; ++e) {
          double v = NAN;
          if (l < recs[i].expert_load.size() && e < recs[i].expert_load[l].size()) {
            double sum = 0;
            for (double c : recs[i].expert_load[l]) sum += c;
            const double mean = sum / recs[i].expert_load[l].size();
            v = mean > 0 ? recs[i].expert_load[l][e] / mean : 0.0;
          }
          block += fmt::format("{} {} {}\n", i, l * E + e, v);
        }
      block += "\n";
    }
    s += block + "EOD\n";
    png(fmt::format("expert_load_{}.png", runs[r].name));
    std::string xtics, ytics;
    const size_t every = std::max<size_t>(1, recs.size() / 8);
    for (size_t i = 0; i < recs.size(); i += every)
      xtics += fmt::format("{}'{}' {}", xtics.empty() ? "" : ", ", recs[i].step, i);
    for (size_t l = 0; l < L; ++l)
      for (size_t e = 0; e < E; e += std::max<size_t>(1, E / 4))
        ytics += fmt::format("{}'L{} e{}' {}", ytics.empty() ? "" : ", ", l, e, l * E + e);
    s += fmt::format("set title {}\nset xlabel 'step'\nset ylabel 'layer, expert'\n",
                     quoted(fmt::format("expert load / mean load of its layer: {}", runs[r].name)));
    s += fmt::format("set xtics ({})\nset ytics ({})\n", xtics, ytics);
    s += "set palette defined (0 'white', 1 '#f4a582', 2 '#b2182b', 3 'black')\nset cbrange [0:3]\n";
    s += fmt::format("set yrange [-0.5:{}]\nset xrange [-0.5:{}]\n", L * E - 0.5, recs.size() - 0.5);
    for (size_t l = 1; l < L; ++l)
      s += fmt::format("set arrow from graph 0, first {} to graph 1, first {} nohead front lc 'black' lw 2\n",
                       l * E - 0.5, l * E - 0.5);
    s += fmt::format("plot $load{} using 1:2:3 with image notitle\n", r);
    s += "unset arrow\nset xtics autofreq\nset ytics autofreq\nset autoscale xy\n";
  }
  s += "unset output\n";

  const fs::path script = out / ".moempi_plot.gp";
  {
    std::ofstream f(script, std::ios::trunc);
    f << s;
    MOEMPI_CHECK_ALL(f.good(), "moempi plot: cannot write {}", script.string());
  }
  const std::string cmd = fmt::format("{} {} 2>&1", shell_quoted(gnuplot), shell_quoted(script.string()));
  FILE* pipe = popen(cmd.c_str(), "r");
  MOEMPI_CHECK_ALL(pipe, "moempi plot: cannot start {}", gnuplot);
  std::string messages;
  char buf[512];
  while (fgets(buf, sizeof buf, pipe)) messages += buf;
  const int status = pclose(pipe);
  MOEMPI_CHECK_ALL(status == 0, "moempi plot: gnuplot failed on {} (kept for a look): {}", script.string(), messages);
  fs::remove(script, ec);
  for (const auto& p : written)
    MOEMPI_CHECK_ALL(fs::is_regular_file(p) && fs::file_size(p) > 0, "moempi plot: gnuplot wrote no {}", p);
  return written;
}

}  // namespace moempi
