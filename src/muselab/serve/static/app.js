// muselab's web page: one tab per served model (its form made from the model's JSON schema), and the gallery.
// Plain JavaScript, no libraries, nothing loaded from outside this server.
"use strict";

const PRIMARY = ["prompt", "input", "text", "notes", "num_samples", "max_new_tokens", "label", "tempo", "beam",
                 "speaker", "wav", "seed", "temperature"];
const LONG_TEXT = ["prompt", "text", "input", "notes", "stop", "ban"];
const $ = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child) el.append(child);
  return el;
};

function headers(extra = {}) {
  const key = document.getElementById("api-key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 204) return null;
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

const blobs = new Map();
async function fileUrl(artifact) {
  if (!blobs.has(artifact.id)) {
    const response = await fetch(artifact.url, { headers: headers() });
    if (!response.ok) throw new Error(`cannot fetch ${artifact.name}`);
    blobs.set(artifact.id, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(artifact.id);
}

// -- forms from JSON schema -----------------------------------------------------------------------------
function plain(schema) {
  // `X | None` is anyOf [X, null]: the form shows X, and an empty input means "unset"
  if (schema.anyOf) {
    const options = schema.anyOf.filter((s) => s.type !== "null");
    const picked = options.find((s) => s.type === "string") || options[0] || {};
    return { ...picked, ...schema, anyOf: undefined, nullable: options.length < schema.anyOf.length };
  }
  return schema;
}

function controlFor(name, raw, model) {
  const schema = plain(raw);
  const id = `${model.name}-${name}`;
  const hint = $("span", { class: "hint", text: schema.description || "" });
  const title = name.replace(/_/g, " ");
  let input;
  const fileKind = raw["x-muselab-file"];
  if (fileKind && fileKind !== "image-or-seed") {
    const holder = $("input", { type: "hidden", name, "data-kind": "string" });
    const picker = $("input", { type: "file", id, accept: fileKind === "audio" ? "audio/*" : fileKind === "image" ? "image/*" : "" });
    picker.addEventListener("change", async () => {
      if (!picker.files.length) { holder.value = ""; return; }
      const form = new FormData();
      form.append("file", picker.files[0]);
      try { holder.value = (await api("/v1/uploads", { method: "POST", body: form })).id; }
      catch (err) { alert(err.message); picker.value = ""; }
    });
    return $("label", { for: id }, title, picker, holder, hint);
  }
  if (schema.enum) {
    input = $("select", { id, name, "data-kind": "enum" });
    if (schema.nullable || schema.default === undefined || schema.default === null) input.append($("option", { value: "", text: "(default)" }));
    for (const value of schema.enum) input.append($("option", { value, text: value, selected: value === schema.default }));
  } else if (schema.type === "boolean") {
    input = $("input", { type: "checkbox", id, name, "data-kind": "boolean", checked: schema.default === true });
    return $("label", { class: "check", for: id }, input, title, hint);
  } else if (schema.type === "integer" || schema.type === "number") {
    input = $("input", { type: "number", id, name, "data-kind": schema.type, step: schema.type === "integer" ? 1 : "any",
                         min: schema.minimum ?? schema.exclusiveMinimum, max: schema.maximum ?? schema.exclusiveMaximum,
                         placeholder: schema.default ?? "unset", value: schema.default ?? "" });
  } else if (schema.type === "array") {
    input = $("textarea", { id, name, rows: 2, "data-kind": "lines", placeholder: "one per line" });
  } else if (LONG_TEXT.includes(name)) {
    input = $("textarea", { id, name, rows: name === "prompt" || name === "text" ? 4 : 2, "data-kind": "string",
                            maxlength: schema.maxLength });
    input.value = schema.default ?? "";
  } else {
    input = $("input", { type: "text", id, name, "data-kind": "string", maxlength: schema.maxLength, value: schema.default ?? "" });
  }
  return $("label", { for: id }, title, input, hint);
}

function formValues(form) {
  const values = {};
  for (const el of form.querySelectorAll("[data-kind]")) {
    const kind = el.dataset.kind;
    if (kind === "boolean") { values[el.name] = el.checked; continue; }
    const text = el.value;
    if (text === "" && !(kind === "string" && el.tagName === "TEXTAREA" && el.name === "prompt")) continue;
    if (kind === "integer") values[el.name] = parseInt(text, 10);
    else if (kind === "number") values[el.name] = parseFloat(text);
    else if (kind === "lines") values[el.name] = text.split("\n").map((s) => s.trim()).filter(Boolean);
    else values[el.name] = text;
  }
  return values;
}

// -- results --------------------------------------------------------------------------------------------
function drawAttention(entry) {
  const rows = entry.matrix.length, cols = rows ? entry.matrix[0].length : 0, cell = 18, left = 60, top = 24;
  const canvas = $("canvas", { class: "attention", width: left + cols * cell + 4, height: top + rows * cell + 4 });
  const ctx = canvas.getContext("2d");
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#1d1f24";
  const source = [...entry.input];
  for (let j = 0; j < cols; j++) ctx.fillText(source[j] ?? "·", left + j * cell + 5, 16);
  for (let i = 0; i < rows; i++) {
    ctx.fillStyle = "#1d1f24";
    ctx.fillText(String(entry.output[i] ?? "·"), 4, top + i * cell + 13);
    for (let j = 0; j < cols; j++) {
      const shade = Math.round(255 * (1 - Math.min(1, entry.matrix[i][j])));
      ctx.fillStyle = `rgb(${shade},${shade},255)`;
      ctx.fillRect(left + j * cell, top + i * cell, cell - 1, cell - 1);
    }
  }
  return $("figure", {}, canvas, $("figcaption", { class: "hint", text: `attention: ${entry.input} (columns) → output (rows)` }));
}

function renderResult(gen, { onRemix, onDelete } = {}) {
  const card = $("article", { class: "result", "data-id": gen.id, "data-kind": gen.kind });
  const meta = $("div", { class: "meta" },
    $("span", { class: "badge", text: "AI-generated" }),
    $("span", { text: `${gen.model} (${gen.recipe})` }),
    $("span", { text: `seed ${gen.seed ?? "–"}` }),
    $("span", { text: new Date(gen.created).toLocaleString() }));
  if (onRemix) meta.append($("button", { class: "small remix", type: "button", text: "Remix", onclick: () => onRemix(gen) }));
  if (onDelete) meta.append($("button", { class: "small delete", type: "button", text: "Delete", onclick: () => onDelete(gen) }));
  card.append(meta);
  const items = gen.artifacts.filter((a) => a.role === "item");
  if (gen.kind === "text") {
    for (const text of gen.content.texts || []) card.append($("div", { class: "text-out", text }));
  } else if (gen.kind === "sequence") {
    const lines = $("div", { class: "lines" });
    (gen.content.inputs || []).forEach((input, i) => {
      const best = (gen.content.nbest[i] || [])[0];
      lines.append($("div", { text: `${input} → ${Array.isArray(best) ? best.join(" ") : best}` }));
    });
    card.append(lines);
    for (const entry of gen.content.attention || []) card.append(drawAttention(entry));
  } else if (gen.kind === "image") {
    const grid = $("div", { class: "grid" });
    for (const item of items.filter((a) => a.media_type.startsWith("image/"))) {
      const img = $("img", { alt: `${item.name} (AI-generated)`, title: item.name });
      fileUrl(item).then((url) => { img.src = url; });
      grid.append(img);
    }
    card.append(grid);
  } else if (gen.kind === "audio") {
    for (const item of items.filter((a) => a.media_type.startsWith("audio/"))) {
      const player = $("audio", { controls: true, preload: "auto", title: item.name });
      fileUrl(item).then((url) => { player.src = url; });
      card.append(player);
    }
  }
  for (const refused of gen.verdict.refused || []) {
    card.append($("div", { class: "refused", text: `item ${refused.index + 1} refused (${refused.check}, ${refused.category}): ${refused.reason}` }));
  }
  for (const warning of gen.verdict.warnings || []) card.append($("div", { class: "refused", text: warning }));
  card.append($("details", { class: "manifest" }, $("summary", { text: "AI-generated: manifest" }),
                $("pre", { text: JSON.stringify(gen.manifest, null, 2) })));
  return card;
}

// -- SSE over fetch (EventSource cannot POST) ----------------------------------------------------------------
async function stream(url, body, onText) {
  const response = await fetch(url, { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    throw new Error(error.error || `HTTP ${response.status}`);
  }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended early");
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      const event = (block.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "null");
      if (event === "text") onText(data.text);
      else if (event === "done") return data;
      else if (event === "error") throw new Error(data.error);
    }
  }
}

// -- panels -----------------------------------------------------------------------------------------------
function modelPanel(model) {
  const schema = model.controls_schema, props = schema.properties || {};
  const form = $("form", { class: "controls" });
  const more = $("details", { class: "more" }, $("summary", { text: "More controls" }));
  const names = Object.keys(props).sort((a, b) => (PRIMARY.indexOf(a) + 1 || 99) - (PRIMARY.indexOf(b) + 1 || 99));
  for (const name of names) (PRIMARY.includes(name) ? form : more).append(controlFor(name, props[name], model));
  form.append(more);
  const button = $("button", { class: "primary", type: "submit", text: "Generate" });
  form.append(button);
  const status = $("div", { class: "status" });
  const output = $("div", { class: "output" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true; status.className = "status"; status.textContent = "Generating…";
    const body = formValues(form);
    try {
      let gen;
      if (model.stream_url && (body.num_samples ?? 1) === 1) {
        const live = $("div", { class: "text-out live" });
        output.prepend(live);
        gen = await stream(model.stream_url, body, (piece) => { live.textContent += piece; });
        live.remove();
      } else {
        gen = await api(model.generate_url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      }
      output.prepend(renderResult(gen));
      status.textContent = `Done: saved in the gallery (${gen.id}).`;
    } catch (err) {
      status.className = "status error"; status.textContent = err.message;
    } finally { button.disabled = false; }
  });
  const about = $("p", { class: "about", text: `${model.recipe}: ${model.summary}. ${model.parameters ? model.parameters.toLocaleString() + " parameters" : ""}` });
  const evalText = Object.entries(model.eval || {}).filter(([, v]) => typeof v === "number").slice(0, 6)
    .map(([k, v]) => `${k} ${Number(v).toPrecision(3)}`).join(", ");
  return $("section", { class: "panel", id: `panel-${model.name}`, role: "tabpanel" },
    $("div", {}, about, evalText ? $("p", { class: "about", text: `eval: ${evalText}` }) : null, form),
    $("div", {}, status, output));
}

function galleryPanel(models) {
  const filter = $("select", { id: "gallery-model" }, $("option", { value: "", text: "all models" }),
    ...models.map((m) => $("option", { value: m.name, text: m.name })));
  const list = $("div", { class: "gallery-list" });
  const pageInfo = $("span", { class: "hint" });
  let offset = 0; const limit = 12;
  const load = async () => {
    const query = new URLSearchParams({ limit, offset });
    if (filter.value) query.set("model", filter.value);
    try {
      const page = await api(`/v1/gallery?${query}`);
      list.replaceChildren(...page.items.map((gen) => renderResult(gen, { onRemix: remix, onDelete: remove })));
      pageInfo.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "nothing yet";
      prev.disabled = offset === 0; next.disabled = offset + limit >= page.total;
    } catch (err) { pageInfo.textContent = err.message; }
  };
  const remix = async (gen) => {
    pageInfo.textContent = "Remixing…";
    try { await api(`/v1/gallery/${gen.id}/remix`, { method: "POST" }); offset = 0; await load(); }
    catch (err) { pageInfo.textContent = err.message; }
  };
  const remove = async (gen) => {
    if (!confirm("Delete this generation and its files?")) return;
    try { await api(`/v1/gallery/${gen.id}`, { method: "DELETE" }); await load(); }
    catch (err) { pageInfo.textContent = err.message; }
  };
  const prev = $("button", { class: "small", type: "button", text: "Newer", onclick: () => { offset = Math.max(0, offset - limit); load(); } });
  const next = $("button", { class: "small", type: "button", text: "Older", onclick: () => { offset += limit; load(); } });
  filter.addEventListener("change", () => { offset = 0; load(); });
  const panel = $("section", { class: "panel gallery-panel", id: "panel-gallery", role: "tabpanel" },
    $("div", { class: "gallery-bar" }, $("label", {}, "Model ", filter),
      $("button", { class: "small", type: "button", text: "Refresh", onclick: load }), prev, next, pageInfo), list);
  panel.load = load;
  return panel;
}

async function main() {
  const keyInput = document.getElementById("api-key");
  keyInput.value = sessionStorage.getItem("muselab-key") || "";
  keyInput.addEventListener("change", () => { sessionStorage.setItem("muselab-key", keyInput.value); start(); });
  api("/v1/version").then((v) => { document.getElementById("version").textContent = `muselab ${v.muselab} · torch ${v.torch}`; });
  await start();
}

async function start() {
  const tabs = document.getElementById("tabs"), panels = document.getElementById("panels");
  let models;
  try { models = await api("/v1/models"); }
  catch (err) { panels.replaceChildren($("p", { class: "status error", text: err.message })); return; }
  const all = [...models.map((m) => [m.name, modelPanel(m)]), ["gallery", galleryPanel(models)]];
  tabs.replaceChildren(); panels.replaceChildren();
  const select = (name) => {
    for (const [other, panel] of all) {
      panel.hidden = other !== name;
      tabs.querySelector(`[data-tab="${other}"]`).setAttribute("aria-selected", String(other === name));
    }
    const chosen = all.find(([other]) => other === name)[1];
    if (chosen.load) chosen.load();
  };
  for (const [name, panel] of all) {
    tabs.append($("button", { type: "button", role: "tab", "data-tab": name, text: name === "gallery" ? "Gallery" : name, onclick: () => select(name) }));
    panels.append(panel);
  }
  select(all[0][0]);
}

main();
