// Staff: save a grade and feedback; marking progress of the assignment updates live.
import { follow } from './live.js';
import { api, clockTime, showError } from './util.js';

const form = document.getElementById('grade-form');
const status = document.getElementById('grade-status');
const error = document.getElementById('grade-error');
const progress = document.getElementById('marking-progress');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(error, '');
  status.textContent = 'Saving…';
  try {
    const answer = await api('PUT', form.dataset.url, { grade: form.grade.value, feedback: form.feedback.value });
    status.textContent = `Saved at ${clockTime()}.`;
    progress.textContent = `${answer.progress.graded} of ${answer.progress.submissions} latest attempts marked (a replaced attempt does not count).`;
  } catch (failure) {
    status.textContent = '';
    showError(error, failure.detail);
  }
});

follow(progress.dataset.assignmentTopic, Number(progress.dataset.assignmentSeq), (envelope) => {
  if (envelope.type === 'marking.updated') {
    progress.textContent = `${envelope.data.graded} of ${envelope.data.submissions} latest attempts marked (a replaced attempt does not count).`;
  }
});
