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
    item.className = `chip state-${state}`;
    item.textContent = `${name}: ${state}`;
    list.append(item);
  }
  return list;
}

function render(data) {
  const body = document.createElement('tbody');
  if (!data.rows.length) {
    const row = document.createElement('tr');
    const td = cell(filter === 'all' ? 'No submissions yet.' : 'No submissions match this filter.', '');
    td.colSpan = 7;
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
    status.className = `badge status-${item.status}`;
    status.textContent = item.status.replace('_', ' ') + (item.late ? ' · late' : '');
    row.append(
      name,
      cell(String(item.attempt), 'Attempt'),
      cell(localTime(item.received_at), 'Received'),
      cell(status, 'Status'),
      cell(stepsCell(item.steps), 'Steps'),
      cell(item.similarity === null ? '—' : `${item.similarity}%`, 'Similarity'),
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
  progress.textContent = `${data.progress.graded} of ${data.progress.submissions} submissions marked.`;
  cancelButton.hidden = !data.release_scheduled_at;
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

document.getElementById('release-now').addEventListener('click', async () => {
  showError(releaseError, '');
  try {
    const answer = await api('POST', `/api/assignments/${assignmentId}/release`, {});
    setReleaseText(`Grades released ${localTime(answer.released_at)}. ${answer.detail}`);
    cancelButton.hidden = true;
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
    setReleaseText(answer.cancelled ? 'Scheduled release cancelled. Grades not released.' : answer.detail);
    cancelButton.hidden = true;
  } catch (failure) {
    showError(releaseError, failure.detail);
  }
});

follow(root.dataset.topic, Number(root.dataset.seq), (envelope) => {
  const data = envelope.data || {};
  if (envelope.type === 'marking.updated') {
    progress.textContent = `${data.graded} of ${data.submissions} submissions marked.`;
  } else if (envelope.type === 'grades.released') {
    setReleaseText(`Grades released ${localTime(data.released_at)}: `
      + `${data.grades_sent} grades sent, ${data.flashes_created} students told.`);
    announce('Grades released.');
  } else if (envelope.type === 'grades.release_scheduled') {
    setReleaseText(`Release scheduled for ${localTime(data.at)}.`);
  } else if (envelope.type === 'grades.release_cancelled') {
    setReleaseText('Scheduled release cancelled. Grades not released.');
  }
  refreshSoon();
});

follow('staff.dashboard', Number(root.dataset.dashboardSeq), (envelope) => {
  if (Number(envelope.data?.assignment_id) === Number(assignmentId)) refreshSoon();
});

refresh();
