// The submission page: rendered from the database at a topic seq, then kept current live.
// Each step ticks over with its time; the thumbnail appears when ready; a released grade appears in place.
import { follow } from './live.js';
import { announce, clockTime, timeElement } from './util.js';

const root = document.getElementById('submission');
const STATE_TEXT = {
  pending: 'pending', queued: 'queued', running: 'running', retrying: 'retrying', waiting: 'waiting',
  succeeded: 'done', failed: 'failed', skipped: 'skipped',
};

function stepItem(name) {
  return root.querySelector(`.step[data-step="${CSS.escape(name)}"]`);
}

function label(item) {
  return item.querySelector('.step-label').textContent;
}

function detailFor(envelope) {
  const data = envelope.data || {};
  const result = data.result || {};
  if (data.step === 'similarity' && typeof result.score === 'number') return `similarity ${result.score}%`;
  if (data.step === 'scan' && result.result) return String(result.result);
  if (data.error) return String(data.error);
  if (data.reason) return String(data.reason);
  if (result.reason) return String(result.reason);
  if (envelope.type === 'step.progress' && data.message) {
    return typeof data.fraction === 'number' ? `${data.message} (${Math.round(data.fraction * 100)}%)` : data.message;
  }
  if (envelope.type === 'step.retrying' && data.retry_in_seconds !== undefined) {
    return `trying again in ${data.retry_in_seconds} s`;
  }
  return null;
}

function setStep(envelope) {
  const data = envelope.data || {};
  const item = stepItem(data.step);
  if (!item) return;
  const state = envelope.type === 'step.progress' ? 'running' : envelope.type.slice('step.'.length);
  item.dataset.state = state;
  item.querySelector('.step-state').textContent = STATE_TEXT[state] || state;
  const time = item.querySelector('.step-time');
  time.replaceChildren(timeElement(envelope.at, clockTime(envelope.at)));
  const detail = detailFor(envelope);
  const detailElement = item.querySelector('.step-detail');
  if (detail !== null) detailElement.textContent = detail;
  else if (['succeeded', 'failed', 'skipped'].includes(state)) detailElement.textContent = '';
  if (envelope.type !== 'step.progress') {
    document.getElementById('step-announcer').textContent = `${label(item)}: ${STATE_TEXT[state] || state}`;
  }
  if (data.step === 'thumbnail' && state === 'succeeded') showThumbnail(envelope.seq);
}

function showThumbnail(seq) {
  const figure = document.getElementById('thumbnail');
  if (!figure) return;
  const image = document.createElement('img');
  image.src = `${figure.dataset.src}?v=${seq}`;
  image.alt = 'Preview of the first page';
  image.addEventListener('load', () => figure.replaceChildren(image));
}

function setOverall(status) {
  const overall = document.getElementById('overall');
  const badge = document.createElement('span');
  badge.className = `badge status-${status}`;
  badge.textContent = status.replace('_', ' ');
  overall.replaceChildren(badge);
}

function showGrade(data) {
  const box = document.getElementById('grade');
  if (!box || root.dataset.staff) return;
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

function apply(envelope) {
  if (envelope.type.startsWith('step.')) setStep(envelope);
  else if (envelope.type.startsWith('submission.') && envelope.data?.status) setOverall(envelope.data.status);
  else if (envelope.type === 'submission.received') setOverall('received');
  else if (envelope.type === 'grade.released') showGrade(envelope.data || {});
}

if (root) follow(root.dataset.topic, Number(root.dataset.seq), apply);
