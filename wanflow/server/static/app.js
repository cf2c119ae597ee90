// The wanflow web page: a form, the queue with live progress (server-sent events), and a gallery.
// Plain DOM code; user text is only ever set through textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const tokenInput = $("#token");
tokenInput.value = localStorage.getItem("wanflow-token") || "";
let tasks = {};
const streams = new Map();  // job id -> EventSource
const cards = new Map();  // job id -> [status, gallery card]: kept, not rebuilt (its video reloaded) on every refresh

tokenInput.addEventListener("change", () => {
  localStorage.setItem("wanflow-token", tokenInput.value);
  cards.clear();  // their video URLs carry the old token
  init();
});

function headers() {
  return tokenInput.value ? { Authorization: "Bearer " + tokenInput.value } : {};
}
function withToken(url) {
  return tokenInput.value ? url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(tokenInput.value) : url;
}
async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// The header's queue count: read again on every refresh (read once, it stayed at what it was when the page loaded).
async function showHealth() {
  const health = await (await fetch("/health")).json();
  $("#health").textContent = `${health.tasks.join(", ")} · ${health.queue} queued · ${health.running} running`;
}

async function loadTasks() {
  try {
    await showHealth();
    const served = await api("/api/tasks");
    tasks = served.tasks;
    showChoices(served, (await api("/api/loras")).loras);
  } catch (e) {
    $("#form-error").textContent = e.message;
    return false;
  }
  $("#form-error").textContent = "";
  const chosen = $("#task").value;  // a reload (a new token) keeps the task the user picked
  $("#task").replaceChildren(...Object.keys(tasks).map((name) => el("option", { value: name, textContent: name })));
  if (chosen in tasks) $("#task").value = chosen;
  showDefaults();
  return true;
}
$("#task").addEventListener("change", showDefaults);

// The form's lists: the solvers, presets, guidance rules and schedulers a job may name, the server's LoRAs.
function showChoices(served, loras) {
  const options = (values, first) => [...(first ? [first] : []), ...values.map((v) => el("option", { value: v, textContent: v }))];
  $("#solver").replaceChildren(...options(served.solvers, el("option", { value: "", textContent: "(default)" })));
  $("#preset").replaceChildren(...options(served.presets, el("option", { value: "", textContent: "(none)" })));
  $("#guidance").replaceChildren(...options(served.guidance));
  $("#scheduler").replaceChildren(...options(served.schedulers, el("option", { value: "", textContent: "(solver's grid)" })));
  $("#lora-row").hidden = !loras.length;
  $("#lora-names").textContent = loras.length ? "LoRAs here: " + loras.join(", ") : "no LoRA folder on this server (serve --lora_dir)";
}

function showDefaults() {
  const d = tasks[$("#task").value];
  if (!d) return;
  const form = $("#form");
  form.width.placeholder = d.size[0];
  form.height.placeholder = d.size[1];
  form.frames.placeholder = d.frames;
  form.steps.placeholder = d.steps;
  form.shift.placeholder = d.shift;
  form.guide_scale.placeholder = d.guide_scale.join(",");
  $("#image-row").hidden = d.image === "none";
  form.image.required = d.image === "required";
  $("#last-image-row").hidden = !d.last_image;  // first-last frame: the models that take a last frame
}

// A workflow's fields the form has no input for (NAG's alpha, SLG's window, ...): sent with the job as read, and named
// in the notes, until another workflow is read.
let workflowExtras = {};

// A ComfyUI workflow fills the form: the server reads it (POST /api/workflow) into job fields, and says what it
// cannot carry over (its model files, LoRAs this server lacks, the images to upload).
$("#workflow").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  workflowExtras = {};  // (the last workflow's, gone with it)
  $("#workflow-notes").textContent = "";
  $("#form-error").textContent = "";
  if (!file) return;
  try {
    fillForm(await api("/api/workflow?name=" + encodeURIComponent(file.name), { method: "POST", body: file }));
  } catch (e) {
    $("#form-error").textContent = e.message;
  }
});

function fillForm(read) {
  const form = $("#form");
  const f = read.fields;
  if (!(read.task in tasks)) throw new Error(`the workflow is ${read.task}, which this server does not run`);
  $("#task").value = read.task;
  showDefaults();
  const listed = ["prompt", "negative_prompt", "width", "height", "frames", "steps", "shift", "seed", "switch_step",
    "solver", "scheduler", "guidance", "noise_device", "low_noise_seed", "fps"];
  workflowExtras = {};
  for (const [name, value] of Object.entries(f)) {
    if (listed.includes(name) || ["task", "guide_scale", "loras"].includes(name) || value == null) continue;
    if (form[name]) form[name].value = String(value);  // (NAG scale, SLG blocks, sigmas: the form's own inputs)
    else workflowExtras[name] = value;
  }
  for (const name of listed) {
    const value = String(f[name] ?? (name === "seed" ? "-1" : ""));
    const field = form[name];
    if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
      field.append(el("option", { value, textContent: value }));  // (such as cfg_zero_star:0, ComfyUI's CFGZeroStar)
    }
    field.value = value;
  }
  form.guide_scale.value = (f.guide_scale || []).join(",");
  const strength = (l) => (Array.isArray(l.strength) ? l.strength.join(";") : l.strength);  // (one for each call)
  form.loras.value = (f.loras || []).map((l) => `${l.name}:${strength(l)}${l.expert ? "@" + l.expert : ""}`).join(", ");
  $("#no-negative").checked = f.negative_prompt === "";  // "" is no negative prompt; absent, the task's
  form.negative_prompt.disabled = f.negative_prompt === "";
  $("#more").open = true;  // (the scheduler, the switch and the LoRAs are there)
  const extras = Object.entries(workflowExtras).map(([k, v]) => `${k} ${v}`);
  const notes = extras.length ? [...read.notes, "also sent with the job: " + extras.join(", ")] : read.notes;
  $("#workflow-notes").textContent = notes.join(" · ");
}

$("#no-negative").addEventListener("change", (event) => {
  $("#form").negative_prompt.disabled = event.target.checked;
});

$("#form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#form-error").textContent = "";
  const data = new FormData(event.target);
  for (const [key, value] of [...data.entries()]) {
    const row = { last_image: "#last-image-row", image: "#image-row" }[key] || "#video-row";
    if (value === "" || (value instanceof File && (!value.size || $(row).hidden))) data.delete(key);
  }
  if (data.get("guidance") === "cfg") data.delete("guidance");  // the default: not sent
  for (const [name, value] of Object.entries(workflowExtras)) if (!data.has(name)) data.set(name, String(value));
  if ($("#no-negative").checked) data.set("negative_prompt", "");  // "" is no negative prompt; absent, the default
  try {
    await api("/api/jobs", { method: "POST", body: data });
    refresh();
  } catch (e) {
    $("#form-error").textContent = e.message;
  }
});

// A running job's item is kept across refreshes: its event stream updates it (a rebuilt item would go stale).
const items = new Map();  // job id -> queue item

function queueItem(job) {
  if (items.has(job.id) && streams.has(job.id)) return items.get(job.id);
  const bar = el("progress", { max: 1, value: job.progress });
  const info = el("span", { className: "muted" });
  const preview = el("img", { className: "preview", alt: "live preview", hidden: true });
  const cancel = el("button", { className: "secondary", textContent: "Cancel", type: "button" });
  cancel.addEventListener("click", () => api(`/api/jobs/${job.id}/cancel`, { method: "POST" }).catch(alert));
  const item = el("li", { id: "job-" + job.id },
    el("div", { className: "line" }, el("span", { className: "prompt", textContent: job.params.prompt }), cancel), bar, info,
    preview);
  const show = (j) => {
    bar.value = j.progress;
    const parts = [j.status];
    if (j.waiting) parts.push(j.waiting);  // e.g. "no worker for model X"
    if (j.stage) parts.push(j.stage);
    if (j.step != null) parts.push(`step ${j.step}/${j.steps}`);
    if (j.expert) parts.push(j.expert);
    if (j.eta_seconds != null && j.status === "running") parts.push(`ETA ${Math.ceil(j.eta_seconds)} s`);
    info.textContent = parts.join(" · ");
  };
  show(job);
  if (streams.has(job.id)) streams.get(job.id).close();  // it fed an item no longer shown
  const source = new EventSource(withToken(`/api/jobs/${job.id}/events?preview=true`));
  source.addEventListener("progress", (e) => show(JSON.parse(e.data)));
  source.addEventListener("preview", (e) => {  // {step, image}: a PNG data URL made by the server
    const p = JSON.parse(e.data);
    preview.src = p.image;
    preview.title = `where sampling is heading, after step ${p.step}`;
    preview.hidden = false;
  });
  source.addEventListener("end", () => { source.close(); streams.delete(job.id); refresh(); });
  source.onerror = () => { source.close(); streams.delete(job.id); };
  streams.set(job.id, source);
  items.set(job.id, item);
  return item;
}

// A video shows no frame until it is played or seeked (Chromium paints black), and the first frame of a generated
// video is often its darkest: show the middle one.
function thumbnail(url) {
  const video = el("video", { src: withToken(url), controls: true, loop: true, muted: true, preload: "metadata" });
  video.addEventListener("loadedmetadata", () => { video.currentTime = video.duration / 2; }, { once: true });
  return video;
}

function galleryCard(job) {
  const kept = cards.get(job.id);
  if (kept && kept[0] === job.status) return kept[1];
  const card = el("div", { className: "card" });
  cards.set(job.id, [job.status, card]);
  if (job.status === "done") {
    card.append(thumbnail(job.video_url));
  } else {
    card.append(el("p", { className: "error", textContent: `${job.status}: ${job.error || ""}` }));
  }
  const p = job.params;
  const settings = { task: job.task, prompt: p.prompt, negative: p.negative_prompt, size: p.width ? `${p.width}x${p.height}` : null,
    frames: p.frames, steps: p.steps, shift: p.shift, guidance: p.guide_scale && p.guide_scale.join(","), solver: p.solver,
    seed: job.seed ?? p.seed, image: job.has_image ? "yes" : null,  // seeds come as strings: exact past 2^53
    "last frame": p.last_image ? "yes" : null, "from a video": p.has_video ? (p.extend ? "continued" : `strength ${p.strength ?? 0.8}`) : null,
    preset: p.preset, loras: (p.loras || []).map((l) => `${l.name}:${l.strength ?? 1}${l.expert ? "@" + l.expert : ""}`).join(", "),
    rule: p.guidance, NAG: p.nag_scale ? `${p.nag_scale}${p.nag_negative_prompt ? " · " + p.nag_negative_prompt : ""}` : null,
    SLG: p.slg_layers, scheduler: p.scheduler, sigmas: p.sigmas && [].concat(p.sigmas).join(","), "switch step": p.switch_step, cache: p.cache,
    fps: p.fps, noise: p.noise_device, "low-noise seed": p.low_noise_seed, RIFLEx: p.riflex,
    "Enhance-A-Video": p.enhance_a_video };
  const dl = el("dl");
  for (const [key, value] of Object.entries(settings)) {
    if (value != null && value !== "") dl.append(el("dt", { textContent: key }), el("dd", { textContent: String(value) }));
  }
  const remove = el("button", { className: "secondary", textContent: "Delete", type: "button" });
  remove.addEventListener("click", () => api(`/api/jobs/${job.id}`, { method: "DELETE" }).then(refresh).catch(alert));
  card.append(dl, remove);
  return card;
}

async function refresh() {
  if (!Object.keys(tasks).length) return;  // not signed in yet
  let jobs;
  try {
    jobs = await api("/api/jobs");
  } catch (e) {
    $("#form-error").textContent = e.message;
    return;
  }
  showHealth().catch(() => {});
  const active = jobs.filter((j) => j.status === "queued" || j.status === "running").reverse();
  for (const id of items.keys()) if (!active.some((j) => j.id === id)) items.delete(id);
  $("#queue").replaceChildren(...active.map(queueItem));
  if (!active.length) $("#queue").append(el("li", { className: "muted", textContent: "nothing queued" }));
  const finished = jobs.filter((j) => !active.includes(j));
  for (const id of cards.keys()) if (!finished.some((j) => j.id === id)) cards.delete(id);
  $("#gallery").replaceChildren(...finished.map(galleryCard));
}

async function init() {
  if (await loadTasks()) refresh();
}

init();
setInterval(refresh, 10000);
