// The submission page: rendered from the database at a topic seq, then kept current live.
// Every step or submission event re-reads the submission's JSON view (GET /api/submissions/{id}),
// whose steps come from the same formatter as the rendered page (api.views.step_view): a label,
// a note or a time never reads differently live and after a reload. Progress messages are live only.
import { follow } from './live.js';
import { localizeTime } from './times.js';
import { api, announce, throttle } from './util.js';

const root = document.getElementById('submission');
const submissionId = root?.dataset.submissionId;
let latestRequest = 0;

function stepItem(name) {
  return root.querySelector(`.step[data-step="${CSS.escape(name)}"]`);
}

function timeElement(iso) {
  const element = document.createElement('time');
  element.dateTime = iso;
  element.dataset.local = 'clock';
  localizeTime(element);
  return element;
}

function renderStep(view) {
  const item = stepItem(view.step);
  if (!item) return;
  const before = item.dataset.state;
  item.dataset.state = view.state;
  item.dataset.tone = view.tone;
  item.querySelector('.step-state').textContent = view.state_text;
  const time = item.querySelector('.step-time');
  if (view.time) time.replaceChildren(view.time_prefix || '', timeElement(view.time));
  else time.replaceChildren();
  item.querySelector('.step-detail').textContent = view.note || '';
  if (before !== view.state) {
    document.getElementById('step-announcer').textContent = `${view.label}: ${view.state_text}`;
    if (view.step === 'thumbnail' && view.state === 'succeeded') showThumbnail();
  }
}

function showThumbnail() {
  const figure = document.getElementById('thumbnail');
  if (!figure) return;
  const image = document.createElement('img');
  image.src = `${figure.dataset.src}?v=${Date.now()}`;
  image.alt = 'Preview of the first page';
  image.addEventListener('load', () => figure.replaceChildren(image));
}

function badge(text, tone) {
  const element = document.createElement('span');
  element.className = `badge status-${tone}`;
  element.textContent = text;
  return element;
}

function setOverall(text, tone) {
  // The status line and this attempt's line in the attempts list say the same thing.
  for (const holder of document.querySelectorAll('#overall, [data-current-status]')) {
    holder.replaceChildren(badge(text, tone));
  }
}

async function refresh() {
  const request = ++latestRequest;
  let view;
  try {
    view = await api('GET', `/api/submissions/${submissionId}`);
  } catch (_) {
    return; // the next event, or the reconnect's catch-up, tries again
  }
  if (request !== latestRequest) return; // a newer answer is on its way
  for (const step of view.steps) renderStep(step);
  setOverall(view.status_text, view.status_tone);
  followWait();
}
const refreshSoon = throttle(refresh, 250);

// The honest wait: while a step sits in its queue, where it stands and when it may be done
// (GET /api/submissions/{id}/wait, the autoscaler's own figures). Polled, not pushed: every 5 s,
// backing off to 30 s, never while the tab is hidden, stopped once no step is queued.
// Screen readers hear it at most every 15 s (a polite live region of its own).
const waitBox = document.getElementById('wait');
const WAIT_FIRST_MS = 5000;
const WAIT_MAX_MS = 30000;
const WAIT_SPEAK_MS = 15000;
let waitTimer = null;
let waitDelay = WAIT_FIRST_MS;
let waitSpokenAt = 0;
let waitSpoken = '';

function stepsWaiting() {
  return Boolean(root.querySelector('.step[data-state="queued"], .step[data-state="retrying"]'));
}

function hideWait() {
  if (waitTimer !== null) window.clearTimeout(waitTimer);
  waitTimer = null;
  waitDelay = WAIT_FIRST_MS;
  if (waitBox) waitBox.hidden = true;
}

function renderWait(view) {
  const waiting = (view.steps || []).filter((step) => step.state !== 'running');
  if (!waiting.length) { hideWait(); return false; }
  const items = waiting.map((step) => {
    const item = document.createElement('li');
    item.textContent = step.position_text;
    item.dataset.step = step.step;
    return item;
  });
  document.getElementById('wait-positions').replaceChildren(...items);
  const estimate = view.estimate ? view.estimate.text : '';
  document.getElementById('wait-estimate').textContent = estimate;
  const workers = waiting.map((step) => step.workers_text).find(Boolean) || '';
  document.getElementById('wait-workers').textContent = workers;
  waitBox.hidden = false;
  const spoken = [waiting[0].position_text, estimate, workers].filter(Boolean).join(' ');
  if (spoken !== waitSpoken && Date.now() - waitSpokenAt >= WAIT_SPEAK_MS) {
    document.getElementById('wait-announcer').textContent = spoken;
    waitSpoken = spoken;
    waitSpokenAt = Date.now();
  }
  return true;
}

function scheduleWait(delay) {
  if (!waitBox || waitTimer !== null) return;
  waitTimer = window.setTimeout(pollWait, delay);
}

async function pollWait() {
  waitTimer = null;
  if (!stepsWaiting()) { hideWait(); return; }
  if (document.hidden) { scheduleWait(waitDelay); return; }
  let more = true;
  try {
    more = renderWait(await api('GET', waitBox.dataset.url));
  } catch (_) {
    // try again later
  }
  if (!more) {
    // Queued in the database but not (yet) in its queue: look again now and then.
    if (stepsWaiting()) scheduleWait(WAIT_MAX_MS);
    return;
  }
  waitDelay = Math.min(waitDelay * 1.5, WAIT_MAX_MS);
  scheduleWait(waitDelay);
}

function followWait() {
  // After every step change: start when a step is queued, hide at once when none is.
  if (!waitBox) return;
  if (stepsWaiting()) scheduleWait(waitBox.hidden ? 0 : waitDelay);
  else hideWait();
}

function showProgress(data) {
  const item = stepItem(data.step);
  if (!item || !data.message) return;
  const percent = typeof data.fraction === 'number' ? ` (${Math.round(data.fraction * 100)}%)` : '';
  item.querySelector('.step-detail').textContent = `${data.message}${percent}`;
}

function gradeBox() {
  const box = document.getElementById('grade');
  return box && !root.dataset.staff ? box : null;
}

function showGrade(data) {
  const box = gradeBox();
  if (!box) return;
  const value = document.createElement('p');
  value.className = 'grade-value';
  value.textContent = data.grade;
  const children = [value];
  if (data.feedback) {
    const feedback = document.createElement('div');
    feedback.className = 'feedback';
    feedback.textContent = data.feedback;
    children.push(feedback);
  }
  box.replaceChildren(...children);
  document.getElementById('grade-box').classList.add('fresh');
  announce(`Your grade is released: ${data.grade}`);
}

function releasedWithoutGrade() {
  // Grades came out but none for this attempt: say so, as the page would after a reload.
  const box = gradeBox();
  if (!box || box.querySelector('.grade-value') || root.dataset.replacedBy) return;
  const text = document.createElement('p');
  text.className = 'hint';
  text.textContent = 'Grades are released, but this attempt is not marked yet. Its grade appears here when staff mark it.';
  box.replaceChildren(text);
}

function apply(envelope) {
  if (envelope.type === 'step.progress') showProgress(envelope.data || {});
  else if (envelope.type === 'grade.released') showGrade(envelope.data || {});
  else refreshSoon();
}

if (root) {
  follow(root.dataset.topic, Number(root.dataset.seq), apply);
  followWait();
  if (root.dataset.assignmentTopic && root.dataset.assignmentSeq !== undefined && !root.dataset.staff) {
    follow(root.dataset.assignmentTopic, Number(root.dataset.assignmentSeq), (envelope) => {
      if (envelope.type === 'grades.released') releasedWithoutGrade();
    });
  }
}
