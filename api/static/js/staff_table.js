// Staff: the live submissions table of one assignment, its filters, marking progress and grade release.
import { follow } from './live.js';
import { api, announce, clockTime, localTime, showError, throttle } from './util.js';

const root = document.getElementById('staff-table');
const assignmentId = root.dataset.assignmentId;
const table = document.getElementById('submissions-table');
const tableStatus = document.getElementById('table-status');
const progress = document.getElementById('marking-progress');
const releaseState = document.getElementById('release-state');
const releaseError = document.getElementById('release-error');
const cancelButton = document.getElementById('release-cancel');
const releaseButton = document.getElementById('release-now');
const undoButton = document.getElementById('release-undo');
const releaseDialog = document.getElementById('release-dialog');
const followed = new Set();
let filter = 'all';

function cell(text, label) {
  const td = document.createElement('td');
  td.dataset.label = label;
  if (text instanceof Node) td.append(text); else td.textContent = text;
  return td;
}

function stepsCell(steps) {
  const list = document.createElement('ul');
  list.className = 'step-chips';
  for (const [name, state] of Object.entries(steps)) {
    const item = document.createElement('li');
    // The scan skipped (no scanner) is amber and says so, as on the submission pages.
    const unscanned = name === 'scan' && state === 'skipped';
    item.className = `chip state-${state}${unscanned ? ' tone-warn' : ''}`;
    item.textContent = unscanned ? 'scan: not virus-scanned' : `${name}: ${state}`;
    list.append(item);
  }
  return list;
}

function markerCell(name) {
  const td = cell(name || '—', 'Being marked by');
  td.className = 'marker';
  return td;
}

/** A claim taken, handed over or ended (marking.state on the staff topic): the row says so at once. */
function showMarker(data) {
  const row = table.querySelector(`tr[data-submission-id="${Number(data.submission_id)}"]`);
  const td = row?.querySelector('td.marker');
  if (td) td.textContent = data.state === 'marking' && data.marker_name ? data.marker_name : '—';
}

function render(data) {
  const body = document.createElement('tbody');
  if (!data.rows.length) {
    const row = document.createElement('tr');
    const td = cell(filter === 'all' ? 'No submissions yet.' : 'No submissions match this filter.', '');
    td.colSpan = 8;
    row.append(td);
    body.append(row);
  }
  for (const item of data.rows) {
    const row = document.createElement('tr');
    row.dataset.submissionId = item.id;
    const name = document.createElement('th');
    name.scope = 'row';
    const link = document.createElement('a');
    link.href = `/staff/submissions/${item.id}`;
    link.textContent = item.student;
    name.append(link);
    const status = document.createElement('span');
    status.className = `badge status-${item.status_tone}`;
    status.textContent = item.status_text + (item.late ? ' · late' : '');
    row.append(
      name,
      cell(String(item.attempt), 'Attempt'),
      cell(localTime(item.received_at), 'Received'),
      cell(status, 'Status'),
      cell(stepsCell(item.steps), 'Steps'),
      cell(item.similarity === null ? '—' : `${item.similarity}%`, 'Similarity'),
      markerCell(item.marker),
      cell(item.grade || '—', 'Grade'),
    );
    body.append(row);
    // Follow unfinished submissions so their steps tick over here too.
    if (['received', 'processing'].includes(item.status) && !followed.has(item.topic) && followed.size < 100) {
      followed.add(item.topic);
      follow(item.topic, item.seq, refreshSoon);
    }
  }
  table.tBodies[0].replaceWith(body);
  progress.textContent = `${data.progress.graded} of ${data.progress.submissions} latest attempts marked (a replaced attempt does not count).`;
  cancelButton.hidden = !data.release_scheduled_at || !undoButton.hidden; // "Undo" stands in for it
  tableStatus.textContent = `${data.rows.length} shown · updated ${clockTime()}`;
}

async function refresh() {
  try {
    render(await api('GET', `/api/staff/assignments/${assignmentId}/submissions?filter=${filter}`));
  } catch (failure) {
    tableStatus.textContent = failure.detail;
  }
}
const refreshSoon = throttle(refresh, 500);

for (const radio of document.querySelectorAll('input[name=filter]')) {
  radio.addEventListener('change', () => {
    filter = radio.value;
    refresh();
  });
}

function setReleaseText(text) {
  releaseState.textContent = text;
}

// The seq of the latest release change this page made itself (its answer says which event it
// published): that event's echo, and any older one still arriving, must not replace what the
// answer already shows.
let ownReleaseSeq = 0;
function madeHere(answer) {
  ownReleaseSeq = Math.max(ownReleaseSeq, Number(answer.seq) || 0);
}

// "Release grades now" asks first, then schedules the release a few seconds ahead (the same
// deferred job as a scheduled release), so a slip of the mouse can still be undone.
function askToRelease() {
  return new Promise((resolve) => {
    const answer = (value) => () => { releaseDialog.close(); resolve(value); };
    document.getElementById('release-confirm').onclick = answer(true);
    document.getElementById('release-keep').onclick = answer(false);
    releaseDialog.oncancel = () => resolve(false);
    releaseDialog.showModal();
  });
}

releaseButton.addEventListener('click', async () => {
  showError(releaseError, '');
  if (!(await askToRelease())) return;
  try {
    const undoSeconds = Number(releaseButton.dataset.undoSeconds) || 30;
    const answer = await api('POST', `/api/assignments/${assignmentId}/release`, { undo_seconds: undoSeconds });
    madeHere(answer);
    setReleaseText(`Releasing grades at ${clockTime(answer.scheduled_at)}: you can undo until then.`);
    undoButton.hidden = false;
    undoButton.focus();
  } catch (failure) {
    showError(releaseError, failure.detail);
  }
});

undoButton.addEventListener('click', async () => {
  showError(releaseError, '');
  try {
    const answer = await api('DELETE', `/api/assignments/${assignmentId}/release`);
    madeHere(answer);
    setReleaseText(answer.cancelled ? 'Release undone. Grades not released.' : 'Too late to undo: the grades were released.');
    undoButton.hidden = true;
  } catch (failure) {
    showError(releaseError, failure.detail);
  }
});

document.getElementById('schedule-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(releaseError, '');
  const value = document.getElementById('release-at').value;
  const when = new Date(value);
  if (!value || Number.isNaN(when.getTime())) {
    showError(releaseError, 'Choose the date and time to release at.');
    return;
  }
  try {
    const answer = await api('POST', `/api/assignments/${assignmentId}/release`, { at: when.toISOString() });
    madeHere(answer);
    setReleaseText(`Release scheduled for ${localTime(answer.scheduled_at)}.`);
    cancelButton.hidden = false;
  } catch (failure) {
    showError(releaseError, failure.detail);
  }
});

cancelButton.addEventListener('click', async () => {
  showError(releaseError, '');
  try {
    const answer = await api('DELETE', `/api/assignments/${assignmentId}/release`);
    madeHere(answer);
    setReleaseText(answer.cancelled ? 'Scheduled release cancelled. Grades not released.' : answer.detail);
    cancelButton.hidden = true;
  } catch (failure) {
    showError(releaseError, failure.detail);
  }
});

follow(root.dataset.topic, Number(root.dataset.seq), (envelope) => {
  const data = envelope.data || {};
  if (envelope.type === 'marking.updated') {
    progress.textContent = `${data.graded} of ${data.submissions} latest attempts marked (a replaced attempt does not count).`;
  } else if (envelope.type === 'grades.released') {
    setReleaseText(`Grades released ${localTime(data.released_at)}. `
      + (data.detail || `${data.grades_sent} grades sent, ${data.flashes_created} students told.`));
    undoButton.hidden = true;
    cancelButton.hidden = true;
    announce('Grades released.');
  } else if (envelope.type === 'grades.release_scheduled') {
    if (undoButton.hidden && envelope.seq > ownReleaseSeq) setReleaseText(`Release scheduled for ${localTime(data.at)}.`);
  } else if (envelope.type === 'grades.release_cancelled') {
    if (undoButton.hidden && envelope.seq > ownReleaseSeq) setReleaseText('Scheduled release cancelled. Grades not released.');
    undoButton.hidden = true;
  }
  refreshSoon();
});

follow(root.dataset.staffTopic, Number(root.dataset.staffSeq), (envelope) => {
  if (Number(envelope.data?.assignment_id) !== Number(assignmentId)) return;
  if (envelope.type === 'marking.state') showMarker(envelope.data);
  refreshSoon();
});

refresh();
