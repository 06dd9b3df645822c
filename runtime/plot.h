// `moempi plot RUN_DIR [RUN_DIR ...] [-o DIR]`: PNG plots of runs' metrics.jsonl through gnuplot
// (Debian package gnuplot-nox), driven by a generated script: train and validation loss (runs
// overlaid, labelled by run name), MaxVio over steps (batch and, at evaluations, global), one
// expert-load heatmap per run (layer × expert over logged steps, each load ÷ its layer's mean),
// and the specialisation over steps. Guarantees: a run dir without metrics.jsonl, a missing
// plotter or a failed render is one collective error naming it. Test: tests/e2e/plot.sh.
#pragma once
#include <string>
#include <vector>

namespace moempi {

struct PlotOptions {
  std::vector<std::string> run_dirs;
  std::string out_dir;      // "" = the first run dir
  int width = 1000, height = 600;
  std::string gnuplot = "";  // "" = $MOEMPI_GNUPLOT, else "gnuplot" on PATH
};

// Writes the PNGs and returns their paths (local to this process; no MPI).
std::vector<std::string> plot_runs(const PlotOptions& options);

}  // namespace moempi
