// Charts of the device and KPI pages, drawn with the ECharts shipped in /static/vendor.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  if (typeof echarts === "undefined") return;
  const labels = JSON.parse((document.getElementById("chart-labels") || {}).textContent || "{}");
  const txn = document.getElementById("txn-chart");
  if (txn) {
    const days = JSON.parse(document.getElementById("txn-data").textContent);
    const chart = echarts.init(txn, null, {renderer: "svg"});
    chart.setOption({
      animation: false, tooltip: {trigger: "axis"}, legend: {top: 0},
      grid: {left: 40, right: 10, top: 30, bottom: 24},
      xAxis: {type: "category", data: days.map((d) => d.date.slice(5))},
      yAxis: {type: "value", minInterval: 1},
      series: [
        {name: labels.financial, type: "bar", stack: "t", data: days.map((d) => d.financial)},
        {name: labels.non_financial, type: "bar", stack: "t", data: days.map((d) => d.non_financial)},
      ],
    });
  }
  const kpi = document.getElementById("kpi-chart");
  if (kpi) {
    const data = JSON.parse(document.getElementById("kpi-data").textContent);
    const chart = echarts.init(kpi, null, {renderer: "svg"});
    const pct = (v) => v === null || v === undefined ? null : +(v * 100).toFixed(2);
    const series = [{name: labels.value, type: "bar", data: data.values.map(pct),
      itemStyle: {color: "#3f7fd0"}}];
    if (data.targets && data.targets.some((v) => v !== null)) {
      series.push({name: labels.target, type: "scatter", symbol: "rect",
        symbolSize: [Math.max(12, Math.min(80, 600 / data.groups.length)), 3],
        itemStyle: {color: "#d32f2f"}, data: data.targets.map(pct), z: 3});
    }
    chart.setOption({
      animation: false, tooltip: {trigger: "axis", valueFormatter: (v) => v === null ? "–" : v + "%"},
      legend: {top: 0}, grid: {left: 50, right: 20, top: 30, bottom: 60},
      xAxis: {type: "category", data: data.groups, axisLabel: {rotate: data.groups.length > 12 ? 45 : 0}},
      yAxis: {type: "value", axisLabel: {formatter: "{value}%"}},
      series,
    });
  }
});
