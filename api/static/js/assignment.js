// Student assignment page: a deadline moved by staff, or an extension, updates the dates and countdowns live.
import { follow } from './live.js';
import { announce, localTime } from './util.js';

const root = document.getElementById('assignment');
const notice = document.getElementById('assignment-notice');
const assignmentId = Number(root.dataset.assignmentId);
const extended = root.querySelector('[data-window]')?.dataset.extended === '1';

function setDate(field, iso) {
  const cell = root.querySelector(`[data-field="${field}"]`);
  if (!cell || !iso) return;
  const time = cell.querySelector('time');
  time.dateTime = iso;
  time.textContent = localTime(iso);
  cell.querySelector('[data-countdown]').dataset.countdown = iso;
}

function moveDates(data, why) {
  setDate('deadline', data.deadline);
  setDate('cutoff', data.cutoff_at);
  const text = `${why}: deadline now ${localTime(data.deadline)}, cut-off ${localTime(data.cutoff_at)}.`;
  notice.textContent = text;
  announce(text);
}

follow(root.dataset.topic, Number(root.dataset.seq), (envelope) => {
  if (envelope.type === 'assignment.updated' && !extended) moveDates(envelope.data, 'Staff changed the dates');
  if (envelope.type === 'grades.released') notice.textContent = 'Grades for this assignment are released.';
});

const userTopic = document.body.dataset.userTopic;
if (userTopic) {
  follow(userTopic, Number(document.body.dataset.userSeq || 0), (envelope) => {
    if (envelope.type === 'extension.updated' && Number(envelope.data.assignment_id) === assignmentId) {
      moveDates(envelope.data, 'Your dates changed');
    }
  });
}
