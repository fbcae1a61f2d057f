"use strict";
// The page: the model card and Table 1 from GET /v1/model; an image sent to POST /v1/predict (top 5) and
// POST /v1/explain (class activation map, branch shares). Every server refusal is shown as its own message.

const $ = (id) => document.getElementById(id);
const pct = (v) => (100 * v).toFixed(1) + "%";
const int = (v) => (v === null || v === undefined ? "" : Number(v).toLocaleString("en-US"));
const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function call(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.error || body.detail || `the server answered ${response.status}`);
  return body;
}

function drawCard(model) {
  $("model-name").textContent = `${model.variant} · ${model.classes.length} classes`;
  $("engine-badge").textContent = model.engine;
  const prep = model.preprocessing;
  const rows = [
    ["variant", `${model.variant}: ${model.description}`],
    ["checkpoint", `${model.checkpoint} (${model.weights} weights)`],
    ["parameters", int(model.parameters)],
    ["input", `${prep.image_size}×${prep.image_size} px, ${prep.in_channels === 1 ? "grayscale" : "RGB"}`],
    ["preprocessing", `resize ${prep.resize}, centre crop ${prep.image_size}, mean ${prep.mean.map((v) => v.toFixed(3)).join("/")}, std ${prep.std.map((v) => v.toFixed(3)).join("/")}`],
    ["engine", model.engine_reason],
    ["batching", model.batching.max_batch > 1 ? `up to ${model.batching.max_batch} images, ${model.batching.wait_ms} ms window` : "off"],
  ];
  if (model.test) {
    rows.push(["test accuracy", `top-1 ${pct(model.test.top1)}, top-5 ${pct(model.test.top5)} on ${int(model.test.num_samples)} images${model.test.tta && model.test.tta !== "none" ? ` (${model.test.tta} TTA)` : ""}`]);
  }
  const dl = $("card");
  dl.replaceChildren();
  for (const [k, v] of rows) { dl.append(el("dt", {}, k), el("dd", {}, v)); }
  const chips = $("classes");
  chips.replaceChildren(...model.classes.slice(0, 200).map((c) => el("span", { class: "chip" }, c)));
  if (model.classes.length > 200) chips.append(el("span", { class: "chip muted" }, `+ ${model.classes.length - 200} more`));
  drawCurves(model.training);
}

function drawCurves(history) {
  const box = $("curves");
  box.replaceChildren();
  if (!history || history.length === 0) {
    box.append(el("p", { class: "muted small" }, "No training curves: the checkpoint's run folder (metrics.jsonl) is not beside it."));
    return;
  }
  const series = [
    ["val_top1", "validation top-1", "#2f6fed"],
    ["ema_val_top1", "EMA validation top-1", "#159a55"],
  ].filter(([key]) => history.some((h) => typeof h[key] === "number"));
  const W = 640, H = 220, L = 46, R = 12, T = 14, B = 32;
  const xs = history.map((h) => h.epoch);
  const ys = series.flatMap(([key]) => history.map((h) => h[key]).filter((v) => typeof v === "number"));
  const x0 = Math.min(...xs, 0), x1 = Math.max(...xs, 1);
  const y0 = Math.max(0, Math.min(...ys) - 0.02), y1 = Math.min(1, Math.max(...ys) + 0.01);
  const sx = (v) => L + ((v - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (v) => H - B - ((v - y0) / (y1 - y0 || 1)) * (H - T - B);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "validation accuracy per epoch");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4;
    add("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), stroke: "#e3e6ee" });
    add("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7385" }, v.toFixed(3));
  }
  add("text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11, fill: "#6b7385" }, "epoch");
  series.forEach(([key, label, colour], i) => {
    const points = history.filter((h) => typeof h[key] === "number").map((h) => `${sx(h.epoch)},${sy(h[key])}`);
    add("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2.2 });
    for (const p of points) { const [cx, cy] = p.split(","); add("circle", { cx, cy, r: 3, fill: colour }); }
    add("text", { x: L + 8, y: T + 12 + 15 * i, "font-size": 12, fill: colour }, label);
  });
  box.append(svg);
}

function drawTable1(table) {
  const head = ["layer", "type", "patch size/stride", "output size", "depth", "#1x1", "#3x3 reduce", "#3x3", "#5x5 reduce", "#5x5", "pool proj", "params", "paper", "multiply-adds", "paper"];
  const t = $("table1");
  t.replaceChildren();
  const thead = el("thead"), tr = el("tr");
  head.forEach((h) => tr.append(el("th", {}, h)));
  thead.append(tr);
  const tbody = el("tbody");
  for (const r of table.rows) {
    const row = el("tr", r.train_only ? { class: "aux" } : {});
    const off = (diff) => (diff !== null && Math.abs(diff) > 0.02 ? { class: "off", title: `${(100 * diff).toFixed(0)}% from the paper` } : {});
    const cells = [
      [r.name], [r.type], [r.patch], [r.output_shape.join("×")], [r.depth || ""],
      [int(r.n1x1)], [int(r.n3x3_reduce)], [int(r.n3x3)], [int(r.n5x5_reduce)], [int(r.n5x5)], [int(r.pool_proj)],
      [int(r.params), off(r.params_diff)], [r.paper_params_text || ""],
      [int(r.macs)], [r.paper_macs_text || ""],
    ];
    for (const [text, attrs] of cells) row.append(el("td", attrs || {}, String(text)));
    tbody.append(row);
  }
  t.append(thead, tbody);
  $("table1-note").textContent = `${table.variant} at ${table.input_size} px: ${int(table.total_params)} parameters without the auxiliary heads, ${int(table.total_macs)} multiply-adds. Red: more than 2% from the paper's printed value (expected where the input channels, input size or classes differ from the paper's 3, 224 and 1,000).`;
}

function drawPredictions(top) {
  const list = $("predictions");
  list.replaceChildren();
  top.forEach((p, i) => {
    const li = el("li");
    li.append(el("span", { class: "label", ...(i === 0 ? { id: "top1" } : {}) }, p.class), el("span", { class: "pct" }, pct(p.probability)));
    const track = el("div", { class: "track" }), fill = el("div", { class: "fill" });
    fill.style.width = `${Math.max(0.5, 100 * p.probability)}%`;
    track.append(fill);
    li.append(track);
    list.append(li);
  });
}

function drawShares(shares) {
  const t = $("shares");
  t.replaceChildren();
  const head = el("tr");
  head.append(el("th"));
  shares.branches.forEach((b) => head.append(el("th", {}, b)));
  t.append(head);
  shares.modules.forEach((m, i) => {
    const tr = el("tr");
    tr.append(el("th", { class: "row" }, m.replace("inception", "")));
    shares.attribution[i].forEach((v, j) => {
      const td = el("td", { class: "cell", title: `${m} ${shares.branches[j]}: ${pct(v)} of attribution, ${pct(shares.energy[i][j])} of energy, ${pct(shares.channels[i][j])} of channels` });
      const strength = Math.min(1, v / 0.6);
      td.style.background = `rgba(47, 111, 237, ${0.08 + 0.8 * strength})`;
      td.style.color = strength > 0.55 ? "#fff" : "#1d2330";
      td.append(document.createTextNode(pct(v)));
      td.append(el("small", {}, pct(shares.channels[i][j])));
      tr.append(td);
    });
    t.append(tr);
  });
}

let latest = 0; // the newest image: answers for an older one are dropped, not drawn over it

async function classify(file) {
  showError("");
  if (!file) return;
  const mine = ++latest;
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = `${file.name}: drop another image, or choose a file`;
  const options = () => ({ method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file });
  try {
    const predicted = await call("/v1/predict?top_k=5", options());
    if (mine !== latest) return;
    drawPredictions(predicted.predictions[0].top);
    $("timing").textContent = `${predicted.engine}: ${predicted.timing_ms.total} ms on the server (model ${predicted.timing_ms.model} ms, batch of ${predicted.predictions[0].batch_size})`;
    const explained = await call("/v1/explain?top_k=5", options());
    if (mine !== latest) return;
    const cam = $("cam");
    cam.src = explained.cam.png;
    cam.alt = `class activation map of ${explained.cam.class}`;
    cam.hidden = false;
    $("cam-caption").textContent = `Exact class activation map of “${explained.cam.class}” at ${explained.cam.layer}: ` +
      `${explained.cam.cells}, drawn upsampled; red is where the evidence for it is.`;
    const finer = explained.grad_cam;
    $("grad-cam").hidden = $("grad-cam-caption").hidden = !finer;
    if (finer) {
      $("grad-cam").src = finer.png;
      $("grad-cam").alt = `Grad-CAM of ${explained.cam.class} at ${finer.layer}`;
      $("grad-cam-caption").textContent = `Grad-CAM at ${finer.layer}: ${finer.cells}, a finer layer that still explains the class.`;
    }
    drawShares(explained.branch_shares);
  } catch (error) {
    if (mine === latest) showError(error.message);
  }
}

const drop = $("drop");
["dragenter", "dragover"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((e) => drop.addEventListener(e, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (ev) => classify(ev.dataTransfer.files[0]));
$("file").addEventListener("change", (ev) => classify(ev.target.files[0]));

call("/v1/model").then((model) => { drawCard(model); drawTable1(model.table1); }).catch((error) => showError(error.message));
