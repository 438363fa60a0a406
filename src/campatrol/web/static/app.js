// campatrol dashboard: polls the JSON API and keeps one tile per camera up to date.
// Every piece of server data goes into the page through textContent or attributes, never
// parsed as HTML, so a camera name or an error message cannot inject markup.
"use strict";

const POLL_MS = 3000;
const KNOWN_STATUSES = new Set(["unknown", "online", "failing", "offline", "misconfigured", "disabled"]);

const state = {
  zone: undefined, // IANA name from /api/system/status; undefined = the browser's own zone
  sections: new Map(), // subnet -> {root, line, grid}
  tiles: new Map(), // camera id -> tile record
};

// Time formatting: the configured display zone, always with its offset printed.

const pad = (n) => String(n).padStart(2, "0");
const formatters = new Map();

function zoneFormatter(zone) {
  const key = zone || "";
  if (!formatters.has(key)) {
    formatters.set(key, new Intl.DateTimeFormat("en-CA", {
      timeZone: zone,
      year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
      hourCycle: "h23",
    }));
  }
  return formatters.get(key);
}

function formatInZone(date, zone) {
  const parts = {};
  for (const { type, value } of zoneFormatter(zone).formatToParts(date)) parts[type] = value;
  // The zone's offset at that instant: its wall-clock time read as if it were UTC, minus the
  // instant itself. Works in every browser with Intl, unlike timeZoneName: "longOffset".
  const wallAsUtc = Date.UTC(+parts.year, +parts.month - 1, +parts.day,
    +parts.hour, +parts.minute, +parts.second);
  const offset = Math.round((wallAsUtc - Math.floor(date.getTime() / 1000) * 1000) / 60000);
  const sign = offset < 0 ? "-" : "+";
  const abs = Math.abs(offset);
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ` +
    `${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function parseTime(text) {
  // The API sends microseconds; not every Date parser takes more than milliseconds.
  return text ? new Date(text.replace(/(\.\d{3})\d+/, "$1")) : null;
}

function formatAge(date, now) {
  const seconds = Math.max(0, Math.round((now - date) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function formatDuration(seconds) {
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const mmss = `${pad(Math.floor((total % 3600) / 60))}:${pad(total % 60)}`;
  return h > 0 ? `${h}:${mmss}` : mmss;
}

// DOM helpers.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function subnetSection(subnet) {
  let section = state.sections.get(subnet);
  if (!section) {
    const root = el("section", "subnet");
    const line = el("h2", "subnet-line", subnet);
    const grid = el("div", "grid");
    root.append(line, grid);
    section = { root, line, grid };
    state.sections.set(subnet, section);
  }
  return section;
}

function newTile(camera) {
  const root = el("article", "tile");
  const frame = el("div", "frame");
  const img = el("img");
  img.alt = `latest snapshot of ${camera.name}`;
  img.hidden = true;
  const empty = el("div", "empty", "no snapshot yet");
  frame.append(img, empty);

  const body = el("div", "body");
  const title = el("div", "title");
  const name = el("h3", "name", camera.name);
  name.title = camera.id;
  const badge = el("span", "badge");
  title.append(name, badge);
  const meta = el("p", "meta");
  const age = el("span", "age");
  const time = el("span", "time");
  meta.append(age, document.createTextNode(" · "), time);
  const error = el("p", "error");
  body.append(title, meta, error);
  root.append(frame, body);
  return { root, img, empty, name, badge, meta, age, time, error, etag: null, takenAt: null };
}

function updateTile(tile, camera) {
  tile.name.textContent = camera.name;
  tile.img.alt = `latest snapshot of ${camera.name}`;
  tile.badge.textContent = camera.status;
  tile.badge.className = "badge " + (KNOWN_STATUSES.has(camera.status) ? camera.status : "");

  const snap = camera.last_snapshot;
  if (snap) {
    // A new URL only when the image changed: the browser fetches nothing otherwise.
    if (snap.etag !== tile.etag) {
      tile.img.src = `${snap.url}?v=${encodeURIComponent(snap.etag)}`;
      tile.etag = snap.etag;
    }
    tile.img.hidden = false;
    tile.empty.hidden = true;
    tile.takenAt = parseTime(snap.taken_at);
    tile.time.textContent = formatInZone(tile.takenAt, state.zone);
    tile.meta.hidden = false;
  } else {
    tile.img.hidden = true;
    tile.empty.hidden = false;
    tile.takenAt = null;
    tile.meta.hidden = true;
  }

  if (camera.last_error) {
    // While a camera backs off, say when it will be tried again, so a stale tile is explained.
    const next = parseTime(camera.next_attempt_at);
    const when = next ? ` (next try ${formatInZone(next, state.zone)})` : "";
    tile.error.textContent = `${camera.last_error_class || "error"}: ${camera.last_error}${when}`;
    tile.error.hidden = false;
  } else {
    tile.error.hidden = true;
  }
  refreshAge(tile, Date.now());
}

function refreshAge(tile, now) {
  if (tile.takenAt) tile.age.textContent = formatAge(tile.takenAt, now);
}

function subnetLine(subnet, cameraCount, patrol) {
  const cycle = patrol && patrol.last_cycle;
  const parts = [subnet];
  if (cycle) {
    parts.push(formatDuration(cycle.duration), `${cameraCount} cameras`,
      `${cycle.succeeded} ok`, `${cycle.failed} failed`);
    if (cycle.skipped) parts.push(`${cycle.skipped} skipped`);
    if (cycle.leaks) parts.push(`${cycle.leaks} LEAKED`);
  } else {
    parts.push("--:--", `${cameraCount} cameras`, patrol ? "first cycle running" : "not patrolled");
  }
  // Non-breaking inside each part, so a narrow screen wraps between "5 ok" and "1 failed" only.
  return parts.map((part) => part.replaceAll(" ", "\u00a0")).join("  ");
}

// Rendering and polling.

function render(cameras, patrols) {
  const patrolBySubnet = new Map(patrols.map((p) => [p.subnet, p]));
  const bySubnet = new Map();
  for (const camera of cameras) {
    if (!bySubnet.has(camera.subnet)) bySubnet.set(camera.subnet, []);
    bySubnet.get(camera.subnet).push(camera);
  }

  const main = document.getElementById("subnets");
  const order = [...bySubnet.keys()].sort();
  for (const subnet of order) {
    const section = subnetSection(subnet);
    const members = bySubnet.get(subnet);
    section.line.textContent = subnetLine(subnet, members.length, patrolBySubnet.get(subnet));
    for (const camera of members) {
      let tile = state.tiles.get(camera.id);
      if (!tile) {
        tile = newTile(camera);
        state.tiles.set(camera.id, tile);
      }
      updateTile(tile, camera);
      section.grid.append(tile.root); // moves it into place; keeps the loaded image
    }
    main.append(section.root);
  }

  // Cameras and subnets that left the configuration leave the page.
  const seen = new Set(cameras.map((c) => c.id));
  for (const [id, tile] of state.tiles) {
    if (!seen.has(id)) { tile.root.remove(); state.tiles.delete(id); }
  }
  for (const [subnet, section] of state.sections) {
    if (!bySubnet.has(subnet)) { section.root.remove(); state.sections.delete(subnet); }
  }
}

function renderSummary(status) {
  const counts = Object.entries(status.cameras_by_status)
    .filter(([, n]) => n > 0)
    .map(([name, n]) => `${n} ${name}`);
  const processes = status.children === 1 ? "1 process" : `${status.children} processes`;
  const text = [`${status.cameras} cameras`, ...counts, processes,
    `v${status.version}`];
  document.getElementById("summary").textContent = text.join(" · ");
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function setZone(zone) {
  let chosen = zone || undefined;
  try {
    zoneFormatter(chosen);
  } catch (err) {
    chosen = undefined; // a zone this browser does not know: show its own, with the offset
  }
  state.zone = chosen;
  const shown = chosen || Intl.DateTimeFormat().resolvedOptions().timeZone;
  document.getElementById("zone").textContent = `times in ${shown}`;
}

function showProblem(text) {
  const node = document.getElementById("problem");
  node.textContent = text || "";
  node.hidden = !text;
}

async function poll() {
  try {
    const [status, cameras, patrols] = await Promise.all([
      getJson("/api/system/status"), getJson("/api/cameras"), getJson("/api/patrols"),
    ]);
    if (status.timezone !== (state.zone || null) || !document.getElementById("zone").textContent) {
      setZone(status.timezone);
    }
    renderSummary(status);
    render(cameras, patrols);
    showProblem(null);
  } catch (err) {
    showProblem(`cannot reach the server (${err.message}); showing the last known state`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const tile of state.tiles.values()) refreshAge(tile, now);
}, 1000);

poll();
