// Marking progress, live. The student's submission page says whether the work is queued for
// marking, being marked, or marked and waiting for release (never who marks it, never a grade
// before release), and how far the assignment's marking has got. The staff submission page
// shows who is marking it, with "I'm marking this"; someone else's claim must be confirmed
// ("Take over marking") before it moves.
import { follow } from './live.js';
import { api, announce, showError } from './util.js';

const box = document.getElementById('marking');
const submissionId = Number(box.dataset.submissionId);
const stateLine = document.getElementById('marking-state');
const progressLine = document.getElementById('marking-course-progress');
const claimButton = document.getElementById('claim-button');
const unclaimButton = document.getElementById('unclaim-button');
const conflict = document.getElementById('claim-conflict');
const error = document.getElementById('claim-error');
let me = 0;
let latest = true;
let current = null;

const STUDENT_TEXT = {
  queued: 'Queued for marking.',
  marking: 'Being marked now.',
  marked: 'Marked: the grade appears here when staff release grades.',
};

function renderState(state) {
  current = state;
  let text;
  if (!latest) {
    text = 'A later attempt replaced this one: only your latest attempt is marked.';
  } else if (!claimButton) {
    text = STUDENT_TEXT[state.state] || '';
  } else if (state.state === 'marking') {
    text = state.marker_id === me ? 'You are marking this.' : `Being marked by ${state.marker_name}.`;
  } else {
    text = state.state === 'marked' ? 'Marked.' : 'Nobody is marking this yet.';
  }
  if (stateLine.textContent !== text) stateLine.textContent = text;
  stateLine.dataset.state = state.state;
  if (claimButton) {
    claimButton.hidden = state.state === 'marking' && state.marker_id === me;
    unclaimButton.hidden = state.state !== 'marking';
    if (state.state !== 'marking' || state.marker_id === me) conflict.hidden = true;
  }
}

function renderProgress(progress) {
  if (progressLine) progressLine.textContent = `Marking of this assignment: ${progress.graded} of ${progress.submissions} submissions marked.`;
}

async function claim(takeOver) {
  showError(error, '');
  try {
    renderState(await api('POST', `/api/submissions/${submissionId}/claim`, { take_over: takeOver }));
    conflict.hidden = true;
  } catch (failure) {
    if (failure.status === 409) {
      conflict.hidden = false;
      document.getElementById('claim-conflict-text').textContent = failure.detail;
      document.getElementById('take-over-button').focus();
    } else {
      showError(error, failure.detail);
    }
  }
}

if (claimButton) {
  claimButton.addEventListener('click', () => claim(false));
  document.getElementById('take-over-button').addEventListener('click', () => claim(true));
  unclaimButton.addEventListener('click', async () => {
    showError(error, '');
    try {
      renderState(await api('DELETE', `/api/submissions/${submissionId}/claim`));
    } catch (failure) {
      showError(error, failure.detail);
    }
  });
}

const view = await api('GET', `/api/submissions/${submissionId}/marking`);
me = view.me;
latest = view.latest;
renderState(view);
renderProgress(view.progress);
box.hidden = false;

follow(view.topic, view.seq, (envelope) => {
  if (envelope.type !== 'marking.state') return;
  const before = current?.state;
  renderState(envelope.data);
  if (claimButton && envelope.data.state === 'marking' && envelope.data.marker_id !== me) {
    announce(`Being marked by ${envelope.data.marker_name}`);
  } else if (!claimButton && before !== envelope.data.state) {
    announce(STUDENT_TEXT[envelope.data.state] || '');
  }
});
follow(view.assignment_topic, view.assignment_seq, (envelope) => {
  if (envelope.type === 'marking.updated' && typeof envelope.data.graded === 'number') renderProgress(envelope.data);
});
