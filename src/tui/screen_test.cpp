#include "tui/screen.h"

#include <gtest/gtest.h>

namespace nebula::tui {
namespace {

TEST(TuiScreen, LayoutFillsTheTerminal) {
  for (int rows : {40, 24, 12, 9, 5, 2}) {
    Layout layout = compute_layout(rows, 4, 3);
    EXPECT_EQ(layout.header.top, 0);
    EXPECT_EQ(layout.footer.top, rows - 1);
    EXPECT_EQ(layout.nodes.top, 1);
    EXPECT_EQ(layout.deployments.top, layout.nodes.top + layout.nodes.height);
    EXPECT_EQ(layout.events.top, layout.deployments.top + layout.deployments.height);
    EXPECT_EQ(layout.events.top + layout.events.height, rows - 1) << rows;
    EXPECT_GE(layout.nodes.height, 0);
    EXPECT_GE(layout.deployments.height, 0);
    EXPECT_GE(layout.events.height, 0);
  }
}

TEST(TuiScreen, PanesTakeWhatTheirRowsNeedUpToAThird) {
  Layout roomy = compute_layout(40, 2, 1);
  EXPECT_EQ(roomy.nodes.height, 4);        // title, header, two GPUs
  EXPECT_EQ(roomy.deployments.height, 3);  // title, header, one deployment
  EXPECT_EQ(roomy.events.height, 38 - 7);
  Layout crowded = compute_layout(24, 50, 50);
  EXPECT_EQ(crowded.nodes.height, 22 * 35 / 100);
  EXPECT_EQ(crowded.deployments.height, 22 * 35 / 100);
  EXPECT_GE(crowded.events.height, 3);
  Layout small = compute_layout(11, 50, 50);  // every pane keeps a title, a header and a row
  EXPECT_EQ(small.nodes.height, 3);
  EXPECT_EQ(small.deployments.height, 3);
  EXPECT_EQ(small.events.height, 3);
}

TEST(TuiScreen, LinesFitTheWidth) {
  GpuRow gpu;
  gpu.node = "a-node-with-a-very-long-name";
  gpu.node_state = "Ready";
  gpu.name = "H100-80GB";
  gpu.total_mb = 81920;
  gpu.used_mb = 40960;
  gpu.utilization = 35;
  gpu.replicas = {"chat-abc12"};
  DeploymentRow deployment;
  deployment.name = "chat";
  deployment.ready = 2;
  deployment.desired = 3;
  deployment.phase = "Progressing";
  deployment.figures = DeploymentFigures{12.5, 340, 0.045, 2, 1};
  EventRow event{1000, "Warning", "replica/chat-abc12", "Failed", std::string(300, 'm')};
  for (int width : {200, 120, 80, 40, 1}) {
    EXPECT_LE(gpu_line(gpu, width).size(), static_cast<size_t>(width));
    EXPECT_LE(gpu_header(width).size(), static_cast<size_t>(width));
    EXPECT_LE(deployment_line(deployment, width).size(), static_cast<size_t>(width));
    EXPECT_LE(deployment_header(width, SortKey::Name, false).size(), static_cast<size_t>(width));
    EXPECT_LE(event_line(event, width, 5000).size(), static_cast<size_t>(width));
  }
  std::string line = gpu_line(gpu, 120);
  EXPECT_NE(line.find("a-node-with-~"), std::string::npos) << line;
  EXPECT_NE(line.find("[##############..............]"), std::string::npos) << line;
  EXPECT_NE(line.find("40.0/80.0"), std::string::npos) << line;
  EXPECT_NE(line.find("35%"), std::string::npos) << line;
  EXPECT_NE(line.find("chat-abc12"), std::string::npos) << line;
  std::string row = deployment_line(deployment, 120);
  for (const char* figure : {"2/3", "Progressing", "12.5", "45ms", "340", " 2 "}) {
    EXPECT_NE(row.find(figure), std::string::npos) << figure << " in " << row;
  }
  EXPECT_NE(deployment_header(120, SortKey::RequestRate, true).find("REQ/Sv"), std::string::npos);
  EXPECT_NE(deployment_header(120, SortKey::Ttft, false).find("TTFT p50^"), std::string::npos);
  DeploymentRow no_metrics = deployment;
  no_metrics.figures.reset();
  EXPECT_NE(deployment_line(no_metrics, 120).find("      -"), std::string::npos);
}

}  // namespace
}  // namespace nebula::tui
