// byoi's dashboard: the fleet, a server, the deploy form. Plain JavaScript,
// no build step, served from the binary. Every value shown comes from the
// API and goes into the page as text (never as HTML): server names, agent
// messages and log lines are the provisioning network's words.
"use strict";

const csrf = document.querySelector('meta[name="byoi-csrf"]').content;
const main = document.getElementById("main");
const live = document.getElementById("live");

/// An element: `h("a", {href: "#/"}, "text", child…)`.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/// Calls the API with the session's cookie (and its CSRF token on a change);
/// an answer that is not 2xx throws an Error carrying its status and message.
async function api(method, path, body) {
  const headers = { "X-Byoi-Csrf": csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (r.status === 401) {
    location.href = "/ui/login";
    throw new Error("signed out");
  }
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) {
    const e = new Error((json && json.message) || `${r.status} ${r.statusText}`);
    e.status = r.status;
    throw e;
  }
  return json;
}

/// Says something to screen readers (and shows it in the status line).
function announce(text) {
  live.textContent = text;
}

function when(iso) {
  if (!iso) return "never";
  const d = new Date(iso);
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return d.toISOString().slice(0, 16).replace("T", " ");
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const m = Math.floor(seconds / 60);
  return m ? `${m} min ${seconds % 60} s` : `${seconds} s`;
}

/// A state badge.
function badge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}

/// A progress bar, labelled for assistive technology.
function bar(percent, label) {
  return h(
    "progress",
    { max: "100", value: percent === null || percent === undefined ? null : String(percent), "aria-label": label },
    percent === null || percent === undefined ? "" : `${percent}%`,
  );
}

// ---------------------------------------------------------------- the fleet

const fleet = { servers: new Map(), discovered: new Map(), stream: null, filter: "all", search: "" };

function followFleet() {
  if (fleet.stream) return;
  const s = new EventSource("/dedicated/events");
  s.addEventListener("server", (e) => {
    const v = JSON.parse(e.data);
    fleet.servers.set(v.serviceName, v);
    renderFleetRow(v.serviceName);
  });
  s.addEventListener("discovered", (e) => {
    const v = JSON.parse(e.data);
    fleet.discovered.set(v.mac, v);
    renderFleetRow(`mac:${v.mac}`);
  });
  s.addEventListener("removed", (e) => {
    const v = JSON.parse(e.data);
    if (v.serviceName) fleet.servers.delete(v.serviceName);
    if (v.mac) fleet.discovered.delete(v.mac);
    const row = document.getElementById(rowId(v.serviceName || `mac:${v.mac}`));
    if (row) row.remove();
    countFleet();
  });
  s.addEventListener("ready", () => {
    document.body.dataset.fleet = "ready";
    countFleet();
  });
  s.onerror = () => announce("lost the controller's event stream; reconnecting");
  fleet.stream = s;
}

function rowId(key) {
  return `row-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

function fleetEntry(key) {
  if (key.startsWith("mac:")) {
    const d = fleet.discovered.get(key.slice(4));
    return (
      d && {
        key,
        name: d.mac,
        state: "discovered",
        detail: d.state === "reported" ? "waits to be adopted" : "booting the agent",
        percent: null,
        lastSeen: d.lastSeen,
        firmware: d.firmware,
        disks: d.disks,
        href: `#/discovered/${encodeURIComponent(d.mac)}`,
      }
    );
  }
  const s = fleet.servers.get(key);
  return (
    s && {
      key,
      name: s.serviceName,
      state: s.state,
      detail: s.message,
      stage: s.stage,
      percent: s.percent,
      lastSeen: s.lastSeen,
      firmware: s.firmware,
      disks: s.disks,
      href: `#/server/${encodeURIComponent(s.serviceName)}`,
    }
  );
}

function shown(e) {
  if (fleet.filter !== "all" && e.state !== fleet.filter) return false;
  const q = fleet.search.trim().toLowerCase();
  if (!q) return true;
  const s = fleet.servers.get(e.key);
  const macs = s ? s.macs.join(" ") : e.name;
  return `${e.name} ${macs} ${e.detail || ""}`.toLowerCase().includes(q);
}

function fleetRow(e) {
  const progress =
    e.state === "deploying"
      ? h("div", { class: "progress" }, bar(e.percent, `${e.name}: ${e.stage}`), h("span", {}, e.percent === null ? e.stage : `${e.stage} ${e.percent}%`))
      : "";
  return h(
    "tr",
    { id: rowId(e.key), "data-state": e.state, hidden: !shown(e) },
    h("th", { scope: "row" }, e.href ? h("a", { href: e.href }, e.name) : e.name),
    h("td", { "data-label": "State" }, badge(e.state)),
    h("td", { class: "detail" }, progress || h("span", { class: e.state === "error" ? "message error" : "message" }, e.detail || "")),
    h("td", { "data-label": "Last seen", "data-at": e.lastSeen }, when(e.lastSeen)),
    h("td", { "data-label": "Firmware" }, e.firmware || "-"),
    h("td", { "data-label": "Disks" }, (e.disks || []).join(", ") || "-"),
  );
}

function renderFleetRow(key) {
  const body = document.getElementById("fleet-body");
  if (!body) return;
  const e = fleetEntry(key);
  if (!e) return;
  const row = fleetRow(e);
  const old = document.getElementById(row.id);
  if (old) old.replaceWith(row);
  else {
    const after = [...body.children].find((r) => r.id > row.id);
    body.insertBefore(row, after || null);
  }
  countFleet();
}

function countFleet() {
  const el = document.getElementById("fleet-count");
  if (!el) return;
  const rows = [...document.querySelectorAll("#fleet-body tr")];
  const visible = rows.filter((r) => !r.hidden).length;
  el.textContent = `${visible} of ${rows.length} shown`;
}

function applyFilter() {
  const keys = [...fleet.servers.keys(), ...[...fleet.discovered.keys()].map((m) => `mac:${m}`)];
  for (const key of keys) {
    const row = document.getElementById(rowId(key));
    const e = fleetEntry(key);
    if (row && e) row.hidden = !shown(e);
  }
  countFleet();
}

// "3 min ago" grows old: said again every 30 s, in place (the focus stays).
setInterval(() => {
  for (const td of document.querySelectorAll("td[data-at]")) td.textContent = when(td.dataset.at);
}, 30000);

function fleetView() {
  document.title = "Fleet · byoi";
  const states = ["all", "idle", "deploying", "done", "error", "rescue", "inspecting", "discovered"];
  const filter = h(
    "select",
    {
      id: "filter",
      onchange: (e) => {
        fleet.filter = e.target.value;
        applyFilter();
      },
    },
    states.map((s) => h("option", { value: s, selected: s === fleet.filter }, s)),
  );
  const search = h("input", {
    id: "search",
    type: "search",
    value: fleet.search,
    placeholder: "name, MAC or message",
    oninput: (e) => {
      fleet.search = e.target.value;
      applyFilter();
    },
  });
  main.replaceChildren(
    h("h1", {}, "Fleet"),
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "filter" }, "State"),
      filter,
      h("label", { for: "search" }, "Search"),
      search,
      h("span", { id: "fleet-count", class: "muted", "aria-live": "polite" }),
    ),
    h(
      "table",
      { class: "fleet" },
      h("caption", { class: "visually-hidden" }, "Servers and discovered machines, updated live"),
      h(
        "thead",
        {},
        h("tr", {}, ["Server", "State", "Progress or message", "Last seen", "Firmware", "Disks"].map((c) => h("th", { scope: "col" }, c))),
      ),
      h("tbody", { id: "fleet-body" }),
    ),
  );
  for (const k of fleet.servers.keys()) renderFleetRow(k);
  for (const m of fleet.discovered.keys()) renderFleetRow(`mac:${m}`);
  followFleet();
  countFleet();
}

// ---------------------------------------------------------------- a server

let serverStream = null;

function closeServerStream() {
  if (serverStream) serverStream.close();
  serverStream = null;
}

function definitions(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function serverView(name) {
  document.title = `${name} · byoi`;
  main.replaceChildren(h("p", { class: "muted" }, `Loading ${name}…`));
  let s;
  try {
    s = await api("GET", `/dedicated/server/${encodeURIComponent(name)}`);
  } catch (e) {
    main.replaceChildren(h("h1", {}, name), h("p", { class: "error", role: "alert" }, e.message));
    return;
  }
  const hw = await api("GET", `/dedicated/server/${encodeURIComponent(name)}/specifications/hardware`).catch(() => null);
  // A BMC may take seconds to answer: the page does not wait for it.
  const power = h("span", { id: "power-state" }, `${s.power.kind}: asking…`);
  api("GET", `/dedicated/server/${encodeURIComponent(name)}/power`)
    .then((p) => (power.textContent = `${s.power.kind}: ${p.state}`))
    .catch((e) => (power.textContent = `${s.power.kind}: unknown (${e.message})`));
  // Each history entry is a deployment's view, with its image's URL.
  const latest = s.deployments[0];
  const running = latest && latest.status === "doing";
  const actionMessage = h("p", { id: "action-message", role: "status" });

  async function act(label, method, path, body, confirmText) {
    if (confirmText && !confirm(confirmText)) return;
    actionMessage.className = "";
    actionMessage.textContent = `${label}…`;
    try {
      const r = await api(method, path, body);
      actionMessage.textContent = (r && r.message) || `${label}: done`;
      setTimeout(() => route(), 500);
    } catch (e) {
      actionMessage.className = "error";
      actionMessage.textContent = `${label}: ${e.message}`;
    }
  }
  const base = `/dedicated/server/${encodeURIComponent(name)}`;
  const buttons = h(
    "div",
    { class: "actions" },
    h("a", { class: "button primary", href: `#/server/${encodeURIComponent(name)}/deploy`, "aria-disabled": running ? "true" : null }, "Deploy an image"),
    h("button", { id: "power-cycle", onclick: () => act("Power cycle", "POST", `${base}/power`, { action: "cycle" }, `Power-cycle ${name}?`) }, "Power cycle"),
    running
      ? h("button", { id: "cancel", class: "danger", onclick: () => act("Cancel", "DELETE", `${base}/bringYourOwnImage`, undefined, `Cancel the deployment on ${name}? It boots into rescue.`) }, "Cancel the deployment")
      : h(
          "button",
          { id: "rescue", disabled: !latest, title: latest ? null : "Rescue follows a deployment: none yet", onclick: () => act("Rescue", "DELETE", `${base}/bringYourOwnImage`, undefined, `Boot ${name} into rescue?`) },
          "Rescue",
        ),
  );

  const facts = definitions([
    ["State", badge(s.bootTarget === "rescue" ? "rescue" : running ? "deploying" : latest ? latest.status : "idle")],
    ["MACs", s.macs.join(", ")],
    ["Power", power],
    ["Boots", s.bootTarget],
    ["Last seen", when(s.lastSeen)],
    ["Agent", s.agentVersion ? `${s.agentVersion}${s.versionSkew ? " (not this controller's version)" : ""}` : "-"],
  ]);
  const rescue =
    s.bootTarget === "rescue"
      ? h(
          "section",
          { "aria-labelledby": "rescue-h" },
          h("h2", { id: "rescue-h" }, "Rescue"),
          h("p", {}, "Log in with one of the last deployment's SSH keys, and check the host key's fingerprint:"),
          h("pre", { id: "rescue-ssh" }, `ssh root@${s.agentAddress || "ADDRESS"}\n# host key ${s.sshHostKey || "unknown"}`),
        )
      : "";

  const hardware = hw
    ? hardwareSection(hw)
    : h("section", {}, h("h2", {}, "Hardware"), h("p", { class: "muted" }, "No agent has reported it yet: inspect the server (byoi inspect) or deploy."));

  const history = h(
    "section",
    { "aria-labelledby": "history-h" },
    h("h2", { id: "history-h" }, "Deployments"),
    s.deployments.length
      ? h(
          "table",
          { id: "history" },
          h("thead", {}, h("tr", {}, ["#", "Image", "Status", "Started", "Took", "Throughput"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            s.deployments.map((v) => {
              const took = v.finishedAt ? Math.round((new Date(v.finishedAt) - new Date(v.createdAt)) / 1000) : null;
              return h(
                "tr",
                {},
                h("td", {}, String(v.deploymentId)),
                h("td", { class: "url" }, v.url),
                h("td", {}, badge(v.status === "doing" ? "deploying" : v.status), " ", v.status === "error" ? h("span", { class: "message error" }, v.message) : ""),
                h("td", {}, when(v.createdAt)),
                h("td", {}, duration(took)),
                h("td", {}, took ? `${bytes(v.bytesDone / took)}/s` : "-"),
              );
            }),
          ),
        )
      : h("p", { class: "muted" }, "None yet."),
  );

  const current = h("section", { "aria-labelledby": "current-h" }, h("h2", { id: "current-h" }, "Current deployment"));
  const log = h("ol", { id: "agent-log", class: "log", "aria-live": "off" });
  if (latest) {
    const v = latest;
    current.append(
      h(
        "div",
        { id: "current", class: "progress" },
        bar(v.status === "done" ? 100 : v.percent, `deployment ${v.deploymentId}`),
        h("span", { id: "current-text" }, summary(v)),
      ),
      h("h3", {}, "Agent log"),
      log,
    );
    // A running deployment's stream sends every line from the first; an
    // ended one's lines are read once.
    if (running) followServer(name, log);
    else {
      const view = await api("GET", `${base}/logs?deployment=${v.deploymentId}`).catch(() => ({ lines: [] }));
      for (const l of view.lines) log.append(logLine(l));
    }
  } else current.append(h("p", { class: "muted" }, "Nothing deployed yet."));

  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← Fleet")),
    h("h1", {}, name),
    buttons,
    actionMessage,
    facts,
    rescue,
    current,
    hardware,
    history,
  );
}

/// A deployment in a line: `doing · writing 42%`, `error · checksum · the
/// image's sha256 is …` (the message when it says more than the stage).
function summary(v) {
  const percent = v.status === "done" ? 100 : v.percent;
  const parts = [v.status, `${v.stage}${percent !== null && percent !== undefined ? ` ${percent}%` : ""}`];
  if (v.message && v.message !== v.stage) parts.push(v.message);
  return parts.join(" · ");
}

/// The hardware an agent reported: firmware, memory, disk groups, NICs.
function hardwareSection(hw) {
  return h(
    "section",
    { "aria-labelledby": "hw-h" },
    h("h2", { id: "hw-h" }, "Hardware"),
    definitions([
      ["Firmware", hw.bootMode],
      ["Memory", `${hw.memorySize.value} ${hw.memorySize.unit}`],
    ]),
    h(
      "table",
      {},
      h("caption", {}, "Disk groups"),
      h("thead", {}, h("tr", {}, ["Group", "Disks", "Serials"].map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        hw.diskGroups.map((g) => h("tr", {}, h("td", {}, String(g.diskGroupId)), h("td", {}, g.description), h("td", {}, g.disks.map((d) => d.serial || d.name).join(", ")))),
      ),
    ),
    h(
      "table",
      {},
      h("caption", {}, "Network interfaces"),
      h("thead", {}, h("tr", {}, ["Name", "MAC", "Link"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, hw.nics.map((n) => h("tr", {}, h("td", {}, n.name), h("td", {}, n.mac), h("td", {}, n.link ? `up${n.speedMbps ? `, ${n.speedMbps} Mb/s` : ""}` : "down")))),
    ),
  );
}

function logLine(l) {
  return h("li", { class: `log-${l.level}` }, h("time", { datetime: l.at }, l.at.slice(11, 19)), " ", l.message);
}

function followServer(name, log) {
  closeServerStream();
  const s = new EventSource(`/dedicated/server/${encodeURIComponent(name)}/events`);
  s.addEventListener("deployment", (e) => {
    const v = JSON.parse(e.data);
    const el = document.getElementById("current");
    if (!el) return;
    const percent = v.status === "done" ? 100 : v.percent;
    el.replaceChildren(
      bar(percent, `deployment ${v.deploymentId}`),
      h("span", { id: "current-text" }, summary(v)),
    );
    if (v.status !== "doing") {
      // The controller ends the stream with the deployment: not reconnecting.
      announce(`${name}: ${v.status}: ${v.message}`);
      closeServerStream();
    }
  });
  s.addEventListener("log", (e) => log.append(logLine(JSON.parse(e.data))));
  serverStream = s;
}

// ---------------------------------------------------------------- deploying

/// The form's fields: their id, the API field names whose messages they
/// show, and their label.
const FIELDS = [
  ["url", ["URL"], "Image URL"],
  ["checksum-type", ["checkSumType"], "Checksum type"],
  ["checksum", ["checkSum"], "Checksum"],
  ["type", ["format image", "type", "ovaDisk"], "Image type"],
  ["disk-group", ["diskGroupId"], "Disk group"],
  ["hostname", ["hostname"], "Hostname"],
  ["ssh-keys", ["sshKey", "SSH keys"], "SSH public keys, one a line"],
  ["user-data", ["userData"], "User data (cloud-init)"],
  ["metadata", ["userMetadatas", "metadata"], "Metadata, KEY=VALUE a line"],
  ["efi-loader", ["efiBootloaderPath", "efiBootloader"], "UEFI loader on the ESP"],
];

/// The form field a message of the API is about: the first field whose API
/// name it mentions (the API's messages name the field, as OVHcloud's do).
function fieldOf(message) {
  let best = null;
  for (const [id, names] of FIELDS) {
    for (const n of names) {
      const at = message.search(new RegExp(`\\b${n.replace(/ /g, "\\s")}\\b`));
      if (at >= 0 && (!best || at < best.at || (at === best.at && n.length > best.len))) best = { id, at, len: n.length };
    }
  }
  return best ? best.id : null;
}

/// A form field: its label, the control, a hint, and the place its error
/// message goes (`ID-error`, which `showError` fills).
function field(id, label, control, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : "",
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }),
  );
}

/// A text input described by its hint and its error.
function input(id, attrs) {
  return h("input", { id, name: id, "aria-describedby": `${id}-hint ${id}-error`, ...attrs });
}

async function deployView(name) {
  document.title = `Deploy on ${name} · byoi`;
  const hw = await api("GET", `/dedicated/server/${encodeURIComponent(name)}/specifications/hardware`).catch(() => null);
  const groups = hw && hw.diskGroups.length
    ? h("select", { id: "disk-group", name: "disk-group", "aria-describedby": "disk-group-error" }, hw.diskGroups.map((g) => h("option", { value: String(g.diskGroupId) }, `${g.diskGroupId}: ${g.description}`)))
    : input("disk-group", { type: "number", min: "1", value: "1", inputmode: "numeric" });
  const form = h(
    "form",
    { id: "deploy-form", novalidate: true },
    field("url", "Image URL", input("url", { type: "url", required: true, placeholder: "https://cloud.debian.org/…/debian-12-generic-amd64.qcow2", autocomplete: "off" }), "http or https; qcow2, raw or OVA"),
    h(
      "div",
      { class: "row" },
      field("checksum-type", "Checksum type", h("select", { id: "checksum-type", name: "checksum-type" }, ["", "sha512", "sha256", "sha1", "md5"].map((a) => h("option", { value: a }, a || "none")))),
      field("checksum", "Checksum", input("checksum", { placeholder: "hex digits", autocomplete: "off", spellcheck: "false" })),
    ),
    h(
      "div",
      { class: "row" },
      field("type", "Image type", h("select", { id: "type", name: "type" }, ["", "qcow2", "raw", "ova"].map((t) => h("option", { value: t }, t || "detect")))),
      field("disk-group", "Disk group", groups),
    ),
    field("hostname", "Hostname", input("hostname", { autocomplete: "off" })),
    field("ssh-keys", "SSH public keys, one a line", h("textarea", { id: "ssh-keys", name: "ssh-keys", rows: "3", spellcheck: "false", "aria-describedby": "ssh-keys-error" })),
    field("user-data", "User data (cloud-init)", h("textarea", { id: "user-data", name: "user-data", rows: "5", spellcheck: "false", "aria-describedby": "user-data-error" })),
    field("metadata", "Metadata, KEY=VALUE a line", h("textarea", { id: "metadata", name: "metadata", rows: "2", spellcheck: "false", "aria-describedby": "metadata-error" })),
    field("efi-loader", "UEFI loader on the ESP", input("efi-loader", { placeholder: "\\efi\\debian\\grubx64.efi", autocomplete: "off" })),
    h("p", { id: "form-error", class: "error", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "deploy" }, "Deploy"), h("a", { class: "button", href: `#/server/${encodeURIComponent(name)}` }, "Back")),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    document.getElementById("form-error").textContent = "";
    const v = (id) => document.getElementById(id).value.trim();
    const body = { URL: v("url"), diskGroupId: Number(v("disk-group")) || 1 };
    if (v("checksum") || v("checksum-type")) {
      body.checkSum = v("checksum");
      body.checkSumType = v("checksum-type");
    }
    if (v("type")) body.type = v("type");
    if (v("efi-loader")) body.efiBootloaderPath = v("efi-loader");
    const keys = v("ssh-keys").split("\n").map((k) => k.trim()).filter(Boolean);
    const meta = {};
    for (const line of v("metadata").split("\n").map((l) => l.trim()).filter(Boolean)) {
      const eq = line.indexOf("=");
      if (eq < 1) return showError("metadata", `Bad metadata line "${line}": KEY=VALUE`);
      meta[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    if (v("hostname") || keys.length || v("user-data") || Object.keys(meta).length) {
      body.configdrive = { enable: true };
      if (v("hostname")) body.configdrive.hostname = v("hostname");
      if (keys.length) body.configdrive.sshKeys = keys;
      if (v("user-data")) body.configdrive.userData = document.getElementById("user-data").value;
      if (Object.keys(meta).length) body.configdrive.userMetadatas = meta;
    }
    const submit = document.getElementById("deploy");
    submit.disabled = true;
    try {
      await api("POST", `/dedicated/server/${encodeURIComponent(name)}/bringYourOwnImage`, body);
      announce(`deploying on ${name}`);
      location.hash = `#/server/${encodeURIComponent(name)}`;
    } catch (err) {
      showError(fieldOf(err.message), err.message);
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(h("p", {}, h("a", { href: `#/server/${encodeURIComponent(name)}` }, `← ${name}`)), h("h1", {}, `Deploy an image on ${name}`), form);
  document.getElementById("url").focus();
}

/// Shows `message` next to the field `id` (else above the buttons) and moves
/// the focus there.
function showError(id, message) {
  const target = id && document.getElementById(`${id}-error`);
  if (target) {
    target.textContent = message;
    const control = document.getElementById(id);
    control.setAttribute("aria-invalid", "true");
    control.focus();
  } else document.getElementById("form-error").textContent = message;
}

// ---------------------------------------------------------------- a discovered machine

async function discoveredView(mac) {
  document.title = `${mac} · byoi`;
  const path = `/dedicated/discovered/${encodeURIComponent(mac)}`;
  let m;
  try {
    m = await api("GET", path);
  } catch (e) {
    main.replaceChildren(h("p", {}, h("a", { href: "#/" }, "← Fleet")), h("h1", {}, mac), h("p", { class: "error", role: "alert" }, e.message));
    return;
  }
  const hw = m.hardware;
  const name = input("adopt-name", { required: true, autocomplete: "off" });
  const form = h(
    "form",
    { id: "adopt-form", novalidate: true },
    field("adopt-name", "Server name", name, "It becomes a server with the MACs it reported, manual power (change it with byoi server set), booting its disk."),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "adopt" }, "Adopt"),
      h("button", { type: "button", id: "forget", onclick: forget }, "Forget"),
    ),
  );
  async function forget() {
    if (!confirm(`Forget ${mac}? Its next netboot discovers it again.`)) return;
    try {
      const r = await api("DELETE", path);
      announce(r.message);
      location.hash = "#/";
    } catch (e) {
      showError("adopt-name", e.message);
    }
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    document.getElementById("adopt-name-error").textContent = "";
    name.removeAttribute("aria-invalid");
    try {
      const s = await api("POST", `${path}/adopt`, { serviceName: name.value.trim() });
      announce(`${mac} adopted as ${s.serviceName}`);
      location.hash = `#/server/${encodeURIComponent(s.serviceName)}`;
    } catch (err) {
      showError("adopt-name", err.message);
    }
  });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← Fleet")),
    h("h1", {}, `Discovered: ${mac}`),
    definitions([
      ["State", badge("discovered")],
      ["Agent", m.state === "reported" ? `reported its hardware (${m.agentVersion || "unknown version"})` : "booting, not reported yet"],
      ["Address", m.address],
      ["First seen", when(m.firstSeen)],
      ["Last seen", when(m.lastSeen)],
    ]),
    h("p", { class: "hint" }, "What it reported is its own word: check its MACs and the address it called from before adopting it."),
    hw ? hardwareSection(hw) : "",
    h("h2", {}, "Adopt it"),
    form,
  );
}

// ---------------------------------------------------------------- routing

function route() {
  closeServerStream();
  const hash = location.hash || "#/";
  const deploy = hash.match(/^#\/server\/([^/]+)\/deploy$/);
  const discovered = hash.match(/^#\/discovered\/([^/]+)$/);
  const server = hash.match(/^#\/server\/([^/]+)$/);
  if (deploy) deployView(decodeURIComponent(deploy[1]));
  else if (discovered) discoveredView(decodeURIComponent(discovered[1]));
  else if (server) serverView(decodeURIComponent(server[1]));
  else fleetView();
  for (const a of document.querySelectorAll("nav a")) a.removeAttribute("aria-current");
  if (!deploy && !server && !discovered) document.querySelector('nav a[href="#/"]').setAttribute("aria-current", "page");
  main.focus();
}

window.addEventListener("hashchange", route);
followFleet();
route();
