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
    const series = [{name: labels.value, type: "bar", data: data.values.map((v) => v === null ? null : +(v * 100).toFixed(2))}];
    if (data.target !== null && data.target !== undefined) {
      series[0].markLine = {symbol: "none", data: [{yAxis: +(data.target * 100).toFixed(2), name: labels.target}],
        label: {formatter: labels.target + " {c}%"}};
    }
    chart.setOption({
      animation: false, tooltip: {trigger: "axis", valueFormatter: (v) => v === null ? "–" : v + "%"},
      grid: {left: 50, right: 20, top: 20, bottom: 60},
      xAxis: {type: "category", data: data.groups, axisLabel: {rotate: data.groups.length > 12 ? 45 : 0}},
      yAxis: {type: "value", axisLabel: {formatter: "{value}%"}},
      series,
    });
  }
});
