// soundwatch dashboard: the history view (filter the recorded events, play a clip, see its
// spectrogram) and the event groups' fields (changed through the control endpoint).
// Shown only when the dashboard serves a record directory (GET /api/history answers).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const node = (tag, text, cls) => {
    const item = document.createElement(tag);
    if (text !== undefined) item.textContent = text;
    if (cls) item.className = cls;
    return item;
  };
  const when = (t) => new Date(t * 1000).toLocaleString();
  const toUnix = (local) => (local ? String(new Date(local).getTime() / 1000) : "");

  async function getJson(url, options) {
    const response = await fetch(url, options);
    const body = await response.json().catch(() => ({ error: response.statusText }));
    return { status: response.status, body };
  }

  function fillSelect(select, values) {
    const chosen = select.value;
    select.replaceChildren(node("option", "all"), ...values.map((v) => node("option", v)));
    select.options[0].value = "";
    select.value = values.includes(chosen) ? chosen : "";
  }

  async function loadHistory() {
    $("history").dataset.busy = "true"; // until the rows are replaced
    try {
      return await fetchHistory();
    } finally {
      $("history").dataset.busy = "false";
    }
  }

  async function fetchHistory() {
    const form = $("history-filters");
    const params = new URLSearchParams();
    for (const name of ["label", "stream"]) if (form.elements[name].value) params.set(name, form.elements[name].value);
    for (const name of ["since", "until"]) if (form.elements[name].value) params.set(name, toUnix(form.elements[name].value));
    const { status, body } = await getJson(`/api/history?${params}`);
    if (body.available === false) return false; // no record directory: no history view
    $("history").hidden = false;
    if (status !== 200) {
      $("history-count").textContent = body.error;
      return true;
    }
    fillSelect(form.elements.label, body.labels);
    fillSelect(form.elements.stream, body.streams);
    $("history-count").textContent = `${body.events.length} events`;
    const rows = body.events.slice().reverse().map((e) => {
      const row = node("tr");
      row.dataset.id = e.id;
      row.dataset.label = e.label;
      row.dataset.stream = e.stream;
      const length = e.offset == null ? e.state : `${(e.offset - e.onset).toFixed(1)} s`;
      row.append(
        node("td", String(e.id)),
        node("td", when(e.onset)),
        node("td", e.stream),
        node("td", e.label),
        node("td", length),
        node("td", e.peak.toFixed(2)),
        node("td", e.clip_url ? "▶ play" : `no clip: ${e.clip_reason || e.state}`, e.clip_url ? "" : "muted"),
      );
      if (e.clip_url) row.addEventListener("click", () => choose(e, row));
      return row;
    });
    $("history-rows").replaceChildren(...rows);
    return true;
  }

  async function choose(event, row) {
    for (const other of document.querySelectorAll(".history-table tr.chosen")) other.classList.remove("chosen");
    row.classList.add("chosen");
    $("clip-title").textContent = `#${event.id} ${event.label} on ${event.stream}, ${when(event.onset)}`;
    const audio = $("clip-audio");
    audio.src = `/${event.clip_url}`;
    audio.dataset.id = event.id;
    audio.play().catch(() => {}); // autoplay may be refused: the controls are there
    const { status, body } = await getJson(`/api/clips/${event.id}/mel`);
    if (status === 200) drawMel(body, event.id);
  }

  function drawMel(mel, id) {
    const canvas = $("clip-mel");
    const bytes = Uint8Array.from(atob(mel.data), (c) => c.charCodeAt(0));
    const image = new ImageData(mel.frames, mel.bins);
    for (let bin = 0; bin < mel.bins; bin++) {
      const y = mel.bins - 1 - bin; // low frequencies at the bottom
      for (let f = 0; f < mel.frames; f++) {
        const v = bytes[bin * mel.frames + f] / 255;
        const i = (y * mel.frames + f) * 4;
        image.data[i] = Math.round(255 * Math.min(1, Math.max(0, 1.8 * v - 0.4)));
        image.data[i + 1] = Math.round(255 * v * v);
        image.data[i + 2] = Math.round(255 * Math.min(1, 0.35 + 0.9 * v) * (1 - v * 0.6));
        image.data[i + 3] = 255;
      }
    }
    const buffer = document.createElement("canvas");
    buffer.width = mel.frames;
    buffer.height = mel.bins;
    buffer.getContext("2d").putImageData(image, 0, 0);
    canvas.width = canvas.clientWidth || 600;
    canvas.height = canvas.clientHeight || 160;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(buffer, 0, 0, canvas.width, canvas.height);
    canvas.dataset.id = id;
  }

  async function loadGroups() {
    const { status, body } = await getJson("/api/groups");
    if (body.available === false) {
      $("groups-hint").textContent = "start with --control to change them here";
      return;
    }
    if (!body.ok) {
      $("groups-hint").textContent = body.error;
      return;
    }
    const rows = Object.entries(body.result).map(([name, settings]) => {
      const row = node("tr");
      row.dataset.group = name;
      const enabled = node("input");
      enabled.type = "checkbox";
      enabled.checked = settings.enabled;
      enabled.name = "enabled";
      const threshold = node("input");
      threshold.type = "number";
      threshold.step = "0.01";
      threshold.min = "0";
      threshold.max = "1";
      threshold.name = "threshold_on";
      threshold.value = settings.threshold_on;
      const apply = node("button", "Apply");
      apply.type = "button";
      apply.addEventListener("click", () => setGroup(name, { enabled: enabled.checked, threshold_on: Number(threshold.value) }));
      const cells = [node("td", name), node("td"), node("td"), node("td")];
      cells[1].append(enabled);
      cells[2].append(threshold);
      cells[3].append(apply);
      row.append(...cells);
      return row;
    });
    $("group-rows").replaceChildren(...rows);
  }

  async function setGroup(name, values) {
    const { body } = await getJson(`/api/groups/${encodeURIComponent(name)}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(values),
    });
    const result = $("group-result");
    result.dataset.ok = String(Boolean(body.ok));
    result.textContent = body.ok
      ? `${name}: threshold ${body.result.threshold_on}, ${body.result.enabled ? "on" : "off"} (from the next window)`
      : `refused: ${body.error}`;
    await loadGroups();
  }

  $("history-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadHistory();
  });

  (async () => {
    if (await loadHistory()) await loadGroups();
  })();
})();
