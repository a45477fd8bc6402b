// CMAH web UI: search by an uploaded picture or 3D file, show ranked matches, open point clouds in a
// 3D viewer; admin tab for indexing jobs. Plain ES module, no framework; all listeners set here
// (no inline handlers), so the page works under a strict Content-Security-Policy.

import { POINT_EXTENSIONS, SNIFF_BYTES, extension, sniff } from './sniff.js';

const API = 'api/v1';
const TOKEN_KEY = 'cmah.adminToken';
const TARGET_NAMES = { points: '3D point clouds', images: 'images' };
const QUERY_NAMES = { image: 'picture', points: '3D file' };
const ENDED = ['succeeded', 'failed', 'cancelled']; // job states that do not change any more

const $ = (id) => document.getElementById(id);

/** An error answered by the API (`{"error", "detail"}`) or a failed request. */
class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function request(url, options = {}) {
  let resp;
  try {
    resp = await fetch(url, options);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network_error', 'Could not reach the service (network error). A very large upload may '
      + 'have been cut off at the size limit.');
  }
  if (resp.ok) return resp;
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // not JSON: fall through
  }
  if (body && typeof body.error === 'string') {
    throw new ApiError(resp.status, body.error, String(body.detail ?? body.error));
  }
  throw new ApiError(resp.status, `http_${resp.status}`, `The service answered ${resp.status} ${resp.statusText}`.trim());
}

function showError(box, err) {
  box.replaceChildren();
  if (!err) {
    box.hidden = true;
    return;
  }
  const detail = document.createElement('span');
  detail.className = 'error-detail';
  detail.textContent = err.detail || err.message || String(err);
  box.append(detail);
  if (err instanceof ApiError) {
    const code = document.createElement('span');
    code.className = 'error-code';
    code.textContent = err.status ? `${err.code} (HTTP ${err.status})` : err.code;
    box.append(code);
  }
  box.dataset.code = err.code || '';
  box.hidden = false;
}

/** 'image' or 'points': the content decides (a PLY named .png is a 3D file), the name and type only
 * when the content is not recognisable (the server then says what is wrong with it). */
async function fileKind(file) {
  const found = sniff(new Uint8Array(await file.slice(0, SNIFF_BYTES).arrayBuffer()));
  if (found) return found.kind;
  if (POINT_EXTENSIONS.includes(extension(file.name))) return 'points';
  return file.type.startsWith('image/') ? 'image' : 'points';
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// --- 3D viewers (three.js loaded on first use) ------------------------------------------------------
let viewerModule = null;
async function loadViewerModule() {
  viewerModule ??= import('./viewer.js');
  return viewerModule;
}

function viewerMessage(container, text) {
  let msg = container.querySelector('.viewer-message');
  if (!text) {
    msg?.remove();
    return;
  }
  if (!msg) {
    msg = document.createElement('p');
    msg.className = 'viewer-message';
    container.append(msg);
  }
  msg.textContent = text;
}

const viewers = new Map();
async function getViewer(container, label) {
  if (viewers.has(container)) return viewers.get(container);
  const mod = await loadViewerModule();
  try {
    const v = new mod.PointViewer(container, label);
    viewers.set(container, v);
    return v;
  } catch (err) {
    throw new Error(`3D view unavailable: WebGL is not available in this browser (${err.message || err})`);
  }
}

/** Show `xyz` (or an error message) in `container`; never throws. Sets data-state for tests. Nothing is shown
 * once `isCurrent()` is false (another cloud was asked for meanwhile). */
async function showPoints(container, label, loadXyz, isCurrent = () => true) {
  container.dataset.state = 'loading';
  viewerMessage(container, 'Loading 3D view…');
  try {
    const viewer = await getViewer(container, label);
    viewer.clear();
    const xyz = await loadXyz((await loadViewerModule()).parsePoints);
    if (!isCurrent()) return;
    const n = viewer.setPoints(xyz);
    viewerMessage(container, '');
    container.dataset.state = 'shown';
    container.dataset.points = String(n);
  } catch (err) {
    if (!isCurrent()) return;
    viewers.get(container)?.clear();
    viewerMessage(container, err.detail || err.message || String(err));
    container.dataset.state = 'error';
  }
}

// --- Search ---------------------------------------------------------------------------------------
const form = $('search-form');
const fileInput = $('file');
const dropzone = $('dropzone');
const resultsList = $('results');
const statusText = $('search-status-text');
const spinner = $('spinner');
const searchError = $('search-error');
const searchButton = $('search-button');

let query = null; // { file, kind } (an upload) or { item, kind } (more like a stored item)
let inflight = null;
let queryShown = 0; // bumped when the query changes: a late point cloud of the one before is dropped
let queryImageUrl = null;

function target() {
  return form.elements.target.value;
}

async function setQueryFile(file) {
  if (!file) return;
  const kind = await fileKind(file);
  query = { file, kind };
  const shown = ++queryShown;
  delete $('query-preview').dataset.item;
  // Cross-modal by default: pictures find point clouds, 3D files find pictures.
  form.elements.target.value = kind === 'image' ? 'points' : 'images';
  const img = $('query-image');
  const viewerBox = $('query-viewer');
  $('query-preview').hidden = false;
  $('query-caption').textContent = `${file.name} · ${formatBytes(file.size)} · ${QUERY_NAMES[kind]}`;
  if (queryImageUrl) URL.revokeObjectURL(queryImageUrl);
  queryImageUrl = null;
  if (kind === 'image') {
    queryImageUrl = URL.createObjectURL(file);
    img.src = queryImageUrl;
    img.alt = `Query picture ${file.name}`;
    img.hidden = false;
    viewerBox.hidden = true;
  } else {
    img.hidden = true;
    img.removeAttribute('src');
    viewerBox.hidden = false;
    showPoints(viewerBox, `Query point cloud ${file.name}`,
      async (parse) => parse(await file.arrayBuffer(), file.name), () => shown === queryShown);
  }
  searchButton.disabled = false;
  runSearch();
}

/** More like this: search from the stored item of a result card (`GET /items/{id}/similar`), with the target,
 * k, code length and filters of the form; the query panel shows the item instead of the file. */
function setQueryItem(hit) {
  const kind = hit.modality === 'image' ? 'image' : 'points';
  query = { item: hit, kind };
  const shown = ++queryShown;
  fileInput.value = ''; // choosing the same file again is a change again
  const img = $('query-image');
  const viewerBox = $('query-viewer');
  $('query-preview').hidden = false;
  $('query-caption').textContent = `More like: ${hit.name} (#${hit.id})${hit.label ? ` · ${hit.label}` : ''}`
    + ` · ${kind === 'image' ? 'picture' : '3D point cloud'} in the index${hit.source ? ` (${hit.source})` : ''}`;
  $('query-preview').dataset.item = String(hit.id);
  if (queryImageUrl) URL.revokeObjectURL(queryImageUrl);
  queryImageUrl = null;
  if (kind === 'image') {
    viewerBox.hidden = true;
    img.hidden = !hit.preview_url;
    if (hit.preview_url) {
      img.src = hit.preview_url;
      img.alt = `Query picture ${hit.name} (item ${hit.id})`;
    } else {
      img.removeAttribute('src');
    }
  } else {
    img.hidden = true;
    img.removeAttribute('src');
    viewerBox.hidden = false;
    showPoints(viewerBox, `Query point cloud ${hit.name}`, async (parse) => {
      const resp = await request(`${API}/items/${hit.id}/points.ply`);
      return parse(await resp.arrayBuffer(), 'points.ply');
    }, () => shown === queryShown);
  }
  searchButton.disabled = false;
  runSearch();
  $('results-heading').focus(); // the card (and its button) is replaced by the new results
}

// --- Filters (label, max_distance, distinct: query parameters of every search) ----------------------
const labelOptions = $('label-options');
const labelStatus = $('label-status');

function checkedLabels() {
  return [...labelOptions.querySelectorAll('input:checked')].map((box) => box.value);
}

/** The filter query parameters of the form, added to `params`. */
function filterParams(params) {
  for (const label of checkedLabels()) params.append('label', label);
  const maxDistance = form.elements.max_distance.value.trim();
  if (maxDistance !== '') params.set('max_distance', maxDistance);
  if (form.elements.distinct.checked) params.set('distinct', 'name');
  return params;
}

/** "label chair or sofa · distance ≤ 12 · distinct names" (empty without filters). */
function filterSummary() {
  const parts = [];
  const labels = checkedLabels();
  if (labels.length) parts.push(`label ${labels.join(' or ')}`);
  const maxDistance = form.elements.max_distance.value.trim();
  if (maxDistance !== '') parts.push(`distance ≤ ${maxDistance}`);
  if (form.elements.distinct.checked) parts.push('distinct names');
  return parts.join(' · ');
}

function labelHelp(total) {
  const n = checkedLabels().length;
  labelStatus.textContent = total === 0 ? 'No labelled items in the index.'
    : n ? `${n} of ${total} checked: items with one of them (unlabelled items never match).`
      : `${total} label${total === 1 ? '' : 's'}; none checked: every item.`;
  $('label-clear').hidden = n === 0;
}

/** Fill the label picker from `GET /api/v1/stats` (counts per label); checked labels stay checked. */
async function loadLabels() {
  let stats;
  try {
    stats = await (await request(`${API}/stats`)).json();
  } catch (err) {
    labelStatus.textContent = `The labels could not be read: ${err.detail || err.message || err}`;
    return;
  }
  const counts = new Map(Object.entries(stats.labels || {}));
  for (const label of checkedLabels()) if (!counts.has(label)) counts.set(label, 0);
  const checked = new Set(checkedLabels());
  const focused = document.activeElement?.closest?.('#label-options') ? document.activeElement.value : null;
  const names = [...counts.keys()].sort((a, b) => a.localeCompare(b));
  labelOptions.replaceChildren(...names.map((name) => {
    const box = el('input', { type: 'checkbox', value: name });
    box.checked = checked.has(name);
    return el('label', { class: 'check', title: `${counts.get(name)} items` }, box, ` ${name} `,
      el('span', { class: 'count' }, `(${counts.get(name)})`));
  }));
  labelOptions.dataset.loaded = 'true';
  labelOptions.dataset.count = String(names.length);
  if (focused !== null) {
    [...labelOptions.querySelectorAll('input')].find((box) => box.value === focused)?.focus();
  }
  labelHelp(names.length);
}

labelOptions.addEventListener('change', () => {
  labelHelp(labelOptions.querySelectorAll('input').length);
  runSearch();
});
$('label-clear').addEventListener('click', () => {
  for (const box of labelOptions.querySelectorAll('input:checked')) box.checked = false;
  labelHelp(labelOptions.querySelectorAll('input').length);
  labelOptions.querySelector('input')?.focus();
  runSearch();
});
form.elements.max_distance.addEventListener('change', () => runSearch());
form.elements.distinct.addEventListener('change', () => runSearch());

function setBusy(busy) {
  spinner.hidden = !busy;
  resultsList.classList.toggle('busy', busy);
  resultsList.setAttribute('aria-busy', String(busy));
  searchButton.disabled = busy || !query;
  form.setAttribute('aria-busy', String(busy));
}

async function runSearch() {
  if (!query) return;
  if (!form.checkValidity()) {
    form.reportValidity();
    return;
  }
  inflight?.abort();
  const controller = new AbortController();
  inflight = controller;
  const { file, item, kind } = query;
  const tgt = target();
  const params = filterParams(new URLSearchParams({ k: form.elements.k.value, bits: form.elements.bits.value }));
  const filters = filterSummary();
  let endpoint;
  let url;
  const options = { signal: controller.signal };
  if (item) {
    endpoint = 'similar';
    params.set('target', tgt);
    url = `${API}/items/${item.id}/similar?${params}`;
  } else {
    endpoint = `${kind === 'image' ? 'image' : 'points'}-to-${tgt}`;
    url = `${API}/search/${endpoint}?${params}`;
    options.method = 'POST';
    options.body = new FormData();
    options.body.append('file', file, file.name);
  }
  const from = item ? `more like ${item.name} (#${item.id})` : QUERY_NAMES[kind];
  setBusy(true);
  showError(searchError, null);
  statusText.textContent = `Searching ${TARGET_NAMES[tgt]}…`;
  try {
    const resp = await request(url, options);
    const data = await resp.json();
    if (controller !== inflight) return;
    renderResults(data.results, tgt);
    const n = data.results.length;
    statusText.textContent = `${n} result${n === 1 ? '' : 's'} in ${data.took_ms} ms · ${data.bits}-bit codes · `
      + `${from} → ${TARGET_NAMES[tgt]}${filters ? ` · ${filters}` : ''}`
      + `${n === 0 && filters ? ' (no item matches the filters)' : ''}`;
    resultsList.dataset.endpoint = endpoint;
    resultsList.dataset.params = params.toString();
    if (item) resultsList.dataset.item = String(item.id);
    else delete resultsList.dataset.item;
  } catch (err) {
    if (err.name === 'AbortError' || controller !== inflight) return;
    resultsList.replaceChildren();
    delete resultsList.dataset.endpoint;
    delete resultsList.dataset.params;
    statusText.textContent = 'Search failed.';
    showError(searchError, err);
  } finally {
    if (controller === inflight) {
      inflight = null;
      setBusy(false);
    }
  }
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function renderResults(results, tgt) {
  const modality = tgt === 'points' ? 'points' : 'image';
  const loading = results.length > 50 ? 'lazy' : 'eager'; // lazy only for long lists
  const items = results.map((hit) => {
    const picture = hit.preview_url
      ? el('img', { src: hit.preview_url, alt: '', loading, width: '256', height: '256' })
      : el('div', { class: 'no-preview' }, 'no preview');
    const meta = el('div', { class: 'meta' },
      el('div', { class: 'line' },
        el('span', { class: 'rank', title: 'rank' }, `#${hit.rank}`),
        el('span', { class: 'distance', title: 'Hamming distance' }, `distance ${hit.distance}`)),
      el('div', { class: 'name' }, hit.name),
      el('div', { class: 'line' },
        hit.label ? el('span', { class: 'label' }, hit.label) : el('span', { class: 'label-none' }, 'no label'),
        modality === 'points' ? el('span', { class: 'open-3d', 'aria-hidden': 'true' }, '3D ▸') : null),
      hit.source ? el('div', { class: 'source', title: `source: ${hit.source}` }, hit.source) : null);
    const description = `Rank ${hit.rank}: ${hit.name}${hit.label ? `, ${hit.label}` : ''}, distance ${hit.distance}`
      + `${hit.source ? `, from ${hit.source}` : ''}`;
    let inner;
    if (modality === 'points') {
      inner = el('button', { type: 'button', 'aria-label': `${description}. Open in the 3D viewer` }, picture, meta);
      inner.addEventListener('click', () => openViewer(hit));
    } else if (hit.preview_url) {
      inner = el('a', { href: hit.preview_url, target: '_blank', rel: 'noopener',
                        'aria-label': `${description}. Open the picture` }, picture, meta);
    } else {
      inner = el('div', { 'aria-label': description }, picture, meta);
    }
    const more = el('button', { type: 'button', class: 'more-like',
                                'aria-label': `More like this: search from ${hit.name} (item ${hit.id})` }, 'More like this');
    more.addEventListener('click', () => setQueryItem({ ...hit, modality: hit.modality || modality }));
    return el('li', { class: 'result', dataset: { id: String(hit.id), modality, rank: String(hit.rank),
                                                  distance: String(hit.distance), name: hit.name,
                                                  label: hit.label ?? '', source: hit.source ?? '' } },
      inner, more);
  });
  resultsList.replaceChildren(...items);
  resultsList.dataset.modality = modality;
}

// Drag and drop onto the drop zone (or anywhere on the search panel).
for (const type of ['dragenter', 'dragover']) {
  dropzone.addEventListener(type, (e) => {
    e.preventDefault();
    dropzone.classList.add('dragover');
  });
}
for (const type of ['dragleave', 'drop']) {
  dropzone.addEventListener(type, () => dropzone.classList.remove('dragover'));
}
dropzone.addEventListener('drop', (e) => {
  e.preventDefault();
  const file = e.dataTransfer?.files?.[0];
  if (file) setQueryFile(file);
});
// A file dropped outside the zone must not navigate away from the page.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());

fileInput.addEventListener('change', () => setQueryFile(fileInput.files[0]));
form.addEventListener('submit', (e) => {
  e.preventDefault();
  runSearch();
});
for (const name of ['bits', 'k']) form.elements[name].addEventListener('change', () => runSearch());
for (const radio of form.elements.target) radio.addEventListener('change', () => runSearch());

// --- Viewer dialog --------------------------------------------------------------------------------
const dialog = $('viewer-dialog');
const dialogViewer = $('dialog-viewer');

function openViewer(hit) {
  $('viewer-title').textContent = `${hit.name}${hit.label ? ` (${hit.label})` : ''} · item ${hit.id}`;
  const url = `${API}/items/${hit.id}/points.ply`;
  $('viewer-download').href = url;
  $('viewer-download').setAttribute('download', `${hit.name}.ply`);
  showError($('viewer-error'), null);
  dialog.dataset.id = String(hit.id);
  dialog.showModal();
  showPoints(dialogViewer, `Point cloud ${hit.name}`, async (parse) => {
    try {
      const resp = await request(url);
      return parse(await resp.arrayBuffer(), 'points.ply');
    } catch (err) {
      if (err instanceof ApiError) showError($('viewer-error'), err);
      throw err;
    }
  }).then(() => dialogViewer.querySelector('canvas')?.focus());
}

$('viewer-close').addEventListener('click', () => dialog.close());
dialog.addEventListener('click', (e) => {
  if (e.target === dialog) dialog.close(); // a click on the backdrop
});

// --- Tabs -----------------------------------------------------------------------------------------
const tabs = [...document.querySelectorAll('[role="tab"]')];

function selectTab(tab, focus = true) {
  for (const t of tabs) {
    const selected = t === tab;
    t.setAttribute('aria-selected', String(selected));
    t.tabIndex = selected ? 0 : -1;
    $(t.getAttribute('aria-controls')).hidden = !selected;
  }
  if (focus) tab.focus();
  history.replaceState(null, '', tab.id === 'tab-admin' ? '#admin' : '#');
  if (tab.id === 'tab-admin') refreshJobs();
  else {
    stopJobs();
    if (document.body.dataset.ready === 'true') loadLabels(); // jobs may have added labels
  }
}

for (const tab of tabs) {
  tab.addEventListener('click', () => selectTab(tab));
  tab.addEventListener('keydown', (e) => {
    const i = tabs.indexOf(tab);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (next !== undefined) {
      e.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length]);
    }
  });
}

// --- Admin ----------------------------------------------------------------------------------------
const tokenInput = $('token');
const adminError = $('admin-error');

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function tokenStatus() {
  $('token-status').textContent = token() ? 'A token is saved for this tab.' : 'No token saved.';
}

/** Resolves when the service takes `value` as the admin token; throws its ApiError otherwise. Asks for the
 * status of a job that does not exist: 404 means the token passed (401 / 403 come first). */
async function checkToken(value) {
  try {
    await request(`${API}/admin/jobs/token-check`, { headers: { Authorization: `Bearer ${value}` } });
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
  }
}

tokenInput.value = token();
tokenStatus();
$('token-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const value = tokenInput.value.trim();
  showError(adminError, null);
  if (!value) {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenStatus();
    return;
  }
  $('token-status').textContent = 'Checking the token…';
  try {
    await checkToken(value);
  } catch (err) {
    showError(adminError, err);
    const refused = err.status === 401 || err.status === 403;
    $('token-status').textContent = `${refused ? 'The service refused this token' : 'The token could not be checked'}`
      + `: not saved.${token() ? ' The token saved before is kept.' : ''}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, value);
  tokenStatus();
  refreshJobs();
});
$('token-forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  tokenInput.value = '';
  tokenStatus();
  stopFollowing('the token was forgotten');
  refreshJobs(); // clears the list: no token
});

function authHeaders() {
  const t = tokenInput.value.trim() || token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** POST the job file with XMLHttpRequest (fetch has no upload progress); resolves to the parsed body. */
function uploadJob(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${API}/admin/jobs`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = 'json';
    xhr.upload.addEventListener('progress', (e) => e.lengthComputable && onProgress(e.loaded, e.total));
    xhr.addEventListener('load', () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else if (body && typeof body.error === 'string') reject(new ApiError(xhr.status, body.error, body.detail));
      else reject(new ApiError(xhr.status, `http_${xhr.status}`, `The service answered ${xhr.status}`));
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network_error',
      'Could not reach the service (network error). The upload may be above the size limit.')));
    const body = new FormData();
    body.append('file', file, file.name);
    xhr.send(body);
  });
}

const jobBox = $('job');
const progress = $('job-progress');
const jobStatus = $('job-status');
let pollTimer = null;
let following = 0; // the job followed now; bumped to stop following it (a late answer is then dropped)

/** Stop polling the job shown; if it had not ended, say that it is no longer followed (it goes on). */
function stopFollowing(reason) {
  following++;
  clearTimeout(pollTimer);
  $('job-button').disabled = false;
  if (jobBox.hidden || ENDED.includes(jobBox.dataset.state)) return;
  jobBox.dataset.state = 'unfollowed';
  jobStatus.textContent += ` · no longer followed (${reason}); the job goes on in the service`;
}

function showJob(job) {
  const finished = job.done + job.failed;
  progress.max = Math.max(job.total, 1);
  progress.value = job.state === 'succeeded' ? progress.max : Math.min(finished, progress.max);
  $('job-progress-label').textContent = `Indexing ${job.filename}`;
  const counts = job.total ? `${job.done} indexed, ${job.failed} failed, of ${job.total}` : 'preparing';
  const speed = speedText(job);
  jobStatus.textContent = `Job ${job.id.slice(0, 8)}: ${job.state} · ${counts}${speed ? ` · ${speed}` : ''}`
    + `${job.error ? ` · ${job.error}` : ''}`;
  jobBox.dataset.state = job.state;
  const list = $('job-errors');
  list.replaceChildren(...job.errors.map((e) => el('li', {},
    el('strong', {}, e.name || '(archive)'), ': ', el('code', {}, e.error), ` ${e.detail}`)));
  $('job-errors-box').hidden = job.errors.length === 0;
  $('job-errors-summary').textContent = `Failures (${job.failed}${job.failed > job.errors.length ? `, first ${job.errors.length} listed` : ''})`;
  if (job.error) showError(adminError, new ApiError(0, 'job_failed', `The job failed: ${job.error}`));
}

async function pollJob(statusUrl, followed) {
  clearTimeout(pollTimer);
  if (followed !== following) return;
  try {
    const resp = await request(statusUrl.replace(/^\//, ''), { headers: authHeaders() });
    const job = await resp.json();
    if (followed !== following) return;
    showJob(job);
    if (job.state === 'queued' || job.state === 'running') pollTimer = setTimeout(() => pollJob(statusUrl, followed), 700);
    else $('job-button').disabled = false;
  } catch (err) {
    if (followed !== following) return;
    showError(adminError, err);
    stopFollowing('its status could not be read');
  }
}

$('job-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const file = $('job-file').files[0];
  showError(adminError, null);
  if (!file) {
    showError(adminError, new Error('Choose a .npz or .zip file first.'));
    return;
  }
  stopFollowing('another job was started');
  const followed = following;
  $('job-button').disabled = true;
  jobBox.hidden = false;
  $('job-errors-box').hidden = true;
  delete jobBox.dataset.state;
  $('job-progress-label').textContent = `Uploading ${file.name}`;
  progress.max = 1;
  progress.value = 0;
  jobStatus.textContent = `Uploading ${formatBytes(file.size)}…`;
  try {
    const created = await uploadJob(file, (loaded, total) => {
      progress.max = total;
      progress.value = loaded;
      jobStatus.textContent = `Uploading: ${formatBytes(loaded)} of ${formatBytes(total)}`;
    });
    if (followed !== following) {
      jobStatus.textContent = `Uploaded as job ${created.job_id.slice(0, 8)}; no longer followed`;
      return;
    }
    jobStatus.textContent = 'Uploaded; waiting for the job to start…';
    pollJob(created.status_url, followed);
    refreshJobs();
  } catch (err) {
    jobBox.hidden = true;
    showError(adminError, err);
    $('job-button').disabled = false;
  }
});

// --- Job list (GET /api/v1/admin/jobs, POST .../jobs/{id}/cancel) ------------------------------------
const jobsList = $('jobs-list');
const jobsStatus = $('jobs-status');
const jobsError = $('jobs-error');
const JOBS_SHOWN = 20;
const JOBS_POLL_MS = 1000;
let jobsTimer = null;
let jobsRound = 0; // bumped to stop polling the list (a late answer is then dropped)

function formatSeconds(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** "12.5 items/s · about 40 s left" from a job status (its rate and ETA, when the service knows them). */
function speedText(job) {
  const parts = [];
  if (typeof job.items_per_second === 'number') parts.push(`${job.items_per_second.toFixed(1)} items/s`);
  if (typeof job.eta_seconds === 'number') parts.push(`about ${formatSeconds(job.eta_seconds)} left`);
  return parts.join(' · ');
}

function jobRow(job) {
  const max = Math.max(job.total, 1);
  const value = job.state === 'succeeded' ? max : Math.min(job.done + job.failed, max);
  const percent = Math.floor((100 * value) / max);
  const counts = job.total ? `${job.done} indexed, ${job.failed} failed, of ${job.total} (${percent} %)`
    : (ENDED.includes(job.state) ? 'nothing indexed' : 'preparing');
  const speed = speedText(job);
  const text = [counts, speed, job.error].filter(Boolean).join(' · ');
  let cancel = null;
  if (!ENDED.includes(job.state)) {
    cancel = el('button', { type: 'button', class: 'job-cancel', 'aria-label': `Cancel the job ${job.filename}` }, 'Cancel');
    cancel.addEventListener('click', () => cancelJob(job.id, cancel));
  }
  return el('li', { class: 'job-row', dataset: { id: job.id, state: job.state, done: String(job.done),
                                                  total: String(job.total), percent: String(percent) } },
    el('div', { class: 'line' }, el('span', { class: 'job-name' }, job.filename),
      el('span', { class: 'job-state' }, job.state)),
    el('progress', { max: String(max), value: String(value), 'aria-label': `${job.filename}: ${percent} %` }),
    el('div', { class: 'line' }, el('span', { class: 'job-counts' }, text), cancel));
}

function renderJobs(data) {
  const jobs = Array.isArray(data?.jobs) ? data.jobs : [];
  const focused = document.activeElement?.closest?.('.job-row')?.dataset.id;
  jobsList.replaceChildren(...jobs.map(jobRow));
  if (focused) jobsList.querySelector(`.job-row[data-id="${CSS.escape(focused)}"] .job-cancel`)?.focus();
  const total = Number(data?.total) || 0;
  jobsStatus.textContent = total ? `${total} job${total === 1 ? '' : 's'}${total > jobs.length ? `, the newest `
    + `${jobs.length} shown` : ''}` : 'No jobs yet.';
}

function stopJobs() {
  jobsRound++;
  clearTimeout(jobsTimer);
}

/** Read the job list now, then again every second while the Admin tab is shown and a token is saved. */
async function refreshJobs() {
  stopJobs();
  const round = jobsRound;
  const saved = token();
  if (!saved) {
    jobsList.replaceChildren();
    jobsStatus.textContent = 'Save the token to list the jobs.';
    showError(jobsError, null);
    return;
  }
  let again = JOBS_POLL_MS;
  try {
    const resp = await request(`${API}/admin/jobs?limit=${JOBS_SHOWN}`, { headers: { Authorization: `Bearer ${saved}` } });
    const data = await resp.json();
    if (round !== jobsRound) return;
    renderJobs(data);
    showError(jobsError, null);
  } catch (err) {
    if (round !== jobsRound) return;
    showError(jobsError, err);
    again = err.status === 401 || err.status === 403 ? null : 5 * JOBS_POLL_MS;
  }
  if (again !== null && round === jobsRound && !$('panel-admin').hidden && token()) {
    jobsTimer = setTimeout(refreshJobs, again);
  }
}

async function cancelJob(id, button) {
  button.disabled = true;
  showError(jobsError, null);
  try {
    await request(`${API}/admin/jobs/${encodeURIComponent(id)}/cancel`,
      { method: 'POST', headers: { Authorization: `Bearer ${token()}` } });
  } catch (err) {
    showError(jobsError, err); // e.g. 409 job_ended: it ended meanwhile
  }
  refreshJobs();
}

$('jobs-refresh').addEventListener('click', () => refreshJobs());
if (location.hash === '#admin') selectTab($('tab-admin'), false);

// --- Readiness banner -----------------------------------------------------------------------------
async function checkReady() {
  const banner = $('ready-banner');
  try {
    const resp = await fetch('ready', { cache: 'no-store' });
    const body = await resp.json();
    if (body.ready) {
      banner.hidden = true;
      document.body.dataset.ready = 'true';
      loadLabels();
      return;
    }
    banner.textContent = `The service is starting: ${body.detail}. Searches will work once it is ready.`;
  } catch {
    banner.textContent = 'The service cannot be reached.';
  }
  banner.hidden = false;
  setTimeout(checkReady, 2000);
}
checkReady();
