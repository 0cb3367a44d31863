// A scatter plot of plans as a standalone SVG: latency on x, throughput on y, the
// throughput-latency frontier (no other point is both faster and higher) drawn as a line.
#pragma once

#include <string>
#include <vector>

namespace daedalus {

struct PlotPoint {
  double x = 0;        // latency
  double y = 0;        // throughput
  std::string label;   // e.g. "ep=144 batch-per-gpu=128"
};

// Indices of the points on the frontier, by increasing x: a point is on it when no other point
// has x <= its x and y >= its y with one of them strictly better.
std::vector<size_t> Frontier(const std::vector<PlotPoint>& points);

std::string FrontierSvg(const std::vector<PlotPoint>& points, const std::string& title, const std::string& x_label,
                        const std::string& y_label);

}  // namespace daedalus
