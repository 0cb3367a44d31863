#include "planner/svg_plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace daedalus {
namespace {

constexpr double kWidth = 800, kHeight = 520;
constexpr double kLeft = 90, kRight = 30, kTop = 50, kBottom = 70;

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// A step of 1, 2 or 5 times a power of ten giving about `ticks` intervals over [0, hi].
double TickStep(double hi, int ticks) {
  const double raw = hi / ticks;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

std::string Number(double v) {
  if (v >= 1e6) return absl::StrFormat("%gM", v / 1e6);
  if (v >= 1e4) return absl::StrFormat("%gk", v / 1e3);
  return absl::StrFormat("%g", v);
}

}  // namespace

std::vector<size_t> Frontier(const std::vector<PlotPoint>& points) {
  std::vector<size_t> out;
  for (size_t i = 0; i < points.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < points.size() && !dominated; ++j) {
      if (j == i) continue;
      const PlotPoint &a = points[j], &b = points[i];
      dominated = a.x <= b.x && a.y >= b.y && (a.x < b.x || a.y > b.y);
    }
    if (!dominated) out.push_back(i);
  }
  std::sort(out.begin(), out.end(), [&](size_t a, size_t b) { return points[a].x < points[b].x; });
  return out;
}

std::string FrontierSvg(const std::vector<PlotPoint>& points, const std::string& title, const std::string& x_label,
                        const std::string& y_label) {
  double x_max = 0, y_max = 0;
  for (const PlotPoint& p : points) {
    x_max = std::max(x_max, p.x);
    y_max = std::max(y_max, p.y);
  }
  if (x_max <= 0) x_max = 1;
  if (y_max <= 0) y_max = 1;
  const double x_step = TickStep(x_max * 1.05, 6), y_step = TickStep(y_max * 1.05, 6);
  x_max = std::ceil(x_max * 1.05 / x_step) * x_step;
  y_max = std::ceil(y_max * 1.05 / y_step) * y_step;
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + x / x_max * plot_w; };
  auto py = [&](double y) { return kTop + plot_h - y / y_max * plot_h; };

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n",
      kWidth, kHeight, kWidth, kHeight);
  absl::StrAppendFormat(&svg, "<rect width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", kWidth, kHeight);
  absl::StrAppendFormat(&svg, "<text x=\"%.0f\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">%s</text>\n",
                        kWidth / 2, Escape(title));
  for (double x = 0; x <= x_max + 1e-9 * x_max; x += x_step) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                          px(x), kTop, px(x), kTop + plot_h, px(x), kTop + plot_h + 18, Number(x));
  }
  for (double y = 0; y <= y_max + 1e-9 * y_max; y += y_step) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                          kLeft, py(y), kLeft + plot_w, py(y), kLeft - 6, py(y) + 4, Number(y));
  }
  absl::StrAppendFormat(&svg, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"black\"/>\n",
                        kLeft, kTop, plot_w, plot_h);
  absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", kLeft + plot_w / 2,
                        kHeight - 20, Escape(x_label));
  absl::StrAppendFormat(&svg,
                        "<text x=\"20\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 20 %.1f)\">%s</text>\n",
                        kTop + plot_h / 2, kTop + plot_h / 2, Escape(y_label));
  const std::vector<size_t> frontier = Frontier(points);
  if (frontier.size() > 1) {
    std::string path;
    for (size_t i : frontier) absl::StrAppendFormat(&path, "%s%.1f,%.1f", path.empty() ? "" : " ", px(points[i].x), py(points[i].y));
    absl::StrAppendFormat(&svg, "<polyline points=\"%s\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>\n", path);
  }
  for (size_t i = 0; i < points.size(); ++i) {
    const bool on = std::find(frontier.begin(), frontier.end(), i) != frontier.end();
    absl::StrAppendFormat(&svg,
                          "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>%s: %.3g, %.3g</title></circle>\n",
                          px(points[i].x), py(points[i].y), on ? "#d62728" : "#1f77b4", Escape(points[i].label),
                          points[i].x, points[i].y);
    if (on) {
      absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%s</text>\n", px(points[i].x) + 6,
                            py(points[i].y) - 6, Escape(points[i].label));
    }
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#d62728\" text-anchor=\"end\">"
                        "red: throughput-latency frontier</text>\n",
                        kLeft + plot_w - 6, kTop + 16);
  svg += "</svg>\n";
  return svg;
}

}  // namespace daedalus
